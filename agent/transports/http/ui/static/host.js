// Jobs and host: recent jobs with failures first and a job's logs live; the host's
// stats, health (with reasons), capabilities and policy; templates and VMs from them.
import { api, bytes, can, el, esc, every, explain, followJob } from "./app.js";

export async function hostView(main, view) {
  const submit = can("submit") ? "" : "disabled title='needs a token with the submit scope'";
  main.replaceChildren(
    el(`<section>
      <h1>Jobs and host</h1>
      <div class="grid">
        <div class="card"><h2>Recent jobs <span class="muted">(failures first)</span></h2>
          <table id="jobs"></table></div>
        <div class="card" id="job-detail"><h2>Job <code class="job-id muted">pick one</code> <span class="job-status"></span></h2>
          <div class="events" id="job-logs"></div></div>
      </div>
      <div class="grid">
        <div class="card"><h2>Host</h2><dl class="facts" id="host-facts"></dl></div>
        <div class="card"><h2>Usage</h2><dl class="facts" id="host-stats"></dl></div>
        <div class="card"><h2>Health <span id="health-status"></span></h2><table id="health"></table></div>
      </div>
      <div class="card"><h2>Templates</h2>
        <table id="templates"></table>
        <form id="template-form" class="toolbar">
          <input name="name" placeholder="name" required pattern="[A-Za-z0-9][A-Za-z0-9._+-]{0,63}">
          <input name="os_distro" placeholder="os (debian)">
          <input name="os_version" placeholder="version (12)">
          <label>CPUs <input name="cpus" type="number" min="1" value="1" style="width:4em"></label>
          <label>MiB <input name="memory" type="number" min="16" value="1024" style="width:6em"></label>
          <label>Disk GB <input name="disk" type="number" min="1" value="10" style="width:5em"></label>
          <input name="storagepool" placeholder="pool (default)">
          <input name="networks" placeholder="networks (default)">
          <input name="cdrom" placeholder="cdrom: /path.iso or pool/volume">
          <button type="submit" ${submit}>Add template</button>
          <button type="button" id="template-cancel" hidden>Cancel edit</button>
          <span id="template-result"></span>
        </form>
        <div id="template-job" hidden><span class="job-id"></span> <span class="job-status"></span></div>
      </div>
      <div class="grid">
        <div class="card"><h2>Capabilities</h2><dl class="facts" id="capabilities"></dl></div>
        <div class="card"><h2>Policy in effect</h2><dl class="facts" id="policy"></dl></div>
      </div>
    </section>`),
  );

  const detail = main.querySelector("#job-detail");
  let followed = null;
  const showJob = async (jobId) => {
    if (followed) followed.abort();
    followed = new AbortController();
    view.abort.signal.addEventListener("abort", () => followed.abort());
    detail.querySelector(".job-id").textContent = jobId;
    const logs = detail.querySelector("#job-logs");
    logs.textContent = "";
    const past = await api("GET", `/jobs/${encodeURIComponent(jobId)}/logs`);
    for (const entry of past.logs) logs.append(`${entry.at} ${entry.type}: ${entry.message ?? entry.percent ?? ""}\n`);
    await followJob(jobId, detail, followed.signal);
  };

  const jobs = async () => {
    const [failed, recent] = await Promise.all([
      api("GET", "/jobs?status=Failed&order=newest&limit=20"),
      api("GET", "/jobs?order=newest&limit=50"),
    ]);
    const seen = new Set();
    const rows = [...failed.jobs, ...recent.jobs].filter((job) => !seen.has(job.job_id) && seen.add(job.job_id));
    main.querySelector("#jobs").innerHTML =
      `<tr><th>Job</th><th>Operation</th><th>Status</th><th>Submitted</th><th>Error</th></tr>` +
      rows
        .map((job) => `<tr class="${job.status === "Failed" ? "failed" : ""}" data-job="${esc(job.job_id)}">
          <td><a href="#" data-show="${esc(job.job_id)}">${esc(job.job_id.slice(0, 18))}</a></td>
          <td>${esc(job.operation)}</td><td><span class="state ${esc(job.status)}">${esc(job.status)}</span></td>
          <td>${esc(job.submitted_at.replace("T", " ").slice(0, 19))}</td>
          <td class="error">${esc((job.error || "").slice(0, 80))}</td></tr>`)
        .join("");
  };
  main.querySelector("#jobs").addEventListener("click", (event) => {
    const link = event.target.closest("a[data-show]");
    if (!link) return;
    event.preventDefault();
    showJob(link.dataset.show).catch((exc) => {
      if (exc.name !== "AbortError") detail.querySelector(".job-status").textContent = explain(exc);
    });
  });

  const host = async () => {
    const [facts, stats] = await Promise.all([api("GET", "/host"), api("GET", "/host/stats?window_seconds=0.5")]);
    main.querySelector("#host-facts").innerHTML = `
      <dt>Hostname</dt><dd>${esc(facts.hostname)}</dd><dt>Worker</dt><dd>${esc(facts.worker_id)}</dd>
      <dt>OS</dt><dd>${esc(facts.os)} (${esc(facts.kernel)})</dd>
      <dt>CPU</dt><dd>${facts.cpus} × ${esc(facts.cpu_model)}</dd><dt>Memory</dt><dd>${bytes(facts.memory_bytes)}</dd>
      <dt>Hypervisor</dt><dd>${esc(facts.hypervisor)} ${esc(facts.hypervisor_version)} (libvirt ${esc(facts.libvirt_version)}, ${esc(facts.libvirt_uri)})</dd>`;
    main.querySelector("#host-stats").innerHTML = `
      <dt>CPU</dt><dd>${stats.cpu_percent.toFixed(1)}% of ${stats.cpus}</dd>
      <dt>Load</dt><dd>${stats.load_average.map((n) => n.toFixed(2)).join(" ")}</dd>
      <dt>Memory</dt><dd>${bytes(stats.memory.used_bytes)} of ${bytes(stats.memory.total_bytes)} (${stats.memory.percent.toFixed(0)}%)</dd>
      ${stats.disks.map((d) => `<dt>${esc(d.role)}</dt><dd>${bytes(d.used_bytes)} of ${bytes(d.total_bytes)} (${d.percent.toFixed(0)}%) ${esc(d.path)}</dd>`).join("")}`;
  };

  const health = async () => {
    let report;
    try {
      report = await api("GET", "/health");
    } catch (exc) {
      if (exc.status !== 503 || !exc.doc.components) throw exc;
      report = exc.doc; // unhealthy answers 503 with the same report
    }
    report = report.components ? report : report.data || report;
    main.querySelector("#health-status").innerHTML = `<span class="pill">${esc(report.status)}</span>`;
    main.querySelector("#health").innerHTML =
      `<tr><th>Component</th><th>Status</th><th>Why</th></tr>` +
      Object.entries(report.components)
        .map(([name, c]) => `<tr data-component="${esc(name)}"><td>${esc(name)}</td><td>${esc(c.status)}</td><td>${esc(c.reason || c.message || "")}</td></tr>`)
        .join("");
  };

  const templates = async () => {
    const found = await api("GET", "/templates");
    main.querySelector("#templates").innerHTML =
      `<tr><th>Name</th><th>OS</th><th>CPUs</th><th>Memory</th><th>Disks</th><th>Pool</th><th>Networks</th><th></th></tr>` +
      (found.templates
        .map((t) => `<tr data-template="${esc(t.name)}"><td>${esc(t.name)}</td><td>${esc(t.os_distro)} ${esc(t.os_version)}</td>
          <td>${t.cpus}</td><td>${t.memory} MiB</td>
          <td>${t.disks.map((d) => (d.size ? `${d.size} GB` : `copy of ${esc(d.volume)}`)).join(", ")}</td>
          <td>${esc(t.storagepool)}</td><td>${esc(t.networks.join(", "))}</td>
          <td><input data-vm-name placeholder="VM name (optional)"> <button data-create="${esc(t.name)}" ${submit}>Create VM</button>
              <button data-edit="${esc(t.name)}" ${submit}>Edit</button>
              <button data-delete="${esc(t.name)}" ${submit}>Delete</button></td></tr>`)
        .join("") || `<tr><td colspan="8" class="muted">none yet</td></tr>`);
  };

  // The form adds a template, or (after a row's Edit) replaces one with PUT: the
  // template as the agent has it, with the form's fields over it, so what the form
  // does not show (folder, icon, graphics, further disks) is kept.
  const templateForm = main.querySelector("#template-form");
  const cancelEdit = main.querySelector("#template-cancel");
  let editing = null;
  const editMode = (template) => {
    editing = template;
    const field = (key) => templateForm.elements[key];
    templateForm.dataset.editing = template ? template.name : "";
    if (!template) delete templateForm.dataset.editing;
    field("name").readOnly = !!template;
    templateForm.querySelector("button[type=submit]").textContent = template ? "Save template" : "Add template";
    cancelEdit.hidden = !template;
    const first = template?.disks.find((d) => d.index === 0) ?? template?.disks[0];
    field("disk").disabled = !!template && !first?.size; // a copied volume: no size to edit
    if (!template) {
      templateForm.reset();
      return;
    }
    field("name").value = template.name;
    field("os_distro").value = template.os_distro === "unknown" ? "" : template.os_distro;
    field("os_version").value = template.os_version === "unknown" ? "" : template.os_version;
    field("cpus").value = template.cpus;
    field("memory").value = template.memory;
    field("disk").value = first?.size ?? "";
    field("storagepool").value = template.storagepool;
    field("networks").value = template.networks.join(", ");
    field("cdrom").value = template.cdrom ?? "";
    field("os_distro").focus();
  };
  cancelEdit.addEventListener("click", () => {
    editMode(null);
    main.querySelector("#template-result").textContent = "";
  });
  templateForm.addEventListener("submit", async (event) => {
    event.preventDefault();
    const form = new FormData(event.target);
    const text = (key, fallback) => (form.get(key) || "").trim() || fallback;
    const fields = {
      name: text("name"),
      os_distro: text("os_distro", "unknown"),
      os_version: text("os_version", "unknown"),
      cpus: Number(form.get("cpus")),
      memory: Number(form.get("memory")),
      storagepool: text("storagepool", "default"),
      networks: text("networks", "default").split(",").map((n) => n.trim()).filter(Boolean),
    };
    const result = main.querySelector("#template-result");
    try {
      if (editing) {
        const { created_at, updated_at, ...kept } = editing; // the agent's, not the template's
        const body = { ...kept, ...fields, cdrom: text("cdrom") || null };
        const first = kept.disks.find((d) => d.index === 0) ?? kept.disks[0];
        if (first?.size && form.has("disk")) {
          body.disks = kept.disks.map((d) => (d === first ? { ...d, size: Number(form.get("disk")) } : d));
        }
        await api("PUT", `/templates/${encodeURIComponent(editing.name)}`, body);
        result.innerHTML = `<span class="ok">saved ${esc(body.name)}</span>`;
        editMode(null);
      } else {
        const body = { ...fields, disks: [{ index: 0, size: Number(form.get("disk")) }] };
        if (text("cdrom")) body.cdrom = text("cdrom");
        await api("POST", "/templates", body);
        result.innerHTML = `<span class="ok">added ${esc(body.name)}</span>`;
      }
      await templates();
    } catch (exc) {
      result.innerHTML = `<span class="error">${esc(explain(exc))}</span>`;
    }
  });
  main.querySelector("#templates").addEventListener("click", async (event) => {
    const edit = event.target.closest("button[data-edit]");
    if (edit) {
      const result = main.querySelector("#template-result");
      try {
        editMode(await api("GET", `/templates/${encodeURIComponent(edit.dataset.edit)}`));
        result.innerHTML = `<span class="muted">editing ${esc(edit.dataset.edit)}</span>`;
      } catch (exc) {
        if (exc.name !== "AbortError") result.innerHTML = `<span class="error">${esc(explain(exc))}</span>`;
      }
      return;
    }
    const create = event.target.closest("button[data-create]");
    const remove = event.target.closest("button[data-delete]");
    if (!create && !remove) return;
    const box = main.querySelector("#template-job");
    box.hidden = false;
    const status = box.querySelector(".job-status");
    delete status.dataset.status;
    box.querySelector("a")?.remove();
    try {
      if (create) {
        const name = create.parentElement.querySelector("[data-vm-name]").value.trim();
        const body = { template: create.dataset.create };
        if (name) body.name = name;
        status.textContent = "sending…";
        const job = await api("POST", "/vms", body);
        box.querySelector(".job-id").textContent = `vm.create ${job.job_id}`;
        if ((await followJob(job.job_id, box, view.abort.signal)) === "Completed" && name) {
          box.append(el(`<a href="/ui/vms/${encodeURIComponent(name)}" data-nav> open ${esc(name)}</a>`));
        }
        await jobs();
      } else if (remove) {
        await api("DELETE", `/templates/${encodeURIComponent(remove.dataset.delete)}`);
        status.textContent = `deleted ${remove.dataset.delete}`;
        await templates();
      }
    } catch (exc) {
      if (exc.name !== "AbortError") status.innerHTML = `<span class="refused">${esc(explain(exc))}</span>`;
    }
  });

  const capabilities = async () => {
    const caps = await api("GET", "/capabilities");
    main.querySelector("#capabilities").innerHTML = `
      <dt>Worker</dt><dd>${esc(caps.worker_id)}</dd>
      <dt>Hypervisor</dt><dd>${esc(typeof caps.hypervisor === "object" && caps.hypervisor ? Object.entries(caps.hypervisor).map(([k, v]) => `${k} ${v}`).join(", ") : caps.hypervisor)}</dd>
      <dt>Features</dt><dd>${esc(caps.features.join(", "))}</dd>
      <dt>Disk formats</dt><dd>${esc(caps.disk_formats.join(", "))}</dd>
      <dt>Jobs at once</dt><dd>${caps.max_concurrent_jobs}</dd>
      <dt>Operations</dt><dd>${esc(caps.operations.join(", "))}</dd>`;
  };
  const policy = async () => {
    const [found, allow] = await Promise.all([
      api("GET", "/policy/paths"),
      api("GET", "/policy").catch(() => null), // the operation allowlist, where served
    ]);
    const rules = allow && allow.rules.length
      ? allow.rules.map((r) => `${esc(r.rule)}${r.name ? ` (${esc(r.name)})` : ""}: ${esc(r.operations.join(", "))}` +
          `${r.transports.length ? ` via ${esc(r.transports.join(", "))}` : ""}${r.tokens.length ? ` for ${esc(r.tokens.join(", "))}` : ""}`).join("<br>")
      : "none: every caller keeps its scopes";
    main.querySelector("#policy").innerHTML = `
      <dt>Image roots</dt><dd>${esc(found.image_roots.join(", "))}</dd>
      <dt>Pool roots</dt><dd>${esc(found.pool_roots.join(", ") || "none")}</dd>
      <dt>Passthrough</dt><dd>${found.allow_passthrough ? "allowed for admin tokens" : "refused"}</dd>
      <dt>Max disk</dt><dd>${found.max_disk_size_gb} GB</dd>
      <dt>Allowlist</dt><dd id="allowlist">${rules}</dd>`;
  };

  const guard = (fn, where) => fn().catch((exc) => {
    if (exc.name !== "AbortError") main.querySelector(where).innerHTML = `<p class="error">${esc(explain(exc))}</p>`;
  });
  await Promise.all([guard(jobs, "#jobs"), guard(templates, "#templates"), guard(capabilities, "#capabilities"), guard(policy, "#policy")]);
  every(2, host);
  every(2, health);
  every(5, jobs);
}
