"""The durable feed of job changes a transport delivers (results, events).

The store appends an entry in the same transaction as each change; a
transport reads its entries in order, delivers them, and acknowledges them,
which prunes them. After a crash the feed starts again at the first entry
not acknowledged: nothing is skipped, and only entries in flight at the
crash come twice, so delivery must be idempotent.

`OutboxDelivery` is how every transport delivers its feed: retried with
backoff, an entry that cannot be delivered is parked (health and the log say
why), never fatal. `event_data` bounds the result an event carries.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import orjson
import structlog
import trio
from prometheus_client import Counter

from agent.core import metrics
from agent.core.health import Status
from agent.jobs import OutboxEntry, utc_now

log = structlog.get_logger("agent.core.outbox")


@dataclass(frozen=True)
class OutboxInterest:
    """What a consumer (a transport) wants in its outbox."""

    all_jobs: bool = False  # also jobs other transports brought in
    progress: bool = False  # also progress entries (most consumers want outcomes only)
    # "running" entries: a consumer that only delivers outcomes (the spool) skips
    # them, a third fewer rows written, read and pruned per job.
    running: bool = True


class OutboxSource(Protocol):
    """The part of the job store an outbox reads."""

    async def outbox_entries(self, consumer: str, after_id: int, limit: int) -> list[OutboxEntry]:
        """Entries after `after_id`, oldest first."""

    async def ack_outbox(self, consumer: str, up_to_id: int) -> None:
        """Prune the consumer's entries up to and including `up_to_id`."""

    def outbox_changed(self, consumer: str) -> trio.Event:
        """An event set by the next commit that adds entries for `consumer`."""


class Outbox:
    """One consumer's view: `async for batch in outbox`, then `await outbox.ack(id)`."""

    def __init__(self, source: OutboxSource, consumer: str, *, batch: int = 256) -> None:
        self._source = source
        self.consumer = consumer
        self._batch = batch
        self._after = 0  # the last entry handed out by this reader
        # Set once a read finds nothing new: what was there at start is handed out.
        self.caught_up = trio.Event()

    def __aiter__(self) -> Outbox:
        return self

    async def __anext__(self) -> list[OutboxEntry]:
        """The next entries, oldest first; waits while there are none."""
        while True:
            # Taken before the read: a commit between the read and the wait sets it.
            changed = self._source.outbox_changed(self.consumer)
            entries = await self._source.outbox_entries(self.consumer, self._after, self._batch)
            if entries:
                self._after = entries[-1].id
                return entries
            self.caught_up.set()
            await changed.wait()

    async def ack(self, up_to_id: int) -> None:
        """Everything up to `up_to_id` is delivered."""
        await self._source.ack_outbox(self.consumer, up_to_id)


# -- delivering an outbox, never fatally --

Deliver = Callable[[list[OutboxEntry]], Awaitable[None]]

PARKED = Counter(
    "hostagent_outbox_parked",
    "Outbox entries given up after repeated delivery failures (the outcome stays in the store)",
    ["consumer"],
    registry=metrics.REGISTRY,
)
DELIVERY_FAILURES = Counter(
    "hostagent_outbox_delivery_failures",
    "Failed attempts to deliver outbox entries (retried with backoff)",
    ["consumer"],
    registry=metrics.REGISTRY,
)
# A parked entry keeps its consumer's health degraded this long.
PARKED_RECENT_SECONDS = 3600.0


@dataclass(frozen=True)
class RetryPolicy:
    """How often an entry that fails to deliver is tried before it is parked."""

    attempts: int = 6  # with the delays below: parked about 15 s after the first failure
    first_delay: float = 0.5
    max_delay: float = 30.0


@dataclass(frozen=True)
class ParkedEntry:
    """An entry given up on: acknowledged undelivered, with the reason."""

    entry_id: int
    job_id: str
    event: str
    reason: str
    at: str


def _never_waits(exc: Exception) -> bool:
    return False


class OutboxDelivery:
    """Runs one consumer's outbox through `deliver`; no entry can end it.

    A batch that fails is delivered again one entry at a time, so a poisoned
    entry holds up no other. An entry that keeps failing is retried with
    backoff `policy.attempts` times, then parked: acknowledged undelivered,
    logged (`<consumer>.delivery_parked`) and counted with its reason, and shown
    in the consumer's health (`health()`); the job's outcome stays in the store
    (GET /api/v1/jobs/{id}/result). An error `waits(exc)` calls a condition of
    the host (a full disk) is retried with backoff without end, never parked:
    the entry is delivered once the host recovers. `deliver` must be idempotent
    (the outbox hands entries in flight at a crash out again)."""

    def __init__(
        self,
        outbox: Outbox,
        deliver: Deliver,
        *,
        policy: RetryPolicy | None = None,
        waits: Callable[[Exception], bool] = _never_waits,
        keep: int = 20,
    ) -> None:
        self._outbox = outbox
        self._deliver = deliver
        self.policy = policy or RetryPolicy()
        self._waits = waits
        self.consumer = outbox.consumer
        self.parked: deque[ParkedEntry] = deque(maxlen=keep)  # the latest, for health
        self.parked_total = 0
        self._parked_at: float | None = None  # trio time of the latest
        self.retrying: str | None = None  # the error being retried now
        self._failed_event = f"{self.consumer}.delivery_failed"
        self._parked_event = f"{self.consumer}.delivery_parked"

    async def run(self) -> None:
        """Deliver and acknowledge every entry, for ever."""
        async for batch in self._outbox:
            await self.deliver(batch)
            await self._outbox.ack(batch[-1].id)

    async def deliver(self, batch: list[OutboxEntry]) -> None:
        """Deliver `batch`; returns once each entry is delivered or parked, and raises
        nothing but cancellation. For a transport that acknowledges by itself (several
        batches in flight); `run` is this, then the acknowledgement."""
        try:
            await self._deliver(batch)
        except Exception as exc:  # noqa: BLE001 (each entry is tried alone, below)
            self._failed(exc, batch[0], entries=len(batch), retry_in=0.0)
            for entry in batch:
                await self._deliver_one(entry)
        self.retrying = None

    async def _deliver_one(self, entry: OutboxEntry) -> None:
        failures = waited = 0
        while True:
            try:
                await self._deliver([entry])
            except Exception as exc:  # noqa: BLE001 (retried, then parked: never fatal)
                if self._waits(exc):
                    waited += 1
                    delay = self._delay(waited)
                else:
                    failures += 1
                    if failures >= self.policy.attempts:
                        self._park(entry, exc)
                        return
                    delay = self._delay(failures)
                self._failed(exc, entry, entries=1, retry_in=delay)
                await trio.sleep(delay)
            else:
                return

    def _delay(self, attempt: int) -> float:
        return float(min(self.policy.max_delay, self.policy.first_delay * 2 ** max(attempt - 1, 0)))

    def _failed(self, exc: Exception, entry: OutboxEntry, *, entries: int, retry_in: float) -> None:
        DELIVERY_FAILURES.labels(self.consumer).inc()
        self.retrying = _reason(exc)
        log.warning(
            self._failed_event,
            consumer=self.consumer,
            job_id=entry.job_id,
            entry=entry.event,
            entries=entries,
            error=self.retrying,
            retry_in=retry_in,
        )

    def _park(self, entry: OutboxEntry, exc: Exception) -> None:
        reason = _reason(exc)
        self.parked.append(ParkedEntry(entry.id, entry.job_id, entry.event, reason, utc_now()))
        self.parked_total += 1
        self._parked_at = trio.current_time()
        self.retrying = None
        PARKED.labels(self.consumer).inc()
        log.error(
            self._parked_event,
            consumer=self.consumer,
            job_id=entry.job_id,
            entry=entry.event,
            entry_id=entry.id,
            attempts=self.policy.attempts,
            error=reason,
        )

    def health(self) -> tuple[Status, str, dict[str, Any]]:
        """Degraded while an entry is being retried, or for a while after one was parked."""
        figures: dict[str, Any] = {"parked_total": self.parked_total}
        if self.parked:
            figures["parked"] = [asdict(item) for item in self.parked]
        if self.retrying is not None:
            return "degraded", f"delivery failing, retrying: {self.retrying}", figures
        recent = self._parked_at is not None and (
            trio.current_time() - self._parked_at < PARKED_RECENT_SECONDS
        )
        if recent:
            latest = self.parked[-1]
            return (
                "degraded",
                f"{self.parked_total} outbox entries parked undelivered "
                f"(latest: job {latest.job_id}, {latest.reason})",
                figures,
            )
        return "healthy", "outbox delivered", figures


def _reason(exc: Exception) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text.encode(errors="backslashreplace").decode()[:500]


# -- results in events --

RESULT_URL = "/api/v1/jobs/{job_id}/result"


def json_size(value: Any) -> int:
    """Bytes of `value` as compact JSON (what an event carrying it costs)."""
    try:
        return len(orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS))
    except TypeError:  # beyond orjson (an integer over 64 bits, a lone surrogate)
        return len(json.dumps(value, separators=(",", ":"), default=str).encode())


def event_data(entry: OutboxEntry, *, max_result_bytes: int) -> dict[str, Any]:
    """The entry's data as an event carries it: a completed job's result up to
    `max_result_bytes` of JSON (config `max_event_result_bytes`); beyond it the
    result is left out, and `result_truncated`, `result_bytes` and `result_url`
    (GET /api/v1/jobs/{id}/result) say so and where to read it."""
    if entry.event != "completed" or entry.data.get("result") is None:
        return entry.data
    size = json_size(entry.data["result"])
    if size <= max_result_bytes:
        return entry.data
    return {
        **entry.data,
        "result": None,
        "result_truncated": True,
        "result_bytes": size,
        "result_url": RESULT_URL.format(job_id=entry.job_id),
    }
