"""The JobStore contract, run against the SQLite store and the in-memory one.

The dispatcher's fast tests run on tests/memstore.py; these assertions keep
it honest: whatever the SQLite store does here, the memory store must too.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
import trio
from structlog.testing import capture_logs

from agent.core.jobstore import JobStore
from agent.core.outbox import Outbox, OutboxInterest
from agent.errors import AgentError, ConflictError, NotFoundError
from agent.jobs import JobState, JobStatus, NewJob
from agent.store import SqliteStore
from agent.store.queries import get_transitions
from agent.store.schema import connect
from tests import jobs
from tests.memstore import MemoryStore


def new_job(
    job_id: str, operation: str = "system.echo", *, transport: str = "spool", fingerprint: str = "a"
) -> NewJob:
    return jobs.new_job(
        job_id,
        operation,
        transport=transport,
        fingerprint=fingerprint,
        document={"job_id": job_id, "nested": {"n": 1}},
        timeout_seconds=30.0,
        origin=f"{job_id}.json",
    )


@dataclass
class Backend:
    """Handles on one durable store: `handle()` is what a fresh process would open."""

    handle: Callable[[], JobStore]
    transitions: Callable[[str], list[tuple[str, str | None]]]

    async def opened(self, **consumers: OutboxInterest) -> JobStore:
        store = self.handle()
        for name, interest in consumers.items():
            store.register_consumer(name, interest)
        await store.open()
        return store


def sqlite_backend(path: Path) -> Backend:
    def transitions(job_id: str) -> list[tuple[str, str | None]]:
        conn = connect(path, readonly=True)
        try:
            return [(item["status"], item["reason"]) for item in get_transitions(conn, job_id)]
        finally:
            conn.close()

    return Backend(lambda: SqliteStore(path), transitions)


def memory_backend() -> Backend:
    memory = MemoryStore()

    def transitions(job_id: str) -> list[tuple[str, str | None]]:
        return [(item["status"], item["reason"]) for item in memory.transitions(job_id)]

    return Backend(lambda: memory, transitions)


@pytest.fixture(params=["sqlite", "memory"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "sqlite":
        return sqlite_backend(tmp_path / "jobs.sqlite3")
    return memory_backend()


@pytest.fixture
async def store(backend: Backend) -> AsyncIterator[JobStore]:
    opened = await backend.opened(spool=OutboxInterest())
    yield opened
    await opened.aclose()


async def mark_running(store: JobStore, job_id: str) -> JobState | None:
    state: JobState | None = await store.settle(store.queue_mark_running(job_id))
    return state


async def finish(
    store: JobStore, job_id: str, status: JobStatus, **outcome: Any
) -> JobState | None:
    state: JobState | None = await store.settle(store.queue_finish(job_id, status, **outcome))
    return state


def test_the_memory_store_is_a_job_store() -> None:
    # Checked by mypy (tests/memstore.py and this file are in its `files`): a
    # method missing or with another signature fails `make test`'s type check.
    store: JobStore = MemoryStore()
    assert callable(store.queue_mark_running)


async def test_same_id_same_document_is_one_job_and_another_document_conflicts(
    store: JobStore,
) -> None:
    [first] = await store.insert_jobs([new_job("j1")])
    [again, conflict] = await store.insert_jobs([new_job("j1"), new_job("j1", fingerprint="b")])
    assert not isinstance(first, AgentError)
    assert first[1] is not None
    assert first[1].document == {"job_id": "j1", "nested": {"n": 1}}
    assert first[1].timeout_seconds == 30.0
    assert not isinstance(again, AgentError)
    assert again[1] is None
    assert again[0].status is JobStatus.PENDING
    assert isinstance(conflict, ConflictError)
    assert conflict.details["field"] == "job_id"
    assert [job.job_id for job in await store.pending_jobs()] == ["j1"]


async def test_the_submitter_is_recorded_with_the_job_and_survives_a_reopen(
    backend: Backend,
) -> None:
    store = await backend.opened()
    await store.insert_jobs(
        [
            replace(new_job("mine"), submitter="uid:1000"),
            replace(new_job("theirs"), submitter="token:ci"),
            new_job("nobodys"),
        ]
    )
    # A repeat of a known job does not change who submitted it.
    await store.insert_jobs([replace(new_job("mine"), submitter="uid:2000")])
    await store.aclose()
    reopened = await backend.opened()
    try:
        assert await reopened.get_submitter("mine") == "uid:1000"
        assert await reopened.get_submitter("theirs") == "token:ci"
        assert await reopened.get_submitter("nobodys") is None
    finally:
        await reopened.aclose()


async def test_a_job_runs_once_and_finishes_once(backend: Backend, store: JobStore) -> None:
    await store.insert_jobs([new_job("j1")])
    running = await mark_running(store, "j1")
    assert running is not None
    assert (running.status, running.attempts) == (JobStatus.RUNNING, 1)
    assert running.started_at is not None
    assert await mark_running(store, "j1") is None  # no longer pending
    assert await finish(store, "j1", JobStatus.CANCELLED, only_from=(JobStatus.PENDING,)) is None
    done = await finish(store, "j1", JobStatus.COMPLETED, result={"answer": [1, 2]})
    assert done is not None
    assert done.status is JobStatus.COMPLETED
    assert done.completed_at is not None
    assert await finish(store, "j1", JobStatus.FAILED, error="late") is None
    assert await store.get_result("j1") == {"answer": [1, 2]}
    assert backend.transitions("j1") == [
        ("Pending", "submitted via spool"),
        ("Running", None),
        ("Completed", None),
    ]


async def test_a_pending_job_can_be_cancelled_and_never_starts(store: JobStore) -> None:
    await store.insert_jobs([new_job("j1")])
    cancelled = await finish(
        store,
        "j1",
        JobStatus.CANCELLED,
        error="Cancelled by request",
        only_from=[JobStatus.PENDING],
    )
    assert cancelled is not None
    assert (cancelled.status, cancelled.error, cancelled.started_at) == (
        JobStatus.CANCELLED,
        "Cancelled by request",
        None,
    )
    assert await mark_running(store, "j1") is None
    assert await store.pending_jobs() == []
    with pytest.raises(NotFoundError, match="has no result"):
        await store.get_result("j1")


@pytest.mark.slow
async def test_unknown_jobs_are_not_found(store: JobStore) -> None:
    for read in (store.get_job, store.get_result, store.get_events, store.get_submitter):
        with pytest.raises(NotFoundError):
            await read("nope")
    assert await mark_running(store, "nope") is None
    assert await finish(store, "nope", JobStatus.FAILED) is None


async def test_recovery_requeues_rerun_safe_jobs_and_fails_the_rest(
    backend: Backend, store: JobStore
) -> None:
    await store.insert_jobs([new_job("safe"), new_job("unsafe", "vm.create"), new_job("waits")])
    await mark_running(store, "safe")
    await mark_running(store, "unsafe")
    await store.note_interrupted("safe", "Interrupted by shutdown after the drain budget")
    recovery = await store.recover(lambda operation: operation == "system.echo")
    assert (recovery.requeued, recovery.failed) == (["safe"], ["unsafe"])
    pending = {job.job_id: job for job in await store.pending_jobs()}
    assert sorted(pending) == ["safe", "waits"]
    assert (pending["safe"].attempts, pending["waits"].attempts) == (1, 0)
    unsafe = await store.get_job("unsafe")
    assert unsafe.status is JobStatus.FAILED
    assert unsafe.error == "The agent restarted while the job was running; it is not safe to re-run"
    assert [status for status, _ in backend.transitions("safe")] == [
        "Pending",
        "Running",
        "Running",  # interrupted
        "Pending",  # re-queued
    ]
    assert backend.transitions("safe")[2][1] == "Interrupted by shutdown after the drain budget"
    assert await store.count_by_status() == {"Pending": 2, "Failed": 1}


async def test_events_progress_and_listing(store: JobStore) -> None:
    await store.insert_jobs(
        [new_job(f"j{n}", "system.sleep" if n % 2 else "system.echo") for n in range(5)]
    )
    await mark_running(store, "j1")
    progress_at = await store.add_event("j1", "progress", {"percent": 40.0, "message": "warm"})
    log_at = await store.add_event("j1", "log", {"level": "info", "message": "hi"})
    assert (await store.get_job("j1")).progress == 40.0
    assert await store.get_events("j1") == [
        {"at": progress_at, "type": "progress", "data": {"percent": 40.0, "message": "warm"}},
        {"at": log_at, "type": "log", "data": {"level": "info", "message": "hi"}},
    ]
    page, total, cursor = await store.list_jobs(limit=2)
    assert ([state.job_id for state in page], total) == (["j0", "j1"], 5)
    assert cursor is not None
    rest, _, end = await store.list_jobs(limit=10, after_seq=cursor)
    assert ([state.job_id for state in rest], end) == (["j2", "j3", "j4"], None)
    sleeping, total, _ = await store.list_jobs(operation="system.sleep")
    assert ([state.job_id for state in sleeping], total) == (["j1", "j3"], 2)
    running, total, _ = await store.list_jobs(status="Running")
    assert ([state.job_id for state in running], total) == (["j1"], 1)


async def test_outbox_feeds_each_consumer_what_it_asked_for(backend: Backend) -> None:
    store = await backend.opened(
        spool=OutboxInterest(),
        audit=OutboxInterest(all_jobs=True, progress=True),
        http=OutboxInterest(),
    )
    spool_changed = store.outbox_changed("spool")
    await store.insert_jobs([new_job("mine"), new_job("theirs", transport="kafka")])
    assert spool_changed.is_set()
    await mark_running(store, "mine")
    await store.add_event("mine", "progress", {"percent": 50.0})
    await finish(store, "mine", JobStatus.COMPLETED, result={"ok": True})
    await finish(store, "theirs", JobStatus.FAILED, error="boom", only_from=[JobStatus.PENDING])

    spool = await store.outbox_entries("spool", 0, 100)
    assert [(e.job_id, e.event) for e in spool] == [
        ("mine", "accepted"),
        ("mine", "running"),
        ("mine", "completed"),
    ]
    assert spool[0].data == {"origin": "mine.json"}
    assert spool[2].data == {"result": {"ok": True}}
    assert spool[2].state.status is JobStatus.COMPLETED
    audit = await store.outbox_entries("audit", 0, 100)
    assert [(e.job_id, e.event) for e in audit] == [
        ("mine", "accepted"),
        ("theirs", "accepted"),
        ("mine", "running"),
        ("mine", "progress"),
        ("mine", "completed"),
        ("theirs", "failed"),
    ]
    assert audit[3].data["percent"] == 50.0
    assert audit[5].data == {"error": "boom"}
    assert await store.outbox_entries("http", 0, 100) == []
    ids = [entry.id for entry in audit]
    assert ids == sorted(ids)
    assert len(set(ids) | {entry.id for entry in spool}) == len(ids) + len(spool)

    assert [e.event for e in await store.outbox_entries("spool", spool[0].id, 1)] == ["running"]
    await store.ack_outbox("spool", spool[1].id)
    assert [e.id for e in await store.outbox_entries("spool", 0, 100)] == [spool[2].id]
    await store.aclose()

    # A restart without the audit consumer drops its entries; the spool's stay.
    with capture_logs() as logs:
        store = await backend.opened(spool=OutboxInterest())
    assert await store.outbox_entries("audit", 0, 100) == []
    assert [e.id for e in await store.outbox_entries("spool", 0, 100)] == [spool[2].id]
    assert {"event": "store.outbox_dropped", "entries": 6} in [
        {key: entry[key] for key in ("event", "entries") if key in entry} for entry in logs
    ]
    await store.insert_jobs([new_job("later")])
    later = await store.outbox_entries("spool", spool[2].id, 100)
    assert [(e.job_id, e.event) for e in later] == [("later", "accepted")]
    assert later[0].id > ids[-1]  # ids are never reused after pruning
    await store.aclose()


async def test_an_outbox_reader_waits_for_the_next_change(store: JobStore) -> None:
    outbox = Outbox(store, "spool")
    send, receive = trio.open_memory_channel[list[str]](10)

    async def forward() -> None:
        async for batch in outbox:
            await send.send([entry.event for entry in batch])

    async with trio.open_nursery() as nursery:
        nursery.start_soon(forward)
        await outbox.caught_up.wait()  # read once, found nothing: now it waits
        await store.insert_jobs([new_job("j1")])
        with trio.fail_after(5):
            assert await receive.receive() == ["accepted"]
        await mark_running(store, "j1")
        with trio.fail_after(5):
            assert await receive.receive() == ["running"]
        nursery.cancel_scope.cancel()


async def test_jobs_page_newest_first_and_the_event_log_resumes_after_an_id(
    store: JobStore,
) -> None:
    await store.insert_jobs([new_job(f"j{n}") for n in range(3)])
    first, total, cursor = await store.list_jobs(limit=2, newest_first=True)
    assert [job.job_id for job in first] == ["j2", "j1"]
    assert total == 3
    assert cursor is not None
    rest, _, end = await store.list_jobs(limit=2, after_seq=cursor, newest_first=True)
    assert [job.job_id for job in rest] == ["j0"]
    assert end is None
    for n in range(3):
        await store.add_event("j1", "log", {"message": f"line {n}"})
    await store.add_event("j2", "log", {"message": "other"})
    logged = await store.get_events_after(0, ["j1"])
    assert [event["data"]["message"] for event in logged] == ["line 0", "line 1", "line 2"]
    later = await store.get_events_after(logged[0]["id"], None)
    assert [event["data"]["message"] for event in later] == ["line 1", "line 2", "other"]


async def test_a_lazy_write_is_committed_without_another_write(store: JobStore) -> None:
    await store.insert_jobs([new_job("lazy")])
    with trio.fail_after(5):  # nothing else writes: it commits on its own, soon
        state: JobState | None = await store.settle(store.queue_mark_running("lazy"), lazy=True)
    assert state is not None
    assert state.status is JobStatus.RUNNING
    assert (await store.get_job("lazy")).status is JobStatus.RUNNING
