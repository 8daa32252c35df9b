"""libvirt's vocabulary for the rest of the agent: state names, flags, the one
translation of libvirtError into HypervisorError, and lookups that name what
was not found. Functions here are blocking; they run inside
`LibvirtConnection.call`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import libvirt

from agent.errors import HypervisorError

T = TypeVar("T")

DOMAIN_STATES = {
    libvirt.VIR_DOMAIN_NOSTATE: "nostate",
    libvirt.VIR_DOMAIN_RUNNING: "running",
    libvirt.VIR_DOMAIN_BLOCKED: "blocked",
    libvirt.VIR_DOMAIN_PAUSED: "paused",
    libvirt.VIR_DOMAIN_SHUTDOWN: "shutdown",
    libvirt.VIR_DOMAIN_SHUTOFF: "shutoff",
    libvirt.VIR_DOMAIN_CRASHED: "crashed",
    libvirt.VIR_DOMAIN_PMSUSPENDED: "pmsuspended",
}
POOL_STATES = {
    libvirt.VIR_STORAGE_POOL_INACTIVE: "inactive",
    libvirt.VIR_STORAGE_POOL_BUILDING: "building",
    libvirt.VIR_STORAGE_POOL_RUNNING: "running",
    libvirt.VIR_STORAGE_POOL_DEGRADED: "degraded",
    libvirt.VIR_STORAGE_POOL_INACCESSIBLE: "inaccessible",
}
VOLUME_TYPES = {
    libvirt.VIR_STORAGE_VOL_FILE: "file",
    libvirt.VIR_STORAGE_VOL_BLOCK: "block",
    libvirt.VIR_STORAGE_VOL_DIR: "dir",
    libvirt.VIR_STORAGE_VOL_NETWORK: "network",
    libvirt.VIR_STORAGE_VOL_NETDIR: "netdir",
    libvirt.VIR_STORAGE_VOL_PLOOP: "ploop",
}
# Undefine removes what libvirt keeps beside the definition too, as `virsh undefine` does.
_UNDEFINE_BASIC = (
    libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
)
_UNDEFINE_ALL = (
    _UNDEFINE_BASIC
    | libvirt.VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA
    | libvirt.VIR_DOMAIN_UNDEFINE_NVRAM
)
# Listing domains by one property is one call, not one per domain (the resource view).
LIST_AUTOSTART = libvirt.VIR_CONNECT_LIST_DOMAINS_AUTOSTART
LIST_PERSISTENT = libvirt.VIR_CONNECT_LIST_DOMAINS_PERSISTENT
VOL_RESIZE_SHRINK = libvirt.VIR_STORAGE_VOL_RESIZE_SHRINK
WIPE_ALGORITHMS = {
    "zero": libvirt.VIR_STORAGE_VOL_WIPE_ALG_ZERO,
    "random": libvirt.VIR_STORAGE_VOL_WIPE_ALG_RANDOM,
}

_REASONS = {
    "not_found": (
        libvirt.VIR_ERR_NO_DOMAIN,
        libvirt.VIR_ERR_NO_STORAGE_POOL,
        libvirt.VIR_ERR_NO_STORAGE_VOL,
        libvirt.VIR_ERR_NO_DOMAIN_SNAPSHOT,
        libvirt.VIR_ERR_NO_NETWORK,
    ),
    "invalid_state": (libvirt.VIR_ERR_OPERATION_INVALID,),
    "unsupported": (
        libvirt.VIR_ERR_NO_SUPPORT,
        libvirt.VIR_ERR_ARGUMENT_UNSUPPORTED,
        libvirt.VIR_ERR_OPERATION_UNSUPPORTED,
        libvirt.VIR_ERR_CONFIG_UNSUPPORTED,
    ),
    "invalid_argument": (
        libvirt.VIR_ERR_INVALID_ARG,
        libvirt.VIR_ERR_XML_ERROR,
        libvirt.VIR_ERR_XML_DETAIL,
        libvirt.VIR_ERR_STORAGE_VOL_EXIST,
        libvirt.VIR_ERR_DOM_EXIST,
    ),
    "denied": (libvirt.VIR_ERR_OPERATION_DENIED, libvirt.VIR_ERR_AUTH_FAILED),
    "unavailable": (
        libvirt.VIR_ERR_NO_CONNECT,
        libvirt.VIR_ERR_RPC,
        libvirt.VIR_ERR_SYSTEM_ERROR,
        libvirt.VIR_ERR_INVALID_CONN,
    ),
}
_REASON_BY_CODE = {code: reason for reason, codes in _REASONS.items() for code in codes}


def translate(exc: libvirt.libvirtError) -> HypervisorError:
    """The agent's error for a libvirt one: libvirt's own message, a reason word, its code."""
    code = exc.get_error_code()
    message = exc.get_error_message() or str(exc)
    return HypervisorError(
        message,
        reason=_REASON_BY_CODE.get(code, "libvirt_error"),
        details={"libvirt_code": code},
    )


def _lookup(what: str, find: Callable[[], Any]) -> Any:
    try:
        return find()
    except libvirt.libvirtError as exc:
        error = translate(exc)
        if error.reason == "not_found":
            # Some drivers say only "Domain not found"; name what was looked for.
            raise HypervisorError(f"{what} not found", reason="not_found") from exc
        raise error from exc


def if_present(fn: Callable[[], T]) -> T | None:
    """fn(), or None when what it reads vanished meanwhile (blocking; inside `call`)."""
    try:
        return fn()
    except libvirt.libvirtError as exc:
        if _REASON_BY_CODE.get(exc.get_error_code()) == "not_found":
            return None
        raise


def lookup_domain(conn: Any, name: str | None, uuid: str | None) -> Any:
    """A virDomain by UUID (when given) or name (blocking; inside `call`)."""
    if uuid is not None:
        return _lookup(f"domain {uuid}", lambda: conn.lookupByUUIDString(uuid))
    return _lookup(f"domain {name!r}", lambda: conn.lookupByName(name))


def lookup_pool(conn: Any, name: str) -> Any:
    return _lookup(f"storage pool {name!r}", lambda: conn.storagePoolLookupByName(name))


def lookup_network(conn: Any, name: str) -> Any:
    return _lookup(f"network {name!r}", lambda: conn.networkLookupByName(name))


def lookup_volume(conn: Any, pool: str, name: str) -> Any:
    found = lookup_pool(conn, pool)
    return _lookup(f"volume {name!r} in pool {pool!r}", lambda: found.storageVolLookupByName(name))


def undefine_domain(dom: Any) -> None:
    """Undefine with its managed save, snapshot/checkpoint metadata and NVRAM (blocking)."""
    try:
        dom.undefineFlags(_UNDEFINE_ALL)
    except libvirt.libvirtError as exc:
        # Drivers without checkpoints or NVRAM (test://) refuse those flags as invalid.
        if exc.get_error_code() != libvirt.VIR_ERR_INVALID_ARG:
            raise
        dom.undefineFlags(_UNDEFINE_BASIC)


def volume_by_path(conn: Any, path: str) -> Any | None:
    """The volume libvirt manages at `path`, or None when it manages none there."""
    try:
        return conn.storageVolLookupByPath(path)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() == libvirt.VIR_ERR_NO_STORAGE_VOL:
            return None
        raise


def domain_state(dom: Any) -> str:
    state, _reason = dom.state()
    return DOMAIN_STATES.get(state, "unknown")
