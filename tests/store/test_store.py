"""The durable job store: idempotency, recovery, group commit, schema version."""

from __future__ import annotations

import contextlib
import dataclasses
import sqlite3
import threading
from collections.abc import AsyncIterator, Iterator
from functools import partial
from pathlib import Path

import pytest
import trio
import trio.testing

from agent.core.outbox import Outbox, OutboxInterest
from agent.errors import AgentError, ConflictError, StorageFullError, StoreError
from agent.jobs import JobState, JobStatus, NewJob
from agent.store import SqliteStore, writes
from agent.store.queries import get_transitions
from agent.store.schema import SCHEMA_VERSION, connect
from tests.jobs import new_job
from tests.tmpfs import small_tmpfs


async def opened(path: Path, *consumers: str) -> SqliteStore:
    store = SqliteStore(path)
    for name in consumers:
        store.register_consumer(name, OutboxInterest())
    await store.open()
    return store


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    opened_store = await opened(tmp_path / "jobs.sqlite3", "test")
    yield opened_store
    await opened_store.aclose()


async def mark_running(store: SqliteStore, job_id: str) -> JobState | None:
    state: JobState | None = await store.settle(store.queue_mark_running(job_id))
    return state


async def finish(store: SqliteStore, job_id: str, status: JobStatus, **outcome: object) -> object:
    return await store.settle(store.queue_finish(job_id, status, **outcome))  # type: ignore[arg-type]


async def test_same_id_same_document_is_one_job_and_different_document_conflicts(
    store: SqliteStore,
) -> None:
    [first] = await store.insert_jobs([new_job("j1")])
    [again, conflict] = await store.insert_jobs([new_job("j1"), new_job("j1", fingerprint="b")])
    assert not isinstance(first, AgentError)
    assert first[1] is not None
    assert not isinstance(again, AgentError)
    assert again[1] is None
    assert isinstance(conflict, ConflictError)
    assert (await store.get_job("j1")).status is JobStatus.PENDING


async def test_recovery_requeues_rerun_safe_and_fails_the_rest(store: SqliteStore) -> None:
    await store.insert_jobs([new_job("safe", "system.echo"), new_job("unsafe", "vm.create")])
    assert await mark_running(store, "safe") is not None
    assert await mark_running(store, "unsafe") is not None
    recovery = await store.recover(lambda operation: operation == "system.echo")
    assert recovery.requeued == ["safe"]
    assert recovery.failed == ["unsafe"]
    assert (await store.get_job("safe")).status is JobStatus.PENDING
    unsafe = await store.get_job("unsafe")
    assert unsafe.status is JobStatus.FAILED
    assert unsafe.error is not None
    assert "restarted" in unsafe.error
    steps = [
        step["status"] for step in await trio.to_thread.run_sync(transitions_of, store.path, "safe")
    ]
    assert steps == ["Pending", "Running", "Pending"]


async def test_concurrent_writes_all_commit_and_a_failing_one_fails_alone(
    store: SqliteStore,
) -> None:
    await store.insert_jobs([new_job(f"j{n}") for n in range(50)])
    outcomes: dict[str, bool] = {}

    async def start(job_id: str) -> None:
        outcomes[job_id] = await mark_running(store, job_id) is not None

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


async def test_finish_only_from_allowed_states(store: SqliteStore) -> None:
    await store.insert_jobs([new_job("j")])
    assert await finish(store, "j", JobStatus.COMPLETED, result={"ok": 1}) is None  # not running
    await mark_running(store, "j")
    done = await finish(store, "j", JobStatus.COMPLETED, result={"ok": 1})
    assert isinstance(done, JobState)
    assert done.completed_at is not None


def test_schema_version_is_recorded_and_a_newer_store_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "jobs.sqlite3"
    conn = connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(StoreError, match="newer"):
        connect(path)
    sqlite3.connect(path).close()


def transitions_of(path: Path, job_id: str) -> list[dict[str, object]]:
    conn = connect(path, readonly=True)
    try:
        return get_transitions(conn, job_id)  # type: ignore[return-value]
    finally:
        conn.close()


async def test_outbox_holds_each_change_in_order_and_ack_prunes(store: SqliteStore) -> None:
    await store.insert_jobs([new_job("a"), new_job("b")])
    await mark_running(store, "a")
    await finish(store, "a", JobStatus.COMPLETED, result={"ok": 1})
    await finish(store, "b", JobStatus.CANCELLED, error="no", only_from=(JobStatus.PENDING,))
    outbox = Outbox(store, "test")
    batches = aiter(outbox)
    batch = await anext(batches)
    assert [(entry.job_id, entry.event) for entry in batch] == [
        ("a", "accepted"),
        ("b", "accepted"),
        ("a", "running"),
        ("a", "completed"),
        ("b", "cancelled"),
    ]
    assert batch[3].data == {"result": {"ok": 1}}
    assert batch[3].state.status is JobStatus.COMPLETED
    assert batch[4].data == {"error": "no"}
    await outbox.ack(batch[2].id)
    assert [entry.event for entry in await store.outbox_entries("test", 0, 10)] == [
        "completed",
        "cancelled",
    ]


async def test_outbox_resumes_after_reopen_and_ignores_other_transports(tmp_path: Path) -> None:
    path = tmp_path / "jobs.sqlite3"
    first = await opened(path, "test", "other")
    await first.insert_jobs(
        [new_job("mine"), NewJob(**{**new_job("theirs").__dict__, "transport": "other"})]
    )
    [accepted] = await first.outbox_entries("test", 0, 10)
    await first.aclose()
    again = await opened(path, "test")  # "other" is gone: its entries are dropped
    assert [entry.job_id for entry in await again.outbox_entries("test", 0, 10)] == ["mine"]
    assert (await again.outbox_entries("test", 0, 10))[0].id == accepted.id
    assert await again.outbox_entries("other", 0, 10) == []
    await again.aclose()


async def test_a_lazy_write_shares_the_commit_of_the_next_write(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "jobs.sqlite3")
    await store.open()
    batches: list[int] = []
    run_batch = store._writes._run_batch
    store._writes._run_batch = lambda batch: (batches.append(len(batch)), run_batch(batch))[1]
    try:
        await store.insert_jobs([new_job("first")])
        batches.clear()
        write = store.queue_mark_running("first")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(partial(store.settle, write, lazy=True))
            await trio.testing.wait_all_tasks_blocked()
            assert batches == []  # lingering for company
            await store.insert_jobs([new_job("second")])  # a submit: its batch takes both
            assert write.finished
        assert batches == [2]  # one commit (one fsync) for the two writes
        assert (await store.get_job("first")).status is JobStatus.RUNNING
    finally:
        await store.aclose()


async def test_submits_in_one_batch_insert_together_and_each_gets_its_own_answer(
    store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    await store.insert_jobs([new_job("old")])
    calls: list[int] = []
    insert_jobs = writes.insert_jobs

    def counted(conn: sqlite3.Connection, targets: object, jobs: list[NewJob]) -> object:
        calls.append(len(jobs))
        return insert_jobs(conn, targets, jobs)  # type: ignore[arg-type]

    monkeypatch.setattr(writes, "insert_jobs", counted)
    batches: list[int] = []
    run_batch = store._writes._run_batch
    store._writes._run_batch = lambda batch: (batches.append(len(batch)), run_batch(batch))[1]
    submits = {
        "new": [new_job("n1"), new_job("n2")],
        "again": [new_job("old")],  # already recorded: the same document
        "conflict": [new_job("old", fingerprint="b")],
        "twice": [new_job("n1")],  # the same document as a submit of the same batch
        "taken": [new_job("n2", fingerprint="b")],
        "bad": [new_job("bad", document={"job_id": object()})],  # cannot be encoded
        "last": [new_job("n3")],
    }
    answers: dict[str, list[object]] = {}

    async def submit(name: str) -> None:
        try:
            answers[name] = list(await store.insert_jobs(submits[name]))
        except TypeError as exc:
            answers[name] = [exc]

    gate = threading.Event()
    async with trio.open_nursery() as nursery:
        # The writer busy meanwhile, the submits queue in this order for the next batch.
        nursery.start_soon(store.settle, store._queue_write(lambda conn: gate.wait(10)))
        await trio.testing.wait_all_tasks_blocked()
        for name in submits:
            nursery.start_soon(submit, name)
            await trio.testing.wait_all_tasks_blocked()
        gate.set()
    assert batches == [1, len(submits)]  # one commit for all the submits
    # Tried together; the unencodable one made that fail, so each ran alone.
    assert calls == [8, 2, 1, 1, 1, 1, 1, 1]

    def created(name: str) -> list[bool]:
        return [isinstance(a, tuple) and a[1] is not None for a in answers[name]]

    assert created("new") == [True, True]
    assert created("again") == [False]
    assert isinstance(answers["conflict"][0], ConflictError)
    assert created("twice") == [False]
    assert isinstance(answers["taken"][0], ConflictError)
    assert isinstance(answers["bad"][0], TypeError)
    assert created("last") == [True]
    # Without the bad one, the batch's submits are one insert.
    calls.clear()
    batches.clear()
    async with trio.open_nursery() as nursery:
        for n in range(5):
            nursery.start_soon(store.insert_jobs, [new_job(f"m{n}")])
    assert batches == [5]
    assert calls == [5]
    conn = connect(store.path, readonly=True)
    ids = {row[0] for row in conn.execute("SELECT job_id FROM jobs")}
    assert ids == {"old", "n1", "n2", "n3", "m0", "m1", "m2", "m3", "m4"}


class _Steps(trio.abc.Instrument):
    """How many times each task ran (was scheduled), by its name."""

    def __init__(self) -> None:
        self.steps: dict[str, int] = {}

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self.steps[task.name] = self.steps.get(task.name, 0) + 1


async def test_a_write_queued_behind_a_batch_wakes_once_unless_it_runs_the_next(
    store: SqliteStore,
) -> None:
    gate = threading.Event()
    steps = _Steps()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(store.settle, store._queue_write(lambda conn: gate.wait(10)))
        await trio.testing.wait_all_tasks_blocked()
        trio.lowlevel.add_instrument(steps)
        try:
            for n in range(8):
                nursery.start_soon(store.insert_jobs, [new_job(f"q{n}")], name=f"submit-{n}")
            await trio.testing.wait_all_tasks_blocked()
            gate.set()
        finally:
            await trio.testing.wait_all_tasks_blocked()
    trio.lowlevel.remove_instrument(steps)
    counts = sorted(steps.steps[f"submit-{n}"] for n in range(8))
    # One ran the next batch (its forming pass and the writer's answer: more steps);
    # the seven others ran twice: to queue, and once their batch had ended.
    assert counts[:7] == [2] * 7
    assert counts[7] > 2
    assert {job.job_id for job in (await store.list_jobs(limit=20))[0]} >= {
        f"q{n}" for n in range(8)
    }


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    with small_tmpfs(tmp_path / "small", "2m") as mount:
        yield mount


def fill(folder: Path) -> Path:
    filler = folder / "filler"
    with filler.open("wb", buffering=0) as out, contextlib.suppress(OSError):
        while True:
            out.write(b"\0" * 4096)
    return filler


async def wait_held(write: object) -> None:
    with trio.fail_after(10):
        while not write.held:  # type: ignore[attr-defined]
            await trio.sleep(0.01)


@pytest.mark.slow
async def test_on_a_full_disk_accepted_jobs_writes_wait_in_order_and_new_jobs_are_refused(
    small_disk: Path,
) -> None:
    """A job's start and outcome that meet a full disk are kept in their order
    until space returns (an outcome committed first would find the job still
    Pending and be dropped, leaving it Running for ever once its start lands)."""
    path = small_disk / "jobs.sqlite3"
    store = await opened(path, "test")
    try:
        await store.insert_jobs([new_job("slow")])
        filler = fill(small_disk)
        with trio.fail_after(10):  # the WAL's last free bytes go, then a refusal
            for number in range(10_000):
                big = dataclasses.replace(new_job(f"fill{number}"), document={"pad": "x" * 4000})
                with contextlib.suppress(StorageFullError):
                    await store.insert_jobs([big])
                    continue
                break
        async with trio.open_nursery() as nursery:
            start = store.queue_mark_running("slow")
            nursery.start_soon(partial(store.settle, start, lazy=True))
            await wait_held(start)
            for number in range(3):  # batches keep failing: the start's backoff grows
                with trio.fail_after(2), pytest.raises(StorageFullError):
                    await store.insert_jobs([new_job(f"refused{number}")])  # never kept waiting
            outcome = store.queue_finish("slow", JobStatus.COMPLETED, result={"ok": True})
            nursery.start_soon(store.settle, outcome)
            await wait_held(outcome)
            assert store.disk_full
            filler.unlink()
            with trio.fail_after(15):
                while not outcome.finished:
                    await trio.sleep(0.01)
        assert outcome.value is not None, "the outcome was committed before the start"
        assert (await store.get_job("slow")).status is JobStatus.COMPLETED
        assert [t["status"] for t in transitions_of(path, "slow")] == [
            "Pending",
            "Running",
            "Completed",
        ]
        events = [e.event for e in await store.outbox_entries("test", 0, 10) if e.job_id == "slow"]
        assert events == ["accepted", "running", "completed"]
        assert not store.disk_full
    finally:
        await store.aclose()


async def test_a_start_and_outcome_in_one_batch_are_one_update_with_every_record(
    store: SqliteStore,
) -> None:
    """A job that finished before its start was committed: one UPDATE of the job, the
    same transitions, outbox entries, counts and answers as the two writes."""
    await store.insert_jobs([new_job("quick"), new_job("other")])
    assert store._writer is not None
    updates: list[str] = []
    store._writer.set_trace_callback(
        lambda sql: updates.append(sql) if sql.startswith("UPDATE jobs") else None
    )
    started = store.queue_mark_running("quick")
    other = store.queue_mark_running("other")  # another job's start between: still folded
    done = store.queue_finish("quick", JobStatus.COMPLETED, result={"ok": 1})
    assert (await store.settle(done)).status is JobStatus.COMPLETED
    store._writer.set_trace_callback(None)
    running = await store.settle(started)
    assert running.status is JobStatus.RUNNING
    assert running.completed_at is None
    assert running.attempts == 1
    assert (await store.settle(other)).status is JobStatus.RUNNING
    # (the trace names a statement with RETURNING more than once)
    assert len(set(updates)) == 2  # quick's start and outcome together, other's start
    final = await store.get_job("quick")
    assert (final.status, final.started_at, final.attempts) == (
        JobStatus.COMPLETED,
        running.started_at,
        1,
    )
    assert await store.get_result("quick") == {"ok": 1}
    assert await store.count_by_status() == {"Completed": 1, "Running": 1}
    transitions = get_transitions(sqlite3.connect(store.path), "quick")
    assert [row["status"] for row in transitions] == ["Pending", "Running", "Completed"]
    entries = [
        (entry.job_id, entry.event, entry.state.status)
        for entry in await store.outbox_entries("test", 0, 10)
    ]
    assert entries[2:] == [
        ("quick", "running", JobStatus.RUNNING),
        ("quick", "completed", JobStatus.COMPLETED),
        ("other", "running", JobStatus.RUNNING),
    ]


async def test_an_event_between_a_start_and_its_outcome_keeps_them_apart(
    store: SqliteStore,
) -> None:
    """The event's write reads the job as Running: the start and outcome stay two writes."""
    await store.insert_jobs([new_job("evented")])
    assert store._writer is not None
    updates: list[str] = []
    store._writer.set_trace_callback(
        lambda sql: updates.append(sql) if sql.startswith("UPDATE jobs SET status") else None
    )
    started = store.queue_mark_running("evented")
    event = store._queue_write(
        lambda conn: writes.add_event(conn, store._targets, "evented", "log", {"message": "hi"})
    )
    done = store.queue_finish("evented", JobStatus.COMPLETED, result=None)
    assert (await store.settle(done)).status is JobStatus.COMPLETED
    store._writer.set_trace_callback(None)
    assert (await store.settle(started)).status is JobStatus.RUNNING
    await store.settle(event)
    assert len(set(updates)) == 2  # the start, then the outcome
    transitions = get_transitions(sqlite3.connect(store.path), "evented")
    assert [row["status"] for row in transitions] == ["Pending", "Running", "Completed"]


async def test_writes_run_in_the_stores_own_writer_thread_even_after_close(
    tmp_path: Path,
) -> None:
    """Every batch in one thread of the store's (a lone submit's batch wakes it directly,
    no trio worker-thread hop), and a failing batch's error still reaches its waiter."""
    store = await opened(tmp_path / "jobs.sqlite3")
    names: list[str] = []

    def record_thread(conn: sqlite3.Connection) -> None:
        names.append(threading.current_thread().name)

    try:
        for _ in range(3):
            await store._write(record_thread)
        with pytest.raises(ZeroDivisionError):
            await store._write(lambda conn: 1 / 0)
        await store.insert_jobs([new_job("after-error")])
        assert (await store.get_job("after-error")).status is JobStatus.PENDING
        thread = store._writes._thread._thread  # type: ignore[union-attr]
        assert thread is not None
    finally:
        await store.aclose()
    assert names == ["hostagent-writer"] * 3
    with trio.fail_after(5):
        while thread.is_alive():  # it was told to go: it ends once idle
            await trio.sleep(0.01)
