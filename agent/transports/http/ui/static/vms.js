// The VMs view: every domain with its live usage (the agent samples only while this
// stream is open), sortable (busiest first), filterable, with bulk actions.
import { api, can, el, esc, explain, followJob, percent, rate, stream } from "./app.js";

const BULK = ["start", "shutdown", "suspend", "resume"];
const COLUMNS = [
  ["name", "Name", false],
  ["state", "State", false],
  ["cpu_percent", "CPU", true],
  ["memory_kib", "Memory", true],
  ["vcpus", "vCPUs", true],
  ["disk_read_bps", "Disk read", true],
  ["disk_write_bps", "Disk write", true],
  ["net_rx_bps", "Net in", true],
  ["net_tx_bps", "Net out", true],
];

export async function vmsView(main, view) {
  const state = { vms: [], sort: "cpu_percent", desc: true, selected: new Set(), painted: false };
  const disabled = can("submit") ? "" : "disabled title='needs a token with the submit scope'";
  main.replaceChildren(
    el(`<section>
      <h1>VMs <span id="vm-count" class="muted"></span></h1>
      <div class="toolbar">
        <input id="vm-filter" type="search" placeholder="Filter by name">
        <select id="vm-state"><option value="">any state</option>
          ${["running", "paused", "shutoff", "crashed", "pmsuspended"].map((s) => `<option>${s}</option>`).join("")}
        </select>
        <span class="spacer"></span>
        ${BULK.map((a) => `<button data-bulk="${a}" ${disabled}>${a[0].toUpperCase() + a.slice(1)}</button>`).join("")}
      </div>
      <p id="vm-problem" class="error" hidden></p>
      <table id="vms"><thead><tr>
        <th><input type="checkbox" id="vm-all" aria-label="select all"></th>
        ${COLUMNS.map(([key, label, num]) => `<th data-sort="${key}" class="${num ? "num" : ""}">${label}</th>`).join("")}
      </tr></thead><tbody></tbody></table>
      <div class="card" id="activity-card" hidden><h2>Actions</h2><ul class="activity" id="activity"></ul></div>
    </section>`),
  );
  const body = main.querySelector("#vms tbody");
  const filter = main.querySelector("#vm-filter");
  const stateFilter = main.querySelector("#vm-state");

  const shown = () => {
    const text = filter.value.trim().toLowerCase();
    const wanted = stateFilter.value;
    const rows = state.vms.filter(
      (vm) => (!text || vm.name.toLowerCase().includes(text)) && (!wanted || vm.state === wanted),
    );
    const key = state.sort;
    const sign = state.desc ? -1 : 1;
    rows.sort((a, b) => {
      const x = a[key] ?? -1;
      const y = b[key] ?? -1;
      if (x < y) return -sign;
      if (x > y) return sign;
      return a.name.localeCompare(b.name);
    });
    return rows;
  };

  // Rows are kept (keyed by name) and only their changed cells rewritten, so a click
  // on a row's checkbox or link is never lost to a refresh.
  const kept = new Map();
  const cells = (vm) => `
        <td><a href="/ui/vms/${encodeURIComponent(vm.name)}" data-nav>${esc(vm.name)}</a></td>
        <td><span class="state ${esc(vm.state)}" data-state>${esc(vm.state)}</span></td>
        <td class="num">${percent(vm.cpu_percent)}</td>
        <td class="num">${Math.round(vm.memory_kib / 1024)} MiB</td>
        <td class="num">${vm.vcpus}</td>
        <td class="num">${rate(vm.disk_read_bps)}</td>
        <td class="num">${rate(vm.disk_write_bps)}</td>
        <td class="num">${rate(vm.net_rx_bps)}</td>
        <td class="num">${rate(vm.net_tx_bps)}</td>`;
  const rowOf = (vm) => {
    let row = kept.get(vm.name);
    if (!row) {
      row = document.createElement("tr");
      row.dataset.vm = vm.name;
      const box = document.createElement("td");
      box.innerHTML = `<input type="checkbox" data-select="${esc(vm.name)}">`;
      row.append(box);
      kept.set(vm.name, row);
    }
    const html = cells(vm);
    if (row.shown !== html) {
      row.shown = html;
      while (row.children.length > 1) row.lastElementChild.remove();
      row.insertAdjacentHTML("beforeend", html);
    }
    const chosen = state.selected.has(vm.name);
    row.classList.toggle("selected", chosen);
    row.firstElementChild.firstElementChild.checked = chosen;
    return row;
  };

  const render = () => {
    const rows = shown();
    const names = new Set(state.vms.map((vm) => vm.name));
    for (const name of kept.keys()) if (!names.has(name)) kept.delete(name);
    const wanted = rows.map(rowOf);
    const current = [...body.children];
    if (wanted.length !== current.length || wanted.some((row, i) => row !== current[i])) {
      body.replaceChildren(...wanted);
    }
    main.querySelector("#vm-count").textContent = `${rows.length} of ${state.vms.length}`;
    main.querySelectorAll("th[data-sort]").forEach((th) => {
      th.classList.toggle("sorted", th.dataset.sort === state.sort);
      th.classList.toggle("asc", th.dataset.sort === state.sort && !state.desc);
    });
    if (!state.painted && state.vms.length) {
      state.painted = true;
      // First paint with every row, for the browser tests (ms since navigation start).
      requestAnimationFrame(() => {
        document.body.dataset.vmsPaintedMs = String(Math.round(performance.now()));
      });
    }
  };

  filter.addEventListener("input", render);
  stateFilter.addEventListener("change", render);
  main.querySelector("thead").addEventListener("click", (event) => {
    const th = event.target.closest("th[data-sort]");
    if (!th) return;
    state.desc = th.dataset.sort === state.sort ? !state.desc : th.classList.contains("num");
    state.sort = th.dataset.sort;
    render();
  });
  body.addEventListener("change", (event) => {
    const name = event.target.dataset.select;
    if (name === undefined) return;
    if (event.target.checked) state.selected.add(name);
    else state.selected.delete(name);
    render();
  });
  main.querySelector("#vm-all").addEventListener("change", (event) => {
    state.selected = new Set(event.target.checked ? shown().map((vm) => vm.name) : []);
    render();
  });
  main.querySelectorAll("button[data-bulk]").forEach((button) =>
    button.addEventListener("click", () => bulk(main, view, button.dataset.bulk, [...state.selected])),
  );

  const problem = main.querySelector("#vm-problem");
  const watch = async () => {
    // The stream is the subscription; if it ends (the agent restarts), open it again.
    while (!view.abort.signal.aborted) {
      try {
        await stream(
          "/stats/vms",
          (kind, data) => {
            if (kind === "vms") {
              problem.hidden = true;
              state.vms = data.vms;
              render();
            } else if (kind === "error") {
              problem.hidden = false;
              problem.textContent = `${data.message} (${data.details?.reason ?? data.error})`;
            }
            return true;
          },
          view.abort.signal,
        );
      } catch (exc) {
        if (exc.name === "AbortError") return;
        problem.hidden = false;
        problem.textContent = explain(exc);
      }
      await new Promise((resolve) => setTimeout(resolve, 2000));
    }
  };
  watch();
}

async function bulk(main, view, action, names) {
  const list = main.querySelector("#activity");
  main.querySelector("#activity-card").hidden = false;
  await Promise.all(
    names.map(async (name) => {
      const item = el(`<li data-action="${action}" data-target="${esc(name)}">${esc(action)} ${esc(name)}: <span class="job-status">sending…</span></li>`);
      list.prepend(item);
      const status = item.querySelector(".job-status");
      try {
        const job = await api("POST", `/vms/${encodeURIComponent(name)}/${action}`, {});
        await followJob(job.job_id, item, view.abort.signal);
      } catch (exc) {
        if (exc.name === "AbortError") return;
        status.innerHTML = `<span class="refused">${esc(explain(exc))}</span>`;
        status.dataset.status = `HTTP ${exc.status}`;
      }
    }),
  );
}
