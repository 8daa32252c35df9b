"""SQLite job store: jobs, status transitions, results, per-job events.

Writes are group-committed: callers queue an operation, one caller at a time
becomes the flusher and commits everything queued so far in one transaction
(WAL, synchronous=FULL), so an acknowledged write is on disk and a burst of
writes costs one fsync. Every blocking call runs in a worker thread.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import trio

from agent.errors import AgentError, ConflictError, NotFoundError
from agent.jobs import JobState, JobStatus, utc_now

SCHEMA_VERSION = 1

_T = TypeVar("_T")

_MIGRATIONS: dict[int, str] = {
    1: """
    CREATE TABLE jobs (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        job_id TEXT NOT NULL UNIQUE,
        operation TEXT NOT NULL,
        status TEXT NOT NULL,
        priority INTEGER NOT NULL,
        transport TEXT NOT NULL,
        document TEXT NOT NULL,
        fingerprint TEXT NOT NULL,
        timeout_seconds REAL,
        attempts INTEGER NOT NULL DEFAULT 0,
        submitted_at TEXT NOT NULL,
        started_at TEXT,
        completed_at TEXT,
        progress REAL,
        error TEXT,
        result TEXT
    );
    CREATE INDEX jobs_by_status ON jobs (status, seq);
    CREATE INDEX jobs_by_operation ON jobs (operation, seq);
    CREATE TABLE transitions (
        id INTEGER PRIMARY KEY,
        job_id TEXT NOT NULL,
        status TEXT NOT NULL,
        at TEXT NOT NULL,
        reason TEXT
    );
    CREATE INDEX transitions_by_job ON transitions (job_id, id);
    CREATE TABLE job_events (
        id INTEGER PRIMARY KEY,
        job_id TEXT NOT NULL,
        at TEXT NOT NULL,
        type TEXT NOT NULL,
        data TEXT NOT NULL
    );
    CREATE INDEX job_events_by_job ON job_events (job_id, id);
    """,
}

_STATE_COLUMNS = (
    "job_id, operation, status, submitted_at, started_at, completed_at, error, progress, "
    "transport, attempts, priority"
)


@dataclass(frozen=True)
class NewJob:
    """A validated job ready to be recorded."""

    job_id: str
    operation: str
    priority: int
    transport: str
    document: dict[str, Any]
    fingerprint: str
    timeout_seconds: float | None


@dataclass(frozen=True)
class PendingJob:
    """What the dispatcher needs to run a job."""

    seq: int
    job_id: str
    operation: str
    priority: int
    document: dict[str, Any]
    timeout_seconds: float | None
    attempts: int = 0  # runs so far (a job re-queued after a crash has one)


@dataclass(frozen=True)
class Recovery:
    requeued: list[str]
    failed: list[str]


def _state(row: sqlite3.Row | tuple[Any, ...]) -> JobState:
    return JobState(
        job_id=row[0],
        operation=row[1],
        status=JobStatus(row[2]),
        submitted_at=row[3],
        started_at=row[4],
        completed_at=row[5],
        error=row[6],
        progress=row[7],
        transport=row[8],
        attempts=row[9],
        priority=row[10],
    )


def _pending(row: tuple[Any, ...]) -> PendingJob:
    return PendingJob(
        seq=row[0],
        job_id=row[1],
        operation=row[2],
        priority=row[3],
        document=json.loads(row[4]),
        timeout_seconds=row[5],
        attempts=row[6],
    )


# --- queries: plain functions over a connection, shared by the daemon and the CLI ---


def get_job(conn: sqlite3.Connection, job_id: str) -> JobState:
    row = conn.execute(f"SELECT {_STATE_COLUMNS} FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
    if row is None:
        raise NotFoundError(f"Job {job_id} not found", field="job_id")
    return _state(row)


def list_jobs(
    conn: sqlite3.Connection,
    *,
    status: str | None = None,
    operation: str | None = None,
    limit: int = 100,
    after_seq: int = 0,
    newest_first: bool = False,
) -> tuple[list[JobState], int, int | None]:
    """A page of jobs in submission order (or newest first); the total and the next cursor."""
    # Newest first, the cursor is the seq to stay below (0: from the newest).
    where = ["seq < ?" if newest_first and after_seq else "seq > ?"]
    args: list[Any] = [after_seq if after_seq or not newest_first else 0]
    count_where: list[str] = []
    count_args: list[Any] = []
    for column, value in (("status", status), ("operation", operation)):
        if value is not None:
            where.append(f"{column} = ?")
            args.append(value)
            count_where.append(f"{column} = ?")
            count_args.append(value)
    rows = conn.execute(
        f"SELECT seq, {_STATE_COLUMNS} FROM jobs WHERE {' AND '.join(where)} "
        f"ORDER BY seq {'DESC' if newest_first else 'ASC'} LIMIT ?",
        (*args, limit + 1),
    ).fetchall()
    total = conn.execute(
        "SELECT count(*) FROM jobs"
        + (f" WHERE {' AND '.join(count_where)}" if count_where else ""),
        count_args,
    ).fetchone()[0]
    more = len(rows) > limit
    rows = rows[:limit]
    next_seq = rows[-1][0] if more and rows else None
    return [_state(row[1:]) for row in rows], total, next_seq


def get_result(conn: sqlite3.Connection, job_id: str) -> Any:
    row = conn.execute("SELECT result, status FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
    if row is None:
        raise NotFoundError(f"Job {job_id} not found", field="job_id")
    if row[0] is None:
        raise NotFoundError(f"Job {job_id} has no result (status {row[1]})", field="job_id")
    return json.loads(row[0])


def get_outcomes(conn: sqlite3.Connection, job_ids: Sequence[str]) -> list[tuple[JobState, Any]]:
    """State and result of each existing job among `job_ids`."""
    outcomes = []
    for job_id in job_ids:
        row = conn.execute(
            f"SELECT {_STATE_COLUMNS}, result FROM jobs WHERE job_id = ?", (job_id,)
        ).fetchone()
        if row is not None:
            outcomes.append((_state(row[:-1]), None if row[-1] is None else json.loads(row[-1])))
    return outcomes


def get_events(conn: sqlite3.Connection, job_id: str) -> list[dict[str, Any]]:
    get_job(conn, job_id)
    rows = conn.execute(
        "SELECT at, type, data FROM job_events WHERE job_id = ? ORDER BY id", (job_id,)
    ).fetchall()
    return [{"at": at, "type": kind, "data": json.loads(data)} for at, kind, data in rows]


def get_events_after(
    conn: sqlite3.Connection, after_id: int, job_ids: Sequence[str] | None, limit: int = 500
) -> list[dict[str, Any]]:
    """The durable event log after `after_id` (all jobs, or those named), with each row's id."""
    where, args = "id > ?", [after_id]
    if job_ids is not None:
        where += f" AND job_id IN ({', '.join('?' * len(job_ids))})"
        args.extend(job_ids)  # type: ignore[arg-type]  # ids are str, the bound is int
    rows = conn.execute(
        f"SELECT id, job_id, at, type, data FROM job_events WHERE {where} ORDER BY id LIMIT ?",
        (*args, limit),
    ).fetchall()
    return [
        {"id": row_id, "job_id": job_id, "type": kind, "data": {**json.loads(data), "at": at}}
        for row_id, job_id, at, kind, data in rows
    ]


def get_transitions(conn: sqlite3.Connection, job_id: str) -> list[dict[str, Any]]:
    rows = conn.execute(
        "SELECT status, at, reason FROM transitions WHERE job_id = ? ORDER BY id", (job_id,)
    ).fetchall()
    return [{"status": status, "at": at, "reason": reason} for status, at, reason in rows]


def count_by_status(conn: sqlite3.Connection) -> dict[str, int]:
    return dict(conn.execute("SELECT status, count(*) FROM jobs GROUP BY status").fetchall())


def connect(path: Path, *, readonly: bool = False) -> sqlite3.Connection:
    """A connection with the agent's pragmas; migrations run on read-write opens."""
    if readonly:
        conn = sqlite3.connect(
            f"file:{path}?mode=ro", uri=True, isolation_level=None, check_same_thread=False
        )
        conn.execute("PRAGMA busy_timeout = 5000")
        return conn
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA busy_timeout = 5000")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("PRAGMA foreign_keys = ON")
    _migrate(conn)
    return conn


def _migrate(conn: sqlite3.Connection) -> None:
    current = conn.execute("PRAGMA user_version").fetchone()[0]
    if current > SCHEMA_VERSION:
        raise AgentError(f"store schema {current} is newer than this agent ({SCHEMA_VERSION})")
    for version in range(current + 1, SCHEMA_VERSION + 1):
        conn.execute("BEGIN IMMEDIATE")
        for statement in filter(str.strip, _MIGRATIONS[version].split(";")):
            conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {version}")
        conn.execute("COMMIT")


# --- write operations: each runs inside the group transaction ---


def _record_transition(
    conn: sqlite3.Connection, job_id: str, status: JobStatus, at: str, reason: str | None = None
) -> None:
    conn.execute(
        "INSERT INTO transitions (job_id, status, at, reason) VALUES (?, ?, ?, ?)",
        (job_id, status.value, at, reason),
    )


def _insert_jobs(
    conn: sqlite3.Connection, jobs: Sequence[NewJob]
) -> list[tuple[JobState, PendingJob | None] | AgentError]:
    """Per job: (state, pending-if-new) or the ConflictError; never aborts the batch."""
    outcomes: list[tuple[JobState, PendingJob | None] | AgentError] = []
    now = utc_now()
    for job in jobs:
        existing = conn.execute(
            "SELECT fingerprint FROM jobs WHERE job_id = ?", (job.job_id,)
        ).fetchone()
        if existing is not None:
            if existing[0] != job.fingerprint:
                outcomes.append(
                    ConflictError(
                        f"Job {job.job_id} already exists with a different document",
                        field="job_id",
                        reason="job_id is taken by a different document",
                    )
                )
            else:
                outcomes.append((get_job(conn, job.job_id), None))
            continue
        document = json.dumps(job.document, separators=(",", ":"))
        cursor = conn.execute(
            "INSERT INTO jobs (job_id, operation, status, priority, transport, document, "
            "fingerprint, timeout_seconds, submitted_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                job.job_id,
                job.operation,
                JobStatus.PENDING.value,
                job.priority,
                job.transport,
                document,
                job.fingerprint,
                job.timeout_seconds,
                now,
            ),
        )
        _record_transition(
            conn, job.job_id, JobStatus.PENDING, now, f"submitted via {job.transport}"
        )
        state = JobState(
            job_id=job.job_id,
            operation=job.operation,
            status=JobStatus.PENDING,
            submitted_at=now,
            transport=job.transport,
            priority=job.priority,
        )
        pending = PendingJob(
            seq=cursor.lastrowid or 0,
            job_id=job.job_id,
            operation=job.operation,
            priority=job.priority,
            document=job.document,
            timeout_seconds=job.timeout_seconds,
        )
        outcomes.append((state, pending))
    return outcomes


def _mark_running(conn: sqlite3.Connection, job_id: str) -> JobState | None:
    now = utc_now()
    row = conn.execute(
        "UPDATE jobs SET status = ?, started_at = ?, attempts = attempts + 1, progress = NULL "
        f"WHERE job_id = ? AND status = ? RETURNING {_STATE_COLUMNS}",
        (JobStatus.RUNNING.value, now, job_id, JobStatus.PENDING.value),
    ).fetchone()
    if row is None:
        return None
    _record_transition(conn, job_id, JobStatus.RUNNING, now)
    return _state(row)


def _finish(
    conn: sqlite3.Connection,
    job_id: str,
    *,
    status: JobStatus,
    result: Any,
    error: str | None,
    only_from: Iterable[JobStatus],
) -> JobState | None:
    now = utc_now()
    allowed = [s.value for s in only_from]
    marks = ",".join("?" * len(allowed))
    row = conn.execute(
        f"UPDATE jobs SET status = ?, completed_at = ?, result = ?, error = ? "
        f"WHERE job_id = ? AND status IN ({marks}) RETURNING {_STATE_COLUMNS}",
        (
            status.value,
            now,
            None if result is None else json.dumps(result),
            error,
            job_id,
            *allowed,
        ),
    ).fetchone()
    if row is None:
        return None
    _record_transition(conn, job_id, status, now, error)
    return _state(row)


def _add_event(conn: sqlite3.Connection, job_id: str, kind: str, data: dict[str, Any]) -> str:
    now = utc_now()
    conn.execute(
        "INSERT INTO job_events (job_id, at, type, data) VALUES (?, ?, ?, ?)",
        (job_id, now, kind, json.dumps(data)),
    )
    if kind == "progress" and data.get("percent") is not None:
        conn.execute("UPDATE jobs SET progress = ? WHERE job_id = ?", (data["percent"], job_id))
    return now


def _recover(conn: sqlite3.Connection, rerun_safe: Callable[[str], bool]) -> Recovery:
    now = utc_now()
    requeued: list[str] = []
    failed: list[str] = []
    rows = conn.execute(
        "SELECT job_id, operation FROM jobs WHERE status IN (?, ?)",
        (JobStatus.RUNNING.value, JobStatus.ASSIGNED.value),
    ).fetchall()
    for job_id, operation in rows:
        if rerun_safe(operation):
            conn.execute(
                "UPDATE jobs SET status = ?, progress = NULL WHERE job_id = ?",
                (JobStatus.PENDING.value, job_id),
            )
            _record_transition(
                conn,
                job_id,
                JobStatus.PENDING,
                now,
                "agent restarted mid-job; re-queued (safe to re-run)",
            )
            requeued.append(job_id)
        else:
            error = "The agent restarted while the job was running; it is not safe to re-run"
            conn.execute(
                "UPDATE jobs SET status = ?, completed_at = ?, error = ? WHERE job_id = ?",
                (JobStatus.FAILED.value, now, error, job_id),
            )
            _record_transition(conn, job_id, JobStatus.FAILED, now, error)
            failed.append(job_id)
    return Recovery(requeued=requeued, failed=failed)


def _pending_jobs(conn: sqlite3.Connection) -> list[PendingJob]:
    rows = conn.execute(
        "SELECT seq, job_id, operation, priority, document, timeout_seconds, attempts FROM jobs "
        "WHERE status = ? ORDER BY seq",
        (JobStatus.PENDING.value,),
    ).fetchall()
    return [_pending(row) for row in rows]


@dataclass
class Queued:
    """A read or write waiting for its batch; `Store.settle` awaits a write."""

    operation: Callable[[sqlite3.Connection], Any]
    finished: bool = False
    value: Any = None
    error: BaseException | None = None


class _Batcher:
    """Runs queued operations in batches, one thread hop per batch. A hop costs
    far more than a point query, and a commit's fsync the same for one row or
    many, so everything queued while one batch runs goes in the next.

    There is no batch task: one of the waiting callers runs each batch, then
    steps down, so no caller is kept longer than the batch holding its own
    operation (plus the one already running when it queued)."""

    def __init__(self, run_batch: Callable[[list[Queued]], None]) -> None:
        self._run_batch = run_batch
        self._queue: list[Queued] = []
        self._running = False
        self._batch_ended = trio.Event()

    def queue(self, operation: Callable[[sqlite3.Connection], Any]) -> Queued:
        """Queue now: operations run in the order they are queued."""
        item = Queued(operation)
        self._queue.append(item)
        return item

    async def settle(self, item: Queued) -> Any:
        """Wait until `item` has run (running a batch when none is); its value."""
        while not item.finished:
            if self._running:
                await self._batch_ended.wait()
                continue
            self._running = True
            try:
                # Shielded: the batch holds others' operations too.
                with trio.CancelScope(shield=True):
                    # One scheduler pass first: operations made ready by the same
                    # event (a job ending, a batch arriving) join this batch.
                    await trio.lowlevel.checkpoint()
                    batch, self._queue = self._queue, []
                    await trio.to_thread.run_sync(self._run_batch, batch)
                    for queued in batch:
                        queued.finished = True
            finally:
                self._running = False
                ended, self._batch_ended = self._batch_ended, trio.Event()
                ended.set()
        if item.error is not None:
            raise item.error
        return item.value


class Store:
    """The daemon's handle on the job store."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._writer = connect(path)
        self._reader = connect(path, readonly=True)
        self._reads = _Batcher(self._run_reads)
        self._writes = _Batcher(self._commit)

    def close(self) -> None:
        self._writer.close()
        self._reader.close()

    # -- reads --

    async def read(self, query: Callable[..., _T], /, *args: Any, **kwargs: Any) -> _T:
        """Run one of this module's query functions off the trio thread."""
        value: _T = await self._reads.settle(
            self._reads.queue(lambda conn: query(conn, *args, **kwargs))
        )
        return value

    def _run_reads(self, batch: list[Queued]) -> None:
        for item in batch:
            try:
                item.value = item.operation(self._reader)
            except Exception as exc:  # noqa: BLE001 (delivered to the caller who queued it)
                item.error = exc

    # -- writes --

    def _queue_write(self, operation: Callable[[sqlite3.Connection], Any]) -> Queued:
        """Queue a write now (writes commit in the order they are queued)."""
        return self._writes.queue(operation)

    async def settle(self, write: Queued) -> Any:
        """Wait until a queued write is committed; its value."""
        return await self._writes.settle(write)

    async def _write(self, operation: Callable[[sqlite3.Connection], Any]) -> Any:
        return await self.settle(self._queue_write(operation))

    def _commit(self, batch: list[Queued]) -> None:
        conn = self._writer
        try:
            conn.execute("BEGIN IMMEDIATE")
            for item in batch:
                conn.execute("SAVEPOINT op")
                try:
                    item.value = item.operation(conn)
                except Exception as exc:  # noqa: BLE001 (delivered to the caller who queued it)
                    conn.execute("ROLLBACK TO op")
                    item.error = exc
                conn.execute("RELEASE op")
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            for item in batch:
                item.error = AgentError(f"job store write failed: {exc}")

    async def insert_jobs(
        self, jobs: Sequence[NewJob]
    ) -> list[tuple[JobState, PendingJob | None] | AgentError]:
        result: list[tuple[JobState, PendingJob | None] | AgentError] = await self._write(
            lambda conn: _insert_jobs(conn, jobs)
        )
        return result

    def queue_mark_running(self, job_id: str) -> Queued:
        """Pending -> Running, queued; settles to the JobState, or None if the job
        was no longer pending."""
        return self._queue_write(lambda conn: _mark_running(conn, job_id))

    async def mark_running(self, job_id: str) -> JobState | None:
        """Pending -> Running; None if the job is no longer pending (cancelled)."""
        state: JobState | None = await self.settle(self.queue_mark_running(job_id))
        return state

    def queue_finish(
        self,
        job_id: str,
        status: JobStatus,
        *,
        result: Any = None,
        error: str | None = None,
        only_from: Iterable[JobStatus] = (JobStatus.RUNNING,),
    ) -> Queued:
        """A terminal status, queued; settles to the JobState, or None if the job
        was not in one of `only_from`."""
        allowed = tuple(only_from)
        return self._queue_write(
            lambda conn: _finish(
                conn, job_id, status=status, result=result, error=error, only_from=allowed
            )
        )

    async def finish(
        self,
        job_id: str,
        status: JobStatus,
        *,
        result: Any = None,
        error: str | None = None,
        only_from: Iterable[JobStatus] = (JobStatus.RUNNING,),
    ) -> JobState | None:
        """Record a terminal status; None if the job was not in one of `only_from`."""
        queued = self.queue_finish(job_id, status, result=result, error=error, only_from=only_from)
        state: JobState | None = await self.settle(queued)
        return state

    async def note_interrupted(self, job_id: str, reason: str) -> None:
        """Leave a Running job for restart recovery, recording why it stopped."""
        await self._write(
            lambda conn: _record_transition(conn, job_id, JobStatus.RUNNING, utc_now(), reason)
        )

    async def ping(self) -> None:
        """A write round trip that changes nothing: answers once the writer is free."""
        await self._write(lambda conn: None)

    async def add_event(self, job_id: str, kind: str, data: dict[str, Any]) -> str:
        at: str = await self._write(lambda conn: _add_event(conn, job_id, kind, data))
        return at

    async def recover(self, rerun_safe: Callable[[str], bool]) -> Recovery:
        recovery: Recovery = await self._write(lambda conn: _recover(conn, rerun_safe))
        return recovery

    async def pending_jobs(self) -> list[PendingJob]:
        return await self.read(_pending_jobs)
