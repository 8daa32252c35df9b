"""`<prefix>.job-events` read back from a point (its end now, or a time), in batches.

Blocking on purpose (the CLI calls it; the agent never does). Every call that can
wait on a broker is bounded by the caller's deadline (`time.monotonic()` seconds):
consume() runs in short slices, so a reader returns within a slice of its deadline
whatever the brokers or the agents do.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from types import TracebackType
from typing import Any

import orjson
from confluent_kafka import Consumer, KafkaException, TopicPartition

from agent.errors import UnavailableError
from agent.transports.kafka.settings import KafkaConfig
from agent.transports.kafka.topics import Topics

# The longest one consume() may block: the reader's answer to "return on time".
SLICE_SECONDS = 0.2
# What start() may take past the deadline (~0.1 s on a busy host; seconds only
# while a new topic elects its leaders).
SETUP_SECONDS = 2.0


def remaining(deadline: float) -> float:
    return max(0.0, deadline - time.monotonic())


def _unavailable(exc: KafkaException, what: str) -> UnavailableError:
    error = exc.args[0]
    return UnavailableError(
        f"Kafka: {what}: {error.str()}", field="kafka.bootstrap_servers", reason=error.name()
    )


class JobEventReader:
    """Reads `<prefix>.job-events` from a point (its end now, or a time) in batches.

    Events come at least once (an event in flight at an agent's crash comes
    again): the reader hands on what it reads, FleetJob.apply drops repeats.
    """

    def __init__(self, settings: KafkaConfig, *, deadline: float) -> None:
        self.topic = Topics(settings.topic_prefix).events
        self._deadline = deadline
        self._setup_deadline = deadline
        # Where each partition ended when the reader started, until read that far.
        self._pending: dict[int, int] = {}
        self._consumer = Consumer(
            {
                # A throwaway group that never commits: reading changes nothing.
                "group.id": f"{settings.topic_prefix}.fleet-jobs.{uuid.uuid4()}",
                "enable.auto.commit": False,
                "enable.partition.eof": False,
                "auto.offset.reset": "earliest",
                # The broker answers a fetch as soon as data arrives; this only
                # bounds how long an idle fetch stays open.
                "fetch.wait.max.ms": 100,
                # Prefetch bounded (librdkafka's default queue is 64 MiB per partition).
                "queued.max.messages.kbytes": 8192,
                **settings.client_config(),
            }
        )

    def __enter__(self) -> JobEventReader:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._consumer.close()

    def _time_left(self, what: str) -> float:
        left = remaining(self._setup_deadline)
        if left <= 0:
            raise UnavailableError(
                f"Kafka: {what}: no answer before the deadline",
                field="kafka.bootstrap_servers",
                reason="timed out",
            )
        return left

    def start(self, since: datetime | None = None) -> None:
        """Read from `since` (None: only events written from now on).

        Given SETUP_SECONDS even past the deadline: a wait whose timeout went on
        starting Python still finds where the job's events will begin, sends the
        job, and then ends at once (rather than failing before anything was sent).
        """
        self._setup_deadline = max(self._deadline, time.monotonic() + SETUP_SECONDS)
        try:
            metadata = self._consumer.list_topics(
                self.topic, timeout=self._time_left(f"cannot list {self.topic}")
            )
            described = metadata.topics.get(self.topic)
            partitions = (
                []
                if described is None or described.error is not None
                else list(described.partitions)
            )
            if not partitions:
                # Not created yet: its partitions are read from their start as they appear.
                self._consumer.subscribe([self.topic])
                return
            ends = {partition: self._end_of(partition) for partition in partitions}
            starts = dict(ends)
            if since is not None:
                wanted = [
                    TopicPartition(self.topic, p, int(since.timestamp() * 1000)) for p in partitions
                ]
                found = self._consumer.offsets_for_times(
                    wanted, timeout=self._time_left(f"cannot search {self.topic}")
                )
                for tp in found:
                    # -1: no event at or after `since` in that partition.
                    if tp.offset >= 0:
                        starts[tp.partition] = tp.offset
            self._consumer.assign([TopicPartition(self.topic, p, o) for p, o in starts.items()])
            self._pending = {p: end for p, end in ends.items() if starts[p] < end}
        except KafkaException as exc:
            raise _unavailable(exc, f"cannot read {self.topic}") from exc

    def _end_of(self, partition: int) -> int:
        while True:
            try:
                _low, high = self._consumer.get_watermark_offsets(
                    TopicPartition(self.topic, partition),
                    timeout=self._time_left(f"cannot read the end of {self.topic}"),
                )
            except KafkaException:
                # A topic created a moment ago may still be electing its leaders
                # (NOT_LEADER_FOR_PARTITION is not flagged retriable by librdkafka).
                if remaining(self._setup_deadline) <= SLICE_SECONDS:
                    raise
                time.sleep(SLICE_SECONDS)
            else:
                return int(high)

    @property
    def caught_up(self) -> bool:
        """Every event written before the reader started has been read."""
        return not self._pending

    def batches(
        self, *, until_end: bool = False, job_id: str | None = None
    ) -> Iterator[list[dict[str, Any]]]:
        """What each short consume() brought (maybe nothing), until the deadline (or,
        `until_end`, the end the topic had at start). Events come at least once:
        FleetJob.apply drops repeats.
        `job_id`: only that job's events (its message key: others are not parsed)."""
        key = job_id.encode() if job_id is not None else None
        while not (until_end and self.caught_up):
            left = remaining(self._deadline)
            if left <= 0:
                if until_end:
                    raise UnavailableError(
                        f"Kafka: reading {self.topic} did not reach its end before the deadline",
                        field="topic",
                        reason="timed out before the end of the topic",
                    )
                return
            batch = []
            for message in self._consumer.consume(1000, min(SLICE_SECONDS, left)):
                if message.error() is not None:
                    continue
                partition, offset = message.partition() or 0, message.offset() or 0
                if partition in self._pending and offset + 1 >= self._pending[partition]:
                    del self._pending[partition]
                if key is not None and message.key() != key:
                    continue
                event = _event(message.value())
                if event is not None:
                    batch.append(event)
            yield batch

    def job_events(
        self, *, until_end: bool = False, job_id: str | None = None
    ) -> Iterator[dict[str, Any]]:
        """Each event read, until the deadline (or the end the topic had at start)."""
        for batch in self.batches(until_end=until_end, job_id=job_id):
            yield from batch


def _event(value: bytes | str | None) -> dict[str, Any] | None:
    try:
        # orjson: parsing is most of the cost of reading an hour of a busy fleet's events.
        event = orjson.loads(value or b"null")
    except orjson.JSONDecodeError:
        return None
    ok = isinstance(event, dict) and isinstance(event.get("job_id"), str)
    return event if ok and isinstance(event.get("worker_id"), str) else None
