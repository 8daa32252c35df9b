// The console: noVNC (Debian's package, served at /ui/novnc/) over the agent's websocket
// proxy to the domain's VNC server; a keymap for paste-as-keystrokes; the serial
// console where the domain has one; the screenshot where neither is available.
import { api, can, el, esc, every, onLeave, token } from "./app.js";

const SHIFT = 0xffe1;
const ALTGR = 0xfe03; // ISO_Level3_Shift
// Per layout: character -> [KeyboardEvent.code, modifier keysym or 0]. Keys the guest's
// layout puts elsewhere are sent as the physical key that layout types them with.
const US = {};
const DE = {};
(() => {
  for (let c = 97; c <= 122; c++) {
    const code = `Key${String.fromCharCode(c - 32)}`;
    US[String.fromCharCode(c)] = [code, 0];
    US[String.fromCharCode(c - 32)] = [code, SHIFT];
  }
  "0123456789".split("").forEach((d) => (US[d] = [`Digit${d}`, 0]));
  ")!@#$%^&*(".split("").forEach((s, i) => (US[s] = [`Digit${i}`, SHIFT]));
  const pairs = [["-_", "Minus"], ["=+", "Equal"], ["[{", "BracketLeft"], ["]}", "BracketRight"],
    ["\\|", "Backslash"], [";:", "Semicolon"], ["'\"", "Quote"], ["`~", "Backquote"],
    [",<", "Comma"], [".>", "Period"], ["/?", "Slash"]];
  for (const [chars, code] of pairs) {
    US[chars[0]] = [code, 0];
    US[chars[1]] = [code, SHIFT];
  }
  US[" "] = ["Space", 0];
  US["\n"] = ["Enter", 0];
  US["\t"] = ["Tab", 0];
  Object.assign(DE, US);
  DE.y = ["KeyZ", 0]; DE.Y = ["KeyZ", SHIFT]; DE.z = ["KeyY", 0]; DE.Z = ["KeyY", SHIFT];
  '=!"§$%&/()'.split("").forEach((s, i) => (DE[s] = [`Digit${i}`, SHIFT]));
  Object.assign(DE, {
    "ß": ["Minus", 0], "?": ["Minus", SHIFT], "+": ["BracketRight", 0], "*": ["BracketRight", SHIFT],
    "#": ["Backslash", 0], "'": ["Backslash", SHIFT], "-": ["Slash", 0], "_": ["Slash", SHIFT],
    ";": ["Comma", SHIFT], ":": ["Period", SHIFT], "<": ["IntlBackslash", 0], ">": ["IntlBackslash", SHIFT],
    "ü": ["BracketLeft", 0], "Ü": ["BracketLeft", SHIFT], "ö": ["Semicolon", 0], "Ö": ["Semicolon", SHIFT],
    "ä": ["Quote", 0], "Ä": ["Quote", SHIFT], "@": ["KeyQ", ALTGR], "{": ["Digit7", ALTGR],
    "[": ["Digit8", ALTGR], "]": ["Digit9", ALTGR], "}": ["Digit0", ALTGR], "\\": ["Minus", ALTGR],
    "~": ["BracketRight", ALTGR], "|": ["IntlBackslash", ALTGR], "^": ["Backquote", 0],
  });
})();
const KEYMAPS = { "en-us": US, de: DE };
const SPECIAL = { "\n": 0xff0d, "\t": 0xff09 };

function socketUrl(path) {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const query = token() ? `?access_token=${encodeURIComponent(token())}` : "";
  return `${scheme}//${location.host}/api/v1${path}${query}`;
}

export async function consoleView(main, view, name) {
  const path = `/vms/${encodeURIComponent(name)}`;
  const keymap = localStorage.getItem("hostagent.keymap") || "en-us";
  main.replaceChildren(
    el(`<section>
      <h1><a href="/ui/vms" data-nav>VMs</a> / <a href="/ui/vms/${encodeURIComponent(name)}" data-nav>${esc(name)}</a> / console
        <span id="console-status" class="pill">connecting…</span></h1>
      <div class="toolbar">
        <label>Keymap <select id="keymap">${Object.keys(KEYMAPS).map((k) => `<option value="${k}" ${k === keymap ? "selected" : ""}>${k}</option>`).join("")}</select></label>
        <button id="send-cad">Ctrl+Alt+Del</button>
        <input id="paste-text" placeholder="text to type into the VM" size="40">
        <button id="paste">Type it</button>
        <span id="keys-sent" class="muted"></span>
      </div>
      <p id="console-refused" class="refused" hidden></p>
      <div id="screen"></div>
      <img id="screenshot" alt="the VM's screen" hidden>
      <div class="card" id="serial" hidden><h2>Serial console</h2>
        <div class="events" id="serial-out"></div>
        <input id="serial-in" placeholder="type a line, Enter sends it" size="60"></div>
    </section>`),
  );
  const status = main.querySelector("#console-status");
  const refused = main.querySelector("#console-refused");
  main.querySelector("#keymap").addEventListener("change", (event) => localStorage.setItem("hostagent.keymap", event.target.value));

  const vm = await api("GET", `${path}?window_seconds=0.05`);
  if (!can("admin")) {
    status.textContent = "refused";
    refused.hidden = false;
    refused.textContent = "The console needs a token with the admin scope.";
    main.querySelectorAll(".toolbar button, .toolbar input").forEach((b) => (b.disabled = true));
    return screenshotFallback(main, path);
  }
  const hasVnc = vm.state === "running" && vm.graphics.some((g) => g.type === "vnc");
  if (hasVnc) {
    await vnc(main, view, name, status);
  } else {
    status.textContent = `no graphical console (${vm.state})`;
    main.querySelector("#screen").hidden = true;
    main.querySelectorAll(".toolbar button").forEach((b) => (b.disabled = true));
    screenshotFallback(main, path);
  }
  serial(main, view, name);
}

async function vnc(main, view, name, status) {
  const { default: RFB } = await import("/ui/novnc/core/rfb.js");
  const screen = main.querySelector("#screen");
  const rfb = new RFB(screen, socketUrl(`/vms/${encodeURIComponent(name)}/console`));
  rfb.scaleViewport = true;
  rfb.focusOnClick = true;
  window.hostagentRfb = rfb; // for the browser tests
  onLeave(() => rfb.disconnect());
  rfb.addEventListener("connect", () => {
    status.textContent = "connected";
    status.dataset.state = "connected";
  });
  rfb.addEventListener("disconnect", (event) => {
    status.textContent = event.detail.clean ? "disconnected" : "connection failed";
    status.dataset.state = "disconnected";
    screenshotFallback(main, `/vms/${encodeURIComponent(name)}`);
  });
  let sent = 0;
  const press = (keysym, code, down) => rfb.sendKey(keysym, code, down);
  main.querySelector("#send-cad").addEventListener("click", () => rfb.sendCtrlAltDel());
  main.querySelector("#paste").addEventListener("click", () => {
    const layout = KEYMAPS[main.querySelector("#keymap").value] || US;
    for (const char of main.querySelector("#paste-text").value) {
      const found = layout[char];
      const keysym = SPECIAL[char] ?? char.codePointAt(0);
      if (!found) {
        press(keysym, null); // unknown to the layout: the keysym alone
      } else {
        const [code, modifier] = found;
        if (modifier) press(modifier, modifier === SHIFT ? "ShiftLeft" : "AltRight", true);
        press(keysym, code, true);
        press(keysym, code, false);
        if (modifier) press(modifier, modifier === SHIFT ? "ShiftLeft" : "AltRight", false);
      }
      sent += 1;
    }
    main.querySelector("#keys-sent").textContent = `${sent} keys sent`;
  });
}

function screenshotFallback(main, path) {
  const image = main.querySelector("#screenshot");
  if (!image.hidden) return;
  image.hidden = false;
  every(2, async () => {
    const response = await fetch(`/api/v1${path}/screenshot`, {
      headers: token() ? { Authorization: `Bearer ${token()}` } : {},
    });
    if (!response.ok) {
      image.alt = `no screenshot (${response.status})`;
      return;
    }
    const old = image.src;
    image.src = URL.createObjectURL(await response.blob());
    if (old) URL.revokeObjectURL(old);
  });
}

function serial(main, view, name) {
  const socket = new WebSocket(socketUrl(`/vms/${encodeURIComponent(name)}/serial`));
  const box = main.querySelector("#serial");
  const out = main.querySelector("#serial-out");
  onLeave(() => socket.close());
  socket.addEventListener("open", () => (box.hidden = false));
  socket.addEventListener("message", (event) => {
    // The guest's terminal escapes (cursor, colours, clear) have no place in a <div>.
    const text = typeof event.data === "string" ? event.data : "";
    out.append(text.replace(/\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[()][0-9A-Za-z]|\x1b[@-_]|[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]/g, ""));
    out.scrollTop = out.scrollHeight;
  });
  main.querySelector("#serial-in").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && socket.readyState === WebSocket.OPEN) {
      socket.send(`${event.target.value}\r`);
      event.target.value = "";
    }
  });
}
