"""The resource view's storage pools, volumes and networks over HTTP (see resources.py)."""

from __future__ import annotations

from quart import Response

from agent.handlers.network import NetworkDefinePayload
from agent.handlers.storage import PoolDefinePayload
from agent.transports.http.api import ok_model
from agent.transports.http.resource_kit import (
    READ_ERRORS,
    View,
    act,
    add_action,
    add_read,
    parse_body,
    parse_query,
    resource_view,
)
from agent.view.actions import (
    NETWORK_ACTIONS,
    NETWORK_DELETE,
    POOL_ACTIONS,
    POOL_DELETE,
    VOLUME_ACTIONS,
    VOLUME_CREATE,
    VOLUME_DELETE,
    Action,
)
from agent.view.models import (
    NetworkInfo,
    NetworkList,
    PoolDeleteQuery,
    PoolInfo,
    PoolList,
    VolumeCreateBody,
    VolumeInfo,
    VolumeList,
)

# --- storage pools and volumes ---


async def _pools() -> Response:
    return ok_model(await resource_view().pools())


async def _pool(name: str) -> Response:
    return ok_model(await resource_view().pool(name))


async def _pool_state(name: str) -> str:
    return (await resource_view().pool(name)).state


async def _pool_define() -> Response:
    payload = await parse_body(PoolDefinePayload)
    return await act(_DEFINE_POOL, "pool", payload.name, None, payload.model_dump(mode="json"))


_DEFINE_POOL = Action("define", "storage.pool.define", "Define a directory pool", frozenset())


async def _pool_delete(name: str) -> Response:
    options = parse_query(PoolDeleteQuery)
    data = {"name": name, **options.model_dump()}
    return await act(POOL_DELETE, "pool", name, lambda: _pool_state(name), data)


def _pool_action(action: Action) -> View:
    async def view(name: str) -> Response:
        return await act(action, "pool", name, lambda: _pool_state(name), {"name": name})

    return view


async def _volumes(pool: str) -> Response:
    return ok_model(await resource_view().volumes(pool))


async def _volume(pool: str, name: str) -> Response:
    return ok_model(await resource_view().volume(pool, name))


async def _volume_create(pool: str) -> Response:
    body = (await parse_body(VolumeCreateBody)).model_dump()
    return await act(VOLUME_CREATE, "pool", pool, lambda: _pool_state(pool), {"pool": pool, **body})


async def _volume_in_running_pool(pool: str, name: str) -> str:
    pool_state = await _pool_state(pool)
    if pool_state == "running":
        await resource_view().volume(pool, name)  # 404 for a volume that is not there
    return pool_state


async def _volume_delete(pool: str, name: str) -> Response:
    return await act(
        VOLUME_DELETE,
        "the pool of volume",
        f"{pool}/{name}",
        lambda: _volume_in_running_pool(pool, name),
        {"pool": pool, "name": name},
    )


def _volume_action(action: Action) -> View:
    async def view(pool: str, name: str) -> Response:
        body = (await parse_body(action.body)).model_dump(exclude_none=True)
        return await act(
            action,
            "the pool of volume",
            f"{pool}/{name}",
            lambda: _volume_in_running_pool(pool, name),
            {**body, "pool": pool, "name": name},
        )

    return view


add_read(
    "/storagepools",
    "pool_list",
    _pools,
    "Storage pools with state and space",
    answer=PoolList,
    errors=READ_ERRORS,
)
add_action(
    "POST", "/storagepools", "pool_define", _pool_define, _DEFINE_POOL, body=PoolDefinePayload
)
add_read(
    "/storagepools/<name>",
    "pool_detail",
    _pool,
    "One pool: type, path, space, volumes",
    answer=PoolInfo,
    errors=READ_ERRORS,
)
add_action(
    "DELETE",
    "/storagepools/<name>",
    "pool_undefine",
    _pool_delete,
    POOL_DELETE,
    query=PoolDeleteQuery,
    body=None,
)
for _action in POOL_ACTIONS.values():
    add_action(
        "POST",
        f"/storagepools/<name>/{_action.name}",
        f"pool_{_action.name}",
        _pool_action(_action),
        _action,
    )
add_read(
    "/storagepools/<pool>/volumes",
    "volume_list",
    _volumes,
    "The volumes of a pool",
    answer=VolumeList,
    errors=(*READ_ERRORS, 409),
)
add_action(
    "POST",
    "/storagepools/<pool>/volumes",
    "volume_create",
    _volume_create,
    VOLUME_CREATE,
    body=VolumeCreateBody,
)
add_read(
    "/storagepools/<pool>/volumes/<name>",
    "volume_detail",
    _volume,
    "One volume",
    answer=VolumeInfo,
    errors=(*READ_ERRORS, 409),
)
add_action(
    "DELETE",
    "/storagepools/<pool>/volumes/<name>",
    "volume_delete",
    _volume_delete,
    VOLUME_DELETE,
    body=None,
)
for _action in VOLUME_ACTIONS.values():
    add_action(
        "POST",
        f"/storagepools/<pool>/volumes/<name>/{_action.name}",
        f"volume_{_action.name}",
        _volume_action(_action),
        _action,
    )


# --- networks ---


async def _networks() -> Response:
    return ok_model(await resource_view().networks())


async def _network(name: str) -> Response:
    return ok_model(await resource_view().network(name))


async def _network_state(name: str) -> str:
    return (await resource_view().network(name)).state


async def _network_define() -> Response:
    payload = await parse_body(NetworkDefinePayload)
    data = payload.model_dump(mode="json", exclude_none=True)
    return await act(_DEFINE_NETWORK, "network", payload.name, None, data)


_DEFINE_NETWORK = Action("define", "network.define", "Define a virtual network", frozenset())


async def _network_delete(name: str) -> Response:
    return await act(NETWORK_DELETE, "network", name, lambda: _network_state(name), {"name": name})


def _network_action(action: Action) -> View:
    async def view(name: str) -> Response:
        body = (await parse_body(action.body)).model_dump(exclude_none=True)
        return await act(
            action, "network", name, lambda: _network_state(name), {**body, "name": name}
        )

    return view


add_read(
    "/networks",
    "network_list",
    _networks,
    "Virtual networks",
    answer=NetworkList,
    errors=READ_ERRORS,
)
add_action(
    "POST",
    "/networks",
    "network_define",
    _network_define,
    _DEFINE_NETWORK,
    body=NetworkDefinePayload,
)
add_read(
    "/networks/<name>",
    "network_detail",
    _network,
    "One network",
    answer=NetworkInfo,
    errors=READ_ERRORS,
)
add_action(
    "DELETE", "/networks/<name>", "network_undefine", _network_delete, NETWORK_DELETE, body=None
)
for _action in NETWORK_ACTIONS.values():
    add_action(
        "POST",
        f"/networks/<name>/{_action.name}",
        f"network_{_action.name}",
        _network_action(_action),
        _action,
    )
