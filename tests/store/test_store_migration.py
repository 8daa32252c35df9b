"""The store's schema 5 (a job's submission read from the job, not a transitions
row): the migration from 4 keeps every transition, and batches record their jobs."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from agent.errors import AgentError, ConflictError
from agent.jobs import JobStatus
from agent.store import SqliteStore
from agent.store.queries import get_submitter, get_transitions, pending_jobs
from agent.store.schema import _MIGRATIONS, SCHEMA_VERSION, _statements, connect
from tests.jobs import new_job

SUBMITTED = "2026-01-02T03:04:05.000006Z"


def v4_store(path: Path) -> None:
    """A store as schema 4 left it: each job's submission a transitions row."""
    conn = sqlite3.connect(path, isolation_level=None)
    for version in range(1, 5):
        for statement in _statements(_MIGRATIONS[version]):
            conn.execute(statement)
    conn.execute("PRAGMA user_version = 4")
    jobs = [("done", "http", "Completed"), ("requeued", "spool", "Pending")]
    for seq, (job_id, transport, status) in enumerate(jobs, start=1):
        conn.execute(
            "INSERT INTO jobs (seq, job_id, operation, status, priority, transport, document, "
            "fingerprint, submitted_at) VALUES (?, ?, 'system.echo', ?, 5, ?, '{}', 'f', ?)",
            (seq, job_id, status, transport, SUBMITTED),
        )
    steps = [
        ("done", "Pending", SUBMITTED, "submitted via http"),
        ("requeued", "Pending", SUBMITTED, "submitted via spool"),
        ("done", "Running", "2026-01-02T03:04:06.000000Z", None),
        ("requeued", "Running", "2026-01-02T03:04:06.000000Z", None),
        ("done", "Completed", "2026-01-02T03:04:07.000000Z", None),
        # Not a submission: a re-queue after a restart, at another time.
        ("requeued", "Pending", "2026-01-02T03:04:08.000000Z", "agent restarted mid-job"),
        # Says "submitted" but not when the job was: kept as it is.
        ("requeued", "Pending", "2026-01-02T03:04:09.000000Z", "submitted via spool"),
    ]
    conn.executemany(
        "INSERT INTO transitions (job_id, status, at, reason) VALUES (?, ?, ?, ?)", steps
    )
    conn.close()


@pytest.mark.slow
def test_migration_from_4_keeps_every_transition(tmp_path: Path) -> None:
    path = tmp_path / "jobs.sqlite3"
    v4_store(path)
    with sqlite3.connect(path) as old:
        before = {job_id: get_transitions(old, job_id) for job_id in ("done", "requeued")}
    # Read as schema 4 wrote them, the submission appears twice (row and job).
    assert [step["reason"] for step in before["done"]][:2] == ["submitted via http"] * 2
    conn = connect(path)
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        # Only the two submission rows went: the job says the same.
        assert conn.execute("SELECT count(*) FROM transitions").fetchone()[0] == 5
        assert get_transitions(conn, "done") == [
            {"status": "Pending", "at": SUBMITTED, "reason": "submitted via http"},
            {"status": "Running", "at": "2026-01-02T03:04:06.000000Z", "reason": None},
            {"status": "Completed", "at": "2026-01-02T03:04:07.000000Z", "reason": None},
        ]
        assert get_transitions(conn, "requeued") == before["requeued"][1:]
        assert [job.job_id for job in pending_jobs(conn)] == ["requeued"]
        assert get_transitions(conn, "absent") == []
    finally:
        conn.close()


async def test_a_batch_records_its_new_jobs_once_in_order(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "jobs.sqlite3")
    await store.open()
    try:
        [old] = await store.insert_jobs([new_job("old")])
        assert not isinstance(old, AgentError)
        assert old[1] is not None
        outcomes = await store.insert_jobs(
            [
                new_job("a"),
                new_job("old"),
                new_job("a"),
                new_job("a", fingerprint="other"),
                new_job("b", transport="spool"),
            ]
        )
        a, known, again, conflict, b = outcomes
        assert not isinstance(a, AgentError)
        assert a[1] is not None
        assert not isinstance(b, AgentError)
        assert b[1] is not None
        # Seqs follow the batch's order, after the jobs already there.
        assert (old[1].seq, a[1].seq, b[1].seq) == (1, 2, 3)
        assert not isinstance(known, AgentError)
        assert known == (old[0], None)
        # The same document twice in one batch is one job; another under its id conflicts.
        assert not isinstance(again, AgentError)
        assert again == (a[0], None)
        assert isinstance(conflict, ConflictError)
        assert [item.job_id for item in await store.pending_jobs()] == ["old", "a", "b"]
        assert await store.count_by_status() == {JobStatus.PENDING.value: 3}
        assert a[0] == await store.get_job("a")
        assert b[0] == await store.get_job("b")
    finally:
        await store.aclose()
    with sqlite3.connect(tmp_path / "jobs.sqlite3") as conn:
        assert get_transitions(conn, "b") == [
            {"status": "Pending", "at": b[0].submitted_at, "reason": "submitted via spool"}
        ]


def test_migration_to_6_keeps_every_job_and_adds_a_submitter_of_none(tmp_path: Path) -> None:
    path = tmp_path / "jobs.sqlite3"
    v4_store(path)
    with sqlite3.connect(path) as old:
        before = old.execute("SELECT * FROM jobs ORDER BY seq").fetchall()
    conn = connect(path)
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        after = conn.execute("SELECT * FROM jobs ORDER BY seq").fetchall()
        assert [row[:-1] for row in after] == before  # every column of every row kept
        assert [row[-1] for row in after] == [None, None]  # the new submitter column
        assert [get_submitter(conn, job_id) for job_id in ("done", "requeued")] == [None, None]
    finally:
        conn.close()
