"""The fleet map: every agent's capabilities record and last heartbeat, read back.

Blocking on purpose (the CLI and programs call it; the agent never does). One
consumer reads the compacted capabilities topic, the heartbeats and the fleet
records together, in batches, from their beginning up to the high watermarks
taken at the start, keeping the latest value per key; a record is parsed as it
arrives (while librdkafka fetches the next batch). A host is `live`, `stale`
(no heartbeat for 3 of its intervals plus grace: heartbeat.py) or
`decommissioned-but-alive` (its record was tombstoned, or never came, and it
still heartbeats: shown, never dropped); a tombstoned host that is silent is gone.

A full rebuild reads for seconds (bench/fleet.py: ~1 s at 10,000 hosts, ~11 s
at 100,000), far inside the capabilities topic's `delete.retention.ms` (a day),
so a tombstone written while a reader is at work is always seen by it.
"""

from __future__ import annotations

import gc
import json
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
import structlog
from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)

from agent.errors import UnavailableError
from agent.jobs import utc_now
from agent.transports.kafka.heartbeat import (
    DECOMMISSIONED_PREFIX,
    SIZE_KEY,
    STALE_INTERVALS,
    stale_after,
)
from agent.transports.kafka.settings import KafkaConfig
from agent.transports.kafka.topics import Topics

log = structlog.get_logger("agent.transports.kafka")

LIVE = "live"
STALE = "stale"
DECOMMISSIONED_BUT_ALIVE = "decommissioned-but-alive"
# The fleet's size record is rewritten when the count moved by more than this.
_SIZE_DRIFT = 0.1
_BATCH = 5000
# consume() waits this long unless a whole batch is there: short, so the last
# partial batch of a topic costs little.
_BATCH_WAIT_SECONDS = 0.1
# Lists of a record most hosts share (kept once per distinct content).
_SHARED_LISTS = ("operations", "features", "disk_formats", "pools", "image_roots")

__all__ = [
    "DECOMMISSIONED_BUT_ALIVE",
    "LIVE",
    "STALE",
    "STALE_INTERVALS",
    "FleetHost",
    "read_fleet",
    "read_schemas",
    "render_table",
]


@dataclass
class FleetHost:
    """One agent as the fleet map shows it.

    `status` is live, stale or decommissioned-but-alive, `reason` says why;
    `stale` is true for every status but live (a broadcast waits only for live hosts).
    """

    worker_id: str
    status: str = STALE
    reason: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    pools: list[str] = field(default_factory=list)
    hypervisor: Any = None
    operations: list[str] = field(default_factory=list)
    features: list[str] = field(default_factory=list)
    agent_version: str | None = None
    seq: int | None = None
    generated_at: str | None = None
    last_heartbeat: str | None = None
    interval_seconds: float | None = None
    decommissioned_at: str | None = None
    schemas_digest: str | None = None
    heartbeat: dict[str, Any] = field(default_factory=dict)
    stale: bool = True
    # The operation schemas: inline in an old record, else resolved by digest on request.
    schemas: dict[str, Any] | None = field(default=None, repr=False)
    capabilities: dict[str, Any] = field(default_factory=dict, repr=False)

    def to_dict(self, *, full: bool = False) -> dict[str, Any]:
        """As JSON for programs; `full` adds the whole record and resolved schemas.

        Built by hand: dataclasses.asdict deep-copies every record (most of a
        10,000-host rebuild's time went there).
        """
        data = {
            "worker_id": self.worker_id,
            "status": self.status,
            "reason": self.reason,
            "stale": self.stale,
            "last_heartbeat": self.last_heartbeat,
            "interval_seconds": self.interval_seconds,
            "decommissioned_at": self.decommissioned_at,
            "labels": self.labels,
            "pools": self.pools,
            "hypervisor": self.hypervisor,
            "operations": self.operations,
            "features": self.features,
            "agent_version": self.agent_version,
            "seq": self.seq,
            "generated_at": self.generated_at,
            "schemas_digest": self.schemas_digest,
            "heartbeat": self.heartbeat,
        }
        if full:
            data["capabilities"] = self.capabilities
            data["schemas"] = self.schemas
        return data

    def matches(
        self, *, operations: Iterable[str] = (), labels: Mapping[str, str] | None = None
    ) -> bool:
        """Offers every one of `operations` and carries every label of `labels`."""
        return all(op in self.operations for op in operations) and all(
            self.labels.get(k) == v for k, v in (labels or {}).items()
        )


# key -> (latest value, bytes or as decoded; a tombstone's timestamp in ms), per topic.
Latest = dict[str, tuple[Any, int]]


def _reader(settings: KafkaConfig) -> Consumer:
    return Consumer(
        {
            # A throwaway group that never commits: reading changes nothing.
            "group.id": f"{settings.topic_prefix}.fleet-reader.{uuid.uuid4()}",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            **settings.client_config(),
        }
    )


def _read_latest(
    consumer: Consumer,
    topics: list[str],
    timeout: float,
    decoders: Mapping[str, Callable[[bytes], Any]] | None = None,
) -> dict[str, Latest]:
    """topic -> key -> latest (value, timestamp of a tombstone), up to the ends the
    topics had at the start. A topic's values go through its `decoders` entry as they
    arrive: parsed while librdkafka fetches the next batch, and a record's bytes are
    not kept once it is parsed."""
    deadline = time.monotonic() + timeout
    ends = _ends(consumer, topics, timeout)
    latest: dict[str, Latest] = {topic: {} for topic in topics}
    if not ends:
        return latest
    decoding = dict(decoders or {})
    consumer.assign([TopicPartition(t, p, OFFSET_BEGINNING) for t, p in ends])
    while ends:
        if time.monotonic() > deadline:
            raise UnavailableError(
                f"Reading the fleet topics took longer than {timeout} s",
                field="timeout",
                reason="timed out before the end of " + ", ".join(sorted({t for t, _ in ends})),
            )
        for message in consumer.consume(_BATCH, _BATCH_WAIT_SECONDS):
            error = message.error()
            topic, partition = message.topic() or "", message.partition() or 0
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    ends.pop((topic, partition), None)
                continue
            key = message.key()
            if key is not None:
                value = message.value()
                if value is None:
                    # Only a tombstone's time is used (when its host was decommissioned).
                    latest[topic][_text(key)] = (None, message.timestamp()[1])
                else:
                    decode = decoding.get(topic)
                    latest[topic][_text(key)] = (
                        decode(_raw(value)) if decode is not None else _raw(value),
                        0,
                    )
            if (message.offset() or 0) + 1 >= ends.get((topic, partition), 1 << 62):
                ends.pop((topic, partition), None)
    consumer.unassign()
    return latest


def _ends(consumer: Consumer, topics: list[str], timeout: float) -> dict[tuple[str, int], int]:
    """(topic, partition) -> its high watermark now, for each partition holding records."""
    ends: dict[tuple[str, int], int] = {}
    for topic in topics:
        # Named: a fleet with a job topic per host makes every topic's metadata costly.
        found = consumer.list_topics(topic, timeout=timeout).topics.get(topic)
        if found is None or found.error is not None:
            continue
        for partition in found.partitions:
            low, high = consumer.get_watermark_offsets(
                TopicPartition(topic, partition), timeout=timeout
            )
            if high > low:
                ends[(topic, partition)] = high
    return ends


def _text(key: str | bytes) -> str:
    return key.decode() if isinstance(key, bytes) else key


def _raw(value: str | bytes) -> bytes:
    return value if isinstance(value, bytes) else value.encode()


def read_fleet(
    settings: KafkaConfig,
    *,
    timeout: float = 15.0,
    schemas: bool = False,
    record_size: bool = True,
    records: bool = True,
) -> list[FleetHost]:
    """The fleet map, sorted by worker_id (blocking; see the module docstring).

    `schemas`: resolve each host's parts named by digest (one read of
    <prefix>.schemas): its operation schemas and, with `records`, its libvirt
    details, allowlist and runbooks into `capabilities`. `record_size`: when the count of
    hosts moved by more than 10 % from the fleet's size record, write the new one
    (agents stretch their heartbeat interval by it); a reader that may not write
    just skips it.
    `records=False` (a listing): each host's fields without its whole record
    (`capabilities` stays empty, and an old record's inline schemas are kept only
    with `schemas`): at 100,000 hosts the records were most of the memory.
    """
    topics = Topics(settings.topic_prefix)
    consumer = _reader(settings)
    # The map is millions of small objects and no cycles: the cyclic collector's
    # passes over them were more than half of a 100,000-host rebuild.
    collecting = gc.isenabled()
    gc.disable()
    try:
        try:
            decode = _RecordDecoder(keep_record=records, keep_schemas=records or schemas)
            found = _read_latest(
                consumer,
                [topics.capabilities, topics.heartbeats, topics.fleet],
                timeout,
                {topics.capabilities: decode},
            )
        except KafkaException as exc:
            raise _unavailable(exc) from exc
        finally:
            consumer.close()
        hosts = _hosts(found[topics.capabilities], found[topics.heartbeats], found[topics.fleet])
    finally:
        if collecting:
            gc.enable()
    if schemas:
        _resolve(settings, hosts, timeout)
    if record_size:
        _record_size(settings, found[topics.fleet], hosts)
    return hosts


def _hosts(capabilities: Latest, heartbeats: Latest, fleet: Latest) -> list[FleetHost]:
    """The map from each host's decoded record (a FleetHost: _RecordDecoder) and last
    heartbeat."""
    now = datetime.now(UTC)
    hosts = []
    for worker_id in capabilities.keys() | heartbeats.keys():
        # Popped: each heartbeat's bytes go as soon as it is parsed.
        value, tombstoned_ms = capabilities.pop(worker_id, (None, 0))
        beat_value, _ = heartbeats.pop(worker_id, (None, 0))
        beat: dict[str, Any] = orjson.loads(beat_value) if beat_value else {}
        if value is None and not beat:
            continue  # decommissioned (or never announced) and silent: gone
        host: FleetHost = value if value is not None else FleetHost(worker_id)
        host.worker_id = worker_id
        host.heartbeat = beat
        host.last_heartbeat = beat.get("at")
        host.interval_seconds = float(beat.get("interval_seconds", 10.0)) if beat else None
        age = _age(now, host.last_heartbeat)
        if value is None:
            marker, _ = fleet.get(f"{DECOMMISSIONED_PREFIX}{worker_id}", (None, 0))
            host.decommissioned_at = beat.get("decommissioned_at") or (
                json.loads(marker).get("at") if marker else None
            )
            if host.decommissioned_at is None and tombstoned_ms:
                host.decommissioned_at = _iso(tombstoned_ms)
            assert host.interval_seconds is not None
            if age is None or age > stale_after(host.interval_seconds):
                continue  # heartbeats from before its tombstone: it is gone
            host.status = DECOMMISSIONED_BUT_ALIVE
            host.reason = (
                f"its record was removed ({host.decommissioned_at or 'never published'}) "
                f"and it still heartbeats ({host.last_heartbeat})"
            )
        elif age is None:
            host.status, host.reason = STALE, "no heartbeat"
        elif age > stale_after(host.interval_seconds or 10.0):
            host.status = STALE
            host.reason = (
                f"last heartbeat {age:.0f} s ago; stale after {STALE_INTERVALS} intervals "
                f"of {host.interval_seconds:g} s plus grace"
            )
        else:
            host.status, host.reason = LIVE, f"heartbeat {age:.0f} s ago"
        host.stale = host.status != LIVE
        hosts.append(host)
    return sorted(hosts, key=lambda host: host.worker_id)


def _resolve(settings: KafkaConfig, hosts: list[FleetHost], timeout: float) -> None:
    """Each host's operation schemas, libvirt details, allowlist and runbooks, from their
    digests."""
    wanted = {h.schemas_digest for h in hosts if h.schemas is None and h.schemas_digest}
    wanted |= {digest for h in hosts if (digest := _details_digest(h))}
    wanted |= {digest for h in hosts for digest in _part_digests(h)}
    parts = read_schemas(settings, wanted, timeout=timeout) if wanted else {}
    for host in hosts:
        if host.schemas is None and host.schemas_digest:
            host.schemas = parts.get(host.schemas_digest)
        digest = _details_digest(host)
        if digest and digest in parts:
            host.capabilities["libvirt"] = {**host.capabilities["libvirt"], **parts[digest]}
        for digest in _part_digests(host):
            if isinstance(part := parts.get(digest), dict):
                host.capabilities.update(part)


def _part_digests(host: FleetHost) -> list[str]:
    """The digests of the record's parts that go back into its capabilities."""
    found = (host.capabilities.get(name) for name in ("policy_digest", "runbooks_digest"))
    return [digest for digest in found if isinstance(digest, str)]


def _details_digest(host: FleetHost) -> str | None:
    libvirt = host.capabilities.get("libvirt")
    digest = libvirt.get("details_digest") if isinstance(libvirt, dict) else None
    return digest if isinstance(digest, str) else None


class _RecordDecoder:
    """A capabilities record's bytes -> its FleetHost (worker_id set by the caller)."""

    def __init__(self, *, keep_record: bool, keep_schemas: bool) -> None:
        self._keep_record = keep_record
        self._keep_schemas = keep_schemas
        # Hosts alike carry the same lists: one copy of each for all of them.
        self._shared: dict[tuple[str, ...], list[str]] = {}

    def __call__(self, value: bytes) -> FleetHost:
        document = orjson.loads(value)
        if not isinstance(document, dict):
            document = {}
        for key in _SHARED_LISTS:
            if key in document:
                document[key] = self._share(document[key])
        return FleetHost(
            worker_id="",
            labels=document.get("labels", {}),
            pools=document.get("pools", []),
            hypervisor=document.get("hypervisor"),
            operations=document.get("operations", []),
            features=document.get("features", []),
            agent_version=document.get("agent_version"),
            seq=document.get("seq"),
            generated_at=document.get("generated_at"),
            schemas_digest=document.get("schemas_digest"),
            # A record from before schemas went by digest carries them inline.
            schemas=document.get("operation_schemas") if self._keep_schemas else None,
            capabilities=document if self._keep_record else {},
        )

    def _share(self, value: Any) -> Any:
        """The one copy of a list of names hosts alike carry (anything else as it is)."""
        if not isinstance(value, list):
            return value
        try:
            return self._shared.setdefault(tuple(value), value)
        except TypeError:  # not names (a list of objects): nothing to share
            return value


def _age(now: datetime, at: str | None) -> float | None:
    if not at:
        return None
    try:
        return (now - datetime.fromisoformat(at)).total_seconds()
    except (TypeError, ValueError):
        return None


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat().replace("+00:00", "Z")


def read_schemas(
    settings: KafkaConfig, digests: Iterable[str], *, timeout: float = 15.0
) -> dict[str, dict[str, Any]]:
    """digest -> part (an operation schema set, libvirt details, an allowlist's answer,
    runbooks) from <prefix>.schemas (blocking)."""
    wanted = set(digests)
    topic = Topics(settings.topic_prefix).schemas
    consumer = _reader(settings)
    try:
        found = _read_latest(consumer, [topic], timeout)[topic]
    except KafkaException as exc:
        raise _unavailable(exc) from exc
    finally:
        consumer.close()
    return {
        digest: orjson.loads(value)
        for digest, (value, _) in found.items()
        if digest in wanted and value is not None
    }


def _record_size(settings: KafkaConfig, fleet: Latest, hosts: list[FleetHost]) -> None:
    members = sum(1 for host in hosts if host.status != DECOMMISSIONED_BUT_ALIVE)
    value, _ = fleet.get(SIZE_KEY, (None, 0))
    recorded = json.loads(value).get("hosts", 0) if value else 0
    if recorded and abs(members - recorded) <= _SIZE_DRIFT * recorded:
        return
    producer = Producer({"acks": "all", **settings.client_config()})
    record = json.dumps({"hosts": members, "at": utc_now()}).encode()
    try:
        producer.produce(Topics(settings.topic_prefix).fleet, key=SIZE_KEY, value=record)
        left = producer.flush(5)
    except KafkaException as exc:
        left = 1
        log.debug("kafka.fleet_size_unrecorded", error=str(exc))
    if left:
        log.debug("kafka.fleet_size_unrecorded", hosts=members)


def _unavailable(exc: KafkaException) -> UnavailableError:
    error = exc.args[0]
    return UnavailableError(
        f"Kafka cannot be read: {error.str()}",
        field="kafka.bootstrap_servers",
        reason=error.name(),
    )


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
                host.status,
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
