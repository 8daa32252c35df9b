"""The Producer, used from trio: idempotent, acks=all, delivery reports awaited.

`produce()` is thread-safe and never blocks; a worker thread polls for
delivery reports and errors while messages are in flight, and a batch's waiter
is woken once, by its last report, through the trio token (a wake-up per
message cost more than the send). With nothing in flight nothing polls:
confluent-kafka's poll() wakes every 200 ms whatever its timeout, which was
most of an idle agent's wake-ups. An error the brokers cause meanwhile is
served with the next message's reports (a heartbeat at the latest).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Sequence
from typing import Any

import structlog
import trio
from confluent_kafka import KafkaError, KafkaException, Message, Producer

from agent.errors import UnavailableError

log = structlog.get_logger("agent.transports.kafka")

# One message to send: topic, key, value (None: a tombstone).
Outgoing = tuple[str, str | bytes | None, bytes | None]
# Errors meaning "no broker answers" rather than "this message is wrong".
_UNREACHABLE = {KafkaError._ALL_BROKERS_DOWN, KafkaError._TRANSPORT, KafkaError._RESOLVE}
# A delivery that failed with one of these is worth trying again as it is: the
# brokers were away (message.timeout.ms passed), not the message at fault.
_TRY_AGAIN = {*_UNREACHABLE, KafkaError._MSG_TIMED_OUT, KafkaError._TIMED_OUT}
# Shutdown waits this long for messages still queued (the outbox re-sends the rest).
_FLUSH_SECONDS = 5.0
_POLL_SECONDS = 1.0


def refused(error: KafkaError) -> bool:
    """The brokers (or the producer) will not take this message as it is: too large,
    invalid, not authorised. Sending it again unchanged waits for an operator."""
    return error.code() not in _TRY_AGAIN and not error.retriable()


class Delivery:
    """Messages queued together; `wait()` returns once the brokers have them all."""

    __slots__ = ("_lock", "done", "error", "failed", "remaining")

    def __init__(self, count: int) -> None:
        self.remaining = count
        # Delivery reports count down on the poll thread, refusals at produce() on trio's.
        self._lock = threading.Lock()
        self.error: KafkaError | None = None
        # Index in the batch -> why that message was not delivered.
        self.failed: dict[int, KafkaError] = {}
        self.done = trio.Event()

    async def wait(self) -> None:
        """Raises UnavailableError when a message could not be delivered
        (`failed` says which, and why)."""
        await self.done.wait()
        if self.error is not None:
            raise UnavailableError(
                f"Kafka did not take a message: {self.error.str()}",
                field="kafka.bootstrap_servers",
                reason=self.error.name(),
            )

    def fail(self, index: int, error: KafkaError) -> int:
        """Count a message as not delivered; answers how many are still awaited."""
        with self._lock:
            self.error = self.error or error
            self.failed[index] = error
            self.remaining -= 1
            return self.remaining

    def succeed(self) -> int:
        with self._lock:
            self.remaining -= 1
            return self.remaining


class EventProducer:
    """Sends messages and reports when the brokers have them (`send_many`)."""

    def __init__(self, client_config: dict[str, Any], *, name: str = "hostagent") -> None:
        config: dict[str, Any] = {
            "client.id": name,
            # Idempotence implies acks=all and in-order retries without duplicates.
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 5,
            # No compression: on small job events lz4 cost ~0.2 ms of agent CPU per job
            # (bench/kafka.py); a site short of bandwidth sets it in [kafka] librdkafka.
            # A broker outage only delays delivery: keep trying for a day, the outbox
            # re-sends anything that still fails.
            "message.timeout.ms": 86_400_000,
            "error_cb": self._on_error,
            **client_config,
        }
        self._producer = Producer(config)
        self._token: trio.lowlevel.TrioToken | None = None
        # Set when a message is queued: the poll thread runs until none is in flight.
        self._sent = trio.Event()
        # True while the poll thread runs (an idle agent polls nothing).
        self.polling = False
        # time.monotonic() when the brokers stopped answering; None while they answer.
        self.unreachable_since: float | None = None
        self.last_error: str | None = None
        self.delivered = 0

    def _on_error(self, error: KafkaError) -> None:
        # Poll thread. librdkafka reconnects by itself: this is only bookkeeping.
        self.last_error = error.str()
        if error.code() in _UNREACHABLE and self.unreachable_since is None:
            self.unreachable_since = time.monotonic()
            log.warning("kafka.unreachable", error=self.last_error)

    @property
    def queued(self) -> int:
        """Messages not yet acknowledged by the brokers."""
        return len(self._producer)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Poll for delivery reports whenever messages are in flight, until cancelled."""
        self._token = trio.lowlevel.current_trio_token()
        task_status.started()
        try:
            while True:
                await self._sent.wait()
                # Reset before polling: a message queued while the thread winds down
                # sets the new event, and the loop polls again.
                self._sent = trio.Event()
                await trio.to_thread.run_sync(self._poll_while_in_flight, abandon_on_cancel=False)
        finally:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(self._close)

    def _poll_while_in_flight(self) -> None:
        self.polling = True
        try:
            # len() counts messages not yet acknowledged and reports not yet served.
            while len(self._producer):
                trio.from_thread.check_cancelled()
                # Returns as soon as a delivery report is served; the timeout only
                # bounds how late a cancel is seen.
                self._producer.poll(_POLL_SECONDS)
        finally:
            self.polling = False

    def _close(self) -> None:
        left = self._producer.flush(_FLUSH_SECONDS)
        if left:
            log.warning("kafka.producer_unflushed", messages=left)
        # Stops librdkafka's own threads (and their reconnect attempts) now, not at GC.
        self._producer.close()

    async def send_many(self, messages: Sequence[Outgoing]) -> None:
        """Send `messages` in order; return once every one is acknowledged.

        Raises UnavailableError when a message cannot be delivered.
        """
        await (await self.submit(messages)).wait()

    async def submit(self, messages: Sequence[Outgoing]) -> Delivery:
        """Queue `messages` in order; the answer says when the brokers have them all.

        Lets a caller keep several batches in flight instead of one round trip each.
        """
        token = self._token or trio.lowlevel.current_trio_token()
        batch = Delivery(len(messages))
        if not messages:
            batch.done.set()
            return batch

        def report(index: int) -> Any:
            def delivered(error: KafkaError | None, _message: Message) -> None:
                # Poll thread: the only thread running callbacks.
                if error is not None:
                    left = batch.fail(index, error)
                else:
                    self.delivered += 1
                    if self.unreachable_since is not None:
                        self.unreachable_since = None
                        log.info("kafka.reachable")
                    left = batch.succeed()
                if left == 0:
                    with contextlib.suppress(trio.RunFinishedError):
                        token.run_sync_soon(batch.done.set)

            return delivered

        for index, (topic, key, value) in enumerate(messages):
            error = await self._produce(topic, key, value, report(index))
            # Refused before it was queued (larger than message.max.bytes...): this
            # message only; the rest of the batch goes on.
            if error is not None and batch.fail(index, error) == 0:
                batch.done.set()
        self._sent.set()
        return batch

    async def _produce(
        self, topic: str, key: str | bytes | None, value: bytes | None, callback: Any
    ) -> KafkaError | None:
        while True:
            try:
                self._producer.produce(topic, value=value, key=key, on_delivery=callback)
            except BufferError:
                # The local queue is full: the poll thread drains it as the brokers answer.
                self._sent.set()
                await trio.sleep(0.01)
            except KafkaException as exc:
                error: KafkaError = exc.args[0]
                log.warning("kafka.produce_refused", topic=topic, error=error.str())
                return error
            else:
                return None
