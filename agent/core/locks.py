"""One lock per resource a job acts on (a domain, a pool, an image path), so
jobs on the same resource never overlap; a lock lives while someone wants it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio


class ResourceLocks:
    def __init__(self) -> None:
        self._locks: dict[str, tuple[trio.Lock, int]] = {}  # key -> (lock, holders + waiters)

    @asynccontextmanager
    async def hold(self, key: str | None) -> AsyncIterator[None]:
        """Hold the lock of `key` (None: no resource, nothing to hold)."""
        if key is None:
            yield
            return
        lock, users = self._locks.get(key, (trio.Lock(), 0))
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)
