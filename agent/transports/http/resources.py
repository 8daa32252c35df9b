"""The resource view over HTTP (Kimchi/Concertim style): nouns to read, verbs that become jobs.

Reads answer directly from libvirt (`read` scope). Every action (`submit`
scope) is checked against the resource's current state, so one that does
not fit is refused with 409 before any job exists, and is then submitted
through the intake like any job: 202, `Location: /api/v1/jobs/{id}`, the
job's status; an `Idempotency-Key` header becomes the job_id, so a retried
POST is the same job.
"""

from __future__ import annotations

from quart import Response, request

from agent.handlers.vm import DefinePayload
from agent.transports.http import templates
from agent.transports.http.api import ok_model
from agent.transports.http.resource_kit import (
    READ_ERRORS,
    ROUTES,
    View,
    act,
    add_action,
    add_read,
    parse_body,
    parse_query,
    resource_view,
)
from agent.transports.http.routes import json_body
from agent.view.actions import (
    VM_ACTIONS,
    VM_UNDEFINE,
    VM_UNDEFINE_FORCED,
    Action,
)
from agent.view.models import (
    HostFacts,
    HostStats,
    VmDeleteQuery,
    VmDetail,
    VmList,
    VmListQuery,
    WindowQuery,
)

# --- VMs ---


async def _vms() -> Response:
    return ok_model(await resource_view().vms(parse_query(VmListQuery).state))


async def _vm(name: str) -> Response:
    return ok_model(await resource_view().vm(name, parse_query(WindowQuery).window_seconds))


async def _screenshot(name: str) -> Response:
    mime, image = await resource_view().screenshot(name)
    return Response(image, content_type=mime)


async def _vm_define() -> Response:
    raw = await request.get_data(cache=True, as_text=False, parse_form_data=False)
    if raw.strip():
        body = json_body(raw, request.headers.get("Content-Type", ""))
        if isinstance(body, dict) and "template" in body:  # Kimchi's VM from a template
            return await templates.vm_from_template(body)
    payload = await parse_body(DefinePayload)
    data = payload.model_dump(mode="json", exclude_none=True)
    return await act(_DEFINE_VM, "VM", payload.name, None, data)


_DEFINE_VM = Action("define", "vm.define", "Define (or redefine) a VM", frozenset())


async def _vm_delete(name: str) -> Response:
    options = parse_query(VmDeleteQuery)
    action = VM_UNDEFINE_FORCED if options.force else VM_UNDEFINE
    data = {"name": name, **options.model_dump()}
    return await act(action, "VM", name, lambda: resource_view().vm_state(name), data)


def _vm_action(action: Action) -> View:
    async def view(name: str) -> Response:
        body = (await parse_body(action.body)).model_dump(exclude_none=True)
        return await act(
            action, "VM", name, lambda: resource_view().vm_state(name), {**body, "name": name}
        )

    return view


add_read(
    "/vms",
    "vm_list",
    _vms,
    "VMs with state, vCPUs, memory",
    query=VmListQuery,
    answer=VmList,
    errors=(400, *READ_ERRORS),
)
add_action(
    "POST",
    "/vms",
    "vm_define",
    _vm_define,
    _DEFINE_VM,
    body=templates.VmPostBody,
    summary="Define (or redefine) a VM; with {template, name?, storagepool?}: create one "
    "from a template (vm.create: its volumes, then its definition; 409 when the name exists)",
)
add_read(
    "/vms/<name>",
    "vm_detail",
    _vm,
    "One VM: devices, snapshots, stats over a window, actions",
    query=WindowQuery,
    answer=VmDetail,
    errors=(400, *READ_ERRORS),
)
add_action(
    "DELETE", "/vms/<name>", "vm_undefine", _vm_delete, VM_UNDEFINE, query=VmDeleteQuery, body=None
)
add_read(
    "/vms/<name>/screenshot",
    "vm_screenshot",
    _screenshot,
    "The VM's screen (PNG)",
    raw="image/png",
    errors=(*READ_ERRORS, 409),
)
for _action in VM_ACTIONS.values():
    add_action(
        "POST", f"/vms/<name>/{_action.name}", f"vm_{_action.name}", _vm_action(_action), _action
    )


# --- the host ---


async def _host() -> Response:
    return ok_model(await resource_view().host())


async def _host_stats() -> Response:
    return ok_model(await resource_view().host_stats(parse_query(WindowQuery).window_seconds))


add_read(
    "/host",
    "host_facts",
    _host,
    "This host: OS, CPU, memory, hypervisor",
    answer=HostFacts,
    errors=(401, 403),
)
add_read(
    "/host/stats",
    "host_stats",
    _host_stats,
    "CPU % over a window, load, memory, disk use of the state, spool and image dirs",
    query=WindowQuery,
    answer=HostStats,
    errors=(400, 401, 403),
)

# Pools, volumes and networks register their routes when imported.
from agent.transports.http import live, resources_storage  # noqa: E402, F401

__all__ = ["ROUTES"]
