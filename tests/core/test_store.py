"""The durable job store: idempotency, recovery, group commit, schema version."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
import trio

from agent.errors import AgentError, ConflictError
from agent.jobs import JobStatus
from agent.store import SCHEMA_VERSION, NewJob, Store, connect, get_job, get_transitions


def new_job(job_id: str, operation: str = "system.echo", fingerprint: str = "a") -> NewJob:
    return NewJob(
        job_id=job_id,
        operation=operation,
        priority=5,
        transport="test",
        document={"job_id": job_id},
        fingerprint=fingerprint,
        timeout_seconds=None,
    )


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "jobs.sqlite3")


async def test_same_id_same_document_is_one_job_and_different_document_conflicts(
    store: Store,
) -> None:
    [first] = await store.insert_jobs([new_job("j1")])
    [again, conflict] = await store.insert_jobs([new_job("j1"), new_job("j1", fingerprint="b")])
    assert not isinstance(first, AgentError)
    assert first[1] is not None
    assert not isinstance(again, AgentError)
    assert again[1] is None
    assert isinstance(conflict, ConflictError)
    assert (await store.read(get_job, "j1")).status is JobStatus.PENDING


async def test_recovery_requeues_rerun_safe_and_fails_the_rest(store: Store) -> None:
    await store.insert_jobs([new_job("safe", "system.echo"), new_job("unsafe", "vm.create")])
    assert await store.mark_running("safe") is not None
    assert await store.mark_running("unsafe") is not None
    recovery = await store.recover(lambda operation: operation == "system.echo")
    assert recovery.requeued == ["safe"]
    assert recovery.failed == ["unsafe"]
    assert (await store.read(get_job, "safe")).status is JobStatus.PENDING
    unsafe = await store.read(get_job, "unsafe")
    assert unsafe.status is JobStatus.FAILED
    assert unsafe.error is not None
    assert "restarted" in unsafe.error
    steps = [step["status"] for step in await store.read(get_transitions, "safe")]
    assert steps == ["Pending", "Running", "Pending"]


async def test_concurrent_writes_all_commit_and_a_failing_one_fails_alone(store: Store) -> None:
    await store.insert_jobs([new_job(f"j{n}") for n in range(50)])
    outcomes: dict[str, bool] = {}

    async def start(job_id: str) -> None:
        outcomes[job_id] = await store.mark_running(job_id) is not None

    async with trio.open_nursery() as nursery:
        for n in range(50):
            nursery.start_soon(start, f"j{n}")
        nursery.start_soon(start, "missing")
    assert outcomes.pop("missing") is False
    assert all(outcomes.values())
    assert len(outcomes) == 50
    # A reader on another connection sees every committed transition.
    conn = connect(store.path, readonly=True)
    running = conn.execute("SELECT count(*) FROM jobs WHERE status = 'Running'").fetchone()[0]
    assert running == 50


async def test_finish_only_from_allowed_states(store: Store) -> None:
    await store.insert_jobs([new_job("j")])
    assert await store.finish("j", JobStatus.COMPLETED, result={"ok": 1}) is None  # not running
    await store.mark_running("j")
    done = await store.finish("j", JobStatus.COMPLETED, result={"ok": 1})
    assert done is not None
    assert done.completed_at is not None


def test_schema_version_is_recorded_and_a_newer_store_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "jobs.sqlite3"
    conn = connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(AgentError, match="newer"):
        connect(path)
    sqlite3.connect(path).close()
