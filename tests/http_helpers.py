"""Helpers for the HTTP transport's tests: tokens of each scope, a served agent, clients."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import trio

from agent.config import Config
from agent.service.daemon import Agent
from agent.service.settings import Settings
from agent.transports.http.auth import create_token
from agent.transports.http.settings import HttpConfig
from agent.transports.http.transport import HttpTransport

READ, READ_ENTRY = create_token("reader", ["read"])
SUBMIT, SUBMIT_ENTRY = create_token("submitter", ["submit"])
CANCEL, CANCEL_ENTRY = create_token("canceller", ["cancel"])
ADMIN, ADMIN_ENTRY = create_token("admin", ["admin"])
TOKEN_ENTRIES = [READ_ENTRY, SUBMIT_ENTRY, CANCEL_ENTRY, ADMIN_ENTRY]


def with_http(config: Settings, *, spool: bool = False, **settings: Any) -> Settings:
    """The test config with the HTTP API on an ephemeral loopback port and test tokens.

    The spool is off unless asked for: its watcher takes about a second to start and stop.
    """
    http = HttpConfig(bind="127.0.0.1:0", tokens=TOKEN_ENTRIES, **settings)
    spool_config = config.spool.model_copy(update={"enabled": spool})
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


def http_of(agent: Agent) -> HttpTransport:
    """The agent's HTTP transport (it must be on)."""
    transport = agent.transport("http")
    assert isinstance(transport, HttpTransport)
    return transport
