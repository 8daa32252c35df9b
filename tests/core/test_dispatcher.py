"""Dispatcher: priority, concurrency bound, timeouts, cancellation, recovery.

Most run on trio's autojump clock with the in-memory store, so an hour's
timeout takes milliseconds. The ones that start real processes run on the
real clock and the SQLite store (a mock clock would jump past a process
starting in a worker thread).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
from structlog.testing import capture_logs

from agent.config import Config
from agent.core.context import JobContext
from agent.core.outbox import OutboxInterest
from agent.core.registry import handler
from agent.errors import ConflictError
from agent.handlers.system import EchoPayload
from agent.jobs import JobStatus
from agent.service.daemon import Agent
from tests.jobs import dispatching, echo_job, job, sleep_job, wait_done, wait_running
from tests.memstore import MemoryStore


def processes_running(marker: str) -> list[int]:
    """PIDs whose command line contains `marker` (a unique sleep duration)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if marker in cmdline and "sleep" in cmdline:
                found.append(int(entry.name))
    return found


@pytest.fixture
def config(config: Config) -> Config:
    return config.model_copy(update={"max_concurrent_jobs": 1})


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore()


@pytest.fixture
def core(config: Config, store: MemoryStore) -> Agent:
    """An agent on the memory store, without transports (see tests.jobs.dispatching)."""
    return Agent(config, store=store, transports=())


async def test_higher_priority_first_and_fifo_within_a_priority(
    core: Agent, store: MemoryStore, autojump_clock: trio.testing.MockClock
) -> None:
    store.register_consumer("t", OutboxInterest())  # its "running" entries: the start order
    async with dispatching(core):
        await core.intake.submit(sleep_job("blocker", 30), transport="t")
        await wait_running(core, "blocker")
        order = [("low-1", 1), ("high-1", 9), ("low-2", 1), ("high-2", 9), ("mid", 5)]
        for job_id, priority in order:
            await core.intake.submit(echo_job(job_id, priority=priority), transport="t")
        for job_id, _ in order:
            assert (await wait_done(core, job_id)).status is JobStatus.COMPLETED
        entries = await store.outbox_entries("t", 0, 100)
    started = [entry.job_id for entry in entries if entry.event == "running"]
    assert started == ["blocker", "high-1", "high-2", "mid", "low-1", "low-2"]


async def test_concurrency_never_exceeds_the_bound(
    config: Config, store: MemoryStore, autojump_clock: trio.testing.MockClock
) -> None:
    agent = Agent(config.model_copy(update={"max_concurrent_jobs": 2}), store=store, transports=())
    most = 0
    async with dispatching(agent):
        with agent.intake.events() as subscription:
            for n in range(5):
                await agent.intake.submit(sleep_job(f"s{n}", 10), transport="t")
            finished = 0
            async for event in subscription.receive:
                most = max(most, agent.dispatcher.running_count)
                if event["type"] == "status" and event["data"]["status"] == "Completed":
                    finished += 1
                    if finished == 5:
                        break
    assert most == 2
    # Two at a time, ten seconds each: the last pair ends at thirty seconds.
    assert 30 <= trio.current_time() < 31


async def test_timeout_fails_the_job_at_its_deadline(
    core: Agent, autojump_clock: trio.testing.MockClock
) -> None:
    async with dispatching(core):
        began = trio.current_time()
        await core.intake.submit(sleep_job("slow", 86400, timeout_seconds=600), transport="t")
        state = await wait_done(core, "slow", within=700)
        took = trio.current_time() - began
        logs = await core.intake.logs("slow")
    assert state.status is JobStatus.FAILED
    assert state.error == "Job timed out after 600 seconds"
    assert 600 <= took < 601
    progress = [entry for entry in logs if entry["type"] == "progress"]
    assert len(progress) == 600  # one a second until the deadline


async def test_timeout_is_capped_by_max_timeout(
    config: Config, store: MemoryStore, autojump_clock: trio.testing.MockClock
) -> None:
    capped_config = config.model_copy(update={"max_timeout_seconds": 60})
    capped = Agent(capped_config, store=store, transports=())
    async with dispatching(capped):
        await capped.intake.submit(sleep_job("slow", 86400, timeout_seconds=3600), transport="t")
        state = await wait_done(capped, "slow", within=120)
    assert state.error == "Job timed out after 60 seconds"


async def test_cancel_running_job_stops_it_and_a_second_cancel_conflicts(
    core: Agent, autojump_clock: trio.testing.MockClock
) -> None:
    async with dispatching(core):
        await core.intake.submit(sleep_job("victim", 3600), transport="t")
        await wait_running(core, "victim")
        await trio.sleep(5)
        state = await core.intake.cancel("victim")
        assert (state.status, state.error) == (JobStatus.CANCELLED, "Cancelled by request")
        assert 5 <= trio.current_time() < 6  # at once, not at the end of the hour
        with pytest.raises(ConflictError):
            await core.intake.cancel("victim")
        assert core.dispatcher.running_count == 0


async def test_cancel_pending_job_never_runs_it(
    core: Agent, autojump_clock: trio.testing.MockClock
) -> None:
    async with dispatching(core):
        await core.intake.submit(sleep_job("blocker", 30), transport="t")
        await wait_running(core, "blocker")
        await core.intake.submit(echo_job("queued"), transport="t")
        assert core.dispatcher.queue_depth == 1
        state = await core.intake.cancel("queued")
        assert state.status is JobStatus.CANCELLED
        assert state.started_at is None
        assert core.dispatcher.queue_depth == 0
        assert (await wait_done(core, "blocker")).status is JobStatus.COMPLETED
        queued = await core.intake.status("queued")
    assert (queued.status, queued.attempts) == (JobStatus.CANCELLED, 0)


async def test_a_handler_returning_a_non_json_result_fails_the_job(
    config: Config, store: MemoryStore, autojump_clock: trio.testing.MockClock
) -> None:
    @handler("test.unjsonable", payload=EchoPayload, rerun_safe=True)
    async def unjsonable(payload: EchoPayload, ctx: JobContext) -> object:
        return {"when": object()}

    agent = Agent(config, store=store, transports=(), extra_handlers=[unjsonable])
    async with dispatching(agent):
        await agent.intake.submit(job("u", "test.unjsonable"), transport="t")
        odd = await wait_done(agent, "u")
    assert odd.status is JobStatus.FAILED
    assert odd.error is not None
    assert odd.error.startswith("Handler returned a non-JSON result")


async def test_restart_recovers_pending_and_running_jobs(
    config: Config, store: MemoryStore, autojump_clock: trio.testing.MockClock
) -> None:
    first = Agent(config, store=store, transports=())  # one job at a time
    async with dispatching(first):
        await first.intake.submit(sleep_job("long", 30), transport="t")
        await first.intake.submit(echo_job("after"), transport="t")
        await wait_running(first, "long")
    # Cancelled like a crash: "long" stays Running, "after" Pending.
    wider = Agent(config.model_copy(update={"max_concurrent_jobs": 2}), store=store, transports=())
    with capture_logs() as logs:
        async with dispatching(wider):
            assert wider.dispatcher.reruns == 1
            assert (await wait_done(wider, "after")).status is JobStatus.COMPLETED
            rerun = await wait_running(wider, "long")
    assert (rerun.status, rerun.attempts) == (JobStatus.RUNNING, 2)
    recovered = [entry for entry in logs if entry["event"] == "dispatcher.recovered"]
    assert recovered == [
        {"event": "dispatcher.recovered", "requeued": 1, "failed": 0, "log_level": "warning"}
    ]


# --- real processes, real clock, the SQLite store ---


@pytest.mark.slow
async def test_timeout_stops_the_process_the_handler_started(agent: Agent) -> None:
    marker = "31.4159"
    document = job("slow", "system.sleep", {"seconds": float(marker), "child_process": True})
    await agent.intake.submit({**document, "timeout_seconds": 0.5}, transport="t")
    state = await wait_done(agent, "slow")
    assert state.status is JobStatus.FAILED
    assert state.error == "Job timed out after 0.5 seconds"
    assert processes_running(marker) == []
    logs = await agent.intake.logs("slow")
    assert any(entry["type"] == "progress" for entry in logs)


@pytest.mark.slow
async def test_cancel_running_job_kills_its_child_process(agent: Agent) -> None:
    marker = "27.1828"
    await agent.intake.submit(
        job("victim", "system.sleep", {"seconds": float(marker), "child_process": True}),
        transport="t",
    )
    with agent.intake.events() as subscription:
        async for event in subscription.receive:
            if event["type"] == "progress" and event["job_id"] == "victim":
                break
    # The first progress report races the spawn (both start at once): wait for it.
    with trio.fail_after(30):
        while not processes_running(marker):
            await trio.sleep(0.05)
    state = await agent.intake.cancel("victim")
    assert state.status is JobStatus.CANCELLED
    assert processes_running(marker) == []
    with pytest.raises(ConflictError):
        await agent.intake.cancel("victim")


@pytest.mark.slow
async def test_handler_failure_inside_a_nursery_reports_the_real_reason(config: Config) -> None:
    @handler("test.fail", payload=EchoPayload, rerun_safe=True)
    async def fail(payload: EchoPayload, ctx: JobContext) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(ctx.run_process, ["sh", "-c", "echo disk on fire >&2; exit 3"])

    async with trio.open_nursery() as nursery:
        agent: Agent = await nursery.start(Agent(config, extra_handlers=[fail]).run)
        await agent.intake.submit(job("f", "test.fail"), transport="t")
        failed = await wait_done(agent, "f")
        assert failed.status is JobStatus.FAILED
        assert failed.error == "sh exited with status 3: disk on fire"
        nursery.cancel_scope.cancel()


async def test_rerun_safe_jobs_announce_their_start_then_their_outcome_in_start_order(
    config: Config, store: MemoryStore, autojump_clock: trio.testing.MockClock
) -> None:
    # Announced by one task once committed (not a worker's): every job still
    # shows Running, then Completed, and starts are announced in start order.
    agent = Agent(config.model_copy(update={"max_concurrent_jobs": 2}), store=store, transports=())
    store.register_consumer("t", OutboxInterest())
    ids = [f"echo-{n}" for n in range(40)]
    async with dispatching(agent):
        with agent.intake.events() as subscription, trio.fail_after(60):
            prepared = [agent.intake.prepare(echo_job(job_id), transport="t") for job_id in ids]
            await agent.intake.submit_many(prepared)  # one batch: workers race through it
            events = []
            completed = 0
            while completed < len(ids):
                events.append(event := await subscription.receive.receive())
                completed += event["type"] == "status" and event["data"]["status"] == "Completed"
        entries = await store.outbox_entries("t", 0, 1000)
        assert agent.dispatcher.running_count == 0
        await agent.dispatcher.drain(trio.current_time() + 1)  # nothing held: returns at once
    statuses: dict[str, list[str]] = {}
    announced_starts = []
    for event in events:
        if event["type"] == "status":
            statuses.setdefault(event["job_id"], []).append(event["data"]["status"])
            if event["data"]["status"] == "Running":
                announced_starts.append(event["job_id"])
    assert statuses == {job_id: ["Running", "Completed"] for job_id in ids}
    assert announced_starts == [e.job_id for e in entries if e.event == "running"]


async def test_drain_interrupts_a_job_it_outlasts_and_times_out_one_due_sooner(
    config: Config, store: MemoryStore, autojump_clock: trio.testing.MockClock
) -> None:
    # One cancel scope holds the job's time limit and the drain's end: which
    # came first decides between Failed (timed out) and Running (interrupted).
    agent = Agent(config.model_copy(update={"max_concurrent_jobs": 2}), store=store, transports=())
    async with dispatching(agent):
        await agent.intake.submit(sleep_job("soon", 86400, timeout_seconds=50), transport="t")
        await agent.intake.submit(sleep_job("late", 86400, timeout_seconds=500), transport="t")
        await wait_running(agent, "soon")
        await wait_running(agent, "late")
        interrupted = await agent.dispatcher.drain(trio.current_time() + 100)
        soon, late = await store.get_job("soon"), await store.get_job("late")
    assert interrupted == ["late"]
    assert soon.status is JobStatus.FAILED
    assert soon.error == "Job timed out after 50 seconds"
    assert late.status is JobStatus.RUNNING
