"""Handlers: one small async function per operation, declared with `agent.handler`."""

from __future__ import annotations

from agent.config import Config
from agent.context import JobContext
from agent.errors import HandlerError

GIB = 1024**3


def check_disk_size(ctx: JobContext, size_bytes: int, *, field: str) -> None:
    """Refuse a disk (image or volume) larger than this host's max_disk_size_gb."""
    limit = ctx.service(Config).max_disk_size_gb
    if size_bytes > limit * GIB:
        raise HandlerError(
            f"{size_bytes} bytes is over this host's max_disk_size_gb ({limit})", field=field
        )
