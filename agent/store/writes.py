"""Writes, each run inside the store's group transaction. Every change of a
job's state also goes to the outbox (see outbox_sql) in the same transaction,
so a transport never misses or invents a change whatever the agent's crashes."""

from __future__ import annotations

import json
import sqlite3
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from agent.core.jobstore import Recovery
from agent.errors import AgentError, ConflictError
from agent.jobs import COMPACT, JobState, JobStatus, NewJob, PendingJob, utc_now
from agent.store.outbox_sql import OutboxTargets, append_outbox
from agent.store.queries import STATE_COLUMNS, get_job, pending_state, row_state

_PENDING = JobStatus.PENDING.value
# The batch's ids already known, among jobs and the pruned jobs' idempotency records,
# in one statement (a job found in both is taken from jobs: it comes first).
_EXISTING = (
    "SELECT job_id, fingerprint, NULL FROM jobs WHERE job_id IN (SELECT value FROM json_each(?)) "
    "UNION ALL SELECT job_id, fingerprint, state FROM pruned_jobs "
    "WHERE job_id IN (SELECT value FROM json_each(?))"
)
# No transitions row: a job's first transition (Pending, "submitted via <transport>",
# at submitted_at) is read from the job itself (queries.get_transitions), a third
# fewer rows written per submit.
_INSERT = (
    "INSERT INTO jobs (job_id, operation, status, priority, transport, document, "
    "fingerprint, timeout_seconds, submitted_at, submitter, parent) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
# New jobs enter job_counts here, once per batch and operation (no per-row trigger);
# status changes and deletes keep them right by triggers (schema.py).
_COUNT_ADDED = (
    "INSERT INTO job_counts (status, operation, n) VALUES (?, ?, ?) "
    "ON CONFLICT (status, operation) DO UPDATE SET n = n + excluded.n"
)


def _record_transition(
    conn: sqlite3.Connection, job_id: str, status: JobStatus, at: str, reason: str | None = None
) -> None:
    conn.execute(
        "INSERT INTO transitions (job_id, status, at, reason) VALUES (?, ?, ?, ?)",
        (job_id, status.value, at, reason),
    )


def _known(conn: sqlite3.Connection, jobs: Sequence[NewJob]) -> dict[str, tuple[str, str | None]]:
    """The batch's ids already recorded: their fingerprint, and the kept state of a pruned one."""
    ids = json.dumps([job.job_id for job in jobs])
    known: dict[str, tuple[str, str | None]] = {}
    for job_id, fingerprint, pruned in conn.execute(_EXISTING, (ids, ids)):
        known.setdefault(job_id, (fingerprint, pruned))
    return known


def insert_jobs(
    conn: sqlite3.Connection, targets: OutboxTargets, jobs: Sequence[NewJob]
) -> list[tuple[JobState, PendingJob | None] | AgentError]:
    """Per job: (state, pending-if-new) or the ConflictError; never aborts the batch."""
    now = utc_now()
    known = _known(conn, jobs)
    # Per job: its outcome, or None for a new one (filled in once inserted).
    outcomes: list[tuple[JobState, PendingJob | None] | AgentError | None] = []
    new: dict[str, tuple[NewJob, JobState]] = {}  # by id, in the batch's order
    for job in jobs:
        first = new.get(job.job_id)
        found = known.get(job.job_id) if first is None else (first[0].fingerprint, None)
        if found is None:
            state = pending_state(job, now)
            new[job.job_id] = (job, state)
            outcomes.append(None)
        elif found[0] != job.fingerprint:
            outcomes.append(
                ConflictError(
                    f"Job {job.job_id} already exists with a different document",
                    field="job_id",
                    reason="job_id is taken by a different document",
                )
            )
        elif first is not None:  # the same document twice in one batch
            outcomes.append((first[1], None))
        elif found[1] is None:
            outcomes.append((get_job(conn, job.job_id), None))
        else:  # a job pruned by retention is still known by its id and fingerprint
            outcomes.append((JobState.model_validate_json(found[1]), None))
    if not new:
        return outcomes  # type: ignore[return-value]  # no None left: nothing new
    encode = COMPACT.encode
    conn.executemany(
        _INSERT,
        [
            (
                job.job_id,
                job.operation,
                _PENDING,
                job.priority,
                job.transport,
                encode(job.document),
                job.fingerprint,
                job.timeout_seconds,
                now,
                job.submitter,
                job.parent,
            )
            for job, _ in new.values()
        ],
    )
    # One writer, one statement after another: the new rows' seqs are consecutive.
    seq = conn.execute("SELECT last_insert_rowid()").fetchone()[0] - len(new)
    added: Counter[str] = Counter()  # new jobs per operation, for job_counts
    made = iter(new.values())
    for index, outcome in enumerate(outcomes):
        if outcome is not None:
            continue
        job, state = next(made)
        seq += 1
        added[job.operation] += 1
        if targets.consumers:
            append_outbox(conn, targets, state, "accepted", {"origin": job.origin})
        pending = PendingJob(
            seq=seq,
            job_id=job.job_id,
            operation=job.operation,
            priority=job.priority,
            document=job.document,
            timeout_seconds=job.timeout_seconds,
        )
        outcomes[index] = (state, pending)
    conn.executemany(_COUNT_ADDED, [(_PENDING, op, n) for op, n in added.items()])
    return outcomes  # type: ignore[return-value]  # every None was filled in above


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


def start_and_finish(
    conn: sqlite3.Connection,
    targets: OutboxTargets,
    job_id: str,
    *,
    started_at: str,
    status: JobStatus,
    result: Any,
    error: str | None,
    now: str,
) -> tuple[JobState, JobState] | None:
    """mark_running then finish (from Running) in one statement, for a job whose
    handler returned before its start was committed: the same rows, transitions and
    outbox entries as the two writes, one update of the job (and of its indexes and
    counts) instead of two. None if the job was no longer pending (nothing changed)."""
    row = conn.execute(
        "UPDATE jobs SET status = ?, started_at = ?, attempts = attempts + 1, progress = NULL, "
        "completed_at = ?, result = ?, error = ? "
        f"WHERE job_id = ? AND status = ? RETURNING {STATE_COLUMNS}",
        (
            status.value,
            started_at,
            now,
            None if result is None else json.dumps(result),
            error,
            job_id,
            _PENDING,
        ),
    ).fetchone()
    if row is None:
        return None
    # What mark_running would have returned: Running, not completed (STATE_COLUMNS order).
    running = row_state((*row[:2], JobStatus.RUNNING.value, *row[3:5], None, None, *row[7:]))
    _record_transition(conn, job_id, JobStatus.RUNNING, started_at)
    append_outbox(conn, targets, running, "running", {})
    _record_transition(conn, job_id, status, now, error)
    final = row_state(row)
    append_outbox(conn, targets, final, status.value.lower(), _outcome_data(status, result, error))
    return running, final


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
