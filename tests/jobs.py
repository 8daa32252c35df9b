"""Running one job through the intake and waiting for its end, for handler tests."""

from __future__ import annotations

import itertools
from typing import Any

import trio

from agent.daemon import Agent
from agent.jobs import JobState

_ids = itertools.count()


def job_document(operation: str, data: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "version": "1.0",
        "job_id": f"{operation.replace('.', '-')}-{next(_ids)}",
        "kind": "VMOperation",
        "operation": operation,
        "payload": {"type": f"{operation}.v1", "data": data},
        **extra,
    }


async def submit(agent: Agent, operation: str, data: dict[str, Any], **extra: Any) -> str:
    submission = await agent.intake.submit(job_document(operation, data, **extra), transport="test")
    return submission.state.job_id


async def wait_done(agent: Agent, job_id: str, *, within: float = 60) -> JobState:
    """The job's final status (waits on the event bus, not by polling)."""
    with agent.intake.events() as subscription, trio.fail_after(within):
        state = await agent.intake.status(job_id)
        if state.status.terminal:
            return state
        async for event in subscription.receive:
            if (
                event["type"] == "status"
                and event["job_id"] == job_id
                and event["data"]["status"] in ("Completed", "Failed", "Cancelled")
            ):
                return await agent.intake.status(job_id)
    raise AssertionError("event stream ended")


async def run_job(
    agent: Agent, operation: str, data: dict[str, Any], *, within: float = 60, **extra: Any
) -> tuple[JobState, Any]:
    """Submit, wait for the end; answer (status, result)."""
    job_id = await submit(agent, operation, data, **extra)
    state = await wait_done(agent, job_id, within=within)
    result = await agent.intake.result(job_id) if state.status == "Completed" else None
    return state, result


async def ok(agent: Agent, operation: str, data: dict[str, Any], **extra: Any) -> Any:
    """Run a job that must complete; answer its result."""
    state, result = await run_job(agent, operation, data, **extra)
    assert state.status == "Completed", state.error
    return result


async def failed(agent: Agent, operation: str, data: dict[str, Any], **extra: Any) -> str:
    """Run a job that must fail; answer its error."""
    state, _ = await run_job(agent, operation, data, **extra)
    assert state.status == "Failed", f"expected failure, got {state.status}"
    assert state.error is not None
    return state.error
