"""Publishing a job's start and outcome once its store write has committed.

A job safe to re-run does not wait for its bookkeeping (if the agent dies
first, recovery runs it again): its writes are handed to the CommitPublisher,
one task for all such jobs, which publishes them in the order they were queued.
A task per announcement cost more than a no-op job's whole run.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

import structlog
import trio

from agent.core import metrics
from agent.core.events import EventBus
from agent.core.jobstore import JobStore, Queued
from agent.jobs import JobState, JobStatus

log = structlog.get_logger("agent.core.dispatcher")


class CommitPublisher:
    """Publishes jobs' starts and outcomes, in order, as their store writes commit (the
    dispatcher's; not to be confused with the Kafka transport's Announcer)."""

    def __init__(
        self,
        store: JobStore,
        bus: EventBus,
        on_final: Callable[[JobState], None] | None = None,
    ) -> None:
        self._store = store
        self._bus = bus
        # Told of every final status once it is recorded (a parent awaiting its child).
        self._on_final = on_final
        # (write, job id, None for a start or what to call once an outcome is out).
        self._pending: deque[tuple[Queued, str, Callable[[], None] | None]] = deque()
        self._arrived = trio.lowlevel.ParkingLot()

    def later(self, write: Queued, job_id: str, then: Callable[[], None] | None = None) -> None:
        """Announce `write` once committed: a start, or (with `then`, called
        afterwards whatever happens) an outcome."""
        self._pending.append((write, job_id, then))
        if self._arrived:
            self._arrived.unpark()

    async def outcome(
        self, write: Queued, job_id: str, then: Callable[[], None], *, wait: bool
    ) -> None:
        """Announce a job's outcome, then call `then` whatever happens: now,
        once committed (`wait`), or later from the publisher's task."""
        if not wait:
            self.later(write, job_id, then)
            return
        try:
            await self.finished(write, job_id)
        finally:
            then()

    async def run(self) -> None:
        pending = self._pending
        while True:
            if not pending:
                await self._arrived.park()
                continue
            # Lazy: when the writer is idle, the write waits briefly to share the
            # next commit. Writes commit in queue order, so once the oldest is
            # in, every later one its commit took is announced without a wait.
            await self._store.settle(pending[0][0], lazy=True)
            while pending and pending[0][0].finished:
                write, job_id, then = pending.popleft()
                if then is None:
                    await self.started(write, job_id)
                else:
                    try:
                        await self.finished(write, job_id)
                    finally:
                        then()

    async def started(self, write: Queued, job_id: str) -> JobState | None:
        """Publish a job's start once committed; None if the job was no longer pending."""
        started: JobState | None = await self._store.settle(write)
        if started is None:
            log.warning("job.start_not_recorded", job_id=job_id)
            return None
        metrics.record_started(started)
        self.publish(started)
        return started

    async def finished(self, write: Queued, job_id: str) -> None:
        """Publish a job's outcome once committed, and log it."""
        final: JobState | None = await self._store.settle(write)
        if final is None:
            return
        self.publish(final)
        # Failures at warning, so `journalctl -p warning` lists them.
        emit = log.warning if final.status is JobStatus.FAILED else log.info
        emit(
            "job.finished",
            job_id=job_id,
            operation=final.operation,
            status=final.status.value,
            error=final.error,
            duration_seconds=metrics.job_duration(final),
        )

    def publish(self, state: JobState) -> None:
        """Count and broadcast a recorded status."""
        if state.status.terminal:
            metrics.record_finished(state)
            if self._on_final is not None:
                self._on_final(state)
        if self._bus.listening:  # the dump costs more than the rest of the bookkeeping
            self._bus.publish(
                {"type": "status", "job_id": state.job_id, "data": state.model_dump(mode="json")}
            )
