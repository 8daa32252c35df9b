"""An in-memory JobStore: the dispatcher's collaborator in mock-clock tests.

It keeps the SQLite store's semantics (idempotency by job_id and fingerprint,
`only_from` guards, recovery, transitions, the per-consumer outbox) without a
disk or a worker thread, so a test on `trio.testing.MockClock` never waits for
real time. tests/store/test_store_contract.py runs the same assertions against
both stores so the two cannot drift apart.

Writes apply when queued (the SQLite store commits them in the order queued,
so the order of effects is the same); `settle` only yields. The data outlives
`aclose()`: opening the same object again is a restart on the same disk.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import structlog
import trio

from agent.core.jobstore import Queued, Recovery
from agent.core.outbox import OutboxInterest
from agent.errors import AgentError, ConflictError, NotFoundError
from agent.jobs import JobState, JobStatus, NewJob, OutboxEntry, PendingJob, utc_now

log = structlog.get_logger("tests.memstore")


@dataclass
class _Job:
    seq: int
    new: NewJob
    status: JobStatus
    submitted_at: str
    started_at: str | None = None
    completed_at: str | None = None
    error: str | None = None
    progress: float | None = None
    attempts: int = 0
    result: str | None = None  # JSON, as the SQLite store keeps it
    transitions: list[dict[str, Any]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)

    def state(self) -> JobState:
        return JobState(
            job_id=self.new.job_id,
            operation=self.new.operation,
            status=self.status,
            submitted_at=self.submitted_at,
            started_at=self.started_at,
            completed_at=self.completed_at,
            error=self.error,
            progress=self.progress,
            transport=self.new.transport,
            attempts=self.attempts,
            priority=self.new.priority,
            parent=self.new.parent,
        )

    def transition(self, status: JobStatus, at: str, reason: str | None = None) -> None:
        self.transitions.append({"status": status.value, "at": at, "reason": reason})


@dataclass(frozen=True)
class _Entry:
    id: int
    consumer: str
    event: str
    state: str  # JSON, so a reader gets a copy as from the SQLite store
    data: str


def _settled(value: Any) -> Queued:
    return Queued(operation=lambda conn: value, finished=True, value=value)


class MemoryStore:
    """A JobStore (agent.store.JobStore) held in dictionaries."""

    def __init__(self) -> None:
        self._jobs: dict[str, _Job] = {}
        self._seq = 0
        # Every job's events in one numbered log, like the job_events table's ids.
        self._event_log: list[tuple[int, str, dict[str, Any]]] = []
        self._outbox: list[_Entry] = []
        self._outbox_id = 0
        self._consumers: dict[str, OutboxInterest] = {}
        self._changed: dict[str, trio.Event] = {}
        self._open = False

    # -- life --

    def register_consumer(self, name: str, interest: OutboxInterest) -> None:
        self._consumers[name] = interest

    async def open(self) -> None:
        await trio.lowlevel.checkpoint()
        self._open = True
        kept = [entry for entry in self._outbox if entry.consumer in self._consumers]
        if dropped := len(self._outbox) - len(kept):
            log.warning("store.outbox_dropped", entries=dropped, reason="consumer not configured")
        self._outbox = kept

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()
        self._open = False
        # Consumers belong to the process: the next open() is told them again.
        self._consumers = {}

    def _job(self, job_id: str) -> _Job:
        assert self._open, "store not open"
        found = self._jobs.get(job_id)
        if found is None:
            raise NotFoundError(f"Job {job_id} not found", field="job_id")
        return found

    # -- reads --

    async def get_job(self, job_id: str) -> JobState:
        await trio.lowlevel.checkpoint()
        return self._job(job_id).state()

    async def unfinished_children(self, job_id: str) -> list[str]:
        await trio.lowlevel.checkpoint()
        return [
            item.new.job_id
            for item in self._jobs.values()
            if item.new.parent == job_id and not item.status.terminal
        ]

    async def get_submitter(self, job_id: str) -> str | None:
        await trio.lowlevel.checkpoint()
        return self._job(job_id).new.submitter

    async def get_result(self, job_id: str) -> Any:
        await trio.lowlevel.checkpoint()
        found = self._job(job_id)
        if found.result is None:
            raise NotFoundError(
                f"Job {job_id} has no result (status {found.status.value})", field="job_id"
            )
        return json.loads(found.result)

    async def get_events(self, job_id: str) -> list[dict[str, Any]]:
        await trio.lowlevel.checkpoint()
        return json.loads(json.dumps(self._job(job_id).events))  # type: ignore[no-any-return]

    async def get_events_after(
        self, after_id: int, job_ids: Sequence[str] | None
    ) -> list[dict[str, Any]]:
        await trio.lowlevel.checkpoint()
        return [
            {
                "id": event_id,
                "job_id": job_id,
                "type": event["type"],
                "data": {**event["data"], "at": event["at"]},
            }
            for event_id, job_id, event in self._event_log[after_id:]
            if job_ids is None or job_id in job_ids
        ][:500]

    def transitions(self, job_id: str) -> list[dict[str, Any]]:
        """The job's status transitions, like agent.store.queries.get_transitions."""
        found = self._jobs.get(job_id)
        return [] if found is None else [dict(item) for item in found.transitions]

    async def count_by_status(self) -> dict[str, int]:
        await trio.lowlevel.checkpoint()
        assert self._open, "store not open"
        counts: dict[str, int] = {}
        for found in self._jobs.values():
            counts[found.status.value] = counts.get(found.status.value, 0) + 1
        return counts

    async def list_jobs(
        self,
        *,
        status: str | None = None,
        operation: str | None = None,
        limit: int = 100,
        after_seq: int = 0,
        newest_first: bool = False,
    ) -> tuple[list[JobState], int, int | None]:
        await trio.lowlevel.checkpoint()
        assert self._open, "store not open"
        matching = [
            found
            for found in self._jobs.values()
            if (status is None or found.status.value == status)
            and (operation is None or found.new.operation == operation)
        ]
        if newest_first:
            ordered = sorted(matching, key=lambda found: -found.seq)
            after = [found for found in ordered if not after_seq or found.seq < after_seq]
        else:
            after = [found for found in matching if found.seq > after_seq]
        page = after[: limit + 1]
        more = len(page) > limit
        page = page[:limit]
        next_seq = page[-1].seq if more and page else None
        return [found.state() for found in page], len(matching), next_seq

    async def pending_jobs(self) -> list[PendingJob]:
        await trio.lowlevel.checkpoint()
        assert self._open, "store not open"
        return [
            self._pending(found)
            for found in self._jobs.values()
            if found.status is JobStatus.PENDING
        ]

    @staticmethod
    def _pending(found: _Job) -> PendingJob:
        return PendingJob(
            seq=found.seq,
            job_id=found.new.job_id,
            operation=found.new.operation,
            priority=found.new.priority,
            document=json.loads(json.dumps(found.new.document)),
            timeout_seconds=found.new.timeout_seconds,
            attempts=found.attempts,
        )

    async def outbox_entries(self, consumer: str, after_id: int, limit: int) -> list[OutboxEntry]:
        await trio.lowlevel.checkpoint()
        assert self._open, "store not open"
        mine = [e for e in self._outbox if e.consumer == consumer and e.id > after_id]
        return [
            OutboxEntry(
                id=entry.id,
                event=entry.event,
                state=JobState.model_validate_json(entry.state),
                data=json.loads(entry.data),
            )
            for entry in mine[:limit]
        ]

    def outbox_changed(self, consumer: str) -> trio.Event:
        return self._changed.setdefault(consumer, trio.Event())

    # -- writes --

    def _append_outbox(self, state: JobState, event: str, data: dict[str, Any]) -> None:
        for name, interest in self._consumers.items():
            if name != state.transport and not interest.all_jobs:
                continue
            if (event == "progress" and not interest.progress) or (
                event == "running" and not interest.running
            ):
                continue
            self._outbox_id += 1
            self._outbox.append(
                _Entry(self._outbox_id, name, event, state.model_dump_json(), json.dumps(data))
            )
            if (changed := self._changed.pop(name, None)) is not None:
                changed.set()

    async def settle(self, write: Queued, *, lazy: bool = False) -> Any:
        await trio.lowlevel.checkpoint()
        if write.error is not None:
            raise write.error
        return write.value

    async def insert_jobs(
        self, jobs: Sequence[NewJob]
    ) -> list[tuple[JobState, PendingJob | None] | AgentError]:
        await trio.lowlevel.checkpoint()
        assert self._open, "store not open"
        outcomes: list[tuple[JobState, PendingJob | None] | AgentError] = []
        now = utc_now()
        for job in jobs:
            existing = self._jobs.get(job.job_id)
            if existing is not None:
                if existing.new.fingerprint != job.fingerprint:
                    outcomes.append(
                        ConflictError(
                            f"Job {job.job_id} already exists with a different document",
                            field="job_id",
                            reason="job_id is taken by a different document",
                        )
                    )
                else:
                    outcomes.append((existing.state(), None))
                continue
            self._seq += 1
            stored = replace(job, document=json.loads(json.dumps(job.document)))
            found = _Job(self._seq, stored, JobStatus.PENDING, now)
            found.transition(JobStatus.PENDING, now, f"submitted via {job.transport}")
            self._jobs[job.job_id] = found
            state = found.state()
            self._append_outbox(state, "accepted", {"origin": job.origin})
            outcomes.append((state, self._pending(found)))
        return outcomes

    def queue_mark_running(self, job_id: str) -> Queued:
        assert self._open, "store not open"
        found = self._jobs.get(job_id)
        if found is None or found.status is not JobStatus.PENDING:
            return _settled(None)
        now = utc_now()
        found.status, found.started_at, found.progress = JobStatus.RUNNING, now, None
        found.attempts += 1
        found.transition(JobStatus.RUNNING, now)
        state = found.state()
        self._append_outbox(state, "running", {})
        return _settled(state)

    def queue_finish(
        self,
        job_id: str,
        status: JobStatus,
        *,
        result: Any = None,
        error: str | None = None,
        only_from: Iterable[JobStatus] = (JobStatus.RUNNING,),
    ) -> Queued:
        return _settled(self._finish(job_id, status, result, error, tuple(only_from)))

    def _finish(
        self,
        job_id: str,
        status: JobStatus,
        result: Any,
        error: str | None,
        only_from: tuple[JobStatus, ...],
    ) -> JobState | None:
        found = self._jobs.get(job_id)
        assert self._open, "store not open"
        if found is None or found.status not in only_from:
            return None
        now = utc_now()
        found.status, found.completed_at, found.error = status, now, error
        found.result = None if result is None else json.dumps(result)
        found.transition(status, now, error)
        state = found.state()
        data = {"result": result} if status is JobStatus.COMPLETED else {"error": error}
        self._append_outbox(state, status.value.lower(), data)
        return state

    async def note_interrupted(self, job_id: str, reason: str) -> None:
        await trio.lowlevel.checkpoint()
        assert self._open, "store not open"
        if (found := self._jobs.get(job_id)) is not None:
            found.transition(JobStatus.RUNNING, utc_now(), reason)

    async def ping(self) -> None:
        await trio.lowlevel.checkpoint()
        assert self._open, "store not open"

    async def add_event(self, job_id: str, kind: str, data: dict[str, Any]) -> str:
        await trio.lowlevel.checkpoint()
        found = self._job(job_id)
        now = utc_now()
        found.events.append({"at": now, "type": kind, "data": json.loads(json.dumps(data))})
        self._event_log.append((len(self._event_log) + 1, job_id, found.events[-1]))
        if kind == "progress" and data.get("percent") is not None:
            found.progress = data["percent"]
        if kind == "progress" and any(item.progress for item in self._consumers.values()):
            self._append_outbox(found.state(), "progress", {**data, "at": now})
        return now

    async def recover(self, rerun_safe: Callable[[str], bool]) -> Recovery:
        await trio.lowlevel.checkpoint()
        assert self._open, "store not open"
        now = utc_now()
        requeued: list[str] = []
        failed: list[str] = []
        stopped = (JobStatus.RUNNING, JobStatus.ASSIGNED)
        for found in [found for found in self._jobs.values() if found.status in stopped]:
            job_id = found.new.job_id
            if rerun_safe(found.new.operation):
                found.status, found.progress = JobStatus.PENDING, None
                found.transition(
                    JobStatus.PENDING, now, "agent restarted mid-job; re-queued (safe to re-run)"
                )
                requeued.append(job_id)
                continue
            error = "The agent restarted while the job was running; it is not safe to re-run"
            self._finish(job_id, JobStatus.FAILED, None, error, stopped)
            failed.append(job_id)
        return Recovery(requeued=requeued, failed=failed)

    async def ack_outbox(self, consumer: str, up_to_id: int) -> None:
        await trio.lowlevel.checkpoint()
        assert self._open, "store not open"
        self._outbox = [
            entry for entry in self._outbox if entry.consumer != consumer or entry.id > up_to_id
        ]
