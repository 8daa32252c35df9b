"""The defined storage pools' directories, which the path policy counts as image roots."""

from __future__ import annotations

from typing import Any
from xml.etree import ElementTree as ET

import structlog

from agent.errors import HypervisorError
from agent.policy.paths import Policy

log = structlog.get_logger("agent.storage")


def pool_paths(conn: Any) -> list[str]:
    """Target directories of every defined pool (blocking: inside LibvirtConnection.call)."""
    paths = []
    for pool in conn.listAllStoragePools(0):
        root = ET.fromstring(pool.XMLDesc(0))  # noqa: S314 (from libvirtd)
        if root.get("type") in ("dir", "fs", "netfs") and root.findtext("target/path"):
            paths.append(root.findtext("target/path") or "")
    return paths


async def refresh_pool_roots(hv: Any, policy: Policy) -> dict[str, Any]:
    """Capability facts and policy: the image roots, with the defined pools' directories."""
    try:
        policy.set_pool_roots(await hv.call(pool_paths))
    except HypervisorError as exc:
        log.info("policy.pool_roots_unavailable", error=exc.message)
    return {"image_roots": list(policy.roots)}
