"""Reads over a few read-only connections (WAL lets them run beside the writer
and beside each other), so a long list query never holds up a point read.

Each connection keeps its own Batcher: reads arriving together share one
thread hop. A new read joins a batch being formed, else starts one on an idle
connection, else waits on the connection with the shortest queue.

Point reads by primary key (`read_now`) take none of them: they run at once on
the event loop's own connection, which costs less than a thread hop and never
waits for a connection a long list holds.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import TypeVar

import trio

from agent.core.jobstore import Queued
from agent.errors import StoreError
from agent.store.batcher import Batcher

_T = TypeVar("_T")
_BUSY = (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


class _Lane:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.batcher = Batcher(self._run, lambda: None)

    def _run(self, batch: list[Queued]) -> list[Queued]:
        for item in batch:
            try:
                item.value = item.operation(self.conn)
            except sqlite3.Error as exc:
                item.error = StoreError(f"job store read failed: {exc}")
                item.error.__cause__ = exc
            except Exception as exc:  # noqa: BLE001 (delivered to the caller who queued it)
                item.error = exc
        return []  # a read is never run again


class ReadPool:
    """`size` read-only connections made by `connect` (blocking; run in threads)."""

    def __init__(self, connect: Callable[[], sqlite3.Connection], size: int = 3) -> None:
        self._connect = connect
        self._size = size
        self._lanes: list[_Lane] = []
        self._inline: sqlite3.Connection | None = None

    async def open(self) -> None:
        for _ in range(self._size):
            self._lanes.append(_Lane(await trio.to_thread.run_sync(self._connect)))
        inline = await trio.to_thread.run_sync(self._connect)
        # Never sleep on a lock on the event loop: a busy database sends the read to a lane.
        inline.execute("PRAGMA busy_timeout = 0")
        self._inline = inline

    async def aclose(self) -> None:
        lanes, self._lanes = self._lanes, []
        inline, self._inline = self._inline, None
        for lane in lanes:
            await trio.to_thread.run_sync(lane.conn.close)
        if inline is not None:
            await trio.to_thread.run_sync(inline.close)

    async def read_now(self, query: Callable[[sqlite3.Connection], _T]) -> _T:
        """A read of a few pages (a lookup by key), run right here on the event loop.

        Only for bounded reads: the loop waits for it. Should the database be
        busy (a checkpoint or recovery holding its lock), it goes to a lane.
        """
        assert self._inline is not None, "store not open"
        try:
            return query(self._inline)
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode & 0xFF not in _BUSY:  # BUSY_RECOVERY, BUSY_SNAPSHOT too
                raise StoreError(f"job store read failed: {exc}") from exc
        return await self.read(query)

    async def read(self, query: Callable[[sqlite3.Connection], _T]) -> _T:
        assert self._lanes, "store not open"
        lane = self._choose()
        value: _T = await lane.batcher.settle(lane.batcher.queue(query))
        return value

    def _choose(self) -> _Lane:
        # Join a batch being formed (reads arriving together share one thread hop),
        # else start one on an idle connection; only when all are busy, queue.
        idle = None
        for lane in self._lanes:
            if lane.batcher.forming:
                return lane
            if idle is None and not lane.batcher.busy:
                idle = lane
        return idle or min(self._lanes, key=lambda lane: lane.batcher.waiting)

    def lanes_busy(self) -> list[bool]:
        """Which connections are running a batch now (for tests and health)."""
        return [lane.batcher.busy for lane in self._lanes]


__all__ = ["ReadPool"]
