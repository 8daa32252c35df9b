"""What this host offers, so a fleet can discover where to send work."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
import trio

from agent.config import Config
from agent.core import periodic as background
from agent.core.events import EventBus
from agent.core.registry import Registry
from agent.errors import AgentError
from agent.policy.allowlist import TRANSPORTS, Allowlist

log = structlog.get_logger("agent.core.capabilities")

# A contributor adds facts of its own (e.g. the hypervisor) to the description.
Contributor = Callable[[], Awaitable[dict[str, Any]]]


class Capabilities:
    def __init__(self, config: Config, registry: Registry, bus: EventBus | None = None) -> None:
        self._config = config
        self._registry = registry
        self._bus = bus
        self._contributors: list[Contributor] = []
        # What the contributors said at the last fingerprint, and its hash.
        self._facts: dict[str, Any] | None = None
        self.fingerprint: str | None = None
        self._refresh_requested = trio.Event()
        # Set (and replaced) when the fingerprint changes: watchers wait on it instead
        # of following every event of the bus (a subscriber makes every job's events).
        self._changed = trio.Event()

    def reload(self, config: Config) -> None:
        """Describe a reloaded config (labels, limits, the allowlist) from now on."""
        changed = config.policy.allow != self._config.policy.allow
        self._config = config
        if changed:  # what each transport may run is in the fingerprint
            self.request_refresh()

    def contribute(self, contributor: Contributor) -> None:
        self._contributors.append(contributor)

    def request_refresh(self) -> None:
        """Re-fingerprint soon (e.g. the libvirt connection came or went)."""
        self._refresh_requested.set()

    async def refresh(self) -> dict[str, Any]:
        """Ask every contributor again; a change is logged and published as an event."""
        facts: dict[str, Any] = {"features": []}
        for contributor in self._contributors:
            contributed = await contributor()
            features = contributed.pop("features", [])
            facts.update(contributed)
            facts["features"] = [*facts["features"], *features]
        facts.update(self._allowed())
        fingerprint = hashlib.sha256(
            json.dumps(facts, sort_keys=True, default=str).encode()
        ).hexdigest()
        previous, self._facts = self._facts, facts
        if previous is not None and fingerprint != self.fingerprint:
            changed = sorted(
                key for key in previous.keys() | facts.keys() if previous.get(key) != facts.get(key)
            )
            log.info("capabilities.changed", changed=changed, fingerprint=fingerprint)
            if self._bus is not None:
                self._bus.publish(
                    {
                        "type": "capabilities",
                        "data": {"changed": changed, "fingerprint": fingerprint},
                    }
                )
        if fingerprint != self.fingerprint:
            self.fingerprint = fingerprint
            self._changed.set()
            self._changed = trio.Event()
        return facts

    async def changed(self, since: str | None) -> str:
        """The fingerprint, once it is known and differs from `since`."""
        while self.fingerprint is None or self.fingerprint == since:
            await self._changed.wait()
        return self.fingerprint

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Fingerprint now, then periodically and whenever a refresh is requested."""
        await self.refresh()
        task_status.started()
        failures = 0
        while True:
            wait = self._config.capabilities_refresh_seconds
            with trio.move_on_after(background.backoff(failures) if failures else wait):
                await self._refresh_requested.wait()
            self._refresh_requested = trio.Event()
            try:
                await self.refresh()
            except (OSError, AgentError) as exc:  # EMFILE starting qemu-img: keep the last facts
                failures += 1
                background.note_failure("capabilities", exc)
            else:
                failures = 0

    async def describe(self) -> dict[str, Any]:
        """The contract's capabilities object (`GET /api/v1/capabilities` data)."""
        facts = dict(self._facts if self._facts is not None else await self.refresh())
        description: dict[str, Any] = {
            "worker_id": self._config.worker_id,
            "operations": self._registry.operations,
            "operation_schemas": self._registry.schemas(),
            "features": [],
            "disk_formats": [],
            "max_concurrent_jobs": self._config.max_concurrent_jobs,
            "max_disk_size_gb": self._config.max_disk_size_gb,
            "hostname": socket.gethostname(),
            "arch": platform.machine(),
            "cpus": os.cpu_count(),
            "memory_bytes": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"),
            "hypervisor": None,
            "labels": dict(self._config.labels),
            "fingerprint": self.fingerprint,
        }
        features = facts.pop("features", [])
        description.update(facts)
        description.update(self._allowed())  # the rules in effect now, refreshed or not
        description["features"] = sorted({*description["features"], *features})
        return description

    def _allowed(self) -> dict[str, Any]:
        """What each transport's callers may run under the operation allowlist (callers
        no token or group rule names): `allowed_operations` per transport, and the
        resource globs of those limited to some resources."""
        rules = Allowlist.from_config(self._config.policy)
        operations: dict[str, list[str]] = {}
        resources: dict[str, dict[str, list[str]]] = {}
        for transport in TRANSPORTS:
            allowed = rules.operations_for(transport, self._registry.operations)
            operations[transport] = sorted(allowed)
            resources[transport] = {
                operation: list(globs) for operation, globs in allowed.items() if globs is not None
            }
        return {"allowed_operations": operations, "allowed_resources": resources}
