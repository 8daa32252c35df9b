"""Retention: old finished jobs go with everything kept of them; nothing else does."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import trio

from agent.config import Config
from agent.errors import ConflictError, NotFoundError
from agent.jobs import JobStatus, NewJob
from agent.service.daemon import Agent
from agent.store.retention import (
    PRUNE_OLD_SQL,
    PRUNE_OVER_CAP_SQL,
    Pruner,
    PruneReport,
    RetentionPolicy,
    prune_batch,
)
from agent.store.retention import due as retention_due
from agent.store.schema import connect
from tests.jobs import job, job_document, new_job
from tests.spoolkit import drop, wait_for_files

OLD_JOBS = 12


def waiting_job(job_id: str) -> NewJob:
    """A job put in the store directly: the dispatcher never takes it, so it stays put."""
    return new_job(job_id, fingerprint=job_id)


def rows(path: Path, sql: str, *args: object) -> int:
    conn = sqlite3.connect(path)
    try:
        return int(conn.execute(sql, args).fetchone()[0])
    finally:
        conn.close()


async def test_pruner_removes_old_finished_jobs_keeps_live_ones_and_their_ids(
    agent: Agent, config: Config
) -> None:
    spool = config.spool_dir
    documents = {f"old-{n}": job(f"old-{n}", data={"n": n}) for n in range(OLD_JOBS)}
    for job_id, document in documents.items():
        drop(spool, f"{job_id}.json", document)
    await wait_for_files(spool / "done", "*.result.json", OLD_JOBS)
    await agent.store.add_event("old-0", "log", {"message": "kept until pruned"})
    # Pending and running, whatever their age: never pruned.
    await agent.store.insert_jobs([waiting_job("waiting"), waiting_job("busy")])
    assert await agent.store.settle(agent.store.queue_mark_running("busy")) is not None

    # Pruning 30 days from now: every job so far is "dated" 30 days in the past.
    later = datetime.now(UTC) + timedelta(days=30)
    policy = RetentionPolicy(retention_days=7, batch=5)  # small batches: several passes
    assert agent.pruner is not None
    store = agent.store
    dry = await store.would_prune(policy, later)  # type: ignore[attr-defined]
    assert dry.jobs == OLD_JOBS
    pruner = Pruner(
        store,  # type: ignore[arg-type]  # the SqliteStore is Prunable
        lambda: policy,
        every=lambda: 3600,
        forget=agent._forget_jobs,
        clock=lambda: later,
    )

    submitted: list[str] = []
    pruning = True

    async def keep_submitting() -> None:
        while pruning:
            document = job_document("system.echo", {"during": len(submitted)})
            answer = await agent.intake.submit(document, transport="test")
            assert answer.created
            submitted.append(answer.state.job_id)
            await trio.sleep(0)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(keep_submitting)
        report = await pruner.prune_pass()
        pruning = False
    assert report.jobs >= OLD_JOBS
    assert report.events >= 1
    assert submitted, "submits were held up for the whole prune"

    for job_id in documents:
        with pytest.raises(NotFoundError):
            await agent.intake.status(job_id)
    db = config.store_path
    assert rows(db, "SELECT count(*) FROM job_events WHERE job_id LIKE 'old-%'") == 0
    assert rows(db, "SELECT count(*) FROM transitions WHERE job_id LIKE 'old-%'") == 0
    assert rows(db, "SELECT count(*) FROM outbox WHERE job_id LIKE 'old-%'") == 0
    assert not list((spool / "done").glob("old-*"))
    assert (await agent.intake.status("waiting")).status is JobStatus.PENDING
    assert (await agent.intake.status("busy")).status is JobStatus.RUNNING

    # A redelivery of a pruned job is still recognised: the same document is a
    # duplicate, another document under its id a conflict.
    again = await agent.intake.submit(documents["old-3"], transport="spool")
    assert not again.created
    assert again.state.job_id == "old-3"
    assert again.state.status is JobStatus.COMPLETED
    with pytest.raises(ConflictError):
        await agent.intake.submit(job("old-3", data={"other": True}), transport="spool")
    listed, total, _ = await agent.intake.list_jobs(status="Completed", limit=1000)
    assert total == len(listed)
    assert not any(state.job_id.startswith("old-") for state in listed)


async def test_idempotency_records_outlive_their_jobs_then_expire(tmp_path: Path) -> None:
    from agent.store import SqliteStore

    store = SqliteStore(tmp_path / "jobs.sqlite3")
    await store.open()
    try:
        [_] = await store.insert_jobs([waiting_job("j")])
        await store.settle(store.queue_mark_running("j"))
        await store.settle(store.queue_finish("j", JobStatus.COMPLETED, result={"ok": 1}))
        policy = RetentionPolicy(retention_days=7)
        now = datetime.now(UTC)
        assert (await store.prune(policy, now + timedelta(days=8))).jobs == 1
        # Still known a retention period after pruning ...
        [(state, pending)] = await store.insert_jobs([waiting_job("j")])  # type: ignore[misc]
        assert pending is None
        assert state.status is JobStatus.COMPLETED
        report = await store.prune(policy, now + timedelta(days=14))
        assert report.records_expired == 0
        # ... and forgotten after that.
        assert (await store.prune(policy, now + timedelta(days=16))).records_expired == 1
    finally:
        await store.aclose()


async def test_max_jobs_prunes_the_oldest_finished_beyond_the_cap(tmp_path: Path) -> None:
    from agent.store import SqliteStore

    store = SqliteStore(tmp_path / "jobs.sqlite3")
    await store.open()
    try:
        await store.insert_jobs([waiting_job(f"j{n}") for n in range(6)])
        for n in range(4):
            await store.settle(store.queue_mark_running(f"j{n}"))
            await store.settle(store.queue_finish(f"j{n}", JobStatus.FAILED, error="x"))
        report = await store.prune(RetentionPolicy(max_jobs=3), datetime.now(UTC))
        assert report.job_ids == ["j0", "j1", "j2"]
        assert await store.count_by_status() == {"Failed": 1, "Pending": 2}
    finally:
        await store.aclose()


async def test_prune_dry_run_shows_what_would_go_and_changes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from agent.cli import command as cli
    from agent.store import SqliteStore

    store = SqliteStore(tmp_path / "jobs.sqlite3")
    await store.open()
    try:
        await store.insert_jobs([waiting_job("j"), waiting_job("k")])
        await store.settle(store.queue_mark_running("j"))
        await store.settle(store.queue_finish("j", JobStatus.COMPLETED, result=None))
    finally:
        await store.aclose()
    argv = ["prune", "--state-dir", str(tmp_path), "--spool-dir", str(tmp_path / "spool")]
    # Everything finished counts as old with a retention of a few microseconds.
    env_days = {"HOSTAGENT_STORE__RETENTION_DAYS": "0.00000001"}
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env_days.items():
            patch.setenv(name, value)
        assert cli.main([*argv, "--dry-run"]) == 0
        assert '"jobs": 1' in capsys.readouterr().out
        assert rows(tmp_path / "jobs.sqlite3", "SELECT count(*) FROM jobs") == 2
        assert cli.main(argv) == 0
        assert '"jobs": 1' in capsys.readouterr().out
    assert rows(tmp_path / "jobs.sqlite3", "SELECT count(*) FROM jobs") == 1


def _plan(conn: sqlite3.Connection, sql: str, *args: object) -> list[str]:
    return [row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}", args)]


@pytest.mark.slow
def test_prune_batches_walk_the_completion_index_at_a_million_jobs(tmp_path: Path) -> None:
    """At 1M finished jobs the planner, left alone, took jobs_by_status and sorted every
    finished job for each batch (300 ms holding the writer); the batch is named onto
    jobs_by_completion and reads only the rows it returns."""
    conn = connect(tmp_path / "jobs.sqlite3")
    conn.execute("PRAGMA synchronous = OFF")  # a fixture, not the agent's writes
    conn.execute(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 1000000) "
        "INSERT INTO jobs (job_id, operation, status, priority, transport, document, "
        "fingerprint, submitted_at, started_at, completed_at) "
        "SELECT printf('old-%07d', i), 'system.echo', "
        "CASE WHEN i % 100 = 0 THEN 'Failed' ELSE 'Completed' END, 5, 'test', '{}', 'fp', "
        "'2026-01-01T00:00:00Z', '2026-01-01T00:00:00Z', "
        "strftime('%Y-%m-%dT%H:%M:%fZ', '2026-01-01', '+' || i || ' seconds') FROM n"
    )
    conn.execute("ANALYZE")  # the planner's statistics as a long-lived store has them
    cutoff = "2026-06-01T00:00:00.000000Z"
    for sql in (PRUNE_OLD_SQL, PRUNE_OVER_CAP_SQL):
        plan = _plan(conn, sql, cutoff, 500)
        assert any("USING INDEX jobs_by_completion" in step for step in plan), plan
        assert not any("TEMP B-TREE" in step for step in plan), plan

    now = datetime(2026, 1, 10, tzinfo=UTC)  # 7 days' retention: the first 2 days' jobs are due
    conn.execute("BEGIN")
    report = prune_batch(conn, RetentionPolicy(retention_days=7, batch=500), now)
    conn.execute("COMMIT")
    assert report.job_ids == [f"old-{n:07d}" for n in range(1, 501)]  # the oldest first
    assert report.seconds > 0
    due = retention_due(conn, RetentionPolicy(retention_days=7), now)
    assert due.jobs == 2 * 86400 - 1 - 500  # completed before the cutoff, less those gone
    conn.close()


class _BusyStore:
    """A store with `due` jobs to prune in batches that each take `took` (trio time) and
    `others` writes of someone else's committed beside each batch."""

    def __init__(self, due: int, took: float, others: int) -> None:
        self.left = due
        self.took = took
        self.others = others
        self.sizes: list[int] = []
        self.writes_committed = 0

    async def due(self, policy: RetentionPolicy, now: datetime) -> PruneReport:
        return PruneReport(jobs=self.left)

    async def would_prune(self, policy: RetentionPolicy, now: datetime) -> PruneReport:
        return await self.due(policy, now)

    async def prune(self, policy: RetentionPolicy, now: datetime) -> PruneReport:
        await trio.sleep(self.took)
        self.writes_committed += 1 + self.others
        jobs = min(policy.batch, self.left)
        self.left -= jobs
        self.sizes.append(policy.batch)
        return PruneReport(jobs=jobs, seconds=self.took)

    async def reclaim_pages(self) -> None:
        pass


@pytest.mark.parametrize(("others", "pauses"), [(0, 0.0), (3, 8.0)])
async def test_a_pass_yields_the_writer_only_while_others_write(
    autojump_clock: trio.abc.Clock, others: int, pauses: float
) -> None:
    """Batches sized to ~2 ms of the writer; alone a pass goes batch after batch, beside
    others' writes it pauses 8x what each batch took."""
    store = _BusyStore(due=2000, took=0.004, others=others)
    pruner = Pruner(store, lambda: RetentionPolicy(batch=500), every=lambda: 3600)
    began = trio.current_time()
    report = await pruner.prune_pass()
    assert report.jobs == 2000
    assert store.sizes[:3] == [100, 50, 25]  # 4 ms for 100 jobs: halved toward 2 ms
    batches = len(store.sizes)
    # Each batch took 0.004 s; beside others' writes, each but the last paused 8x that.
    assert trio.current_time() - began == pytest.approx(
        batches * 0.004 + (batches - 1) * 0.004 * pauses
    )
