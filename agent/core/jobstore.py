"""What the core needs of a job store (`JobStore`), and the shapes it trades with one.

`agent.store.SqliteStore` is the store the daemon runs on; tests also use an
in-memory one (tests/memstore.py), held to the same contract.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from agent.core.outbox import OutboxInterest, OutboxSource
from agent.errors import AgentError
from agent.jobs import JobState, JobStatus, NewJob, PendingJob


@dataclass
class Queued:
    """A read or write waiting for its batch; `JobStore.settle` awaits a write."""

    operation: Callable[[sqlite3.Connection], Any]
    # Run again (in its place, after a backoff) rather than failed when its batch
    # could not be committed for a reason that passes (a full disk).
    retry: bool = False
    # Put back by such a batch, waiting for its next turn.
    held: bool = False
    finished: bool = False
    value: Any = None
    error: BaseException | None = None


@dataclass(frozen=True)
class Recovery:
    """What a restart found: jobs queued again, and jobs failed as unsafe to re-run."""

    requeued: list[str]
    failed: list[str]


class JobStore(OutboxSource, Protocol):
    """What the dispatcher, the intake and the outbox need of a job store."""

    def register_consumer(self, name: str, interest: OutboxInterest) -> None:
        """Record outbox entries for `name` from now on (call before open())."""

    async def open(self) -> None: ...
    async def aclose(self) -> None: ...

    async def insert_jobs(
        self, jobs: Sequence[NewJob]
    ) -> list[tuple[JobState, PendingJob | None] | AgentError]:
        """Per job, in one transaction: (state, pending-if-new) or its ConflictError."""

    def queue_mark_running(self, job_id: str) -> Queued:
        """Pending -> Running, queued now; settles to the state or None (not pending)."""

    def queue_finish(
        self,
        job_id: str,
        status: JobStatus,
        *,
        result: Any = None,
        error: str | None = None,
        only_from: Iterable[JobStatus] = (JobStatus.RUNNING,),
    ) -> Queued:
        """A terminal status, queued now; settles to the state or None (not in only_from)."""

    async def settle(self, write: Queued, *, lazy: bool = False) -> Any:
        """Wait until a queued write is committed; its value. `lazy`: nothing but
        announcements waits for it, so it may wait a little to share a commit."""

    async def note_interrupted(self, job_id: str, reason: str) -> None: ...
    async def ping(self) -> None: ...
    async def add_event(self, job_id: str, kind: str, data: dict[str, Any]) -> str: ...
    async def recover(self, rerun_safe: Callable[[str], bool]) -> Recovery: ...
    async def pending_jobs(self) -> list[PendingJob]: ...
    async def get_job(self, job_id: str) -> JobState: ...
    async def get_result(self, job_id: str) -> Any: ...
    async def get_submitter(self, job_id: str) -> str | None:
        """Who submitted the job (None: not recorded); NotFoundError when there is none."""

    async def unfinished_children(self, job_id: str) -> list[str]:
        """The job's children (agent.core.children) that have not ended yet."""

    async def get_events(self, job_id: str) -> list[dict[str, Any]]: ...
    async def count_by_status(self) -> dict[str, int]: ...

    async def list_jobs(
        self,
        *,
        status: str | None = None,
        operation: str | None = None,
        limit: int = 100,
        after_seq: int = 0,
        newest_first: bool = False,
    ) -> tuple[list[JobState], int, int | None]: ...

    async def get_events_after(
        self, after_id: int, job_ids: Sequence[str] | None
    ) -> list[dict[str, Any]]: ...
