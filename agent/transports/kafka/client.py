"""The controller's side: send jobs to a host, a pool or a broadcast, read their events.

Blocking on purpose (the CLI, tests and programs call it; the agent never does).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterable, Iterator
from types import TracebackType
from typing import Any

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.errors import UnavailableError
from agent.jobs import utc_now
from agent.transports.kafka.events import TERMINAL
from agent.transports.kafka.heartbeat import decommission_key
from agent.transports.kafka.settings import KafkaConfig
from agent.transports.kafka.signing import sign
from agent.transports.kafka.topics import Topics


def _unavailable(exc: KafkaException, what: str) -> UnavailableError:
    error = exc.args[0]
    return UnavailableError(
        f"Kafka: {what}: {error.str()}", field="kafka.bootstrap_servers", reason=error.name()
    )


def send_jobs(
    settings: KafkaConfig,
    topic: str,
    documents: Iterable[dict[str, Any]],
    *,
    timeout: float = 30,
    signer: tuple[str, Ed25519PrivateKey] | None = None,
) -> int:
    """Produce job documents (key = job_id) and wait until the brokers have them all.

    `signer` (key id, private key) signs each one for `topic` (agents require it
    unless kafka.require_signatures is false).
    """
    failures: list[str] = []

    def delivered(error: Any, _message: Any) -> None:
        if error is not None:
            failures.append(error.str())

    producer = Producer(
        {
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 5,
            "message.timeout.ms": int(timeout * 1000),
            **settings.client_config(),
        }
    )
    count = 0
    for document in documents:
        value = json.dumps(document, separators=(",", ":")).encode()
        job_id = document.get("job_id")
        key = job_id.encode() if isinstance(job_id, str) else None
        headers = sign(signer[1], signer[0], topic=topic, key=key, value=value) if signer else None
        while True:
            try:
                producer.produce(
                    topic, value=value, key=key, headers=headers, on_delivery=delivered
                )
            except BufferError:
                producer.poll(0.05)
                continue
            except KafkaException as exc:
                raise _unavailable(exc, f"cannot send to {topic}") from exc
            break
        count += 1
    left = producer.flush(timeout)
    if left or failures:
        raise UnavailableError(
            f"Kafka did not take {left + len(failures)} of {count} jobs",
            field="kafka.bootstrap_servers",
            reason=failures[0] if failures else "timed out",
        )
    return count


def target_topic(
    settings: KafkaConfig, *, host: str | None, pool: str | None, broadcast: bool
) -> str:
    topics = Topics(settings.topic_prefix)
    if host is not None:
        return topics.host(host)
    if pool is not None:
        return topics.pool(pool)
    assert broadcast
    return topics.broadcast


class EventWatcher:
    """Reads `<prefix>.job-events` from where it ends now; open it before sending.

    Events delivered twice (at least once, after a crash) are dropped by event_id.
    """

    def __init__(self, settings: KafkaConfig, *, from_beginning: bool = False) -> None:
        self._settings = settings
        self._topic = Topics(settings.topic_prefix).events
        self._from_beginning = from_beginning
        self._seen: set[str] = set()
        self.repeats = 0
        self._consumer = Consumer(
            {
                "group.id": f"{settings.topic_prefix}.watch.{uuid.uuid4()}",
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                **settings.client_config(),
            }
        )

    def __enter__(self) -> EventWatcher:
        try:
            metadata = self._consumer.list_topics(self._topic, timeout=15)
            described = metadata.topics.get(self._topic)
            partitions = [] if described is None else list(described.partitions)
            assignment = []
            for partition in partitions:
                offset = 0 if self._from_beginning else self._end_of(partition)
                assignment.append(TopicPartition(self._topic, partition, offset))
            if not assignment:
                # Not created yet: its partitions are read from their start as they appear.
                self._consumer.subscribe([self._topic])
            else:
                self._consumer.assign(assignment)
        except KafkaException as exc:
            self._consumer.close()
            raise _unavailable(exc, f"cannot read {self._topic}") from exc
        return self

    def _end_of(self, partition: int) -> int:
        # A topic created a moment ago may still be electing its leaders.
        deadline = time.monotonic() + 15
        while True:
            try:
                _low, high = self._consumer.get_watermark_offsets(
                    TopicPartition(self._topic, partition), timeout=15
                )
            except KafkaException:
                # NOT_LEADER_FOR_PARTITION and friends, not flagged retriable by librdkafka.
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
            else:
                return int(high)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._consumer.close()

    def events(self, *, timeout: float) -> Iterator[dict[str, Any]]:
        """Every new event until `timeout` seconds have passed (stop iterating earlier)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for message in self._consumer.consume(500, min(0.5, deadline - time.monotonic())):
                if message.error() is not None:
                    continue
                event = json.loads(message.value() or b"null")
                if not isinstance(event, dict):
                    continue
                event_id = event.get("event_id")
                if event_id is not None:
                    if event_id in self._seen:
                        self.repeats += 1
                        continue
                    self._seen.add(event_id)
                yield event

    def until_done(
        self, job_ids: Iterable[str], *, timeout: float, per_job: int = 1
    ) -> Iterator[dict[str, Any]]:
        """Events of `job_ids` until each has `per_job` terminal events (or the timeout)."""
        waiting = dict.fromkeys(job_ids, per_job)
        if not waiting:
            return
        for event in self.events(timeout=timeout):
            job_id = event.get("job_id")
            if job_id not in waiting:
                continue
            yield event
            if event.get("type") in TERMINAL:
                waiting[job_id] -= 1
                if waiting[job_id] <= 0:
                    del waiting[job_id]
                    if not waiting:
                        return


def decommission(settings: KafkaConfig, worker_id: str) -> None:
    """Remove a host from the fleet map: tombstones for its capabilities and heartbeat,
    and a marker on <prefix>.fleet that tells a still-running agent to take no more
    fleet jobs (README, "Fleet")."""
    topics = Topics(settings.topic_prefix)
    marker = json.dumps({"worker_id": worker_id, "at": utc_now()}).encode()
    producer = Producer({"enable.idempotence": True, "acks": "all", **settings.client_config()})
    failures: list[str] = []

    def delivered(error: Any, _message: Any) -> None:
        if error is not None:
            failures.append(error.str())

    for topic in (topics.capabilities, topics.heartbeats):
        producer.produce(topic, value=None, key=worker_id, on_delivery=delivered)
    producer.produce(
        topics.fleet, value=marker, key=decommission_key(worker_id), on_delivery=delivered
    )
    if producer.flush(30) or failures:
        raise UnavailableError(
            f"Kafka did not take the decommission of {worker_id}",
            field="kafka.bootstrap_servers",
            reason=failures[0] if failures else "timed out",
        )
