"""Reads over one connection, shared by the daemon (in its reader thread) and
the CLI (which reads the store directly when no agent answers)."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from typing import Any

from agent.errors import NotFoundError
from agent.jobs import JobState, JobStatus, NewJob, OutboxEntry, PendingJob

STATE_COLUMNS = (
    "job_id, operation, status, submitted_at, started_at, completed_at, error, progress, "
    "transport, attempts, priority, parent"
)


_STATE_FIELDS = tuple(STATE_COLUMNS.split(", "))
_STATE_FIELDS_SET = frozenset(_STATE_FIELDS)
_STATUSES = {status.value: status for status in JobStatus}
_new = object.__new__
_set = object.__setattr__


def row_state(row: sqlite3.Row | tuple[Any, ...]) -> JobState:
    """A JobState straight from a row, without validation: the row was validated
    when written, and a list of a thousand jobs otherwise held the GIL (and so the
    event loop) for ~10 ms. What JobState.model_construct does, at a third of its
    cost (it looks at every field's default): a list's rows are most of its work."""
    state = _new(JobState)
    values = dict(zip(_STATE_FIELDS, row, strict=True))
    values["status"] = _STATUSES[row[2]]
    _set(state, "__dict__", values)
    _set(state, "__pydantic_fields_set__", set(_STATE_FIELDS_SET))
    _set(state, "__pydantic_extra__", None)
    _set(state, "__pydantic_private__", None)
    return state


def pending_state(job: NewJob, submitted_at: str) -> JobState:
    """The state of a job just recorded, built as row_state builds one (no validation:
    every field is the job's own, just checked)."""
    state = _new(JobState)
    _set(
        state,
        "__dict__",
        {
            "job_id": job.job_id,
            "operation": job.operation,
            "status": JobStatus.PENDING,
            "submitted_at": submitted_at,
            "started_at": None,
            "completed_at": None,
            "error": None,
            "progress": None,
            "transport": job.transport,
            "attempts": 0,
            "priority": job.priority,
            "parent": job.parent,
        },
    )
    _set(state, "__pydantic_fields_set__", set(_STATE_FIELDS_SET))
    _set(state, "__pydantic_extra__", None)
    _set(state, "__pydantic_private__", None)
    return state


def get_job(conn: sqlite3.Connection, job_id: str) -> JobState:
    row = conn.execute(f"SELECT {STATE_COLUMNS} FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
    if row is None:
        raise NotFoundError(f"Job {job_id} not found", field="job_id")
    return row_state(row)


def unfinished_children(conn: sqlite3.Connection, job_id: str) -> list[str]:
    """The job's children not yet Completed, Failed or Cancelled, oldest first."""
    rows = conn.execute(
        "SELECT job_id FROM jobs WHERE parent = ? AND status NOT IN (?, ?, ?) ORDER BY seq",
        (job_id, JobStatus.COMPLETED.value, JobStatus.FAILED.value, JobStatus.CANCELLED.value),
    )
    return [row[0] for row in rows]


def get_submitter(conn: sqlite3.Connection, job_id: str) -> str | None:
    """Who submitted the job (None: not recorded); NotFoundError when there is no such job."""
    row = conn.execute("SELECT submitter FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
    if row is None:
        raise NotFoundError(f"Job {job_id} not found", field="job_id")
    return None if row[0] is None else str(row[0])


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
    # Newest first, the cursor is the seq to stay below (none: from the newest).
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
        f"SELECT seq, {STATE_COLUMNS} FROM jobs WHERE {' AND '.join(where)} "
        f"ORDER BY seq {'DESC' if newest_first else 'ASC'} LIMIT ?",
        (*args, limit + 1),
    ).fetchall()
    total = _count(conn, count_where, count_args)
    more = len(rows) > limit
    rows = rows[:limit]
    next_seq = rows[-1][0] if more and rows else None
    return [row_state(row[1:]) for row in rows], total, next_seq


def _count(conn: sqlite3.Connection, where: list[str], args: list[Any]) -> int:
    """Jobs matching `where`, from the counts the triggers keep (flat in the store's size)."""
    clause = f" WHERE {' AND '.join(where)}" if where else ""
    try:
        row = conn.execute(f"SELECT coalesce(sum(n), 0) FROM job_counts{clause}", args).fetchone()
    except sqlite3.OperationalError:
        # A store not yet migrated (the CLI reading it read-only): count the rows.
        row = conn.execute(f"SELECT count(*) FROM jobs{clause}", args).fetchone()
    return int(row[0])


def get_result(conn: sqlite3.Connection, job_id: str) -> Any:
    row = conn.execute("SELECT result, status FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
    if row is None:
        raise NotFoundError(f"Job {job_id} not found", field="job_id")
    if row[0] is None:
        raise NotFoundError(f"Job {job_id} has no result (status {row[1]})", field="job_id")
    return json.loads(row[0])


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
    """The job's status changes, oldest first. The first, its submission, is not a
    row of its own (writes.insert_jobs): it is the job's submitted_at and transport."""
    job = conn.execute("SELECT submitted_at, transport FROM jobs WHERE job_id = ?", (job_id,))
    first = [
        {"status": JobStatus.PENDING.value, "at": at, "reason": f"submitted via {transport}"}
        for at, transport in job
    ]
    rows = conn.execute(
        "SELECT status, at, reason FROM transitions WHERE job_id = ? ORDER BY id", (job_id,)
    ).fetchall()
    return first + [{"status": status, "at": at, "reason": reason} for status, at, reason in rows]


def count_by_status(conn: sqlite3.Connection) -> dict[str, int]:
    try:
        rows = conn.execute(
            "SELECT status, sum(n) FROM job_counts GROUP BY status HAVING sum(n) > 0"
        ).fetchall()
    except sqlite3.OperationalError:  # not yet migrated (see _count)
        rows = conn.execute("SELECT status, count(*) FROM jobs GROUP BY status").fetchall()
    return dict(rows)


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
