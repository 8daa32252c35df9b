// hostagent in a browser: four views on the agent's own API, no build step, no CDN.
// The token is kept per tab (sessionStorage); every action is a job whose live events
// are shown until it ends.

const TOKEN_KEY = "hostagent.token";
const API = "/api/v1";
const ACTIVE = new Set(["Pending", "Running"]);
const main = document.getElementById("main");
let session = null; // {name, scopes, tokens_required}
let view = null; // the current view's {abort, timers}

export class ApiError extends Error {
  constructor(status, doc) {
    super((doc && doc.message) || `HTTP ${status}`);
    this.status = status;
    this.doc = doc || {};
    this.details = this.doc.details || {};
  }
}

export function token() {
  return sessionStorage.getItem(TOKEN_KEY) || "";
}

function headers(extra = {}) {
  const found = { ...extra };
  if (token()) found.Authorization = `Bearer ${token()}`;
  return found;
}

export async function api(method, path, body) {
  const init = { method, headers: headers() };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  if (view) init.signal = view.abort.signal;
  const response = await fetch(API + path, init);
  let doc = null;
  try {
    doc = await response.json();
  } catch {
    doc = null;
  }
  if (!response.ok) throw new ApiError(response.status, doc);
  return doc ? doc.data : null;
}

// Server-Sent Events over fetch (EventSource cannot send the Authorization header).
export async function stream(path, onEvent, signal) {
  const response = await fetch(API + path, { headers: headers(), signal });
  if (!response.ok) {
    let doc = null;
    try {
      doc = await response.json();
    } catch {
      doc = null;
    }
    throw new ApiError(response.status, doc);
  }
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let kind = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) kind = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
      }
      if (data.length && onEvent(kind, JSON.parse(data.join("\n"))) === false) {
        reader.cancel();
        return;
      }
    }
  }
}

export function can(scope) {
  return !!session && (session.scopes.includes(scope) || session.scopes.includes("admin"));
}

export function el(html) {
  const holder = document.createElement("template");
  holder.innerHTML = html.trim();
  return holder.content.firstElementChild;
}

export function esc(value) {
  return String(value ?? "").replace(
    /[&<>"']/g,
    (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c],
  );
}

export function bytes(n) {
  if (n === null || n === undefined) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) {
    n /= 1024;
    i += 1;
  }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

export function rate(n) {
  return n === null || n === undefined ? "–" : `${bytes(n)}/s`;
}

function percent(n) {
  if (n === null || n === undefined) return "–";
  return `<span class="bar"><span style="width:${Math.min(n, 100)}%"></span></span>${n.toFixed(1)}%`;
}

export function every(seconds, fn) {
  // Sequential: the next run starts `seconds` after the last one ended.
  const state = view;
  const run = async () => {
    if (state !== view) return;
    try {
      await fn();
    } catch (exc) {
      if (exc.name !== "AbortError") console.warn(exc);
    }
    if (state === view) state.timers.push(setTimeout(run, seconds * 1000));
  };
  run();
}

// An error as the page shows it: a 409 names the state that refused the action.
export function explain(exc) {
  if (exc.status === 409 && exc.details.state && exc.details.valid_in) {
    const valid = exc.details.valid_in ? ` (valid in: ${exc.details.valid_in.join(", ")})` : "";
    return `Refused: it is ${exc.details.state}${valid}`;
  }
  if (exc.status === 403) return `Forbidden (403): ${exc.message}`;
  if (exc.status === 401) return `Unauthorized (401): ${exc.message}`;
  const field = exc.details.field ? ` [${exc.details.field}]` : "";
  return `${exc.status || ""} ${exc.message}${field}`.trim();
}

// Follow a job's live events into `box` until it ends; resolves to its final status.
export async function followJob(jobId, box, signal) {
  box.dataset.job = jobId;
  const status = box.querySelector(".job-status") || box;
  const log = box.querySelector(".events");
  let final = null;
  const show = (data) => {
    status.innerHTML = `<span class="state ${esc(data.status)}">${esc(data.status)}</span>`;
    status.dataset.status = data.status;
    if (data.error) status.append(el(`<span class="error"> ${esc(data.error)}</span>`));
  };
  try {
    await stream(
      `/events?job_id=${encodeURIComponent(jobId)}`,
      (_kind, event) => {
        const data = event.data || {};
        if (event.type === "initial_status" || event.type === "status") {
          show(data);
          if (log) log.append(`${data.status}${data.error ? `: ${data.error}` : ""}\n`);
          if (!ACTIVE.has(data.status)) {
            final = data.status;
            return false;
          }
        } else if (log) {
          const text = event.type === "progress" ? `${data.percent ?? ""}% ${data.message ?? ""}` : data.message ?? JSON.stringify(data);
          log.append(`${event.type}: ${text}\n`);
        }
        return true;
      },
      signal,
    );
  } catch (exc) {
    if (exc.name !== "AbortError") status.append(el(`<span class="error"> ${esc(explain(exc))}</span>`));
  }
  return final;
}

// --- session and routing ---

async function login() {
  try {
    session = await api("GET", "/session");
  } catch (exc) {
    if (exc.status !== 401) throw exc;
    session = null;
    const form = document.getElementById("login-template").content.firstElementChild.cloneNode(true);
    main.replaceChildren(form);
    if (token()) form.querySelector("#login-error").textContent = "That token was not accepted.";
    await new Promise((resolve) => {
      form.addEventListener("submit", (event) => {
        event.preventDefault();
        sessionStorage.setItem(TOKEN_KEY, form.querySelector("#login-token").value.trim());
        resolve();
      });
    });
    return login();
  }
  const who = document.getElementById("who");
  who.textContent = session.tokens_required
    ? `${session.name} (${session.scopes.join(", ")})`
    : "no tokens (development)";
  document.getElementById("logout").hidden = !token();
  return session;
}

function stopView() {
  if (view) {
    view.abort.abort();
    view.timers.forEach(clearTimeout);
    view.cleanup.forEach((fn) => fn());
  }
  view = { abort: new AbortController(), timers: [], cleanup: [] };
  return view;
}

export function onLeave(fn) {
  view.cleanup.push(fn);
}

export function navigate(path) {
  history.pushState(null, "", path);
  route();
}

async function route() {
  const path = location.pathname.replace(/\/+$/, "") || "/ui";
  const current = stopView();
  document.querySelectorAll("header nav a").forEach((a) => a.classList.remove("active"));
  let match;
  try {
    if (path === "/ui" || path === "/ui/vms") {
      document.getElementById("nav-vms").classList.add("active");
      const { vmsView } = await import("./vms.js");
      await vmsView(main, current);
    } else if ((match = path.match(/^\/ui\/vms\/([^/]+)\/console$/))) {
      const { consoleView } = await import("./console.js");
      await consoleView(main, current, decodeURIComponent(match[1]));
    } else if ((match = path.match(/^\/ui\/vms\/([^/]+)$/))) {
      document.getElementById("nav-vms").classList.add("active");
      const { vmView } = await import("./vm.js");
      await vmView(main, current, decodeURIComponent(match[1]));
    } else if (path === "/ui/host" || path === "/ui/jobs") {
      document.getElementById("nav-host").classList.add("active");
      const { hostView } = await import("./host.js");
      await hostView(main, current);
    } else {
      main.replaceChildren(el(`<p>No view at ${esc(path)}. <a href="/ui/vms" data-nav>VMs</a></p>`));
    }
  } catch (exc) {
    if (exc.name === "AbortError") return;
    main.replaceChildren(el(`<p class="error">${esc(explain(exc))}</p>`));
  }
}

document.addEventListener("click", (event) => {
  const link = event.target.closest("a[data-nav]");
  if (!link || event.ctrlKey || event.metaKey || event.shiftKey) return;
  event.preventDefault();
  navigate(link.getAttribute("href"));
});
window.addEventListener("popstate", route);
document.getElementById("logout").addEventListener("click", () => {
  sessionStorage.removeItem(TOKEN_KEY);
  location.reload();
});

login().then(route, (exc) => {
  main.replaceChildren(el(`<p class="error">${esc(explain(exc))}</p>`));
});

export { percent };
