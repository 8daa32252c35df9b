"""Writes, each run inside the store's group transaction. Every change of a
job's state also goes to the outbox (see outbox_sql) in the same transaction,
so a transport never misses or invents a change whatever the agent's crashes."""

from __future__ import annotations

import json
import sqlite3
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from agent.errors import AgentError, ConflictError
from agent.jobs import COMPACT, JobState, JobStatus, NewJob, PendingJob, utc_now
from agent.store.outbox_sql import OutboxTargets, append_outbox
from agent.store.queries import STATE_COLUMNS, get_job, row_state

_PENDING = JobStatus.PENDING.value
_EXISTING = (
    "SELECT fingerprint, NULL FROM jobs WHERE job_id = ? "
    "UNION ALL SELECT fingerprint, state FROM pruned_jobs WHERE job_id = ? LIMIT 1"
)
# New jobs enter job_counts here, once per batch and operation (no per-row trigger);
# status changes and deletes keep them right by triggers (schema.py).
_COUNT_ADDED = (
    "INSERT INTO job_counts (status, operation, n) VALUES (?, ?, ?) "
    "ON CONFLICT (status, operation) DO UPDATE SET n = n + excluded.n"
)


@dataclass(frozen=True)
class Recovery:
    requeued: list[str]
    failed: list[str]


def _record_transition(
    conn: sqlite3.Connection, job_id: str, status: JobStatus, at: str, reason: str | None = None
) -> None:
    conn.execute(
        "INSERT INTO transitions (job_id, status, at, reason) VALUES (?, ?, ?, ?)",
        (job_id, status.value, at, reason),
    )


def insert_jobs(
    conn: sqlite3.Connection, targets: OutboxTargets, jobs: Sequence[NewJob]
) -> list[tuple[JobState, PendingJob | None] | AgentError]:
    """Per job: (state, pending-if-new) or the ConflictError; never aborts the batch."""
    outcomes: list[tuple[JobState, PendingJob | None] | AgentError] = []
    now = utc_now()
    added: Counter[str] = Counter()  # new jobs per operation, for job_counts
    for job in jobs:
        # One look for the id among jobs and the pruned jobs' idempotency records.
        existing = conn.execute(_EXISTING, (job.job_id, job.job_id)).fetchone()
        if existing is not None:
            if existing[0] != job.fingerprint:
                outcomes.append(
                    ConflictError(
                        f"Job {job.job_id} already exists with a different document",
                        field="job_id",
                        reason="job_id is taken by a different document",
                    )
                )
            elif existing[1] is None:
                outcomes.append((get_job(conn, job.job_id), None))
            else:  # a job pruned by retention is still known by its id and fingerprint
                outcomes.append((JobState.model_validate_json(existing[1]), None))
            continue
        cursor = conn.execute(
            "INSERT INTO jobs (job_id, operation, status, priority, transport, document, "
            "fingerprint, timeout_seconds, submitted_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                job.job_id,
                job.operation,
                _PENDING,
                job.priority,
                job.transport,
                COMPACT.encode(job.document),
                job.fingerprint,
                job.timeout_seconds,
                now,
            ),
        )
        added[job.operation] += 1
        _record_transition(
            conn, job.job_id, JobStatus.PENDING, now, f"submitted via {job.transport}"
        )
        # Built without validation: every field is the job's own, just checked.
        state = JobState.model_construct(
            job_id=job.job_id,
            operation=job.operation,
            status=JobStatus.PENDING,
            submitted_at=now,
            transport=job.transport,
            priority=job.priority,
        )
        append_outbox(conn, targets, state, "accepted", {"origin": job.origin})
        pending = PendingJob(
            seq=cursor.lastrowid or 0,
            job_id=job.job_id,
            operation=job.operation,
            priority=job.priority,
            document=job.document,
            timeout_seconds=job.timeout_seconds,
        )
        outcomes.append((state, pending))
    if added:
        conn.executemany(_COUNT_ADDED, [(_PENDING, op, n) for op, n in added.items()])
    return outcomes


def mark_running(
    conn: sqlite3.Connection, targets: OutboxTargets, job_id: str, now: str
) -> JobState | None:
    row = conn.execute(
        "UPDATE jobs SET status = ?, started_at = ?, attempts = attempts + 1, progress = NULL "
        f"WHERE job_id = ? AND status = ? RETURNING {STATE_COLUMNS}",
        (JobStatus.RUNNING.value, now, job_id, JobStatus.PENDING.value),
    ).fetchone()
    if row is None:
        return None
    _record_transition(conn, job_id, JobStatus.RUNNING, now)
    state = row_state(row)
    append_outbox(conn, targets, state, "running", {})
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
        f"WHERE job_id = ? AND status IN ({marks}) RETURNING {STATE_COLUMNS}",
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
    state = row_state(row)
    append_outbox(conn, targets, state, status.value.lower(), _outcome_data(status, result, error))
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
        append_outbox(conn, targets, get_job(conn, job_id), "progress", {**data, "at": now})
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
