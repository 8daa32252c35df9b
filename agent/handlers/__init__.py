"""Handlers: one small async function per operation, declared with `agent.handler`.

Payload models say `defer_build=True`: pydantic builds a model's validator when
a job of its operation (or the capabilities' schemas) first needs it, not while
the agent starts (bench/idle.py).
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any

from agent.config import Config
from agent.core.context import JobContext
from agent.errors import HandlerError, HypervisorError
from agent.hypervisor import LibvirtConnection

GIB = 1024**3


def check_disk_size(ctx: JobContext, size_bytes: int, *, field: str) -> None:
    """Refuse a disk (image or volume) larger than this host's max_disk_size_gb."""
    limit = ctx.get(Config).max_disk_size_gb
    if size_bytes > limit * GIB:
        raise HandlerError(
            f"{size_bytes} bytes is over this host's max_disk_size_gb ({limit})", field=field
        )


async def missing_is_done(
    call: Awaitable[dict[str, Any]], answer: dict[str, Any]
) -> dict[str, Any]:
    """Removing what is already gone is success: `answer` with changed: false."""
    try:
        return await call
    except HypervisorError as exc:
        if exc.reason != "not_found":
            raise
        return {**answer, "changed": False}


def connection(ctx: JobContext) -> LibvirtConnection:
    """The agent's libvirt connection, as a handler gets it."""
    return ctx.get(LibvirtConnection)
