"""The fleet map: every agent's capabilities record and last heartbeat, read back.

Blocking on purpose (the CLI and programs call it; the agent never does):
read both topics from their beginning up to the high watermark taken at the
start, keeping the latest value per key; a null value (tombstone) removes the host.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, TopicPartition

from agent.errors import UnavailableError
from agent.transports.kafka.settings import KafkaConfig
from agent.transports.kafka.topics import Topics

# A host is stale when its last heartbeat is older than this many of its own intervals.
STALE_AFTER_INTERVALS = 3


@dataclass
class FleetHost:
    """One agent as the fleet map shows it."""

    worker_id: str
    labels: dict[str, str] = field(default_factory=dict)
    pools: list[str] = field(default_factory=list)
    hypervisor: Any = None
    operations: list[str] = field(default_factory=list)
    features: list[str] = field(default_factory=list)
    agent_version: str | None = None
    seq: int | None = None
    generated_at: str | None = None
    last_heartbeat: str | None = None
    heartbeat: dict[str, Any] = field(default_factory=dict)
    stale: bool = True
    capabilities: dict[str, Any] = field(default_factory=dict, repr=False)

    def to_dict(self, *, full: bool = False) -> dict[str, Any]:
        data = asdict(self)
        if not full:
            data.pop("capabilities")
        return data

    def matches(
        self, *, operations: Iterable[str] = (), labels: Mapping[str, str] | None = None
    ) -> bool:
        """Offers every one of `operations` and carries every label of `labels`."""
        return all(op in self.operations for op in operations) and all(
            self.labels.get(k) == v for k, v in (labels or {}).items()
        )


def _read_latest(consumer: Consumer, topic: str, timeout: float) -> dict[str, bytes | None]:
    """key -> latest value of a whole topic, up to the end it had when we started."""
    metadata = consumer.list_topics(topic, timeout=timeout)
    described = metadata.topics.get(topic)
    if described is None or described.error is not None or not described.partitions:
        return {}
    ends: dict[int, int] = {}
    for partition in described.partitions:
        low, high = consumer.get_watermark_offsets(
            TopicPartition(topic, partition), timeout=timeout
        )
        if high > low:
            ends[partition] = high
    latest: dict[str, bytes | None] = {}
    if not ends:
        return latest
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in ends])
    deadline = time.monotonic() + timeout
    while ends:
        if time.monotonic() > deadline:
            raise UnavailableError(
                f"Reading {topic} took longer than {timeout} s",
                field="topic",
                reason="timed out before the end of the topic",
            )
        for message in consumer.consume(1000, 0.5):
            if message.error() is not None:
                continue
            partition, offset = message.partition() or 0, message.offset() or 0
            key = message.key()
            if key is not None:
                value = message.value()
                latest[key.decode() if isinstance(key, bytes) else str(key)] = (
                    value if isinstance(value, bytes) or value is None else str(value).encode()
                )
            if partition in ends and offset + 1 >= ends[partition]:
                del ends[partition]
    consumer.unassign()
    return latest


def read_fleet(settings: KafkaConfig, *, timeout: float = 15.0) -> list[FleetHost]:
    """The fleet map, sorted by worker_id (blocking; see the module docstring)."""
    topics = Topics(settings.topic_prefix)
    consumer = Consumer(
        {
            # A throwaway group that never commits: reading changes nothing.
            "group.id": f"{settings.topic_prefix}.fleet-reader.{uuid.uuid4()}",
            "enable.auto.commit": False,
            "enable.partition.eof": False,
            **settings.client_config(),
        }
    )
    try:
        capabilities = _read_latest(consumer, topics.capabilities, timeout)
        heartbeats = _read_latest(consumer, topics.heartbeats, timeout)
    except KafkaException as exc:
        error = exc.args[0]
        raise UnavailableError(
            f"Kafka cannot be read: {error.str()}",
            field="kafka.bootstrap_servers",
            reason=error.name(),
        ) from exc
    finally:
        consumer.close()
    now = datetime.now(UTC)
    hosts = []
    for worker_id, value in capabilities.items():
        if value is None:
            continue
        document = json.loads(value)
        host = FleetHost(
            worker_id=worker_id,
            labels=document.get("labels", {}),
            pools=document.get("pools", []),
            hypervisor=document.get("hypervisor"),
            operations=document.get("operations", []),
            features=document.get("features", []),
            agent_version=document.get("agent_version"),
            seq=document.get("seq"),
            generated_at=document.get("generated_at"),
            capabilities=document,
        )
        beat = heartbeats.get(worker_id)
        if beat is not None:
            host.heartbeat = json.loads(beat)
            host.last_heartbeat = host.heartbeat.get("at")
            interval = float(host.heartbeat.get("interval_seconds", 10.0))
            if host.last_heartbeat:
                age = (now - datetime.fromisoformat(host.last_heartbeat)).total_seconds()
                host.stale = age > STALE_AFTER_INTERVALS * interval
        hosts.append(host)
    return sorted(hosts, key=lambda host: host.worker_id)


def render_table(hosts: Iterable[FleetHost]) -> str:
    """The map as the CLI prints it, one host per line."""
    rows = [("WORKER", "STATE", "POOLS", "LABELS", "HYPERVISOR", "OPS", "LAST HEARTBEAT")]
    for host in hosts:
        hypervisor = host.hypervisor
        if isinstance(hypervisor, dict):
            hypervisor = hypervisor.get("type") or hypervisor.get("uri") or "yes"
        rows.append(
            (
                host.worker_id,
                "stale" if host.stale else "live",
                ",".join(host.pools) or "-",
                ",".join(f"{k}={v}" for k, v in sorted(host.labels.items())) or "-",
                str(hypervisor or "-"),
                str(len(host.operations)),
                host.last_heartbeat or "never",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )
