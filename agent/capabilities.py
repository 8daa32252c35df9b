"""What this host offers, so a fleet can discover where to send work."""

from __future__ import annotations

import os
import platform
import socket
from collections.abc import Awaitable, Callable
from typing import Any

from agent.config import Config
from agent.registry import Registry

# A contributor adds facts of its own (e.g. the hypervisor) to the description.
Contributor = Callable[[], Awaitable[dict[str, Any]]]


class Capabilities:
    def __init__(self, config: Config, registry: Registry) -> None:
        self._config = config
        self._registry = registry
        self._contributors: list[Contributor] = []

    def reload(self, config: Config) -> None:
        """Describe a reloaded config (labels, limits) from now on."""
        self._config = config

    def contribute(self, contributor: Contributor) -> None:
        self._contributors.append(contributor)

    async def describe(self) -> dict[str, Any]:
        """The contract's capabilities object (`GET /api/v1/capabilities` data)."""
        description: dict[str, Any] = {
            "worker_id": self._config.worker_id,
            "operations": self._registry.operations,
            "operation_schemas": self._registry.schemas(),
            "features": ["spool"],
            "disk_formats": [],
            "max_concurrent_jobs": self._config.max_concurrent_jobs,
            "max_disk_size_gb": self._config.max_disk_size_gb,
            "hostname": socket.gethostname(),
            "arch": platform.machine(),
            "cpus": os.cpu_count(),
            "memory_bytes": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"),
            "hypervisor": None,
            "labels": dict(self._config.labels),
        }
        for contributor in self._contributors:
            description.update(await contributor())
        return description
