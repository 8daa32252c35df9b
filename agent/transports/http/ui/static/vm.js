// One VM: devices, snapshots, live stats, and the actions its state allows (the API's
// `actions`); pressing one creates the job and shows its live events until it ends.
import { api, can, el, esc, every, explain, followJob, rate } from "./app.js";

export async function vmView(main, view, name) {
  const path = `/vms/${encodeURIComponent(name)}`;
  main.replaceChildren(
    el(`<section>
      <h1><a href="/ui/vms" data-nav>VMs</a> / ${esc(name)} <span id="vm-state"></span></h1>
      <div class="toolbar" id="vm-actions"></div>
      <div class="card" id="job" hidden>
        <h2>Job <code class="job-id"></code> <span class="job-status"></span></h2>
        <div class="events"></div>
      </div>
      <div class="grid">
        <div class="card"><h2>Usage</h2><dl class="facts" id="vm-stats"></dl></div>
        <div class="card"><h2>Configuration</h2><dl class="facts" id="vm-facts"></dl></div>
      </div>
      <div class="card"><h2>Disks</h2><table id="vm-disks"></table></div>
      <div class="card"><h2>Network interfaces</h2><table id="vm-nics"></table></div>
      <div class="card"><h2>Snapshots</h2><table id="vm-snapshots"></table></div>
    </section>`),
  );
  let running = false; // a job of this page is being followed

  const act = async (action) => {
    const box = main.querySelector("#job");
    box.hidden = false;
    box.querySelector(".events").textContent = "";
    box.querySelector(".job-id").textContent = "";
    const status = box.querySelector(".job-status");
    status.textContent = "sending…";
    delete status.dataset.status;
    running = true;
    try {
      const job = await api("POST", `${path}/${action}`, {});
      box.querySelector(".job-id").textContent = `${action} ${job.job_id}`;
      await followJob(job.job_id, box, view.abort.signal);
    } catch (exc) {
      if (exc.name === "AbortError") return;
      status.innerHTML = `<span class="refused">${esc(explain(exc))}</span>`;
      status.dataset.status = `HTTP ${exc.status}`;
    } finally {
      running = false;
    }
    await refresh();
  };

  const render = (vm) => {
    main.querySelector("#vm-state").innerHTML = `<span class="state ${esc(vm.state)}" data-state>${esc(vm.state)}</span>`;
    const allowed = can("submit");
    const actions = main.querySelector("#vm-actions");
    actions.replaceChildren(
      ...vm.actions.map((action) => {
        const button = el(`<button data-action="${esc(action)}">${esc(action)}</button>`);
        if (!allowed) {
          button.disabled = true;
          button.title = "needs a token with the submit scope";
        }
        button.addEventListener("click", () => act(action));
        return button;
      }),
      el(`<span class="spacer"></span>`),
      el(`<a href="/ui/vms/${encodeURIComponent(vm.name)}/console" data-nav id="open-console">Console</a>`),
    );
    const stats = vm.stats;
    main.querySelector("#vm-stats").innerHTML = stats
      ? `<dt>CPU</dt><dd>${stats.cpu_percent.toFixed(1)}% of ${vm.vcpus} vCPU</dd>
         <dt>Disk</dt><dd>read ${rate(stats.disk_read_bytes_per_second)}, write ${rate(stats.disk_write_bytes_per_second)}</dd>
         <dt>Network</dt><dd>in ${rate(stats.net_rx_bytes_per_second)}, out ${rate(stats.net_tx_bytes_per_second)}</dd>
         <dt>CPU time</dt><dd>${(stats.cpu_time_ns / 1e9).toFixed(1)} s</dd>`
      : `<dt>Usage</dt><dd class="muted">only while it runs</dd>`;
    main.querySelector("#vm-facts").innerHTML = `
      <dt>UUID</dt><dd>${esc(vm.uuid)}</dd>
      <dt>vCPUs</dt><dd>${vm.vcpus}</dd>
      <dt>Memory</dt><dd>${Math.round(vm.memory_kib / 1024)} MiB of ${Math.round(vm.max_memory_kib / 1024)} MiB</dd>
      <dt>Persistent</dt><dd>${vm.persistent ? "yes" : "no"}</dd>
      <dt>Autostart</dt><dd>${vm.autostart ? "yes" : "no"}</dd>
      <dt>Graphics</dt><dd>${vm.graphics.map((g) => `${esc(g.type)}${g.port ? ` :${g.port}` : ""}`).join(", ") || "none"}</dd>`;
    main.querySelector("#vm-disks").innerHTML =
      `<tr><th>Target</th><th>Device</th><th>Bus</th><th>Format</th><th>Source</th></tr>` +
      vm.disks.map((d) => `<tr><td>${esc(d.target)}</td><td>${esc(d.device)}</td><td>${esc(d.bus)}</td><td>${esc(d.format)}</td><td>${esc(d.source)}</td></tr>`).join("");
    main.querySelector("#vm-nics").innerHTML =
      `<tr><th>MAC</th><th>Type</th><th>Source</th><th>Model</th><th>Device</th></tr>` +
      vm.nics.map((n) => `<tr><td>${esc(n.mac)}</td><td>${esc(n.type)}</td><td>${esc(n.source)}</td><td>${esc(n.model)}</td><td>${esc(n.target)}</td></tr>`).join("");
    main.querySelector("#vm-snapshots").innerHTML =
      `<tr><th>Name</th><th>State</th><th>Created</th><th>Description</th></tr>` +
      (vm.snapshots.map((s) => `<tr><td>${esc(s.name)}${s.current ? " (current)" : ""}</td><td>${esc(s.state)}</td><td>${s.created ? new Date(s.created * 1000).toLocaleString() : ""}</td><td>${esc(s.description)}</td></tr>`).join("") || `<tr><td colspan="4" class="muted">none</td></tr>`);
  };

  const refresh = async () => {
    render(await api("GET", `${path}?window_seconds=0.5`));
  };
  await refresh();
  every(2, async () => {
    if (!running) await refresh();
  });
}
