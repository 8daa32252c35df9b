"""The tests' one set of builders: job documents, NewJobs for the store, and waiting —
for a job to reach a status (events, no polling), or for any condition, sync or async."""

from __future__ import annotations

import itertools
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import trio

from agent.jobs import JobState, JobStatus, NewJob
from agent.service.daemon import Agent

_ids = itertools.count()


def job(
    job_id: str | None,
    operation: str = "system.echo",
    data: dict[str, Any] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """A version 1.0 job document; without a `job_id` the agent assigns one."""
    document: dict[str, Any] = {
        "version": "1.0",
        "kind": "VMOperation",
        "operation": operation,
        "payload": {"type": f"{operation}.v1", "data": {} if data is None else data},
        **extra,
    }
    if job_id is not None:
        document["job_id"] = job_id
    return document


def job_document(operation: str, data: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """A job document with an id of its own (unique in this test run)."""
    return job(f"{operation.replace('.', '-')}-{next(_ids)}", operation, data, **extra)


def echo_job(job_id: str | None = None, **extra: Any) -> dict[str, Any]:
    return job(job_id, "system.echo", {"message": "hello"}, **extra)


def sleep_job(job_id: str, seconds: float, **extra: Any) -> dict[str, Any]:
    return job(job_id, "system.sleep", {"seconds": seconds}, **extra)


def new_job(
    job_id: str,
    operation: str = "system.echo",
    *,
    transport: str = "test",
    fingerprint: str = "a",
    document: dict[str, Any] | None = None,
    timeout_seconds: float | None = None,
    origin: str | None = None,
) -> NewJob:
    """A job as the intake hands it to the store (for store tests: no dispatcher takes it)."""
    return NewJob(
        job_id=job_id,
        operation=operation,
        priority=5,
        transport=transport,
        document={"job_id": job_id} if document is None else document,
        fingerprint=fingerprint,
        timeout_seconds=timeout_seconds,
        origin=origin,
    )


def wait_for(check: Callable[[], object], within: float, what: str, *, every: float = 0.05) -> None:
    """Until `check()` is true, for real processes the test cannot follow by events."""
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(every)


async def eventually(
    check: Callable[[], Awaitable[object]], within: float = 60, *, every: float = 0.2
) -> None:
    """Until `await check()` is true (trio's clock: a mock clock jumps through the waits)."""
    with trio.fail_after(within):
        while not await check():
            await trio.sleep(every)


async def wait_until(
    agent: Agent, job_id: str, reached: Callable[[JobStatus], bool], *, within: float = 60
) -> JobState:
    """The job's state once `reached(status)` (follows the event bus, never polls)."""
    with agent.intake.events() as subscription, trio.fail_after(within):
        state = await agent.intake.status(job_id)
        if reached(state.status):
            return state
        async for event in subscription.receive:
            if (
                event["type"] == "status"
                and event["job_id"] == job_id
                and reached(JobStatus(event["data"]["status"]))
            ):
                return await agent.intake.status(job_id)
    raise AssertionError("event stream ended")


async def wait_done(agent: Agent, job_id: str, *, within: float = 60) -> JobState:
    """The job's final state."""
    return await wait_until(agent, job_id, lambda status: status.terminal, within=within)


async def wait_running(agent: Agent, job_id: str, *, within: float = 60) -> JobState:
    """The job's state once it has started (or, if it was quick, ended)."""
    return await wait_until(
        agent, job_id, lambda status: status is JobStatus.RUNNING or status.terminal, within=within
    )


async def submit(agent: Agent, operation: str, data: dict[str, Any], **extra: Any) -> str:
    submission = await agent.intake.submit(job_document(operation, data, **extra), transport="test")
    return submission.state.job_id


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


@asynccontextmanager
async def dispatching(agent: Agent) -> AsyncIterator[Agent]:
    """The agent's store and dispatcher, running; no transports, libvirt or
    capability refreshes (they use worker threads, which a mock clock does not
    wait for). The store is closed after, keeping what it holds: the next
    agent on the same store is a restart."""
    await agent.store.open()
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(agent.dispatcher.run)
            yield agent
            nursery.cancel_scope.cancel()
    finally:
        await agent.store.aclose()
