"""Publishes this agent's capabilities record and heartbeats for the fleet map.

The capabilities record (compacted topic, key = worker_id) is edge-triggered:
sent at start, after a change (debounced and jittered, so a fleet-wide change
does not arrive as one burst) and re-asserted now and then; the heartbeat
(health summary, queue depth, running jobs) goes to its own topic so the
compacted record only changes when the capabilities do.

The record names its large parts by digest (sha256 of their canonical JSON):
the operation schemas (`schemas_digest`), libvirt's host and domain
capabilities (`libvirt.details_digest`), the host policy (what each
transport's callers may run under the allowlist, the image roots:
`policy_digest`) and the installed runbooks
(`runbooks_digest`); the parts themselves go once per
process and digest to the compacted `<prefix>.schemas`, key = digest, where
hosts alike share them, so a host record stays under 2 KB.
The heartbeat interval follows the fleet's size (heartbeat.py). Once the fleet
has decommissioned this agent, it re-asserts no record and its heartbeats say so.
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import structlog
import trio

from agent import __version__
from agent.errors import AgentError
from agent.jobs import utc_now
from agent.transports.kafka.heartbeat import fleet_interval, jittered
from agent.transports.kafka.producer import EventProducer, Outgoing
from agent.transports.kafka.settings import KafkaConfig
from agent.transports.kafka.topics import Topics

if TYPE_CHECKING:
    pass

log = structlog.get_logger("agent.transports.kafka")

Describe = Callable[[], Awaitable[dict[str, Any]]]
# Waits until the capabilities' fingerprint differs from the one given
# (TransportIntake.capabilities_changed); answers the new one.
Changed = Callable[[str | None], Awaitable[str]]
# Describing the agent costs ~80 ms (every handler's payload schema): it is
# described again only after the fingerprint changed (or when the record is due),
# never on a timer, so an idle agent spends nothing on it.
# libvirt's facts that go by digest (alike on alike hosts, and most of the bytes).
DETAILS = frozenset({"host", "domain"})
# Parts of the capabilities that go by digest too, by the key that names them: the
# host policy (the allowlist's answer per transport: each transport naming most
# operations would be two thirds of a record; the image roots) and the installed
# runbooks (a name, version and sha256 each).
BY_DIGEST = {
    "policy_digest": frozenset({"allowed_operations", "allowed_resources", "image_roots"}),
    "runbooks_digest": frozenset({"runbooks"}),
}
# Left out of the record: the capabilities' own fingerprint (the record changes
# when they do, and a reader compares records, not fingerprints).
_NOT_PUBLISHED = ("fingerprint",)
# Keys of the capabilities document that change without the host changing.
_VOLATILE = {"generated_at", "seq"}


class Announcer:
    def __init__(
        self,
        producer: EventProducer,
        settings: KafkaConfig,
        *,
        worker_id: str,
        labels: dict[str, str],
        capabilities: Describe,
        health: Describe,
        changed: Changed,
    ) -> None:
        self._producer = producer
        self._settings = settings
        self._topics = Topics(settings.topic_prefix)
        self._worker_id = worker_id
        self._labels = labels
        self._capabilities = capabilities
        self._health = health
        self._changed = changed
        # Facts may have changed since the last description.
        self._maybe_changed = False
        # Increases across restarts too (a reader keeps the highest).
        self._seq = time.time_ns() // 1_000_000
        self._published: str | None = None
        self.last_published: float | None = None
        # Parts named by digest: those of the last document, and those this
        # process has put on <prefix>.schemas.
        self._parts: dict[str, bytes] = {}
        self._parts_sent: set[str] = set()
        # The fleet's size as <prefix>.fleet last said (None: not known yet).
        self.fleet_hosts: int | None = None
        # When the fleet decommissioned this agent (None: it is a member).
        self.decommissioned_at: str | None = None

    @property
    def interval(self) -> float:
        """Seconds between heartbeats for the fleet's current size (before jitter)."""
        return fleet_interval(self._settings, self.fleet_hosts or 1)

    async def document(self) -> dict[str, Any]:
        """The capabilities record this agent publishes (without seq/generated_at)."""
        document = dict(await self._capabilities())
        self._parts = {}
        document["schemas_digest"] = self._by_digest(document.pop("operation_schemas", None) or {})
        libvirt = document.get("libvirt")
        if isinstance(libvirt, dict) and DETAILS & libvirt.keys():
            summary = {k: v for k, v in libvirt.items() if k not in DETAILS}
            details = {k: v for k, v in libvirt.items() if k in DETAILS}
            document["libvirt"] = {**summary, "details_digest": self._by_digest(details)}
        for key in _NOT_PUBLISHED:
            document.pop(key, None)
        for name, keys in BY_DIGEST.items():
            if part := {key: document.pop(key) for key in keys if document.get(key)}:
                document[name] = self._by_digest(part)
        document["worker_id"] = self._worker_id
        document["labels"] = dict(self._labels)
        document["pools"] = list(self._settings.pools)
        document["agent_version"] = __version__
        document["features"] = sorted({*document.get("features", []), "kafka"})
        return document

    def _by_digest(self, part: Any) -> str:
        digest = schemas_digest(part)
        self._parts[digest] = canonical(part)
        return digest

    async def publish_capabilities(self, document: dict[str, Any]) -> None:
        self._seq += 1
        value = {**document, "seq": self._seq, "generated_at": utc_now()}
        # The parts before the record that names them, in one ordered batch.
        messages: list[Outgoing] = [
            (self._topics.schemas, digest, part)
            for digest, part in self._parts.items()
            if digest not in self._parts_sent
        ]
        record = json.dumps(value, separators=(",", ":"), default=str).encode()
        messages.append((self._topics.capabilities, self._worker_id, record))
        await self._producer.send_many(messages)
        self._parts_sent.update(self._parts)
        self._published = _digest(document)
        self.last_published = time.monotonic()
        log.info("kafka.capabilities_published", seq=self._seq)

    async def heartbeat(self) -> None:
        report = await self._health()
        store = report.get("components", {}).get("store", {})
        value = {
            "worker_id": self._worker_id,
            "at": utc_now(),
            "interval_seconds": self.interval,
            "health": report.get("status"),
            "components": {
                name: part.get("status") for name, part in report.get("components", {}).items()
            },
            "queue_depth": store.get("queue_depth"),
            "running": store.get("running"),
        }
        if self.decommissioned_at is not None:
            value["decommissioned_at"] = self.decommissioned_at
        await self._producer.send_many(
            [(self._topics.heartbeats, self._worker_id, json.dumps(value).encode())]
        )

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Heartbeat every interval; publish capabilities when due or changed."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._watch_changes)
            task_status.started()
            await self._beat_forever()

    async def _watch_changes(self) -> None:
        fingerprint = await self._changed(None)
        while True:
            fingerprint = await self._changed(fingerprint)
            self._maybe_changed = True

    async def _beat_forever(self) -> None:
        while True:
            try:
                await self._tick()
            except AgentError as exc:
                # The brokers are away: the producer keeps trying, health says degraded.
                log.warning("kafka.announce_failed", error=exc.message, **exc.details)
            await trio.sleep(jittered(self.interval))

    async def _tick(self) -> None:
        if self.decommissioned_at is not None:
            # The fleet removed this host: heartbeats show it alive, no record returns.
            await self.heartbeat()
            return
        now = time.monotonic()
        due = (
            self.last_published is None
            or now - self.last_published >= self._settings.capabilities_reassert_seconds
        )
        if due or self._maybe_changed:
            self._maybe_changed = False
            document = await self.document()
            if self._published is not None and _digest(document) != self._published:
                # Debounced and jittered: a fleet-wide change does not arrive as one burst.
                debounce = self._settings.capabilities_debounce_seconds
                await trio.sleep(debounce + random.uniform(0, debounce))  # noqa: S311 (jitter)
                document = await self.document()
                due = True
            if due:
                await self.publish_capabilities(document)
        await self.heartbeat()


def canonical(value: Any) -> bytes:
    """The one JSON encoding a digest is taken of (sorted keys, no spaces)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str).encode()


def schemas_digest(schemas: Any) -> str:
    """The key of a part (operation schema set, libvirt details) on <prefix>.schemas."""
    return hashlib.sha256(canonical(schemas)).hexdigest()


def _digest(document: dict[str, Any]) -> str:
    stable = {k: v for k, v in document.items() if k not in _VOLATILE}
    return hashlib.sha256(json.dumps(stable, sort_keys=True, default=str).encode()).hexdigest()
