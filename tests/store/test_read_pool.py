"""The store's reads: a long read on one connection does not hold up another read."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from agent.errors import StoreError
from agent.store.readpool import ReadPool
from agent.store.schema import connect


async def opened_pool(tmp_path: Path, size: int) -> ReadPool:
    path = tmp_path / "jobs.sqlite3"
    connect(path).close()
    pool = ReadPool(lambda: connect(path, readonly=True), size=size)
    await pool.open()
    return pool


@asynccontextmanager
async def one_lane_held(tmp_path: Path, size: int) -> AsyncIterator[ReadPool]:
    """A pool of `size` connections, one of them busy with a long read (a list over
    a large store) until the block ends."""
    pool = await opened_pool(tmp_path, size)
    release = threading.Event()
    started = trio.Event()
    token = trio.lowlevel.current_trio_token()

    def long_read(conn: sqlite3.Connection) -> str:
        trio.from_thread.run_sync(started.set, trio_token=token)
        release.wait(30)
        return "long"

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pool.read, long_read)
            await started.wait()
            yield pool
            release.set()
    finally:
        release.set()
        await pool.aclose()


def count_jobs(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT count(*) FROM jobs").fetchone()[0])


async def test_a_point_read_passes_a_long_read(tmp_path: Path) -> None:
    async with one_lane_held(tmp_path, size=2) as pool:
        assert pool.lanes_busy().count(True) == 1
        with trio.fail_after(10):
            assert await pool.read(count_jobs) == 0


async def test_errors_reach_the_reader_who_queued_them(tmp_path: Path) -> None:
    pool = await opened_pool(tmp_path, size=1)
    try:
        with pytest.raises(StoreError, match="read failed"):
            await pool.read(lambda conn: conn.execute("SELECT nope FROM jobs").fetchone())
        assert await pool.read(lambda conn: 1) == 1
    finally:
        await pool.aclose()


async def test_a_read_by_key_needs_no_free_connection(tmp_path: Path) -> None:
    async with one_lane_held(tmp_path, size=1) as pool:
        assert pool.lanes_busy() == [True]  # the only connection is held
        with trio.fail_after(10):
            assert await pool.read_now(count_jobs) == 0
        assert pool.lanes_busy() == [True]  # answered without it
        with pytest.raises(StoreError, match="read failed"):
            await pool.read_now(lambda conn: conn.execute("SELECT nope FROM jobs"))
