"""The Kafka transport: jobs in from host, pool and broadcast topics; events out.

One consumer reads what this agent alone reads (its host topic, the broadcast
topic, the fleet records) by assignment, with no group traffic; one consumer
per pool is a member of the pool's group; each is owned by its thread. One
idempotent producer sends events, capabilities and heartbeats. Events come from
the durable outbox, so a broker outage or a crash delays them and loses none.
The agent never exits because of Kafka: while no broker answers, the
transport retries and its health component says degraded.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any, cast

import structlog
import trio
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from agent.core.outbox import Outbox, OutboxInterest, event_data
from agent.errors import DrainingError, RefusedForNowError, UnavailableError
from agent.jobs import OutboxEntry, utc_now
from agent.transports.kafka.announce import Announcer
from agent.transports.kafka.consumer import ConsumerThread, Record
from agent.transports.kafka.events import TERMINAL, EventType, ProgressGate, event_value
from agent.transports.kafka.heartbeat import SIZE_KEY, decommission_key
from agent.transports.kafka.intake import TRANSPORT, Examiner, Signed, Sorted
from agent.transports.kafka.producer import Delivery, EventProducer, Outgoing, refused
from agent.transports.kafka.settings import KafkaConfig
from agent.transports.kafka.signing import TrustedKey, Verifier, load_public_key
from agent.transports.kafka.topics import Topics

if TYPE_CHECKING:
    from agent.core.intake import TransportIntake

log = structlog.get_logger("agent.transports.kafka")

_RETRY_SECONDS = 2.0
# Backoff between attempts at an event the brokers refused, doubling up to this.
_MAX_BACKOFF_SECONDS = 30.0
# Parked events remembered for health (the log has them all).
_PARKED_KEPT = 10
# Outbox batches sent and not yet acknowledged by the brokers: one round trip
# per batch at a time held the event rate to ~100 batches/s.
_BATCHES_IN_FLIGHT = 16
# How often a full pending queue is looked at again.
_ROOM_POLL_SECONDS = 0.05
# A consumed batch and its job records' signature checks (fleet records are not jobs).
_Checked = tuple[list[Record], list[Signed]]
# Heartbeats are only interesting for a few intervals (compacted too, so a reader
# finds about one per host plus the last minute's); capabilities are compacted.
_HEARTBEAT_RETENTION_MS = "600000"
# A tombstone stays this long: a full read of the map (seconds) always sees it.
_TOMBSTONE_RETENTION_MS = "86400000"


class KafkaTransport:
    name = TRANSPORT

    def __init__(
        self,
        settings: KafkaConfig,
        *,
        worker_id: str,
        labels: dict[str, str],
        max_result_bytes: int,
    ) -> None:
        self.settings = settings
        self.max_result_bytes = max_result_bytes
        # Checked at start: a key that does not load is a config error, not a reject later.
        self.verifier = (
            Verifier(
                [
                    TrustedKey(k.id, load_public_key(k.public_key, field="kafka.keys.public_key"),
                               frozenset(k.scopes))
                    for k in settings.keys
                ],
                max_age_seconds=settings.signature_max_age_seconds,
            )
            if settings.keys
            else None
        )  # fmt: skip
        # Events the brokers would not take, after every attempt: (when, job, event, reason).
        self.parked: list[dict[str, Any]] = []
        self.parked_total = 0
        # Events of its own jobs (and of every job, if asked), progress included.
        self.outbox = OutboxInterest(all_jobs=settings.events_for_all_jobs, progress=True)
        self.worker_id = worker_id
        self.labels = {**labels, **settings.selector_labels}
        self.topics = Topics(settings.topic_prefix)
        # Checks that worker_id and pools make legal topic names before anything starts.
        self._own_topics = [self.topics.host(worker_id), self.topics.broadcast]
        self._pools = {pool: self.topics.pool(pool) for pool in settings.pools}
        self.producer: EventProducer | None = None
        self.consumers: list[ConsumerThread] = []
        self.topics_ready = False
        self._gate = ProgressGate(settings.progress_interval_seconds)
        # Decommission markers older than this process are for an earlier life of it.
        self._started_ms = int(time.time() * 1000)
        self.decommissioned_at: str | None = None
        self._announcer: Announcer | None = None
        self._pool_scopes: list[trio.CancelScope] = []

    def features(self) -> list[str]:
        return ["kafka"]

    async def health(self) -> tuple[Any, str, dict[str, Any]]:
        """Degraded (never unhealthy) while no broker answers: local work goes on."""
        producer = self.producer
        figures: dict[str, Any] = {
            "bootstrap_servers": self.settings.bootstrap_servers,
            "assigned_partitions": sum(len(c.assigned) for c in self.consumers),
            "paused": any(c.paused for c in self.consumers),
            "require_signatures": self.settings.require_signatures,
            "trusted_keys": len(self.settings.keys),
            "parked_events": self.parked_total,
        }
        if self.parked:
            figures["last_parked"] = self.parked[-1]
        if self._announcer is not None:
            figures["heartbeat_interval_seconds"] = round(self._announcer.interval, 1)
            figures["fleet_hosts"] = self._announcer.fleet_hosts
        if self.decommissioned_at is not None:
            figures["decommissioned_at"] = self.decommissioned_at
            return (
                "degraded",
                f"decommissioned from the fleet at {self.decommissioned_at}: takes no fleet "
                "jobs (restart the agent to rejoin)",
                figures,
            )
        if producer is None:
            return "degraded", "starting", figures
        figures["unsent_messages"] = producer.queued
        if producer.unreachable_since is not None:
            seconds = round(time.monotonic() - producer.unreachable_since, 1)
            figures["last_error"] = producer.last_error
            return "degraded", f"no Kafka broker answers (for {seconds} s)", figures
        if not self.topics_ready:
            return "degraded", "waiting for the brokers to create topics", figures
        if self.settings.require_signatures and self.verifier is None:
            return "degraded", "no kafka.keys: every job is rejected as unsigned", figures
        return "healthy", "connected", figures

    async def run(
        self,
        intake: TransportIntake,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve until cancelled; started at once, even while the brokers are away."""
        config = self.settings.client_config()
        producer = EventProducer(config, name=f"hostagent-{self.worker_id}")
        self.producer = producer
        capabilities = await intake.capabilities()
        examiner = Examiner(
            worker_id=self.worker_id,
            events_topic=self.topics.events,
            labels=self.labels,
            operations=frozenset(capabilities["operations"]),
            verifier=self.verifier,
            require_signatures=self.settings.require_signatures,
        )
        if self.settings.require_signatures and self.verifier is None:
            log.warning("kafka.no_keys", reason="kafka.require_signatures and no kafka.keys")
        announcer = Announcer(
            producer,
            self.settings,
            worker_id=self.worker_id,
            labels=self.labels,
            capabilities=intake.capabilities,
            health=intake.health,
            changed=intake.capabilities_changed,
        )
        self._announcer = announcer
        await self._serve(
            intake,
            producer,
            outbox=intake.outbox(TRANSPORT),
            announcer=announcer,
            examiner=examiner,
            task_status=task_status,
        )

    async def _serve(
        self,
        intake: TransportIntake,
        producer: EventProducer,
        *,
        outbox: Outbox,
        announcer: Announcer,
        examiner: Examiner,
        task_status: trio.TaskStatus[None],
    ) -> None:
        config = self.settings.client_config()
        async with trio.open_nursery() as nursery:
            await nursery.start(producer.run)
            nursery.start_soon(self._deliver_outbox, outbox, producer)
            task_status.started()
            if self.settings.create_topics:
                await self._ensure_topics(config)
            self.topics_ready = True
            nursery.start_soon(announcer.run)
            own = ConsumerThread(
                config,
                topics=[*self._own_topics, self.topics.fleet],
                group_id=self.topics.host_group(self.worker_id),
                instance_id=self.worker_id,
                batch=self.settings.intake_batch,
                assign=True,
                from_beginning=[self.topics.fleet],
                # Before one consumer read both, broadcast offsets had a group of their own.
                legacy_groups={self.topics.broadcast: self.topics.broadcast_group(self.worker_id)},
            )
            await self._consume(nursery, intake, examiner, own)
            for pool, topic in self._pools.items():
                consumer = ConsumerThread(
                    config,
                    topics=[topic],
                    group_id=self.topics.pool_group(pool),
                    instance_id=self.worker_id,
                    batch=self.settings.intake_batch,
                )
                scope = trio.CancelScope()
                self._pool_scopes.append(scope)
                await self._consume(nursery, intake, examiner, consumer, scope=scope)

    async def _consume(
        self,
        nursery: trio.Nursery,
        intake: TransportIntake,
        examiner: Examiner,
        consumer: ConsumerThread,
        *,
        scope: trio.CancelScope | None = None,
    ) -> None:
        self.consumers.append(consumer)
        send, receive = trio.open_memory_channel[list[Record]](1)
        checked_send, checked_receive = trio.open_memory_channel[_Checked](1)

        async def run(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            with scope or trio.CancelScope():
                async with trio.open_nursery() as inner:
                    await inner.start(consumer.run, send)
                    inner.start_soon(self._check, examiner, receive, checked_send)
                    task_status.started()
                    await self._take(intake, examiner, consumer, checked_receive)

        await nursery.start(run)

    async def _check(
        self,
        examiner: Examiner,
        receive: trio.MemoryReceiveChannel[list[Record]],
        send: trio.MemorySendChannel[_Checked],
    ) -> None:
        """Check each batch's signatures on a worker thread (~0.1-0.2 ms of CPU a record,
        without the GIL) while `_take` makes the batch before it durable: the two
        overlap, and the consumer hands its next batch over sooner."""
        async with send:
            async for batch in receive:
                jobs = [record for record in batch if record.topic != self.topics.fleet]
                checked = await trio.to_thread.run_sync(examiner.signatures, jobs) if jobs else []
                await send.send((batch, checked))

    async def _take(
        self,
        intake: TransportIntake,
        examiner: Examiner,
        consumer: ConsumerThread,
        receive: trio.MemoryReceiveChannel[_Checked],
    ) -> None:
        """Make each batch durable (or answered), then let its offsets commit."""
        async for batch, checked in receive:
            by_kind: dict[str, tuple[list[Record], list[Signed]]] = {}
            signatures = iter(checked)
            for record in batch:
                if record.topic == self.topics.fleet:
                    self._fleet_record(record)
                else:
                    records, signed = by_kind.setdefault(self.topics.kind(record.topic), ([], []))
                    records.append(record)
                    signed.append(next(signatures))
            if self.decommissioned_at is not None:
                # Not stored: these jobs wait on their topic for the host to rejoin.
                continue
            for kind, (records, signed) in by_kind.items():
                sorted_ = await self._sort(intake, examiner, records, kind, signed)
                assert self.producer is not None
                await self._settle(self.producer, sorted_.events)
            consumer.store(batch)

    @staticmethod
    async def _sort(
        intake: TransportIntake,
        examiner: Examiner,
        records: list[Record],
        kind: str,
        checked: list[Signed],
    ) -> Sorted:
        """The records of one kind of topic made durable (or answered), tried until they are."""
        while True:
            try:
                return await examiner.sort(intake, records, kind, checked)
            except DrainingError:
                # Nothing was recorded and nothing is committed: the next start (or
                # another member of the group) reads these records again.
                await trio.sleep_forever()
            except RefusedForNowError:
                # Another transport took the room wait_for_room saw, or the disk is full.
                # Meanwhile the consumer pauses (this channel is full) and keeps its group seat.
                await trio.sleep(_ROOM_POLL_SECONDS)
            except Exception:
                # Not a record's doing (each record's failures end in its rejection):
                # the store, or a bug. Nothing is committed; the batch is tried again
                # (what went in is a duplicate then) and the agent lives.
                log.exception("kafka.batch_failed", records=len(records))
                await trio.sleep(_RETRY_SECONDS)

    def _fleet_record(self, record: Record) -> None:
        """A record of <prefix>.fleet: the fleet's size, or a decommission marker."""
        key = (record.key or b"").decode(errors="replace")
        try:
            value = json.loads(record.value) if record.value else None
        except ValueError:
            log.warning("kafka.fleet_record_unreadable", key=key, offset=record.offset)
            return
        if not isinstance(value, dict):
            return
        if key == SIZE_KEY and isinstance(value.get("hosts"), int) and self._announcer:
            self._announcer.fleet_hosts = value["hosts"]
            log.info("kafka.fleet_size", hosts=value["hosts"], interval=self._announcer.interval)
        elif key == decommission_key(self.worker_id) and record.timestamp_ms > self._started_ms:
            self._decommissioned(str(value.get("at") or utc_now()))

    def _decommissioned(self, at: str) -> None:
        """The fleet removed this running host: take no more fleet jobs, say so, go on
        heartbeating (the map shows it as decommissioned-but-alive)."""
        if self.decommissioned_at is not None:
            return
        self.decommissioned_at = at
        if self._announcer is not None:
            self._announcer.decommissioned_at = at
        for consumer in self.consumers:
            consumer.withhold(self._own_topics)
        for scope in self._pool_scopes:
            scope.cancel()  # leaves the pools' groups: their jobs go to the other members
        log.warning(
            "kafka.decommissioned",
            at=at,
            reason="the fleet removed this host while it runs: it takes no fleet jobs "
            "until restarted; local jobs go on",
        )

    async def _settle(
        self, producer: EventProducer, messages: list[Outgoing], delivery: Delivery | None = None
    ) -> None:
        """Wait until the brokers have `messages` (sent as `delivery`, or now).

        While no broker answers, everything is sent again, in order, until one does.
        When the brokers refuse messages as such (too large, invalid), each message
        that failed is sent again on its own: the brokers judge a record batch
        whole, so its neighbours may have failed only for being batched with it.
        """
        while True:
            if delivery is None:
                delivery = await producer.submit(messages)
            try:
                await delivery.wait()
            except UnavailableError as exc:
                log.warning("kafka.send_failed", error=exc.message, failed=len(delivery.failed))
            else:
                return
            if any(refused(error) for error in delivery.failed.values()):
                for index in sorted(delivery.failed):
                    await self._send_alone(producer, messages[index])
                return
            # The brokers were away: all again, in order (readers drop repeats by event_id).
            await trio.sleep(_RETRY_SECONDS)
            delivery = None

    async def _send_alone(self, producer: EventProducer, message: Outgoing) -> None:
        """One message until the brokers take it; refused `event_attempts` times with
        backoff, it is parked: logged, counted in health, and passed over."""
        attempts = 0
        while True:
            delivery = await producer.submit([message])
            try:
                await delivery.wait()
            except UnavailableError:
                error = delivery.failed[0]
            else:
                return
            if refused(error):
                attempts += 1
                if attempts >= self.settings.event_attempts:
                    self._park(message, error)
                    return
                backoff = _RETRY_SECONDS * 2 ** (attempts - 1)
            else:
                backoff = _RETRY_SECONDS
            await trio.sleep(min(backoff, _MAX_BACKOFF_SECONDS))

    def _park(self, message: Outgoing, error: KafkaError) -> None:
        topic, key, value = message
        job_id = key.decode(errors="replace") if isinstance(key, bytes) else key
        event = _event_type(value)
        parked = {
            "at": utc_now(),
            "topic": topic,
            "job_id": job_id,
            "event_type": event,
            "bytes": len(value or b""),
            "reason": f"{error.name()}: {error.str()}",
        }
        self.parked_total += 1
        self.parked = [*self.parked[-(_PARKED_KEPT - 1) :], parked]
        log.error("kafka.event_parked", **parked)

    async def _deliver_outbox(self, outbox: Outbox, producer: EventProducer) -> None:
        """Outbox entries to job events, several batches in flight, acknowledged in order."""
        send, receive = trio.open_memory_channel[tuple[Delivery, list[Outgoing], int]](
            _BATCHES_IN_FLIGHT
        )
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._acknowledge, outbox, producer, receive)
            async with send:
                async for batch in outbox:
                    messages = self._events_of(batch)
                    await send.send((await producer.submit(messages), messages, batch[-1].id))

    async def _acknowledge(
        self,
        outbox: Outbox,
        producer: EventProducer,
        receive: trio.MemoryReceiveChannel[tuple[Delivery, list[Outgoing], int]],
    ) -> None:
        async for delivery, messages, last_id in receive:
            # A failure comes only after message.timeout.ms, or for a message refused.
            await self._settle(producer, messages, delivery)
            await outbox.ack(last_id)

    def _events_of(self, batch: list[OutboxEntry]) -> list[Outgoing]:
        messages: list[Outgoing] = []
        for entry in batch:
            if entry.event == "progress" and not self._gate.allow(entry.job_id, time.monotonic()):
                continue
            if entry.event in TERMINAL:
                self._gate.forget(entry.job_id)
            value = self._event(entry, entry.data)
            # Smaller than the limit as a whole: its result is too (no second encoding).
            if len(value) > self.max_result_bytes and "result" in entry.data:
                value = self._event(
                    entry, event_data(entry, max_result_bytes=self.max_result_bytes)
                )
            messages.append((self.topics.events, entry.job_id, value))
        return messages

    def _event(self, entry: OutboxEntry, data: dict[str, Any]) -> bytes:
        return event_value(
            type=cast("EventType", entry.event),
            worker_id=self.worker_id,
            job_id=entry.job_id,
            status=str(entry.state.status),
            timestamp=_when(entry),
            data=data,
            operation=entry.state.operation,
            # The outbox id is stable across re-sends: readers drop repeats by it.
            event_id=f"{self.worker_id}:{entry.id}",
        )

    async def _ensure_topics(self, config: dict[str, Any]) -> None:
        """Create the topics this agent uses (existing ones are left as they are)."""
        partitions, replicas = self.settings.partitions, self.settings.replication_factor
        wanted = [
            # One reader: more partitions would only cost every fetch more bytes.
            NewTopic(self.topics.host(self.worker_id), num_partitions=1,
                     replication_factor=replicas),
            NewTopic(self.topics.broadcast, num_partitions=partitions,
                     replication_factor=replicas),
            *(NewTopic(topic, num_partitions=partitions, replication_factor=replicas)
              for topic in self._pools.values()),
            *fleet_topics(self.settings),
        ]  # fmt: skip
        # Closed on leaving, not when collected: a topic that exists (every restart)
        # leaves a cycle through its future's traceback, which kept this client and
        # its four threads waking every second until the cyclic GC ran.
        with AdminClient(config) as admin:
            while True:
                missing = await trio.to_thread.run_sync(_create_topics, admin, wanted)
                if not missing:
                    return
                log.warning("kafka.topics_not_created", topics=missing)
                await trio.sleep(_RETRY_SECONDS)


def fleet_topics(settings: KafkaConfig) -> list[NewTopic]:
    """The topics every agent shares: job events and the fleet map's four."""
    topics = Topics(settings.topic_prefix)
    replicas = settings.replication_factor
    compacted = {
        "cleanup.policy": "compact",
        "segment.ms": "3600000",
        "min.cleanable.dirty.ratio": "0.1",
        "delete.retention.ms": _TOMBSTONE_RETENTION_MS,
    }
    return [
        NewTopic(topics.events, num_partitions=settings.partitions, replication_factor=replicas),
        NewTopic(topics.capabilities, num_partitions=1, replication_factor=replicas,
                 config=compacted),
        NewTopic(topics.schemas, num_partitions=1, replication_factor=replicas,
                 config=compacted),
        # The broker's clock stamps a decommission marker, which an agent compares
        # with its own start.
        NewTopic(topics.fleet, num_partitions=1, replication_factor=replicas,
                 config={**compacted, "message.timestamp.type": "LogAppendTime"}),
        NewTopic(topics.heartbeats, num_partitions=1, replication_factor=replicas,
                 config={"cleanup.policy": "compact,delete", "retention.ms":
                         _HEARTBEAT_RETENTION_MS, "segment.ms": "60000",
                         "min.cleanable.dirty.ratio": "0.1"}),
    ]  # fmt: skip


def _create_topics(admin: AdminClient, wanted: list[NewTopic]) -> list[str]:
    """Blocking: create `wanted`; answer the topics still missing."""
    missing = []
    for topic, future in admin.create_topics(wanted, operation_timeout=10).items():
        try:
            future.result(timeout=15)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                missing.append(topic)
        except Exception:  # noqa: BLE001 (a timeout: the brokers are away, try again)
            missing.append(topic)
    return missing


def _event_type(value: bytes | None) -> str | None:
    try:
        event = json.loads(value or b"null")
    except ValueError:
        return None
    return event.get("type") if isinstance(event, dict) else None


def _when(entry: OutboxEntry) -> str:
    """When the change happened, as the job's state records it."""
    state = entry.state
    moment = {
        "accepted": state.submitted_at,
        "running": state.started_at,
    }.get(entry.event, state.completed_at if entry.event in TERMINAL else None)
    return moment or utc_now()
