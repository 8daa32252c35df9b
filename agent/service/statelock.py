"""One agent per state directory: an exclusive lock held for the agent's whole life.

Two agents on one store would both recover and run the same jobs. The lock is
flock(2) on `<state_dir>/agent.lock`, so the kernel releases it when the
process dies however it dies (kill -9 included) and a stale file never blocks
a start. The file holds the holder's pid, for the refusal's message. Readers
(the CLI's direct reads of the store) do not take it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from agent.config import STATE_DIR_MODE
from agent.errors import ConfigError

LOCK_NAME = "agent.lock"


class StateLockedError(ConfigError):
    """Another agent holds the state directory (exit status 2, like a config error)."""


@contextlib.contextmanager
def hold_state_lock(state_dir: Path) -> Iterator[Path]:
    """Hold the state directory's lock until the block ends; StateLockedError if taken."""
    state_dir.mkdir(mode=STATE_DIR_MODE, parents=True, exist_ok=True)
    path = state_dir / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise StateLockedError(
                f"another agent (pid {holder}) is running on {state_dir}; "
                "stop it first (only one agent may use a state directory)",
                field="state_dir",
                reason=f"locked by pid {holder}",
                details={"pid": int(holder) if holder.isdigit() else None},
            ) from exc
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        os.fchmod(fd, 0o600)
        yield path
    finally:
        os.close(fd)  # releases the lock
