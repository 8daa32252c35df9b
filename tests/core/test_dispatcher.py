"""Dispatcher: priority, concurrency bound, timeouts, cancellation, child processes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio

from agent.config import Config
from agent.context import JobContext
from agent.daemon import Agent
from agent.errors import ConflictError
from agent.handlers.system import EchoPayload
from agent.jobs import JobState, JobStatus
from agent.registry import handler


def job(
    job_id: str, operation: str = "system.echo", data: dict[str, Any] | None = None, **extra: Any
) -> dict[str, Any]:
    return {
        "version": "1.0",
        "job_id": job_id,
        "kind": "Test",
        "operation": operation,
        "payload": {"type": f"{operation}.v1", "data": data or {}},
        **extra,
    }


async def wait_terminal(agent: Agent, job_id: str) -> JobState:
    with agent.intake.events() as subscription:
        state = await agent.intake.status(job_id)
        if state.status.terminal:
            return state
        async for event in subscription.receive:
            if (
                event["job_id"] == job_id
                and event["type"] == "status"
                and JobStatus(event["data"]["status"]).terminal
            ):
                return await agent.intake.status(job_id)
    raise AssertionError("event stream ended")


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
def config(config):  # type: ignore[no-untyped-def]
    return config.model_copy(update={"max_concurrent_jobs": 1})


async def test_higher_priority_first_and_fifo_within_a_priority(agent: Agent) -> None:
    await agent.intake.submit(job("blocker", "system.sleep", {"seconds": 0.3}), transport="t")
    order = [("low-1", 1), ("high-1", 9), ("low-2", 1), ("high-2", 9), ("mid", 5)]
    for job_id, priority in order:
        await agent.intake.submit(job(job_id, priority=priority), transport="t")
    for job_id, _ in order:
        await wait_terminal(agent, job_id)
    states = [await agent.intake.status(job_id) for job_id, _ in order]
    by_start = sorted(states, key=lambda state: state.started_at or "")
    assert [state.job_id for state in by_start] == ["high-1", "high-2", "mid", "low-1", "low-2"]


async def test_concurrency_never_exceeds_the_bound(config, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    bounded = config.model_copy(update={"max_concurrent_jobs": 2})
    async with trio.open_nursery() as nursery:
        agent: Agent = await nursery.start(Agent(bounded).run)
        most = 0
        with agent.intake.events() as subscription:
            for n in range(5):
                await agent.intake.submit(
                    job(f"s{n}", "system.sleep", {"seconds": 0.05}), transport="t"
                )
            finished = 0
            async for event in subscription.receive:
                most = max(most, agent.dispatcher.running_count)
                if event["type"] == "status" and event["data"]["status"] == "Completed":
                    finished += 1
                    if finished == 5:
                        break
        assert most == 2
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("child_process", [False, True])
async def test_timeout_fails_the_job_and_stops_its_process(
    agent: Agent, child_process: bool
) -> None:
    marker = "31.4159" if child_process else "31.4158"
    await agent.intake.submit(
        job(
            "slow",
            "system.sleep",
            {"seconds": float(marker), "child_process": child_process},
            timeout_seconds=0.5,
        ),
        transport="t",
    )
    state = await wait_terminal(agent, "slow")
    assert state.status is JobStatus.FAILED
    assert state.error == "Job timed out after 0.5 seconds"
    assert processes_running(marker) == []
    logs = await agent.intake.logs("slow")
    assert any(entry["type"] == "progress" for entry in logs)


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
    assert processes_running(marker)  # it really started one
    state = await agent.intake.cancel("victim")
    assert state.status is JobStatus.CANCELLED
    assert processes_running(marker) == []
    with pytest.raises(ConflictError):
        await agent.intake.cancel("victim")


async def test_cancel_pending_job_never_runs_it(agent: Agent) -> None:
    await agent.intake.submit(job("blocker", "system.sleep", {"seconds": 0.3}), transport="t")
    await agent.intake.submit(job("queued"), transport="t")
    state = await agent.intake.cancel("queued")
    assert state.status is JobStatus.CANCELLED
    assert state.started_at is None
    assert agent.dispatcher.queue_depth == 0
    await wait_terminal(agent, "blocker")
    assert (await agent.intake.status("queued")).attempts == 0


async def test_handler_failure_inside_a_nursery_reports_the_real_reason(
    config: Config,
) -> None:
    @handler("test.fail", payload=EchoPayload, rerun_safe=True)
    async def fail(payload: EchoPayload, ctx: JobContext) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(ctx.run_process, ["sh", "-c", "echo disk on fire >&2; exit 3"])

    @handler("test.unjsonable", payload=EchoPayload, rerun_safe=True)
    async def unjsonable(payload: EchoPayload, ctx: JobContext) -> object:
        return {"when": object()}

    async with trio.open_nursery() as nursery:
        agent: Agent = await nursery.start(Agent(config, extra_handlers=[fail, unjsonable]).run)
        await agent.intake.submit(job("f", "test.fail"), transport="t")
        await agent.intake.submit(job("u", "test.unjsonable"), transport="t")
        failed = await wait_terminal(agent, "f")
        assert failed.status is JobStatus.FAILED
        assert failed.error == "sh exited with status 3: disk on fire"
        odd = await wait_terminal(agent, "u")
        assert odd.status is JobStatus.FAILED
        assert odd.error is not None
        assert odd.error.startswith("Handler returned a non-JSON result")
        nursery.cancel_scope.cancel()


async def test_restart_recovers_pending_jobs(config: Config) -> None:
    async with trio.open_nursery() as nursery:
        agent: Agent = await nursery.start(Agent(config).run)  # one job at a time
        await agent.intake.submit(job("long", "system.sleep", {"seconds": 30}), transport="t")
        await agent.intake.submit(job("after"), transport="t")
        nursery.cancel_scope.cancel()  # like a crash: "long" stays Running, "after" Pending
    async with trio.open_nursery() as nursery:
        agent = await nursery.start(Agent(config.model_copy(update={"max_concurrent_jobs": 2})).run)
        assert agent.dispatcher.reruns == 1
        assert (await wait_terminal(agent, "after")).status is JobStatus.COMPLETED
        rerun = await agent.intake.status("long")
        assert rerun.attempts == 2
        assert rerun.status is JobStatus.RUNNING
        nursery.cancel_scope.cancel()
