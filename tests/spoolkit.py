"""Helpers for spool tests: drop files the ways people and programs do, and wait for them."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import trio

from agent.service.daemon import Agent
from agent.transports.spool.transport import SpoolTransport


def drop(spool: Path, name: str, document: dict[str, Any] | bytes, *, direct: bool = False) -> None:
    """Write a job file: by default the Maildir way (tmp/, fsync, rename); with
    `direct`, straight into incoming/ like `cp` does."""
    data = document if isinstance(document, bytes) else json.dumps(document).encode()
    target = spool / "incoming" / name
    staged = target if direct else spool / "tmp" / name
    fd = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, data)
        if not direct:
            os.fsync(fd)
    finally:
        os.close(fd)
    if not direct:
        staged.rename(target)


async def wait_for_files(
    directory: Path, pattern: str, count: int, limit: float = 30.0
) -> list[Path]:
    """Wait (bounded) until `directory` holds `count` files matching `pattern`."""
    with trio.fail_after(limit):
        while True:
            found = sorted(directory.glob(pattern))
            if len(found) >= count:
                return found
            await trio.sleep(0.01)


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def spool_of(agent: Agent) -> SpoolTransport:
    """The agent's spool transport (it must be on)."""
    transport = agent.transport("spool")
    assert isinstance(transport, SpoolTransport)
    return transport
