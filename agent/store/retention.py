"""Retention: finished jobs older than `store.retention_days` (or beyond
`store.max_jobs`) are pruned with their transitions, events and outbox
entries, in small batches through the store's group commit, so submits keep
flowing while a backlog is pruned.

A pruned job leaves its idempotency record (job_id, document fingerprint and
final state) in `pruned_jobs` for at least another retention period, so a
redelivery of it is still answered as a duplicate, never run again. Pending,
assigned and running jobs are never pruned, whatever their age.
"""

from __future__ import annotations

import dataclasses
import sqlite3
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Protocol, runtime_checkable

import structlog
import trio

from agent.core.artifacts import remove_folders
from agent.jobs import JobStatus, format_timestamp

log = structlog.get_logger("agent.store.retention")

FINISHED = (JobStatus.COMPLETED.value, JobStatus.FAILED.value, JobStatus.CANCELLED.value)
_FINISHED_SQL = ",".join(f"'{status}'" for status in FINISHED)
# Columns of a job kept in its idempotency record (queries.STATE_COLUMNS order).
_STATE_SQL = (
    "job_id, operation, status, submitted_at, started_at, completed_at, error, progress, "
    "transport, attempts, priority"
)
# The next batch, oldest first, walked on jobs_by_completion: flat in the store's size
# (0.3 ms at 1M jobs). Named, because SQLite's planner otherwise prefers jobs_by_status
# for `status IN (...)` and sorts every finished job for each batch (300 ms at 1M jobs,
# holding the writer); the status test stays as a guard.
PRUNE_OLD_SQL = (
    "SELECT job_id FROM jobs INDEXED BY jobs_by_completion "
    f"WHERE completed_at < ? AND status IN ({_FINISHED_SQL}) ORDER BY completed_at LIMIT ?"
)
PRUNE_OVER_CAP_SQL = (
    "SELECT job_id FROM jobs INDEXED BY jobs_by_completion "
    f"WHERE completed_at >= ? AND status IN ({_FINISHED_SQL}) ORDER BY completed_at LIMIT ?"
)
# Pause between batches while others write: _YIELD times what the last batch took
# (its statements, its commit, the wait for the writer), so a pass takes at most about
# a ninth of a busy writer's time, whatever the store's size. A pass alone on the
# writer goes batch after batch.
_YIELD = 8.0
# What one batch should hold the writer for: a batch's size follows what the last
# one took (jobs with many events or outbox entries cost more), within policy.batch.
_SLICE_SECONDS = 0.002
_MIN_BATCH = 16
_FIRST_PASS_SECONDS = 60.0


@dataclass(frozen=True)
class RetentionPolicy:
    retention_days: float = 7.0
    max_jobs: int = 0  # 0: no cap on the number of jobs
    batch: int = 500


@dataclass
class PruneReport:
    """What one batch (or a whole pass) removed, or would remove (dry run)."""

    jobs: int = 0
    transitions: int = 0
    events: int = 0
    outbox: int = 0
    records_expired: int = 0
    job_ids: list[str] = field(default_factory=list)
    # How long the batch held the writer (its statements, not the commit it joined).
    seconds: float = 0.0

    def add(self, other: PruneReport) -> None:
        self.seconds += other.seconds
        self.jobs += other.jobs
        self.transitions += other.transitions
        self.events += other.events
        self.outbox += other.outbox
        self.records_expired += other.records_expired


def _cutoff(policy: RetentionPolicy, now: datetime) -> str:
    return format_timestamp(now - timedelta(days=policy.retention_days))


def _prunable(conn: sqlite3.Connection, policy: RetentionPolicy, now: datetime) -> list[str]:
    """The next batch of finished jobs to prune: too old first, then beyond max_jobs."""
    cutoff = _cutoff(policy, now)
    chosen = [row[0] for row in conn.execute(PRUNE_OLD_SQL, (cutoff, policy.batch))]
    if policy.max_jobs and len(chosen) < policy.batch:
        total = conn.execute("SELECT coalesce(sum(n), 0) FROM job_counts").fetchone()[0]
        excess = min(total - len(chosen) - policy.max_jobs, policy.batch - len(chosen))
        if excess > 0:
            chosen += [row[0] for row in conn.execute(PRUNE_OVER_CAP_SQL, (cutoff, excess))]
    return chosen


def prune_batch(conn: sqlite3.Connection, policy: RetentionPolicy, now: datetime) -> PruneReport:
    """Prune one batch of jobs and expire old idempotency records."""
    began = time.perf_counter()
    ids = _prunable(conn, policy, now)
    report = PruneReport(jobs=len(ids), job_ids=ids)
    if ids:
        marks = ",".join("?" * len(ids))
        conn.execute(
            "INSERT OR IGNORE INTO pruned_jobs (job_id, fingerprint, state, pruned_at) "
            f"SELECT job_id, fingerprint, json_object({_json_pairs()}), ? "
            f"FROM jobs WHERE job_id IN ({marks}) ORDER BY completed_at",
            (format_timestamp(now), *ids),
        )
        report.transitions = _delete(conn, "transitions", marks, ids)
        report.events = _delete(conn, "job_events", marks, ids)
        report.outbox = _delete(conn, "outbox", marks, ids)
        _delete(conn, "jobs", marks, ids)
    report.records_expired = _expire_records(conn, policy, now)
    report.seconds = time.perf_counter() - began
    return report


def _delete(conn: sqlite3.Connection, table: str, marks: str, ids: list[str]) -> int:
    return conn.execute(f"DELETE FROM {table} WHERE job_id IN ({marks})", ids).rowcount


def due(conn: sqlite3.Connection, policy: RetentionPolicy, now: datetime) -> PruneReport:
    """How many jobs and idempotency records a full pass would remove now."""
    cutoff = _cutoff(policy, now)
    finished = f"status IN ({_FINISHED_SQL})"
    old = conn.execute(
        f"SELECT count(*) FROM jobs INDEXED BY jobs_by_completion WHERE completed_at < ? "
        f"AND {finished}",
        (cutoff,),
    ).fetchone()[0]
    jobs = old
    if policy.max_jobs:
        total = conn.execute("SELECT coalesce(sum(n), 0) FROM job_counts").fetchone()[0]
        younger = conn.execute(
            f"SELECT count(*) FROM jobs INDEXED BY jobs_by_completion WHERE completed_at >= ? "
            f"AND {finished}",
            (cutoff,),
        ).fetchone()[0]
        jobs += max(0, min(total - old - policy.max_jobs, younger))
    expired = conn.execute(
        "SELECT count(*) FROM pruned_jobs WHERE pruned_at < ?", (cutoff,)
    ).fetchone()[0]
    return PruneReport(jobs=jobs, records_expired=expired)


def would_prune(conn: sqlite3.Connection, policy: RetentionPolicy, now: datetime) -> PruneReport:
    """What a full pass would remove now (`hostagent prune --dry-run`); changes nothing."""
    report = due(conn, policy, now)
    # Counted for the jobs pruned by age; those over max_jobs depend on the order of pruning.
    chosen = (
        "SELECT job_id FROM jobs INDEXED BY jobs_by_completion "
        f"WHERE completed_at < ? AND status IN ({_FINISHED_SQL})"
    )
    report.transitions, report.events, report.outbox = (
        conn.execute(
            f"SELECT count(*) FROM {table} WHERE job_id IN ({chosen})", (_cutoff(policy, now),)
        ).fetchone()[0]
        for table in ("transitions", "job_events", "outbox")
    )
    return report


def _json_pairs() -> str:
    return ", ".join(f"'{name}', {name}" for name in _STATE_SQL.split(", "))


def _expire_records(conn: sqlite3.Connection, policy: RetentionPolicy, now: datetime) -> int:
    """Idempotency records kept a full retention period after their job was pruned
    (and, with max_jobs, no more of them than that): the oldest go first."""
    cutoff = _cutoff(policy, now)
    rows = conn.execute(
        "SELECT id, pruned_at FROM pruned_jobs ORDER BY id LIMIT ?", (policy.batch,)
    ).fetchall()
    if not rows:
        return 0
    # Ids grow with time and only the oldest are removed: the span is the count.
    newest = conn.execute("SELECT max(id) FROM pruned_jobs").fetchone()[0]
    over_cap = newest - rows[0][0] + 1 - policy.max_jobs if policy.max_jobs else 0
    expired = [row[0] for index, row in enumerate(rows) if row[1] < cutoff or index < over_cap]
    if expired:
        conn.execute(
            f"DELETE FROM pruned_jobs WHERE id IN ({','.join('?' * len(expired))})", expired
        )
    return len(expired)


def reclaim_pages(conn: sqlite3.Connection, pages: int = 1024) -> None:
    """Hand some freed pages back to the filesystem (stores made with auto_vacuum
    incremental); otherwise SQLite reuses them for new jobs, so the file stops growing."""
    conn.execute(f"PRAGMA incremental_vacuum({int(pages)})").fetchall()


@runtime_checkable
class ForgetsJobs(Protocol):
    """A transport that keeps files of finished jobs (the spool's done/)."""

    async def forget_jobs(self, job_ids: list[str]) -> None:
        """The jobs were pruned: remove what it kept of them."""


def remove_artifacts(artifacts: Path, job_ids: list[str]) -> None:
    """Remove the artifact folders of pruned jobs: only folders derived from their
    ids, only beneath `artifacts` (state_dir/artifacts), never through a link."""
    remove_folders(artifacts, job_ids)


@runtime_checkable
class Prunable(Protocol):
    """A store the pruner can work on."""

    async def prune(self, policy: RetentionPolicy, now: datetime) -> PruneReport: ...

    async def would_prune(self, policy: RetentionPolicy, now: datetime) -> PruneReport: ...

    async def due(self, policy: RetentionPolicy, now: datetime) -> PruneReport: ...

    @property
    def writes_committed(self) -> int:
        """Writes committed so far, anyone's: the pruner yields while others write."""

    async def reclaim_pages(self) -> None: ...


def _next_size(size: int, seconds: float, most: int) -> int:
    """The next batch's size, aiming at _SLICE_SECONDS (at most doubling, never past `most`)."""
    if seconds <= 0:
        return min(most, size * 2)
    aimed = int(size * _SLICE_SECONDS / seconds)
    return max(min(_MIN_BATCH, most), min(most, size * 2, aimed))


def utc_clock() -> datetime:
    return datetime.now(UTC)


class Pruner:
    """Runs retention passes every `every` seconds; `forget` hears which jobs went
    (the spool removes their done/ files, the daemon their artifacts)."""

    def __init__(
        self,
        store: Prunable,
        policy: Callable[[], RetentionPolicy],
        *,
        every: Callable[[], float],
        forget: Callable[[list[str]], Awaitable[None]] | None = None,
        clock: Callable[[], datetime] = utc_clock,
    ) -> None:
        self._store = store
        self._policy = policy
        self._every = every
        self._forget = forget
        self._clock = clock

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        # Not at once: start-up (recovery, the spool's first scan) goes first.
        await trio.sleep(min(self._every(), _FIRST_PASS_SECONDS))
        while True:
            try:
                await self.prune_pass()
            except Exception:  # retention failing must not stop the agent; next pass retries
                log.exception("store.prune_failed")
            await trio.sleep(self._every())

    async def prune_pass(self) -> PruneReport:
        """Prune batch after batch until nothing is due; what went."""
        policy = self._policy()
        now = self._clock()
        total = PruneReport()
        # A pass takes what was due when it began: jobs that finish meanwhile wait
        # for the next pass, so steady traffic cannot keep one pass going for ever.
        due = await self._store.due(policy, now)
        budget = due.jobs + due.records_expired
        size = min(policy.batch, 100)
        while budget > 0:
            began, writes = trio.current_time(), self._store.writes_committed
            report = await self._store.prune(dataclasses.replace(policy, batch=size), now)
            took = trio.current_time() - began
            others = self._store.writes_committed - writes - 1
            total.add(report)
            if report.job_ids and self._forget is not None:
                await self._forget(report.job_ids)
            budget -= report.jobs + report.records_expired
            if report.jobs < size and report.records_expired < size:
                break
            size = _next_size(size, report.seconds, policy.batch)
            if others:
                await trio.sleep(took * _YIELD)
            else:
                await trio.lowlevel.checkpoint()
        if total.jobs or total.records_expired:
            await self._store.reclaim_pages()
            log.info(
                "store.pruned",
                jobs=total.jobs,
                events=total.events,
                transitions=total.transitions,
                outbox=total.outbox,
                records_expired=total.records_expired,
            )
        return total
