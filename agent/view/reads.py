"""The resource view's reads: VMs, pools, volumes, networks and the host, answered
directly through the agent's one libvirt connection (no job).

Actions are not here: they become jobs (agent.view.actions). libvirt's
"not found" becomes NOT_FOUND (404), "not in a state for that" CONFLICT
(409) and a missing connection UNAVAILABLE (503), at this one boundary.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, TypeVar
from xml.etree import ElementTree as ET

import trio

from agent.config import Config
from agent.errors import ConflictError, HypervisorError, NotFoundError, UnavailableError
from agent.handlers.domain_xml import describe_devices
from agent.hypervisor import (
    DOMAIN_STATES,
    LIST_AUTOSTART,
    LIST_PERSISTENT,
    LibvirtConnection,
    domain_state,
    if_present,
    lookup_domain,
    lookup_network,
    lookup_pool,
    lookup_volume,
)
from agent.hypervisor.facts import version_text
from agent.hypervisor.summaries import (
    capture_screen,
    describe_snapshot,
    network_summary,
    pool_summary,
    volume_summary,
)
from agent.view import host_stats
from agent.view.actions import NETWORK_ACTIONS, POOL_ACTIONS, VM_ACTIONS, actions_in
from agent.view.live_stats import VmUsage
from agent.view.models import (
    DomainState,
    HostFacts,
    HostStats,
    NetworkInfo,
    NetworkList,
    PoolInfo,
    PoolList,
    VmDetail,
    VmList,
    VmStats,
    VmSummary,
    VolumeInfo,
    VolumeList,
)

T = TypeVar("T")


def _usable_name(kind: str, name: str) -> None:
    # libvirt's binding cannot even look up a name with NUL or a lone surrogate in it.
    try:
        name.encode()
    except UnicodeEncodeError:
        name = "\0"
    if "\0" in name or not name:
        raise NotFoundError(f"{kind} {name!r} not found", field="name", reason="not_found")


def _vm_summary(dom: Any, autostart: bool, persistent: bool) -> dict[str, Any]:
    state, max_kib, memory_kib, vcpus, _cpu = dom.info()
    domain_id = dom.ID()  # -1 while inactive
    return {
        "name": dom.name(),
        "uuid": dom.UUIDString(),
        "state": DOMAIN_STATES.get(state, "unknown"),
        "id": domain_id if domain_id >= 0 else None,
        "vcpus": vcpus,
        "memory_kib": memory_kib,
        "max_memory_kib": max_kib,
        "persistent": persistent,
        "autostart": autostart,
    }


def _list_vms(conn: Any) -> list[dict[str, Any]]:
    # Two listing calls instead of two calls per domain: 200 domains stay one round trip each.
    autostart = {dom.UUIDString() for dom in conn.listAllDomains(LIST_AUTOSTART)}
    persistent = {dom.UUIDString() for dom in conn.listAllDomains(LIST_PERSISTENT)}
    vms = []
    for dom in conn.listAllDomains(0):
        uuid = dom.UUIDString()
        # One undefined meanwhile is not listed.
        found = if_present(partial(_vm_summary, dom, uuid in autostart, uuid in persistent))
        if found is not None:
            vms.append(found)
    return vms


def _counters(conn: Any, dom: Any) -> tuple[float, int, int, int, int, int]:
    """(monotonic time, cpu ns, disk read, disk written, net rx, net tx bytes) of a domain."""
    found = conn.domainListGetStats([dom], 0)
    if not found:  # undefined since it was looked up (e.g. during a rate's window)
        raise NotFoundError("The VM no longer exists", field="vm", reason="not_found")
    stats = dict(found[0][1])
    cpu = stats.get("cpu.time")
    if cpu is None:  # the test driver's stats hold only the state
        cpu = dom.info()[4]

    def total(group: str, key: str) -> int:
        count = int(stats.get(f"{group}.count", 0))
        return sum(int(stats.get(f"{group}.{index}.{key}", 0)) for index in range(count))

    return (
        time.monotonic(),
        int(cpu),
        total("block", "rd.bytes"),
        total("block", "wr.bytes"),
        total("net", "rx.bytes"),
        total("net", "tx.bytes"),
    )


def _rates(
    before: tuple[float, int, int, int, int, int],
    after: tuple[float, int, int, int, int, int],
    vcpus: int,
) -> VmStats:
    seconds = max(after[0] - before[0], 1e-6)

    def rate(index: int) -> float:
        return round(max(after[index] - before[index], 0) / seconds, 1)

    share = (after[1] - before[1]) / (seconds * 1e9 * max(vcpus, 1)) * 100
    return VmStats(
        window_seconds=round(seconds, 3),
        cpu_time_ns=after[1],
        cpu_percent=round(min(max(share, 0.0), 100.0), 2),
        disk_read_bytes_per_second=rate(2),
        disk_write_bytes_per_second=rate(3),
        net_rx_bytes_per_second=rate(4),
        net_tx_bytes_per_second=rate(5),
    )


def _graphics(xml: str) -> list[dict[str, Any]]:
    root = ET.fromstring(xml)  # noqa: S314 (from libvirtd)
    found = []
    for node in root.findall("devices/graphics"):
        port = node.get("port")
        found.append(
            {
                "type": node.get("type"),
                "port": int(port) if port and port != "-1" else None,
                "listen": node.get("listen"),
                "autoport": node.get("autoport") == "yes",
            }
        )
    return found


def _vm_description(conn: Any, name: str) -> tuple[Any, dict[str, Any]]:
    dom = lookup_domain(conn, name, None)
    persistent = bool(dom.isPersistent())
    described = _vm_summary(dom, persistent and bool(dom.autostart()), persistent)
    xml = dom.XMLDesc(0)
    snapshots = sorted(
        (describe_snapshot(snap) for snap in dom.listAllSnapshots(0)),
        key=lambda s: (s["created"] or 0, s["name"]),
    )
    described.update(describe_devices(xml), graphics=_graphics(xml), snapshots=snapshots)
    return dom, described


_ANY_ADDRESS = ("", "0.0.0.0", "::")  # noqa: S104 (what the XML may say, not a bind)


def _vnc_endpoint(conn: Any, name: str) -> tuple[str, int]:
    dom = lookup_domain(conn, name, None)
    state = domain_state(dom)
    for graphics in _graphics(dom.XMLDesc(0)):
        if graphics["type"] == "vnc" and graphics["port"] and dom.isActive():
            listen = graphics["listen"] or ""
            return ("127.0.0.1" if listen in _ANY_ADDRESS else listen), graphics["port"]
    raise ConflictError(
        f"VM {name!r} has no VNC console while it is {state}",
        field="vm",
        reason="no_console",
        details={"state": state, "action": "console"},
    )


def _open_serial(conn: Any, name: str) -> Any:
    dom = lookup_domain(conn, name, None)
    root = ET.fromstring(dom.XMLDesc(0))  # noqa: S314 (from libvirtd)
    ports = [*root.findall("devices/serial"), *root.findall("devices/console")]
    if not dom.isActive() or not any(port.get("type") == "pty" for port in ports):
        state = domain_state(dom)
        raise ConflictError(
            f"VM {name!r} has no serial console while it is {state}",
            field="vm",
            reason="no_console",
            details={"state": state, "action": "serial"},
        )
    stream = conn.newStream(0)
    dom.openConsole(None, stream, 0)
    return stream


def _screenshot(conn: Any, name: str, screen: int) -> tuple[str, bytes]:
    return capture_screen(conn, lookup_domain(conn, name, None), screen)


def _pool_info(pool: Any) -> dict[str, Any]:
    described = pool_summary(pool)
    described["volumes"] = pool.numOfVolumes() if pool.isActive() else None
    described["actions"] = actions_in(POOL_ACTIONS, described["state"])
    return described


def _network_info(net: Any) -> dict[str, Any]:
    described = network_summary(net)
    described["actions"] = actions_in(NETWORK_ACTIONS, described["state"])
    return described


def _pool_volumes(conn: Any, name: str) -> list[dict[str, Any]]:
    pool = lookup_pool(conn, name)
    pool.refresh(0)  # files added beside libvirt show up, as `virsh vol-list` after a refresh
    return sorted(
        ({"pool": name, **volume_summary(v)} for v in pool.listAllVolumes(0)),
        key=lambda v: v["name"],
    )


class ResourceView:
    """Reads of the host's libvirt objects and of the host itself, for the HTTP API."""

    def __init__(self, hv: LibvirtConnection, config: Config) -> None:
        self.hv = hv
        self.config = config
        # Every VM's usage, sampled only while a stream watches (live_stats.py).
        self.usage = VmUsage(hv)

    async def _call(self, kind: str, fn: Callable[..., T], *args: Any) -> T:
        try:
            return await self.hv.call(fn, *args)
        except HypervisorError as exc:
            if exc.reason == "not_found":
                raise NotFoundError(exc.message, field=kind, reason="not_found") from exc
            if exc.reason == "invalid_state":
                raise ConflictError(exc.message, field=kind, reason="invalid_state") from exc
            if exc.reason == "unavailable":
                raise UnavailableError(exc.message, field="libvirt", reason="unavailable") from exc
            raise

    # --- VMs ---

    async def vms(self, state: DomainState | None = None) -> VmList:
        found = await self._call("vm", _list_vms)
        found.sort(key=lambda vm: vm["name"])
        vms = [VmSummary.model_validate(vm) for vm in found if state in (None, vm["state"])]
        return VmList(vms=vms, total=len(vms))

    async def vm_state(self, name: str) -> str:
        """The VM's state word; 404 when there is no such VM."""
        _usable_name("domain", name)
        return await self._call("vm", lambda conn: domain_state(lookup_domain(conn, name, None)))

    async def vm(self, name: str, window: float) -> VmDetail:
        """Everything about one VM, with rates measured over `window` seconds while it runs."""
        _usable_name("domain", name)
        dom, described = await self._call("vm", _vm_description, name)
        stats = None
        if described["id"] is not None:
            before = await self._call("vm", _counters, dom)
            await trio.sleep(window)
            after = await self._call("vm", _counters, dom)
            stats = _rates(before, after, described["vcpus"])
        described["stats"] = stats
        described["actions"] = actions_in(VM_ACTIONS, described["state"])
        return VmDetail.model_validate(described)

    async def screenshot(self, name: str, screen: int = 0) -> tuple[str, bytes]:
        """The VM's screen as the driver gives it (PNG with QEMU): (media type, bytes)."""
        _usable_name("domain", name)
        return await self._call("vm", _screenshot, name, screen)

    async def console_endpoint(self, name: str) -> tuple[str, int]:
        """(host, port) of the running VM's VNC server; 409 while it is not running or
        has no VNC (its state in details), 404 when there is no such VM."""
        _usable_name("domain", name)
        return await self._call("vm", _vnc_endpoint, name)

    async def open_serial(self, name: str) -> Any:
        """A libvirt stream on the running VM's serial console (blocking reads: in a
        thread); 409 when it is not running or has none, 404 when there is no such VM."""
        _usable_name("domain", name)
        return await self._call("vm", _open_serial, name)

    # --- storage ---

    async def pools(self) -> PoolList:
        found = await self._call(
            "pool", lambda conn: [_pool_info(pool) for pool in conn.listAllStoragePools(0)]
        )
        pools = sorted((PoolInfo.model_validate(p) for p in found), key=lambda p: p.name)
        return PoolList(pools=pools, total=len(pools))

    async def pool(self, name: str) -> PoolInfo:
        _usable_name("storage pool", name)
        found = await self._call("pool", lambda conn: _pool_info(lookup_pool(conn, name)))
        return PoolInfo.model_validate(found)

    async def volumes(self, pool: str) -> VolumeList:
        _usable_name("storage pool", pool)
        found = await self._call("pool", _pool_volumes, pool)
        volumes = [VolumeInfo.model_validate(v) for v in found]
        return VolumeList(pool=pool, volumes=volumes, total=len(volumes))

    async def volume(self, pool: str, name: str) -> VolumeInfo:
        _usable_name("storage pool", pool)
        _usable_name("volume", name)
        found = await self._call(
            "volume", lambda conn: volume_summary(lookup_volume(conn, pool, name))
        )
        return VolumeInfo.model_validate({"pool": pool, **found})

    # --- networks ---

    async def networks(self) -> NetworkList:
        found = await self._call(
            "network", lambda conn: [_network_info(net) for net in conn.listAllNetworks(0)]
        )
        networks = sorted((NetworkInfo.model_validate(n) for n in found), key=lambda n: n.name)
        return NetworkList(networks=networks, total=len(networks))

    async def network(self, name: str) -> NetworkInfo:
        _usable_name("network", name)
        found = await self._call("network", lambda conn: _network_info(lookup_network(conn, name)))
        return NetworkInfo.model_validate(found)

    # --- the host ---

    async def host(self) -> HostFacts:
        facts = await trio.to_thread.run_sync(host_stats.static_facts)
        kind = version = lib_version = None
        if self.hv.connected:
            with contextlib.suppress(HypervisorError):  # facts of the host stand without it
                kind, number, lib_number = await self.hv.call(
                    lambda conn: (conn.getType(), conn.getVersion(), conn.getLibVersion())
                )
                version, lib_version = version_text(number), version_text(lib_number)
        return HostFacts.model_validate(
            {
                **facts,
                "worker_id": self.config.worker_id,
                "hypervisor": kind,
                "hypervisor_version": version,
                "libvirt_version": lib_version,
                "libvirt_uri": self.hv.uri,
            }
        )

    async def host_stats(self, window: float) -> HostStats:
        directories: list[tuple[str, Path]] = [
            ("state", self.config.state_dir),
            ("spool", self.config.spool_dir),
        ]
        if self.hv.connected:
            with contextlib.suppress(HypervisorError):  # the agent's own dirs still count
                pools = await self.hv.call(
                    lambda conn: [pool_summary(p) for p in conn.listAllStoragePools(0)]
                )
                directories += [
                    ("images", Path(p["path"]))
                    for p in pools
                    if p["active"] and p["type"] == "dir" and p["path"]
                ]
        return await host_stats.measure(window, directories)
