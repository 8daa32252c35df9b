"""Publishes this agent's capabilities record and heartbeats for the fleet map.

The capabilities record (compacted topic, key = worker_id) is edge-triggered:
sent at start, after a change (debounced and jittered, so a fleet-wide change
does not arrive as one burst) and re-asserted now and then; the heartbeat
(health summary, queue depth, running jobs) goes to its own topic so the
compacted record only changes when the capabilities do.
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
import trio

from agent import __version__
from agent.errors import AgentError
from agent.jobs import utc_now
from agent.transports.kafka.producer import EventProducer
from agent.transports.kafka.settings import KafkaConfig
from agent.transports.kafka.topics import Topics

log = structlog.get_logger("agent.transports.kafka")

Describe = Callable[[], Awaitable[dict[str, Any]]]
# Describing the agent costs ~80 ms (every handler's payload schema), and the
# agent itself re-fingerprints only every capabilities_refresh_seconds (or when
# libvirt comes or goes): look for a change at most this often, not every heartbeat.
_CHANGE_CHECK_SECONDS = 30.0
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
    ) -> None:
        self._producer = producer
        self._settings = settings
        self._topics = Topics(settings.topic_prefix)
        self._worker_id = worker_id
        self._labels = labels
        self._capabilities = capabilities
        self._health = health
        # Increases across restarts too (a reader keeps the highest).
        self._seq = time.time_ns() // 1_000_000
        self._published: str | None = None
        self.last_published: float | None = None
        self._last_checked: float | None = None

    async def document(self) -> dict[str, Any]:
        """The capabilities record this agent publishes (without seq/generated_at)."""
        document = dict(await self._capabilities())
        document["worker_id"] = self._worker_id
        document["labels"] = dict(self._labels)
        document["pools"] = list(self._settings.pools)
        document["agent_version"] = __version__
        document["features"] = sorted({*document.get("features", []), "kafka"})
        return document

    async def publish_capabilities(self, document: dict[str, Any]) -> None:
        self._seq += 1
        value = {**document, "seq": self._seq, "generated_at": utc_now()}
        await self._producer.send_many(
            [(self._topics.capabilities, self._worker_id, json.dumps(value, default=str).encode())]
        )
        self._published = _digest(document)
        self.last_published = time.monotonic()
        log.info("kafka.capabilities_published", seq=self._seq)

    async def heartbeat(self) -> None:
        report = await self._health()
        store = report.get("components", {}).get("store", {})
        value = {
            "worker_id": self._worker_id,
            "at": utc_now(),
            "interval_seconds": self._settings.heartbeat_interval_seconds,
            "health": report.get("status"),
            "components": {
                name: part.get("status") for name, part in report.get("components", {}).items()
            },
            "queue_depth": store.get("queue_depth"),
            "running": store.get("running"),
        }
        await self._producer.send_many(
            [(self._topics.heartbeats, self._worker_id, json.dumps(value).encode())]
        )

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Heartbeat every interval; publish capabilities when due or changed."""
        task_status.started()
        interval = self._settings.heartbeat_interval_seconds
        while True:
            try:
                await self._tick()
            except AgentError as exc:
                # The brokers are away: the producer keeps trying, health says degraded.
                log.warning("kafka.announce_failed", error=exc.message, **exc.details)
            await trio.sleep(interval)

    async def _tick(self) -> None:
        now = time.monotonic()
        due = (
            self.last_published is None
            or now - self.last_published >= self._settings.capabilities_reassert_seconds
        )
        if due or self._last_checked is None or now - self._last_checked >= _CHANGE_CHECK_SECONDS:
            self._last_checked = now
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


def _digest(document: dict[str, Any]) -> str:
    stable = {k: v for k, v in document.items() if k not in _VOLATILE}
    return hashlib.sha256(json.dumps(stable, sort_keys=True, default=str).encode()).hexdigest()
