"""SQL over one connection: the reads (shared by the daemon and the CLI) and
the writes, each of which runs inside the store's group transaction.

Every write that changes a job's state also appends the change to the outbox
for each interested consumer, in the same transaction, so a transport never
misses or invents a change whatever the agent's crashes.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from agent.errors import AgentError, ConflictError, NotFoundError
from agent.jobs import JobState, JobStatus, NewJob, OutboxEntry, PendingJob, utc_now
from agent.outbox import OutboxInterest

_STATE_COLUMNS = (
    "job_id, operation, status, submitted_at, started_at, completed_at, error, progress, "
    "transport, attempts, priority"
)


@dataclass
class OutboxTargets:
    """Who the outbox is written for, and whom the running batch wrote for (to wake them)."""

    consumers: dict[str, OutboxInterest] = field(default_factory=dict)
    touched: set[str] = field(default_factory=set)


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


# --- reads ---


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
) -> tuple[list[JobState], int, int | None]:
    """A page of jobs in submission order; also the total and the next cursor."""
    where = ["seq > ?"]
    args: list[Any] = [after_seq]
    count_where: list[str] = []
    count_args: list[Any] = []
    for column, value in (("status", status), ("operation", operation)):
        if value is not None:
            where.append(f"{column} = ?")
            args.append(value)
            count_where.append(f"{column} = ?")
            count_args.append(value)
    rows = conn.execute(
        f"SELECT seq, {_STATE_COLUMNS} FROM jobs WHERE {' AND '.join(where)} ORDER BY seq LIMIT ?",
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


def get_transitions(conn: sqlite3.Connection, job_id: str) -> list[dict[str, Any]]:
    rows = conn.execute(
        "SELECT status, at, reason FROM transitions WHERE job_id = ? ORDER BY id", (job_id,)
    ).fetchall()
    return [{"status": status, "at": at, "reason": reason} for status, at, reason in rows]


def count_by_status(conn: sqlite3.Connection) -> dict[str, int]:
    return dict(conn.execute("SELECT status, count(*) FROM jobs GROUP BY status").fetchall())


def pending_jobs(conn: sqlite3.Connection) -> list[PendingJob]:
    rows = conn.execute(
        "SELECT seq, job_id, operation, priority, document, timeout_seconds, attempts FROM jobs "
        "WHERE status = ? ORDER BY seq",
        (JobStatus.PENDING.value,),
    ).fetchall()
    return [
        PendingJob(
            seq=row[0],
            job_id=row[1],
            operation=row[2],
            priority=row[3],
            document=json.loads(row[4]),
            timeout_seconds=row[5],
            attempts=row[6],
        )
        for row in rows
    ]


def outbox_entries(
    conn: sqlite3.Connection, consumer: str, after_id: int, limit: int
) -> list[OutboxEntry]:
    rows = conn.execute(
        "SELECT id, event, state, data FROM outbox WHERE consumer = ? AND id > ? "
        "ORDER BY id LIMIT ?",
        (consumer, after_id, limit),
    ).fetchall()
    return [
        OutboxEntry(
            id=row[0],
            event=row[1],
            state=JobState.model_validate_json(row[2]),
            data=json.loads(row[3]),
        )
        for row in rows
    ]


# --- writes: each runs inside the group transaction ---


def _record_transition(
    conn: sqlite3.Connection, job_id: str, status: JobStatus, at: str, reason: str | None = None
) -> None:
    conn.execute(
        "INSERT INTO transitions (job_id, status, at, reason) VALUES (?, ?, ?, ?)",
        (job_id, status.value, at, reason),
    )


def _append_outbox(
    conn: sqlite3.Connection,
    targets: OutboxTargets,
    state: JobState,
    event: str,
    data: dict[str, Any],
) -> None:
    """The change, for the job's own transport and every consumer of all jobs."""
    encoded: tuple[str, str] | None = None
    for name, interest in targets.consumers.items():
        if name != state.transport and not interest.all_jobs:
            continue
        if event == "progress" and not interest.progress:
            continue
        encoded = encoded or (state.model_dump_json(), json.dumps(data))
        conn.execute(
            "INSERT INTO outbox (consumer, event, state, data) VALUES (?, ?, ?, ?)",
            (name, event, *encoded),
        )
        targets.touched.add(name)


def insert_jobs(
    conn: sqlite3.Connection, targets: OutboxTargets, jobs: Sequence[NewJob]
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
        _append_outbox(conn, targets, state, "accepted", {"origin": job.origin})
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


def mark_running(
    conn: sqlite3.Connection, targets: OutboxTargets, job_id: str, now: str
) -> JobState | None:
    row = conn.execute(
        "UPDATE jobs SET status = ?, started_at = ?, attempts = attempts + 1, progress = NULL "
        f"WHERE job_id = ? AND status = ? RETURNING {_STATE_COLUMNS}",
        (JobStatus.RUNNING.value, now, job_id, JobStatus.PENDING.value),
    ).fetchone()
    if row is None:
        return None
    _record_transition(conn, job_id, JobStatus.RUNNING, now)
    state = _state(row)
    _append_outbox(conn, targets, state, "running", {})
    return state


def _outcome_data(status: JobStatus, result: Any, error: str | None) -> dict[str, Any]:
    return {"result": result} if status is JobStatus.COMPLETED else {"error": error}


def finish(
    conn: sqlite3.Connection,
    targets: OutboxTargets,
    job_id: str,
    *,
    status: JobStatus,
    result: Any,
    error: str | None,
    only_from: Iterable[JobStatus],
    now: str,
) -> JobState | None:
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
    state = _state(row)
    _append_outbox(conn, targets, state, status.value.lower(), _outcome_data(status, result, error))
    return state


def add_event(
    conn: sqlite3.Connection,
    targets: OutboxTargets,
    job_id: str,
    kind: str,
    data: dict[str, Any],
) -> str:
    now = utc_now()
    conn.execute(
        "INSERT INTO job_events (job_id, at, type, data) VALUES (?, ?, ?, ?)",
        (job_id, now, kind, json.dumps(data)),
    )
    if kind == "progress" and data.get("percent") is not None:
        conn.execute("UPDATE jobs SET progress = ? WHERE job_id = ?", (data["percent"], job_id))
    if kind == "progress" and any(item.progress for item in targets.consumers.values()):
        _append_outbox(conn, targets, get_job(conn, job_id), "progress", {**data, "at": now})
    return now


def note_interrupted(conn: sqlite3.Connection, job_id: str, reason: str) -> None:
    _record_transition(conn, job_id, JobStatus.RUNNING, utc_now(), reason)


def recover(
    conn: sqlite3.Connection,
    targets: OutboxTargets,
    rerun_safe: Callable[[str], bool],
) -> Recovery:
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
            continue
        error = "The agent restarted while the job was running; it is not safe to re-run"
        state = finish(
            conn,
            targets,
            job_id,
            status=JobStatus.FAILED,
            result=None,
            error=error,
            only_from=(JobStatus.RUNNING, JobStatus.ASSIGNED),
            now=now,
        )
        assert state is not None  # selected above, in this transaction
        failed.append(job_id)
    return Recovery(requeued=requeued, failed=failed)


def ack_outbox(conn: sqlite3.Connection, consumer: str, up_to_id: int) -> None:
    """Delivered: prune the consumer's entries up to and including `up_to_id`."""
    conn.execute("DELETE FROM outbox WHERE consumer = ? AND id <= ?", (consumer, up_to_id))


def drop_unclaimed_outbox(conn: sqlite3.Connection, consumers: Iterable[str]) -> int:
    """Remove entries of consumers this agent no longer has (a transport turned off)."""
    names = list(consumers)
    marks = ",".join("?" * len(names)) or "''"
    cursor = conn.execute(f"DELETE FROM outbox WHERE consumer NOT IN ({marks})", names)
    return cursor.rowcount
