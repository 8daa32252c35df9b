"""What libvirt's objects say, as plain dicts: the summaries handlers answer with and
the resource view shows (networks, pools, volumes, snapshots, a screen). Blocking:
call them in the libvirt connection's thread."""

from __future__ import annotations

import contextlib
import ipaddress
from typing import Any
from xml.etree import ElementTree as ET

from agent.hypervisor.objects import POOL_STATES, VOLUME_TYPES


def network_summary(net: Any) -> dict[str, Any]:
    """A network's state and addressing, read from libvirt (blocking)."""
    root = ET.fromstring(net.XMLDesc(0))  # noqa: S314 (from libvirtd)
    forward = root.find("forward")
    ips = []
    for node in root.findall("ip"):
        address, netmask, prefix = node.get("address"), node.get("netmask"), node.get("prefix")
        if address and netmask and not prefix:
            prefix = str(ipaddress.IPv4Network(f"0.0.0.0/{netmask}").prefixlen)
        dhcp = node.find("dhcp/range")
        ips.append(
            {
                "family": node.get("family", "ipv4"),
                "address": address,
                "prefix": int(prefix) if prefix else None,
                "dhcp_start": dhcp.get("start") if dhcp is not None else None,
                "dhcp_end": dhcp.get("end") if dhcp is not None else None,
            }
        )
    bridge = root.find("bridge")
    active = bool(net.isActive())
    return {
        "name": net.name(),
        "uuid": net.UUIDString(),
        "state": "active" if active else "inactive",
        "active": active,
        "persistent": bool(net.isPersistent()),
        "autostart": bool(net.autostart()),
        "forward": forward.get("mode", "nat") if forward is not None else "isolated",
        "bridge": bridge.get("name") if bridge is not None else None,
        "ips": ips,
    }


def pool_summary(pool: Any) -> dict[str, Any]:
    state, capacity, allocation, available = pool.info()
    root = ET.fromstring(pool.XMLDesc(0))  # noqa: S314 (from libvirtd)
    return {
        "name": pool.name(),
        "uuid": pool.UUIDString(),
        "type": root.get("type"),
        "state": POOL_STATES.get(state, "unknown"),
        "active": bool(pool.isActive()),
        "persistent": bool(pool.isPersistent()),
        "autostart": bool(pool.autostart()),
        "path": root.findtext("target/path"),
        "capacity_bytes": capacity,
        "allocation_bytes": allocation,
        "available_bytes": available,
    }


def volume_summary(vol: Any) -> dict[str, Any]:
    kind, capacity, allocation = vol.info()
    root = ET.fromstring(vol.XMLDesc(0))  # noqa: S314 (from libvirtd)
    fmt = root.find("target/format")
    return {
        "name": vol.name(),
        "path": vol.path(),
        "key": vol.key(),
        "type": VOLUME_TYPES.get(kind, "unknown"),
        "format": fmt.get("type") if fmt is not None else None,
        "capacity_bytes": capacity,
        "allocation_bytes": allocation,
        "backing_store": root.findtext("backingStore/path"),
    }


def describe_snapshot(snap: Any) -> dict[str, Any]:
    root = ET.fromstring(snap.getXMLDesc(0))  # noqa: S314 (from libvirtd)
    created = root.findtext("creationTime")
    return {
        "name": snap.getName(),
        "description": root.findtext("description"),
        "state": root.findtext("state"),
        "created": int(created) if created else None,
        "parent": root.findtext("parent/name"),
        "current": bool(snap.isCurrent(0)),
    }


def capture_screen(conn: Any, dom: Any, screen: int) -> tuple[str, bytes]:
    """The domain's screen now: (MIME type, image bytes). Blocking: in libvirt's thread."""
    stream = conn.newStream(0)
    chunks = []
    try:
        mime = dom.screenshot(stream, screen, 0)
        while chunk := stream.recv(1 << 16):
            chunks.append(chunk)
        stream.finish()
    except BaseException:
        with contextlib.suppress(Exception):  # the error being raised is the one to report
            stream.abort()
        raise
    return str(mime), b"".join(chunks)
