"""The state directory's disk: a free-space floor for new jobs, and what "full" means.

A full disk must cost new jobs only: they are refused with 503 (Retry-After,
the disk named) before anything is written, while the jobs already accepted
keep their records, their state writes waiting until space returns (see
agent.store.sqlite). `state_min_free_bytes` refuses new jobs a little before
the disk is full, so those writes find room.
"""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path
from typing import Any

from agent.core.health import Status
from agent.errors import StorageFullError

# statvfs is cheap, but a submit burst need not make one call per job.
_CACHE_SECONDS = 0.5
_FULL_CODES = {"SQLITE_FULL"}
# A write error with less free space than this left is taken for a full disk.
_NEARLY_NOTHING = 1024 * 1024


def free_bytes(path: Path) -> tuple[int, int]:
    """(free to unprivileged writers, total) bytes of the filesystem holding `path`."""
    info = os.statvfs(path)
    return info.f_bavail * info.f_frsize, info.f_blocks * info.f_frsize


def storage_full(path: Path, *, free: int | None = None) -> StorageFullError:
    """The 503 for a full (or nearly full) state disk, naming it."""
    shown = f"{free} bytes free" if free is not None else "full"
    return StorageFullError(
        f"The disk holding the job store ({path}) is full; nothing was recorded, retry later",
        field="state_dir",
        reason=f"disk full: {path} ({shown})",
        details={"path": str(path)},
    )


def is_disk_full(exc: sqlite3.Error, path: Path) -> bool:
    """SQLITE_FULL, or a write I/O error on a disk with (nearly) nothing left."""
    name = getattr(exc, "sqlite_errorname", "")
    if name in _FULL_CODES:
        return True
    if name.startswith("SQLITE_IOERR"):
        try:
            return free_bytes(path)[0] < _NEARLY_NOTHING
        except OSError:
            return False
    return False


class SpaceFloor:
    """Refuses new jobs while the state disk has less than `min_free` bytes free."""

    def __init__(self, path: Path, min_free: int) -> None:
        self.path = path
        self.min_free = min_free
        self._checked = (-1.0, 0, 0)  # (monotonic time, free, total)

    def reload(self, config: Any) -> None:
        self.min_free = config.state_min_free_bytes

    def _figures(self) -> tuple[int, int] | None:
        """(free, total), or None when the filesystem cannot be asked (no directory
        yet, an in-memory store): the floor then refuses nothing."""
        at, free, total = self._checked
        now = time.monotonic()
        if now - at > _CACHE_SECONDS:
            try:
                free, total = free_bytes(self.path)
            except OSError:
                return None
            self._checked = (now, free, total)
        return free, total

    def check(self) -> None:
        """StorageFullError (503) when below the floor."""
        figures = self._figures()
        if figures is not None and self.min_free and figures[0] < self.min_free:
            raise storage_full(self.path, free=figures[0])

    def status(self, store_full: bool) -> tuple[Status, str, dict[str, Any]] | None:
        """The store's health when its disk is the trouble, else None."""
        free, total = self._figures() or (-1, -1)
        figures = {"path": str(self.path), "free_bytes": free, "total_bytes": total}
        if store_full or (self.min_free and 0 <= free < self.min_free):
            return "unhealthy", f"job store disk full: {self.path} ({free} bytes free)", figures
        return None
