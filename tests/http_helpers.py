"""Helpers for the HTTP transport's tests: tokens of each scope, a served agent, clients."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import trio

from agent.config import Config
from agent.daemon import Agent
from agent.transports.http.auth import create_token
from agent.transports.http.settings import HttpConfig
from agent.transports.http.transport import HttpTransport
from agent.transports.spool.settings import SpoolConfig

READ, READ_ENTRY = create_token("reader", ["read"])
SUBMIT, SUBMIT_ENTRY = create_token("submitter", ["submit"])
CANCEL, CANCEL_ENTRY = create_token("canceller", ["cancel"])
ADMIN, ADMIN_ENTRY = create_token("admin", ["admin"])
TOKEN_ENTRIES = [READ_ENTRY, SUBMIT_ENTRY, CANCEL_ENTRY, ADMIN_ENTRY]


def with_http(config: Config, *, spool: bool = False, **settings: Any) -> Config:
    """The test config with the HTTP API on an ephemeral loopback port and test tokens.

    The spool is off unless asked for: its watcher takes about a second to start and stop.
    """
    http = HttpConfig(bind="127.0.0.1:0", tokens=TOKEN_ENTRIES, **settings)
    spool_config = config.section(SpoolConfig).model_copy(update={"enabled": spool})
    return config.model_copy(update={"http": http, "spool": spool_config})


@asynccontextmanager
async def serving(config: Config) -> AsyncIterator[Agent]:
    async with trio.open_nursery() as nursery:
        agent: Agent = await nursery.start(Agent(config).run)
        yield agent
        nursery.cancel_scope.cancel()


def client(agent: Agent, token: str | None = ADMIN, **kwargs: Any) -> httpx.AsyncClient:
    assert http_of(agent) is not None
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.AsyncClient(base_url=http_of(agent).url, headers=headers, **kwargs)


def echo(job_id: str | None = None, **extra: Any) -> dict[str, Any]:
    document: dict[str, Any] = {
        "version": "1.0",
        "kind": "VMOperation",
        "operation": "system.echo",
        "payload": {"type": "system.echo.v1", "data": {"message": "hello"}},
        **extra,
    }
    if job_id is not None:
        document["job_id"] = job_id
    return document


def sleep_job(job_id: str, seconds: float) -> dict[str, Any]:
    return {
        "version": "1.0",
        "job_id": job_id,
        "kind": "VMOperation",
        "operation": "system.sleep",
        "payload": {"type": "system.sleep.v1", "data": {"seconds": seconds}},
    }


async def wait_terminal(agent: Agent, job_id: str) -> str:
    """The job's final status word (follows the event bus; no polling)."""
    with agent.intake.events() as subscription:
        state = await agent.intake.status(job_id)
        if state.status.terminal:
            return state.status.value
        async for event in subscription.receive:
            if event["job_id"] == job_id and event["type"] == "status":
                status: str = event["data"]["status"]
                if status in ("Completed", "Failed", "Cancelled"):
                    return status
    raise AssertionError("event stream ended")


async def wait_running(agent: Agent, job_id: str) -> None:
    with agent.intake.events() as subscription:
        if (await agent.intake.status(job_id)).status.value == "Running":
            return
        async for event in subscription.receive:
            if event["job_id"] == job_id and event["data"].get("status") == "Running":
                return


def http_of(agent: Agent) -> HttpTransport:
    """The agent's HTTP transport (it must be on)."""
    transport = agent.transport("http")
    assert isinstance(transport, HttpTransport)
    return transport
