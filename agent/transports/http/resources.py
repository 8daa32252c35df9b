"""The resource view over HTTP (Kimchi/Concertim style): nouns to read, verbs that become jobs.

Reads answer directly from libvirt (`read` scope). Every action (`submit`
scope) is checked against the resource's current state, so one that does
not fit is refused with 409 before any job exists, and is then submitted
through the intake like any job: 202, `Location: /api/v1/jobs/{id}`, the
job's status; an `Idempotency-Key` header becomes the job_id, so a retried
POST is the same job.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pydantic
from pydantic import BaseModel
from quart import Response, request

from agent.errors import BadRequestError, NotFoundError, UnavailableError, ValidationError
from agent.handlers.network import NetworkDefinePayload
from agent.handlers.storage import PoolDefinePayload
from agent.handlers.vm import DefinePayload
from agent.jobs import JOB_ID_PATTERN, raise_validation_error
from agent.resource_actions import (
    NETWORK_ACTIONS,
    NETWORK_DELETE,
    POOL_ACTIONS,
    POOL_DELETE,
    VM_ACTIONS,
    VM_UNDEFINE,
    VM_UNDEFINE_FORCED,
    VOLUME_ACTIONS,
    VOLUME_CREATE,
    VOLUME_DELETE,
    Action,
    job_document,
)
from agent.resource_models import (
    HostFacts,
    HostStats,
    NetworkInfo,
    NetworkList,
    PoolDeleteQuery,
    PoolInfo,
    PoolList,
    VmDeleteQuery,
    VmDetail,
    VmList,
    VmListQuery,
    VolumeCreateBody,
    VolumeInfo,
    VolumeList,
    WindowQuery,
)
from agent.resources import ResourceView
from agent.transports.http.api import API, Route, ok_model, require_accepting, state, submitted
from agent.transports.http.models import Submitted

ModelT = TypeVar("ModelT", bound=BaseModel)
View = Callable[..., Awaitable[Response]]

_READ_ERRORS = (401, 403, 404, 503)
_ACT_ERRORS = (400, 401, 403, 404, 409, 413, 503)
_JOB_ID = re.compile(JOB_ID_PATTERN)

ROUTES: list[Route] = []


def _view() -> ResourceView:
    found = getattr(state().intake, "resources", None)
    if not isinstance(found, ResourceView):
        raise UnavailableError("This agent serves no resource view", reason="not_configured")
    return found


def _query(model: type[ModelT]) -> ModelT:
    try:
        return model.model_validate(request.args.to_dict())
    except pydantic.ValidationError as exc:
        raise_validation_error(exc)
    raise AssertionError("unreachable")


async def _body(model: type[ModelT]) -> ModelT:
    """The request body as `model`; no body at all means its defaults."""
    data = await request.get_data(cache=True)
    try:
        raw = json.loads(data) if data.strip() else {}
    except ValueError as exc:
        raise BadRequestError(
            "The request body is not valid JSON", field="body", reason=str(exc)
        ) from exc
    try:
        return model.model_validate(raw)
    except pydantic.ValidationError as exc:
        raise_validation_error(exc, prefix="body")
    raise AssertionError("unreachable")


def _idempotency_key() -> str | None:
    key = request.headers.get("Idempotency-Key")
    if key is not None and not _JOB_ID.match(key):
        raise ValidationError(
            "Invalid Idempotency-Key",
            field="Idempotency-Key",
            reason=f"It becomes the job_id: it must match {JOB_ID_PATTERN}",
        )
    return key


async def _act(
    action: Action,
    kind: str,
    name: str,
    current: Callable[[], Awaitable[str]] | None,
    data: dict[str, Any],
) -> Response:
    """Check `action` against the state `current()` reads, then submit its job: 202."""
    api = state()
    require_accepting(api.intake)
    key = _idempotency_key()
    retried = False
    if key is not None:
        try:
            await api.intake.status(key)
            retried = True
        except NotFoundError:
            pass
    # A retry is answered by its job whatever the state is now (the job may have changed it).
    if current is not None and not retried:
        action.check(kind, name, await current())
    document = job_document(action.operation, {**data, **action.fixed}, key)
    answer = submitted(await api.intake.submit(document, transport="http"))
    response = ok_model(answer, 202)
    response.headers["Location"] = f"{API}/jobs/{answer.job_id}"
    return response


def _add(method: str, rule: str, name: str, view: View, **spec: Any) -> None:
    view.__name__ = view.__qualname__ = name  # quart's endpoint name; unique per route
    ROUTES.append(Route(method=method, rule=f"{API}{rule}", view=view, **spec))


def _reads(rule: str, name: str, view: View, summary: str, **spec: Any) -> None:
    _add("GET", rule, name, view, scope="read", summary=summary, **spec)


def _acts(method: str, rule: str, name: str, view: View, action: Action, **spec: Any) -> None:
    spec.setdefault("body", action.body)
    _add(
        method,
        rule,
        name,
        view,
        scope="submit",
        summary=action.summary,
        status=202,
        answer=Submitted,
        errors=_ACT_ERRORS,
        idempotency_key=True,
        **spec,
    )


# --- VMs ---


async def _vms() -> Response:
    return ok_model(await _view().vms(_query(VmListQuery).state))


async def _vm(name: str) -> Response:
    return ok_model(await _view().vm(name, _query(WindowQuery).window_seconds))


async def _screenshot(name: str) -> Response:
    mime, image = await _view().screenshot(name)
    return Response(image, content_type=mime)


async def _vm_define() -> Response:
    payload = await _body(DefinePayload)
    data = payload.model_dump(mode="json", exclude_none=True)
    return await _act(_DEFINE_VM, "VM", payload.name, None, data)


_DEFINE_VM = Action("define", "vm.define", "Define (or redefine) a VM", frozenset())


async def _vm_delete(name: str) -> Response:
    options = _query(VmDeleteQuery)
    action = VM_UNDEFINE_FORCED if options.force else VM_UNDEFINE
    data = {"name": name, **options.model_dump()}
    return await _act(action, "VM", name, lambda: _view().vm_state(name), data)


def _vm_action(action: Action) -> View:
    async def view(name: str) -> Response:
        body = (await _body(action.body)).model_dump(exclude_none=True)
        return await _act(
            action, "VM", name, lambda: _view().vm_state(name), {**body, "name": name}
        )

    return view


_reads(
    "/vms",
    "vm_list",
    _vms,
    "VMs with state, vCPUs, memory",
    query=VmListQuery,
    answer=VmList,
    errors=(400, *_READ_ERRORS),
)
_acts("POST", "/vms", "vm_define", _vm_define, _DEFINE_VM, body=DefinePayload)
_reads(
    "/vms/<name>",
    "vm_detail",
    _vm,
    "One VM: devices, snapshots, stats over a window, actions",
    query=WindowQuery,
    answer=VmDetail,
    errors=(400, *_READ_ERRORS),
)
_acts(
    "DELETE", "/vms/<name>", "vm_undefine", _vm_delete, VM_UNDEFINE, query=VmDeleteQuery, body=None
)
_reads(
    "/vms/<name>/screenshot",
    "vm_screenshot",
    _screenshot,
    "The VM's screen (PNG)",
    raw="image/png",
    errors=(*_READ_ERRORS, 409),
)
for _action in VM_ACTIONS.values():
    _acts("POST", f"/vms/<name>/{_action.name}", f"vm_{_action.name}", _vm_action(_action), _action)


# --- storage pools and volumes ---


async def _pools() -> Response:
    return ok_model(await _view().pools())


async def _pool(name: str) -> Response:
    return ok_model(await _view().pool(name))


async def _pool_state(name: str) -> str:
    return (await _view().pool(name)).state


async def _pool_define() -> Response:
    payload = await _body(PoolDefinePayload)
    return await _act(_DEFINE_POOL, "pool", payload.name, None, payload.model_dump(mode="json"))


_DEFINE_POOL = Action("define", "storage.pool.define", "Define a directory pool", frozenset())


async def _pool_delete(name: str) -> Response:
    options = _query(PoolDeleteQuery)
    data = {"name": name, **options.model_dump()}
    return await _act(POOL_DELETE, "pool", name, lambda: _pool_state(name), data)


def _pool_action(action: Action) -> View:
    async def view(name: str) -> Response:
        return await _act(action, "pool", name, lambda: _pool_state(name), {"name": name})

    return view


async def _volumes(pool: str) -> Response:
    return ok_model(await _view().volumes(pool))


async def _volume(pool: str, name: str) -> Response:
    return ok_model(await _view().volume(pool, name))


async def _volume_create(pool: str) -> Response:
    body = (await _body(VolumeCreateBody)).model_dump()
    return await _act(
        VOLUME_CREATE, "pool", pool, lambda: _pool_state(pool), {"pool": pool, **body}
    )


async def _volume_in_running_pool(pool: str, name: str) -> str:
    pool_state = await _pool_state(pool)
    if pool_state == "running":
        await _view().volume(pool, name)  # 404 for a volume that is not there
    return pool_state


async def _volume_delete(pool: str, name: str) -> Response:
    return await _act(
        VOLUME_DELETE,
        "the pool of volume",
        f"{pool}/{name}",
        lambda: _volume_in_running_pool(pool, name),
        {"pool": pool, "name": name},
    )


def _volume_action(action: Action) -> View:
    async def view(pool: str, name: str) -> Response:
        body = (await _body(action.body)).model_dump(exclude_none=True)
        return await _act(
            action,
            "the pool of volume",
            f"{pool}/{name}",
            lambda: _volume_in_running_pool(pool, name),
            {**body, "pool": pool, "name": name},
        )

    return view


_reads(
    "/storagepools",
    "pool_list",
    _pools,
    "Storage pools with state and space",
    answer=PoolList,
    errors=_READ_ERRORS,
)
_acts("POST", "/storagepools", "pool_define", _pool_define, _DEFINE_POOL, body=PoolDefinePayload)
_reads(
    "/storagepools/<name>",
    "pool_detail",
    _pool,
    "One pool: type, path, space, volumes",
    answer=PoolInfo,
    errors=_READ_ERRORS,
)
_acts(
    "DELETE",
    "/storagepools/<name>",
    "pool_undefine",
    _pool_delete,
    POOL_DELETE,
    query=PoolDeleteQuery,
    body=None,
)
for _action in POOL_ACTIONS.values():
    _acts(
        "POST",
        f"/storagepools/<name>/{_action.name}",
        f"pool_{_action.name}",
        _pool_action(_action),
        _action,
    )
_reads(
    "/storagepools/<pool>/volumes",
    "volume_list",
    _volumes,
    "The volumes of a pool",
    answer=VolumeList,
    errors=(*_READ_ERRORS, 409),
)
_acts(
    "POST",
    "/storagepools/<pool>/volumes",
    "volume_create",
    _volume_create,
    VOLUME_CREATE,
    body=VolumeCreateBody,
)
_reads(
    "/storagepools/<pool>/volumes/<name>",
    "volume_detail",
    _volume,
    "One volume",
    answer=VolumeInfo,
    errors=(*_READ_ERRORS, 409),
)
_acts(
    "DELETE",
    "/storagepools/<pool>/volumes/<name>",
    "volume_delete",
    _volume_delete,
    VOLUME_DELETE,
    body=None,
)
for _action in VOLUME_ACTIONS.values():
    _acts(
        "POST",
        f"/storagepools/<pool>/volumes/<name>/{_action.name}",
        f"volume_{_action.name}",
        _volume_action(_action),
        _action,
    )


# --- networks ---


async def _networks() -> Response:
    return ok_model(await _view().networks())


async def _network(name: str) -> Response:
    return ok_model(await _view().network(name))


async def _network_state(name: str) -> str:
    return (await _view().network(name)).state


async def _network_define() -> Response:
    payload = await _body(NetworkDefinePayload)
    data = payload.model_dump(mode="json", exclude_none=True)
    return await _act(_DEFINE_NETWORK, "network", payload.name, None, data)


_DEFINE_NETWORK = Action("define", "network.define", "Define a virtual network", frozenset())


async def _network_delete(name: str) -> Response:
    return await _act(NETWORK_DELETE, "network", name, lambda: _network_state(name), {"name": name})


def _network_action(action: Action) -> View:
    async def view(name: str) -> Response:
        body = (await _body(action.body)).model_dump(exclude_none=True)
        return await _act(
            action, "network", name, lambda: _network_state(name), {**body, "name": name}
        )

    return view


_reads(
    "/networks",
    "network_list",
    _networks,
    "Virtual networks",
    answer=NetworkList,
    errors=_READ_ERRORS,
)
_acts(
    "POST",
    "/networks",
    "network_define",
    _network_define,
    _DEFINE_NETWORK,
    body=NetworkDefinePayload,
)
_reads(
    "/networks/<name>",
    "network_detail",
    _network,
    "One network",
    answer=NetworkInfo,
    errors=_READ_ERRORS,
)
_acts("DELETE", "/networks/<name>", "network_undefine", _network_delete, NETWORK_DELETE, body=None)
for _action in NETWORK_ACTIONS.values():
    _acts(
        "POST",
        f"/networks/<name>/{_action.name}",
        f"network_{_action.name}",
        _network_action(_action),
        _action,
    )


# --- the host ---


async def _host() -> Response:
    return ok_model(await _view().host())


async def _host_stats() -> Response:
    return ok_model(await _view().host_stats(_query(WindowQuery).window_seconds))


_reads(
    "/host",
    "host_facts",
    _host,
    "This host: OS, CPU, memory, hypervisor",
    answer=HostFacts,
    errors=(401, 403),
)
_reads(
    "/host/stats",
    "host_stats",
    _host_stats,
    "CPU % over a window, load, memory, disk use of the state, spool and image dirs",
    query=WindowQuery,
    answer=HostStats,
    errors=(400, 401, 403),
)
