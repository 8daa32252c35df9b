"""Runs jobs: priority queue, bounded concurrency, timeouts, cancellation, recovery."""

from __future__ import annotations

import heapq
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, nullcontext, suppress
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import pydantic
import structlog
import trio
from pydantic import BaseModel

from agent.config import Config
from agent.core.commit_publisher import CommitPublisher
from agent.core.context import JobContext
from agent.core.events import EventBus
from agent.core.jobstore import JobStore
from agent.core.locks import ResourceLocks
from agent.core.registry import Registry
from agent.core.services import Services
from agent.core.targets import job_target
from agent.core.withheld import LOST, WITHHELD_LABEL, Held, redact
from agent.errors import AgentError, ConflictError
from agent.jobs import JobState, JobStatus, PendingJob

log = structlog.get_logger("agent.core.dispatcher")
_NOTHING_HELD = nullcontext()


@dataclass
class _Running:
    scope: trio.CancelScope
    done: trio.Event = field(default_factory=trio.Event)
    cancel_requested: bool = False


def _failure_reason(exc: BaseException) -> str | BaseException:
    """The message of a deliberate failure (an AgentError, possibly inside the
    exception group of a handler's nursery); otherwise the unexpected exception."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc.message if isinstance(exc, AgentError) else exc


def _payload_data(job: PendingJob, held: Held | None) -> Any:
    """The payload to run: as submitted, held in memory when its record is redacted."""
    if held is not None:
        return held.data
    if WITHHELD_LABEL in job.document.get("labels", ()):
        raise AgentError(LOST)  # never run on the redacted values
    return job.document["payload"]["data"]


class Dispatcher:
    def __init__(
        self,
        store: JobStore,
        registry: Registry,
        bus: EventBus,
        *,
        max_concurrent: int,
        default_timeout: float,
        max_timeout: float,
        services: Services,
    ) -> None:
        self._store = store
        self._registry = registry
        self._bus = bus
        self._max_concurrent = max_concurrent
        self._default_timeout = default_timeout
        self._max_timeout = max_timeout
        self._services = services
        # (-priority, seq): higher priority first, FIFO within a priority.
        self._heap: list[tuple[int, int, PendingJob]] = []
        self._queued: set[str] = set()
        self._wakeup = trio.lowlevel.ParkingLot()
        self._room = trio.lowlevel.ParkingLot()  # intake waiting for the queue to shrink
        # Jobs taken off the queue and not yet recorded as finished.
        self._running: dict[str, _Running] = {}
        self._executing = 0
        # Finished jobs whose outcome is not yet committed and published.
        self._unannounced = trio.Semaphore(256)
        self._publisher = CommitPublisher(store, bus, on_final=self._finished)
        # Jobs someone awaits the end of (a parent its child), set once it is recorded.
        self._awaited: dict[str, trio.Event] = {}
        # Worker slots lent by jobs that wait for a child (see lend_slot).
        self._lent = 0
        # Payloads of jobs recorded redacted, until they run (agent.core.withheld).
        self._held: dict[str, Held] = {}
        self._resource_locks = ResourceLocks()
        self.reruns = 0
        self._nursery: trio.Nursery | None = None
        self._workers = 0  # alive, including any about to leave after a reload
        self._idle = 0  # parked, waiting for a job
        self._picked = 0  # jobs taken off the queue so far
        self._starved: tuple[float, int] | None = None  # (since, picked then)
        self._draining = False
        # Ids of jobs interrupted by the shutdown drain, left Running for recovery.
        self.interrupted: list[str] = []

    @property
    def queue_depth(self) -> int:
        return len(self._queued)

    @property
    def running_count(self) -> int:
        """Handlers running now (at most max_concurrent)."""
        return self._executing

    def enqueue(self, job: PendingJob) -> None:
        """Queue a job already recorded as Pending in the store."""
        if job.job_id in self._queued or job.job_id in self._running:
            return
        self._queued.add(job.job_id)
        heapq.heappush(self._heap, (-job.priority, job.seq, job))
        self._wakeup.unpark()

    async def wait_for_room(self, count: int, limit: int) -> None:
        """Return once `count` more jobs fit under a queue bound of `limit`."""
        while len(self._queued) + count > limit:
            await self._room.park()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Recover what a previous run left, then run jobs until cancelled."""
        recovery = await self._store.recover(self._registry.rerun_safe)
        self.reruns = len(recovery.requeued)
        if recovery.requeued or recovery.failed:
            log.warning(
                "dispatcher.recovered", requeued=len(recovery.requeued), failed=len(recovery.failed)
            )
        for job_id in recovery.failed:  # they reached a final status: count and announce it
            self._publish_status(await self._store.get_job(job_id))
        for job in await self._store.pending_jobs():
            self.enqueue(job)
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._publisher.run)
            for _ in range(self._max_concurrent):
                self._spawn_worker()
            task_status.started()

    def reload(self, config: Config) -> None:
        """Apply the concurrency and timeout settings of a reloaded config."""
        self._default_timeout = config.default_timeout_seconds
        self._max_timeout = config.max_timeout_seconds
        self._max_concurrent = config.max_concurrent_jobs
        if self._nursery is not None:
            while self._workers < self._max_concurrent + self._lent:
                self._spawn_worker()
        self._wakeup.unpark_all()  # surplus workers notice and leave when idle

    @property
    def draining(self) -> bool:
        return self._draining

    async def drain(self, deadline: float) -> list[str]:
        """Take no more jobs; let the running ones finish until `deadline` (trio
        time), then interrupt them. Queued jobs stay Pending for the next start.

        Answers the ids of the interrupted jobs, once each is recorded as such.
        """
        self._draining = True
        self.set_drain_deadline(deadline)
        while self._running:
            await next(iter(self._running.values())).done.wait()
        return list(self.interrupted)

    def interrupt_now(self, job_id: str) -> None:
        """While draining: interrupt this running job now (a parent that can take no
        further step), left Running for recovery, instead of at the drain's end."""
        running = self._running.get(job_id)
        if self._draining and running is not None:
            running.scope.deadline = trio.current_time()

    def set_drain_deadline(self, deadline: float) -> None:
        """Bring the drain's end forward (or set it): running jobs get until then."""
        for running in self._running.values():
            running.scope.deadline = min(running.scope.deadline, deadline)

    async def wedged(self, *, stall_after: float) -> str | None:
        """Why the dispatcher cannot make progress, or None: the watchdog's probe.

        It is wedged when the job store does not finish a write (a hung disk or
        a held lock: no job could be recorded), or when jobs have waited
        `stall_after` seconds with workers idle and none taken off the queue.
        """
        try:
            await self._store.ping()
        except AgentError as exc:
            return f"job store: {exc.message}"
        if self._draining or not self._queued or self._idle == 0:
            self._starved = None
            return None
        now = trio.current_time()
        if self._starved is None or self._starved[1] != self._picked:
            self._starved = (now, self._picked)
            return None
        waited = now - self._starved[0]
        if waited < stall_after:
            return None
        return f"{len(self._queued)} jobs waited {waited:.0f}s while {self._idle} workers idled"

    async def cancel(self, job_id: str) -> JobState:
        """Cancel a pending or running job and answer its final status."""
        while True:
            running = self._running.get(job_id)
            if running is not None:
                running.cancel_requested = True
                running.scope.cancel()
                await running.done.wait()
                return await self._store.get_job(job_id)
            if job_id not in self._queued:
                state = await self._store.get_job(job_id)
                if state.status.terminal:
                    raise ConflictError(
                        f"Job {job_id} is already {state.status.value}",
                        field="status",
                        reason=f"Job is {state.status.value}",
                    )
                if job_id in self._running or job_id in self._queued:
                    continue  # it was taken or queued meanwhile: look again
            # Out of the queue before anything awaits: no worker can take it now.
            self._queued.discard(job_id)
            self._room.unpark_all()
            cancelled: JobState | None = await self._store.settle(
                self._store.queue_finish(
                    job_id,
                    JobStatus.CANCELLED,
                    error="Cancelled by request",
                    only_from=(JobStatus.PENDING,),
                )
            )
            if cancelled is not None:
                self._publish_status(cancelled)
                return cancelled
            await trio.lowlevel.checkpoint()

    def hold(self, job_id: str, held: Held) -> None:
        """Keep a job's payload as submitted (its record is redacted) until it runs."""
        self._held[job_id] = held

    def awaited(self, job_id: str) -> trio.Event:
        """An event set once the job's final status is recorded and published. Take it
        before reading the job's status: an end recorded after that read sets it."""
        event = self._awaited.get(job_id)
        if event is None:
            event = self._awaited[job_id] = trio.Event()
        return event

    def _finished(self, state: JobState) -> None:
        if self._awaited:
            event = self._awaited.pop(state.job_id, None)
            if event is not None:
                event.set()

    @asynccontextmanager
    async def lend_slot(self) -> AsyncIterator[None]:
        """While a job waits for a child, one more worker runs: with max_concurrent_jobs
        = 1, a parent holding the only slot would otherwise wait for ever."""
        self._lent += 1
        if self._nursery is not None and self._workers < self._max_concurrent + self._lent:
            self._spawn_worker()
        try:
            yield
        finally:
            self._lent -= 1
            self._wakeup.unpark_all()  # a surplus worker leaves once idle

    async def _cancel_children(self, job_id: str) -> None:
        """A job that ended without its handler (which awaits its children): the
        children it had submitted before a restart do not run on without it."""
        for child in await self._store.unfinished_children(job_id):
            with suppress(ConflictError):  # it ended meanwhile
                await self.cancel(child)

    def _spawn_worker(self) -> None:
        assert self._nursery is not None
        self._workers += 1
        self._nursery.start_soon(self._worker)

    async def _worker(self) -> None:
        try:
            while self._workers <= self._max_concurrent + self._lent:
                if self._draining or not self._heap:
                    self._idle += 1
                    try:
                        await self._wakeup.park()
                    finally:
                        self._idle -= 1
                    continue
                _, _, job = heapq.heappop(self._heap)
                if job.job_id not in self._queued:
                    continue  # cancelled while queued
                self._queued.discard(job.job_id)
                self._picked += 1
                if self._room:
                    self._room.unpark_all()
                # Every line logged while the job runs (handlers, libvirt, helpers) names
                # it (bound_contextvars without its generator: this runs per job).
                tokens = structlog.contextvars.bind_contextvars(
                    job_id=job.job_id, operation=job.operation
                )
                try:
                    await self._execute(job)
                finally:
                    structlog.contextvars.reset_contextvars(**tokens)
                # A handler that never awaits (system.echo) would otherwise let a
                # worker run the whole queue without giving any other task a turn.
                await trio.lowlevel.checkpoint()
        finally:
            self._workers -= 1
            self._wakeup.unpark()  # pass on a wakeup this worker may have taken

    async def _execute(self, job: PendingJob) -> None:
        held = self._held.pop(job.job_id, None) if self._held else None
        try:
            found = self._registry.get(job.operation)
            # Validated at intake already; parsed again into the handler's model.
            payload: BaseModel = found.payload_model.model_validate(_payload_data(job, held))
        except (AgentError, pydantic.ValidationError) as exc:
            # The handler went away since the job was accepted (upgrade/config change),
            # or its secrets did not survive a restart.
            state = await self._store.settle(
                self._store.queue_finish(
                    job.job_id, JobStatus.FAILED, error=str(exc), only_from=(JobStatus.PENDING,)
                )
            )
            if state is not None:
                self._publish_status(state)
                await self._cancel_children(job.job_id)
            return
        timeout = min(job.timeout_seconds or self._default_timeout, self._max_timeout)
        resource = found.resource(payload) if found.resource else None
        running = _Running(scope=trio.CancelScope())
        self._running[job.job_id] = running
        # A job safe to re-run needs no worker while its records reach the disk:
        # if the agent dies first, recovery runs it again. Others wait for them.
        bookkeeping_done_later = False
        try:
            # No resource, nothing to hold: hold(None) would cost a generator per job.
            async with self._resource_locks.hold(resource) if resource else _NOTHING_HELD:
                if self._draining:
                    return  # it waited for its resource past shutdown: stays Pending
                started_write = self._store.queue_mark_running(job.job_id)
                if found.rerun_safe:
                    self._publisher.later(started_write, job.job_id)
                else:
                    started = await self._store.settle(started_write)
                    if started is None:
                        return  # no longer pending
                    self._publish_status(started)
                # The recorded document: a secret parameter is already "[secret]" there.
                log.info(
                    "job.started",
                    attempt=job.attempts + 1,
                    timeout=timeout,
                    **job_target(job.operation, job.document["payload"]["data"]),
                )
                secrets = () if held is None else held.secrets
                ctx = JobContext(
                    job.job_id,
                    job.operation,
                    attempt=job.attempts + 1,
                    # Nothing a job was given as secret is recorded (agent.core.withheld).
                    emit=partial(self._emit_redacted, job.job_id, secrets)
                    if secrets
                    else lambda kind, data: self._emit(job.job_id, kind, data),
                    services=self._services,
                    secrets=secrets,
                )
                self._executing += 1
                try:
                    status, result, error = await self._run_handler(
                        found.run, payload, ctx, running, timeout
                    )
                finally:
                    self._executing -= 1
                if status is JobStatus.RUNNING:
                    await self._store.settle(started_write)
                    await self._store.note_interrupted(job.job_id, error or "interrupted")
                    self.interrupted.append(job.job_id)
                    log.warning("job.interrupted", reason=error)
                    return
                finished = self._store.queue_finish(
                    job.job_id,
                    status,
                    result=redact(result, secrets) if secrets else result,
                    error=redact(error, secrets) if secrets else error,
                )
                # Bounded, so that a backlog of instant jobs cannot flood the
                # scheduler with announcements and starve the API's requests.
                try:
                    self._unannounced.acquire_nowait()  # the worker checkpoints after the job
                except trio.WouldBlock:
                    await self._unannounced.acquire()
                bookkeeping_done_later = True
                await self._publisher.outcome(
                    finished,
                    job.job_id,
                    partial(self._let_go, job.job_id, running),
                    wait=not found.rerun_safe,
                )
        finally:
            if not bookkeeping_done_later:
                del self._running[job.job_id]
                running.done.set()

    def _let_go(self, job_id: str, running: _Running) -> None:
        """A job's outcome is published (or failed to commit): it is done with."""
        del self._running[job_id]
        running.done.set()
        self._unannounced.release()

    async def _run_handler(
        self, run: Any, payload: BaseModel, ctx: JobContext, running: _Running, time_limit: float
    ) -> tuple[JobStatus, Any, str | None]:
        # One scope for the time limit, a cancel request and the drain's end (a
        # drain deadline earlier than the job's own): a second scope per job cost
        # more than a no-op handler.
        timeout_at = trio.current_time() + time_limit
        running.scope.deadline = min(running.scope.deadline, timeout_at)
        with running.scope:
            try:
                value = await run(payload, ctx)
            except Exception as exc:
                reason = _failure_reason(exc)
                if not isinstance(reason, str):
                    ctx.logger.exception("job.handler_crashed")
                    reason = f"{type(reason).__name__}: {reason}"
                return JobStatus.FAILED, None, reason
            if isinstance(value, BaseModel):
                value = value.model_dump(mode="json")
            try:
                json.dumps(value)
            except (TypeError, ValueError) as exc:
                return JobStatus.FAILED, None, f"Handler returned a non-JSON result: {exc}"
            return JobStatus.COMPLETED, value, None
        if running.cancel_requested:
            return JobStatus.CANCELLED, None, "Cancelled by request"
        if self._draining and running.scope.deadline < timeout_at:
            # Still Running: restart recovery re-queues or fails it.
            return JobStatus.RUNNING, None, "Interrupted by shutdown after the drain budget"
        return JobStatus.FAILED, None, f"Job timed out after {time_limit:g} seconds"

    async def _emit_redacted(
        self, job_id: str, secrets: tuple[Any, ...], kind: str, data: dict[str, Any]
    ) -> None:
        await self._emit(job_id, kind, redact(data, secrets))

    async def _emit(self, job_id: str, kind: str, data: dict[str, Any]) -> None:
        at = await self._store.add_event(job_id, kind, data)
        self._bus.publish({"type": kind, "job_id": job_id, "data": {**data, "at": at}})

    def _publish_status(self, state: JobState) -> None:
        self._publisher.publish(state)
