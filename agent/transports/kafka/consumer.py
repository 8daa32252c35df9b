"""One thread owns each Consumer: every call on it happens there.

Polled records cross into trio through a memory channel. When the channel is
full (the agent's queue has no room) the thread pauses its partitions and
keeps polling, so the group never sees it miss `max.poll.interval.ms`; it
resumes once the held batch is taken. Offsets come back through a queue and
are stored only then: with `enable.auto.offset.store=false`, auto-commit
commits just what the agent made durable. Concurrent poll and close from two
threads can hang librdkafka (#2333), hence a single owner.

A consumer whose topics have one reader (a host's job topic, the broadcast
topic as this agent reads it, the fleet records) takes every partition by
`assign()` instead of joining a group: the group then only keeps its offsets,
and an idle agent sends no group heartbeats. Fetches wait seconds at the broker
(it answers as soon as data arrives) and prefetch is bounded, so an idle
consumer costs the brokers a request every FETCH_WAIT_MS.

An idle thread does not sit in poll() (confluent-kafka wakes it every 200 ms
there): it waits on a pipe librdkafka writes to when the consumer has anything
to serve (wakeup.py), which `store`, `withhold` and cancellation also write to.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import structlog
import trio
from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    TopicPartition,
)

from agent.transports.kafka.wakeup import Wakeup

log = structlog.get_logger("agent.transports.kafka")

# How long a revocation waits for records in the agent's hands to become durable,
# so that the next owner of the partition does not read them again.
_REVOKE_WAIT_SECONDS = 10.0
# How long the idle thread waits in poll() (which returns at the first record;
# consume() would wait out its whole timeout): this bounds only how late it sees a
# store, a withhold or a cancel. While records are held it looks much sooner.
_POLL_SECONDS = 1.0
_HELD_POLL_SECONDS = 0.05
# With a wake-up pipe the thread sleeps until librdkafka or the agent writes to it;
# this only bounds how long a lost wake-up could go unnoticed, and keeps poll()
# called well within a pool member's max.poll.interval.ms.
_IDLE_WAIT_SECONDS = 30.0
# How long a polled batch waits for the agent to take it before the thread pauses
# its partitions (and goes on polling, for the group's sake).
_HAND_OVER_SECONDS = 1.0
# Idle cost: a fetch waits this long at the broker when there is nothing to read.
FETCH_WAIT_MS = 10_000
# Group members (pools) heartbeat this often; the session outlives three misses.
_GROUP_HEARTBEAT_MS = 10_000
_SESSION_TIMEOUT_MS = 45_000
IDLE_CONSUMER: dict[str, Any] = {
    "fetch.wait.max.ms": FETCH_WAIT_MS,
    # Prefetch bounded to a few MiB per consumer instead of librdkafka's 64 MiB.
    "queued.max.messages.kbytes": 4096,
    "fetch.max.bytes": 4 * 1024 * 1024,
}


@dataclass(frozen=True, slots=True)
class Record:
    """One consumed message, detached from librdkafka."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int
    # As sent (a signed job's key id, signing time and signature are here).
    headers: tuple[tuple[str, bytes | None], ...] = ()


def _record(message: Message) -> Record:
    key = message.key()
    value = message.value()
    # A consumed message's headers are a list of (name, bytes | None) pairs.
    found: list[tuple[str, Any]] = list(message.headers() or ())  # type: ignore[arg-type]
    headers = tuple(
        (str(name), item if isinstance(item, bytes) or item is None else str(item).encode())
        for name, item in found
    )
    return Record(
        topic=message.topic() or "",
        partition=message.partition() or 0,
        offset=message.offset() or 0,
        key=key if isinstance(key, bytes) or key is None else str(key).encode(),
        value=value if isinstance(value, bytes) or value is None else str(value).encode(),
        timestamp_ms=message.timestamp()[1],
        headers=headers,
    )


class ConsumerThread:
    """A Consumer in one consumer group, run by `run()` on a worker thread."""

    def __init__(
        self,
        client_config: dict[str, Any],
        *,
        topics: Sequence[str],
        group_id: str,
        instance_id: str,
        batch: int,
        assign: bool = False,
        from_beginning: Sequence[str] = (),
        legacy_groups: dict[str, str] | None = None,
    ) -> None:
        """`assign`: take every partition of `topics` (one reader) instead of joining
        `group_id`, which then only keeps offsets; `from_beginning` topics are read
        whole at each start; `legacy_groups` (topic -> group) names where a topic's
        offsets were kept before, read once when `group_id` has none for it."""
        self.topics = list(topics)
        self.group_id = group_id
        self._batch = batch
        self._assign = assign
        self._from_beginning = set(from_beginning)
        self._legacy_groups = dict(legacy_groups or {})
        self._config: dict[str, Any] = {
            "group.id": group_id,
            "enable.auto.offset.store": False,
            "enable.auto.commit": True,
            "auto.commit.interval.ms": 1000,
            "auto.offset.reset": "earliest",
            "error_cb": self._on_error,
            **IDLE_CONSUMER,
            **client_config,
        }
        if not assign:
            session = int(client_config.get("session.timeout.ms", _SESSION_TIMEOUT_MS))
            self._config = {
                # Static membership: a restart within session.timeout.ms takes its
                # partitions back without a rebalance of the whole group.
                "group.instance.id": instance_id,
                "partition.assignment.strategy": "cooperative-sticky",
                # Three heartbeats per session, however short a site makes it.
                "heartbeat.interval.ms": min(_GROUP_HEARTBEAT_MS, session // 3),
                "session.timeout.ms": session,
                **self._config,
            }
        # Topics whose records are no longer wanted (set from trio's thread).
        self._withheld: frozenset[str] = frozenset()
        self._paused_withheld: frozenset[str] = frozenset()
        self._commands: queue.SimpleQueue[list[TopicPartition]] = queue.SimpleQueue()
        # Next offset handed to the agent, and next offset stored, per partition.
        self._handed: dict[tuple[str, int], int] = {}
        self._stored: dict[tuple[str, int], int] = {}
        self.assigned: list[tuple[str, int]] = []
        self.paused = False
        # How often the agent had no room for a batch within _HAND_OVER_SECONDS.
        self.pauses = 0
        # Records polled while the agent had no room, handed over once it has.
        self._held: list[Record] = []
        self.last_error: str | None = None
        # Set while the thread runs, when librdkafka can wake it (else it polls).
        self.wakeup: Wakeup | None = None
        # The thread's id for the kernel (its wake-ups are in /proc/self/task/ID).
        self.native_id: int | None = None

    def _on_error(self, error: KafkaError) -> None:
        # Health follows the producer (it sends a heartbeat every interval, so it
        # notices the brokers coming back); this is kept for the health figures.
        self.last_error = error.str()

    def withhold(self, topics: Sequence[str]) -> None:
        """Stop fetching `topics` (their records stay for the next start). Thread-safe."""
        self._withheld = frozenset(topics)
        self._wake()

    def _wake(self) -> None:
        wakeup = self.wakeup
        if wakeup is not None:
            wakeup.wake()

    def store(self, records: Sequence[Record]) -> None:
        """Mark `records` done (durable, duplicate or rejected): their offsets may commit.

        Thread-safe; call it in offset order per partition.
        """
        last: dict[tuple[str, int], int] = {}
        for record in records:
            last[(record.topic, record.partition)] = record.offset + 1
        self._commands.put([TopicPartition(t, p, offset) for (t, p), offset in last.items()])
        self._wake()

    async def run(
        self,
        channel: trio.MemorySendChannel[list[Record]],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        task_status.started()
        with channel:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._wake_when_cancelled)
                await trio.to_thread.run_sync(self._loop, channel, abandon_on_cancel=False)
                nursery.cancel_scope.cancel()

    async def _wake_when_cancelled(self) -> None:
        """The thread notices a cancel only when it wakes: wake it then."""
        try:
            await trio.sleep_forever()
        finally:
            self._wake()

    def _apply_commands(self, consumer: Consumer) -> None:
        while True:
            try:
                offsets = self._commands.get_nowait()
            except queue.Empty:
                return
            mine = [tp for tp in offsets if (tp.topic, tp.partition) in self.assigned]
            if mine:
                consumer.store_offsets(offsets=mine)
            for tp in offsets:
                self._stored[(tp.topic, tp.partition)] = tp.offset

    def _hand_over(
        self,
        channel: trio.MemorySendChannel[list[Record]],
        records: list[Record],
        *,
        wait: float = 0,
    ) -> bool:
        """Give `records` to the agent, waiting up to `wait` seconds for room."""
        try:
            if wait > 0:
                trio.from_thread.run(_send_within, channel, records, wait)
            else:
                trio.from_thread.run_sync(channel.send_nowait, records)
        except trio.WouldBlock:
            return False
        for record in records:
            self._handed[(record.topic, record.partition)] = record.offset + 1
        return True

    # Rebalance callbacks: librdkafka calls them on this thread, inside consume().

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.assigned += [(tp.topic, tp.partition) for tp in partitions]
        log.info("kafka.assigned", group=self.group_id, partitions=_names(partitions))
        if self.paused:
            consumer.pause(partitions)

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        gone = {(tp.topic, tp.partition) for tp in partitions}
        # Records not handed over yet are the next owner's to read.
        self._held = [r for r in self._held if (r.topic, r.partition) not in gone]
        # Records the agent holds: let it make them durable and commit them, so the
        # next owner does not run them again.
        deadline = time.monotonic() + _REVOKE_WAIT_SECONDS
        while time.monotonic() < deadline and any(
            self._handed.get(tp, 0) > self._stored.get(tp, 0) for tp in gone
        ):
            self._apply_commands(consumer)
            time.sleep(0.01)
        self._apply_commands(consumer)
        try:
            consumer.commit(asynchronous=False)
        except KafkaException as exc:
            # _NO_OFFSET: nothing stored since the last commit.
            log.debug("kafka.revoke_commit", error=str(exc))
        self._forget(gone)
        log.info("kafka.revoked", group=self.group_id, partitions=_names(partitions))

    def _on_lost(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        gone = {(tp.topic, tp.partition) for tp in partitions}
        self._held = [r for r in self._held if (r.topic, r.partition) not in gone]
        self._forget(gone)
        log.warning("kafka.partitions_lost", group=self.group_id, partitions=_names(partitions))

    def _forget(self, gone: set[tuple[str, int]]) -> None:
        self.assigned = [tp for tp in self.assigned if tp not in gone]
        for tp in gone:
            self._handed.pop(tp, None)
            self._stored.pop(tp, None)

    def _assignment(self, consumer: Consumer) -> list[TopicPartition]:
        """Every partition of our topics, at its committed offset (or the start)."""
        while True:
            trio.from_thread.check_cancelled()
            try:
                partitions = [
                    TopicPartition(topic, partition)
                    for topic in self.topics
                    for partition in sorted(
                        consumer.list_topics(topic, timeout=10).topics[topic].partitions
                    )
                ]
                committed = consumer.committed(partitions, timeout=10)
            except (KafkaException, KeyError) as exc:
                log.warning("kafka.assign_waiting", group=self.group_id, error=str(exc))
                time.sleep(2)
                continue
            if partitions:
                break
            time.sleep(2)
        for tp in committed:
            if tp.topic in self._from_beginning:
                tp.offset = OFFSET_BEGINNING
        self._adopt_legacy_offsets(committed)
        return committed

    def _adopt_legacy_offsets(self, committed: list[TopicPartition]) -> None:
        """Offsets a topic had under its former group, when ours has none for it."""
        missing: dict[str, list[TopicPartition]] = {}
        for tp in committed:
            if tp.offset < 0 and tp.topic in self._legacy_groups and tp.offset != OFFSET_BEGINNING:
                missing.setdefault(self._legacy_groups[tp.topic], []).append(tp)
        for group, partitions in missing.items():
            former = Consumer({**self._config, "group.id": group})
            try:
                found = former.committed(
                    [TopicPartition(tp.topic, tp.partition) for tp in partitions], timeout=10
                )
            except KafkaException as exc:
                log.warning("kafka.legacy_offsets_unread", group=group, error=str(exc))
                continue
            finally:
                former.close()
            offsets = {(tp.topic, tp.partition): tp.offset for tp in found if tp.offset >= 0}
            for tp in partitions:
                tp.offset = offsets.get((tp.topic, tp.partition), tp.offset)
            if offsets:
                log.info("kafka.legacy_offsets_adopted", group=group, partitions=len(offsets))

    def _open(self) -> Consumer:
        consumer = Consumer(self._config)
        if not self._assign:
            consumer.subscribe(
                self.topics,
                on_assign=self._on_assign,
                on_revoke=self._on_revoke,
                on_lost=self._on_lost,
            )
            return consumer
        partitions = self._assignment(consumer)
        consumer.assign(partitions)
        self.assigned = [(tp.topic, tp.partition) for tp in partitions]
        log.info("kafka.assigned", group=self.group_id, partitions=_names(partitions))
        return consumer

    def _apply_withhold(self, consumer: Consumer) -> None:
        withheld = self._withheld
        if withheld != self._paused_withheld:
            consumer.pause([tp for tp in consumer.assignment() if tp.topic in withheld])
            self._paused_withheld = withheld

    def _loop(self, channel: trio.MemorySendChannel[list[Record]]) -> None:
        self.native_id = threading.get_native_id()
        consumer = self._open()
        try:
            self.wakeup = Wakeup.open(consumer, str(self._config.get("client.id", "rdkafka")))
            while True:
                trio.from_thread.check_cancelled()
                self._apply_commands(consumer)
                self._apply_withhold(consumer)
                if self._held and self._hand_over(channel, self._held):
                    self._held = []
                if not self._held and self.paused:
                    consumer.resume(
                        [tp for tp in consumer.assignment() if tp.topic not in self._withheld]
                    )
                    self.paused = False
                messages = self._next_batch(consumer)
                withheld = self._withheld
                records = [
                    _record(m) for m in messages if self._usable(m) and m.topic() not in withheld
                ]
                if not records:
                    continue
                # A busy agent takes the batch within moments: wait for it rather
                # than pause, as a resume waits out a fetch already parked at the
                # broker for up to FETCH_WAIT_MS (jobs/s fell tenfold).
                if self._held or not self._hand_over(channel, records, wait=_HAND_OVER_SECONDS):
                    self._held += records
                    if not self.paused:
                        # The agent has no room: stop fetching but keep polling, so
                        # the group still sees this member alive.
                        consumer.pause(consumer.assignment())
                        self.paused = True
                        self.pauses += 1
        finally:
            self._apply_commands(consumer)
            wakeup, self.wakeup = self.wakeup, None
            if wakeup is not None:
                wakeup.close()
            consumer.close()

    def _next_batch(self, consumer: Consumer) -> list[Message]:
        """The records that arrive within the poll timeout, as soon as the first does."""
        wakeup = self.wakeup
        if wakeup is None or self._held:
            first = consumer.poll(_HELD_POLL_SECONDS if self._held else _POLL_SECONDS)
        else:
            # A timeout of 0 is served in one call (no 200 ms slices). Only once the
            # queue is empty does the thread sleep: librdkafka writes to the pipe
            # when it next gets something, including between this poll and the wait.
            first = consumer.poll(0)
            if first is None:
                wakeup.wait(_IDLE_WAIT_SECONDS)
                return []
        if first is None:
            return []
        return [first, *consumer.consume(self._batch - 1, 0)] if self._batch > 1 else [first]

    def _usable(self, message: Message) -> bool:
        error = message.error()
        if error is None:
            return True
        if error.code() != KafkaError._PARTITION_EOF:
            log.warning("kafka.consume_error", group=self.group_id, error=error.str())
        return False


async def _send_within(
    channel: trio.MemorySendChannel[list[Record]], records: list[Record], seconds: float
) -> None:
    """Raises trio.WouldBlock when the channel has no room within `seconds`."""
    with trio.move_on_after(seconds):
        await channel.send(records)
        return
    raise trio.WouldBlock


def _names(partitions: list[TopicPartition]) -> list[str]:
    return [f"{tp.topic}[{tp.partition}]" for tp in partitions]
