"""The SQLite job store (WAL, synchronous=FULL): what the daemon runs on.

Writes are group-committed (see Batcher): an acknowledged write is on disk,
and a burst of writes costs one fsync. Every blocking call, opening and
closing included, runs in a worker thread.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import structlog
import trio

from agent.config import STATE_DIR_MODE
from agent.core.diskspace import is_disk_full, storage_full
from agent.core.jobstore import Queued, Recovery
from agent.core.outbox import OutboxInterest
from agent.errors import AgentError, StoreError
from agent.jobs import JobState, JobStatus, NewJob, OutboxEntry, PendingJob, utc_now
from agent.store import outbox_sql, queries, retention, templates_sql, writes
from agent.store.batcher import Batcher
from agent.store.readpool import ReadPool
from agent.store.retention import PruneReport, RetentionPolicy
from agent.store.schema import connect

log = structlog.get_logger("agent.store")

_T = TypeVar("_T")
# Longer than a client takes to send its next submit once answered (~1 ms on loopback).
LAZY_LINGER = 0.003


def private_files(path: Path) -> None:
    """The store, its WAL and shared memory: 0600 whatever the umask (SQLite gives the
    WAL and -shm files the database file's mode), in the state directory (STATE_DIR_MODE)."""
    if not path.parent.exists():
        path.parent.mkdir(mode=STATE_DIR_MODE, parents=True)
        path.parent.chmod(STATE_DIR_MODE)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    try:
        os.fchmod(fd, 0o600)
    finally:
        os.close(fd)
    for suffix in ("-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.chmod(path.with_name(path.name + suffix), 0o600)


@dataclass(frozen=True, slots=True)
class _Start:
    """A queued Pending -> Running (a Queued's operation, recognisable in its batch)."""

    targets: outbox_sql.OutboxTargets
    job_id: str
    now: str

    def __call__(self, conn: sqlite3.Connection) -> JobState | None:
        return writes.mark_running(conn, self.targets, self.job_id, self.now)


@dataclass(frozen=True, slots=True)
class _Finish:
    """A queued terminal status (a Queued's operation, recognisable in its batch)."""

    targets: outbox_sql.OutboxTargets
    job_id: str
    status: JobStatus
    result: Any
    error: str | None
    only_from: tuple[JobStatus, ...]
    now: str

    def __call__(self, conn: sqlite3.Connection) -> JobState | None:
        return writes.finish(
            conn,
            self.targets,
            self.job_id,
            status=self.status,
            result=self.result,
            error=self.error,
            only_from=self.only_from,
            now=self.now,
        )


@dataclass(frozen=True, slots=True)
class _Insert:
    """Queued new jobs (a Queued's operation, recognisable in its batch: the inserts
    queued one after another run as one writes.insert_jobs, see SqliteStore._commit)."""

    targets: outbox_sql.OutboxTargets
    jobs: Sequence[NewJob]

    def __call__(self, conn: sqlite3.Connection) -> list[Any]:
        return writes.insert_jobs(conn, self.targets, self.jobs)


def _inserts_from(batch: list[Queued], start: int) -> int:
    """The end of the run of inserts that begins at `start` (itself included)."""
    end = start
    while end < len(batch) and isinstance(batch[end].operation, _Insert):
        end += 1
    return end


def _starts_to_fold(batch: list[Queued]) -> dict[int, Queued]:
    """By id of a job's start in the batch, its outcome later in the same batch with
    nothing else about any job between (only other starts and outcomes), so the two
    can run as one update (writes.start_and_finish): a job that finished at once."""
    folds: dict[int, Queued] = {}
    starts: dict[str, Queued] = {}
    for item in batch:
        operation = item.operation
        if isinstance(operation, _Start):
            starts[operation.job_id] = item
        elif isinstance(operation, _Finish):
            start = starts.pop(operation.job_id, None)
            if start is not None and operation.only_from == (JobStatus.RUNNING,):
                folds[id(start)] = item
        else:
            starts.clear()  # an event, an insert, a read...: what it sees must not change
    return folds


class SqliteStore:
    """The daemon's handle on the job store (implements agent.store.JobStore)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._writer: sqlite3.Connection | None = None
        self._reads = ReadPool(lambda: connect(self.path, readonly=True))
        self._writes = Batcher(self._commit, self._after_commit, own_thread="hostagent-writer")
        self._targets = outbox_sql.OutboxTargets()
        self._changed: dict[str, trio.Event] = {}
        # True from a write that found the disk full until the next one that did not.
        self.disk_full = False
        self._full_reported = False

    # -- life --

    def register_consumer(self, name: str, interest: OutboxInterest) -> None:
        """From now on, record outbox entries for `name` (before open(), for recovery)."""
        self._targets.consumers[name] = interest

    async def open(self) -> None:
        """Open (creating and migrating), and drop entries no consumer will read."""
        await trio.to_thread.run_sync(private_files, self.path)
        self._writer = await trio.to_thread.run_sync(connect, self.path)
        await self._reads.open()
        dropped = await self._write(
            lambda conn: outbox_sql.drop_unclaimed_outbox(conn, self._targets.consumers)
        )
        if dropped:
            log.warning("store.outbox_dropped", entries=dropped, reason="consumer not configured")

    async def aclose(self) -> None:
        self._writes.close()
        await self._reads.aclose()
        if self._writer is not None:
            await trio.to_thread.run_sync(self._writer.close)
        self._writer = None

    # -- reads --

    async def _read(self, query: Callable[..., _T], /, *args: Any, **kwargs: Any) -> _T:
        return await self._reads.read(lambda conn: query(conn, *args, **kwargs))

    async def get_job(self, job_id: str) -> JobState:
        # A lookup by primary key: on the loop, ahead of any list (see ReadPool.read_now).
        return await self._reads.read_now(lambda conn: queries.get_job(conn, job_id))

    async def get_submitter(self, job_id: str) -> str | None:
        return await self._read(queries.get_submitter, job_id)

    async def unfinished_children(self, job_id: str) -> list[str]:
        return await self._read(queries.unfinished_children, job_id)

    async def get_result(self, job_id: str) -> Any:
        return await self._reads.read_now(lambda conn: queries.get_result(conn, job_id))

    async def get_events(self, job_id: str) -> list[dict[str, Any]]:
        return await self._read(queries.get_events, job_id)

    async def list_jobs(
        self,
        *,
        status: str | None = None,
        operation: str | None = None,
        limit: int = 100,
        after_seq: int = 0,
        newest_first: bool = False,
    ) -> tuple[list[JobState], int, int | None]:
        return await self._read(
            queries.list_jobs,
            status=status,
            operation=operation,
            limit=limit,
            after_seq=after_seq,
            newest_first=newest_first,
        )

    async def get_events_after(
        self, after_id: int, job_ids: Sequence[str] | None
    ) -> list[dict[str, Any]]:
        return await self._read(queries.get_events_after, after_id, job_ids)

    async def count_by_status(self) -> dict[str, int]:
        return await self._read(queries.count_by_status)

    async def pending_jobs(self) -> list[PendingJob]:
        return await self._read(queries.pending_jobs)

    async def outbox_entries(self, consumer: str, after_id: int, limit: int) -> list[OutboxEntry]:
        return await self._read(queries.outbox_entries, consumer, after_id, limit)

    # -- templates (issue 23): kept with the jobs, in backups with them --

    async def list_templates(self) -> list[dict[str, Any]]:
        return await self._read(templates_sql.list_templates)

    async def get_template(self, name: str) -> dict[str, Any]:
        return await self._read(templates_sql.get_template, name)

    async def put_template(
        self, name: str, document: dict[str, Any], *, create: bool
    ) -> dict[str, Any]:
        # Not retried: a client is waiting for the answer.
        found: dict[str, Any] = await self.settle(
            self._writes.queue(
                lambda conn: templates_sql.put_template(conn, name, document, create=create)
            )
        )
        return found

    async def delete_template(self, name: str) -> None:
        await self.settle(
            self._writes.queue(lambda conn: templates_sql.delete_template(conn, name))
        )

    # -- writes --

    def _queue_write(self, operation: Callable[[sqlite3.Connection], Any]) -> Queued:
        """Queue a write now (writes commit in the order they are queued).

        A write queued here is about a job already accepted (its start, progress,
        outcome...): one whose batch finds the disk full is kept, in its place,
        and tried again with backoff until space returns (see Batcher), so
        nothing acknowledged is lost, nothing waiting on it fails, and a job's
        start never lands after its outcome."""
        return self._writes.queue(operation, retry=True)

    async def settle(self, write: Queued, *, lazy: bool = False) -> Any:
        """Wait until a queued write is committed; its value.

        `lazy`: no one is held up by this write (a job's bookkeeping that only
        announcements wait for), so when the writer is idle it waits up to
        LAZY_LINGER for the next write to share that write's commit: one client
        submitting job after job then pays one fsync per job, not two (its next
        submit no longer waits behind the last job's own commit)."""
        return await self._writes.settle(write, linger=LAZY_LINGER if lazy else 0.0)

    async def _write(self, operation: Callable[[sqlite3.Connection], Any]) -> Any:
        return await self.settle(self._queue_write(operation))

    def _commit(self, batch: list[Queued]) -> list[Queued]:
        """Commit a batch; the writes to try again (see _queue_write)."""
        conn = self._writer
        assert conn is not None, "store not open"
        folds = _starts_to_fold(batch) if len(batch) > 1 else {}
        folded: dict[int, Any] = {}  # by id of an outcome: its value, already written
        try:
            conn.execute("BEGIN IMMEDIATE")
            index = alone_until = 0  # before alone_until, inserts run one by one
            while index < len(batch):
                item = batch[index]
                index += 1
                if isinstance(item.operation, _Insert) and index > alone_until:
                    end = _inserts_from(batch, index)
                    if end > index:
                        if self._insert_together(conn, batch[index - 1 : end]):
                            index = end
                            continue
                        alone_until = end
                conn.execute("SAVEPOINT op")
                try:
                    if id(item) in folded:
                        item.value = folded.pop(id(item))
                    elif id(item) in folds:
                        item.value = self._start_and_finish(conn, item, folds[id(item)], folded)
                    else:
                        item.value = item.operation(conn)
                except sqlite3.Error:
                    raise  # the transaction itself is in trouble: fail the batch
                except Exception as exc:  # noqa: BLE001 (delivered to the caller who queued it)
                    conn.execute("ROLLBACK TO op")
                    item.error = exc
                conn.execute("RELEASE op")
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            self._targets.touched.clear()
            full = is_disk_full(exc, self.path.parent)
            self.disk_full = self.disk_full or full
            again = [item for item in batch if full and item.retry]
            for item in batch:
                item.error = (
                    storage_full(self.path.parent)
                    if full
                    else StoreError(f"job store write failed: {exc}")
                )
                item.error.__cause__ = exc
            return again
        self.disk_full = False
        return []

    def _insert_together(self, conn: sqlite3.Connection, run: list[Queued]) -> bool:
        """Several submits' inserts as one writes.insert_jobs (one lookup of the known
        ids, one INSERT, one count per operation: a third of the statements of each
        alone), each answered its own part. False: it raised (nothing of it is left),
        so each runs alone, as any other write, and gets its own error."""
        inserts = [item.operation for item in run]
        jobs = [job for insert in inserts if isinstance(insert, _Insert) for job in insert.jobs]
        conn.execute("SAVEPOINT inserts")
        try:
            outcomes = writes.insert_jobs(conn, self._targets, jobs)
        except sqlite3.Error:
            raise  # the transaction itself is in trouble: fail the batch
        except Exception:  # noqa: BLE001 (each insert is run again alone below)
            conn.execute("ROLLBACK TO inserts")
            conn.execute("RELEASE inserts")
            return False
        conn.execute("RELEASE inserts")
        first = 0
        for item, insert in zip(run, inserts, strict=True):
            assert isinstance(insert, _Insert)
            item.value = outcomes[first : first + len(insert.jobs)]
            first += len(insert.jobs)
        return True

    def _start_and_finish(
        self, conn: sqlite3.Connection, start: Queued, finish: Queued, folded: dict[int, Any]
    ) -> JobState | None:
        """Run a start and its job's outcome as one update; the start's value (the
        outcome's is left in `folded`). A job no longer pending: its outcome runs alone."""
        begin, end = start.operation, finish.operation
        assert isinstance(begin, _Start)
        assert isinstance(end, _Finish)
        both = writes.start_and_finish(
            conn,
            self._targets,
            begin.job_id,
            started_at=begin.now,
            status=end.status,
            result=end.result,
            error=end.error,
            now=end.now,
        )
        if both is None:
            return None
        folded[id(finish)] = both[1]
        return both[0]

    def _after_commit(self) -> None:
        if self.disk_full != self._full_reported:
            self._full_reported = self.disk_full
            if self.disk_full:
                # New jobs are refused and writes about accepted ones wait for space.
                log.error("store.disk_full", path=str(self.path))
            else:
                log.info("store.disk_space_back", path=str(self.path))
        for name in self._targets.touched:
            event = self._changed.pop(name, None)
            if event is not None:
                event.set()
        self._targets.touched.clear()

    def outbox_changed(self, consumer: str) -> trio.Event:
        return self._changed.setdefault(consumer, trio.Event())

    async def insert_jobs(
        self, jobs: Sequence[NewJob]
    ) -> list[tuple[JobState, PendingJob | None] | AgentError]:
        # Not retried: a new job on a full disk is refused (503), never kept waiting.
        result: list[tuple[JobState, PendingJob | None] | AgentError] = await self._writes.settle(
            self._writes.queue(_Insert(self._targets, jobs))
        )
        return result

    def queue_mark_running(self, job_id: str) -> Queued:
        """Pending -> Running, queued; settles to the JobState, or None if the job
        was no longer pending."""
        # The time it is queued, not committed: the handler starts right away.
        return self._queue_write(_Start(self._targets, job_id, utc_now()))

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
        return self._queue_write(
            _Finish(self._targets, job_id, status, result, error, tuple(only_from), utc_now())
        )

    async def note_interrupted(self, job_id: str, reason: str) -> None:
        """Leave a Running job for restart recovery, recording why it stopped."""
        await self._write(lambda conn: writes.note_interrupted(conn, job_id, reason))

    async def ping(self) -> None:
        """A write round trip that changes nothing: answers once the writer is free."""
        await self._write(lambda conn: None)

    async def add_event(self, job_id: str, kind: str, data: dict[str, Any]) -> str:
        at: str = await self._write(
            lambda conn: writes.add_event(conn, self._targets, job_id, kind, data)
        )
        return at

    async def recover(self, rerun_safe: Callable[[str], bool]) -> Recovery:
        recovery: Recovery = await self._write(
            lambda conn: writes.recover(conn, self._targets, rerun_safe)
        )
        return recovery

    # -- retention (see retention.py) --

    async def prune(self, policy: RetentionPolicy, now: datetime) -> PruneReport:
        """One batch of retention, committed with whatever writes are queued beside it."""
        report: PruneReport = await self._write(
            lambda conn: retention.prune_batch(conn, policy, now)
        )
        return report

    async def would_prune(self, policy: RetentionPolicy, now: datetime) -> PruneReport:
        return await self._read(retention.would_prune, policy, now)

    @property
    def writes_committed(self) -> int:
        return self._writes.finished

    async def due(self, policy: RetentionPolicy, now: datetime) -> PruneReport:
        return await self._read(retention.due, policy, now)

    async def reclaim_pages(self) -> None:
        # Outside a transaction: incremental_vacuum does nothing inside BEGIN.
        def reclaim() -> None:
            assert self._writer is not None, "store not open"
            retention.reclaim_pages(self._writer)

        await self._writes.settle(self._writes.queue(lambda conn: None))
        await trio.to_thread.run_sync(reclaim)

    async def ack_outbox(self, consumer: str, up_to_id: int) -> None:
        await self._write(lambda conn: outbox_sql.ack_outbox(conn, consumer, up_to_id))
