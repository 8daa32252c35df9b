"""The store's reads: a long read on one connection does not hold up another read."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest
import trio

from agent.errors import StoreError
from agent.store.readpool import ReadPool
from agent.store.schema import connect


async def test_a_point_read_passes_a_long_read(tmp_path: Path) -> None:
    path = tmp_path / "jobs.sqlite3"
    connect(path).close()
    pool = ReadPool(lambda: connect(path, readonly=True), size=2)
    await pool.open()
    release = threading.Event()
    started = trio.Event()
    token = trio.lowlevel.current_trio_token()

    def long_read(conn: sqlite3.Connection) -> str:
        trio.from_thread.run_sync(started.set, trio_token=token)
        release.wait(30)  # a list over a large store, held until the point read is done
        return "long"

    def point_read(conn: sqlite3.Connection) -> int:
        return int(conn.execute("SELECT count(*) FROM jobs").fetchone()[0])

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pool.read, long_read)
            await started.wait()
            assert pool.lanes_busy().count(True) == 1
            with trio.fail_after(10):
                assert await pool.read(point_read) == 0
            release.set()
    finally:
        release.set()
        await pool.aclose()


async def test_errors_reach_the_reader_who_queued_them(tmp_path: Path) -> None:
    path = tmp_path / "jobs.sqlite3"
    connect(path).close()
    pool = ReadPool(lambda: connect(path, readonly=True), size=1)
    await pool.open()
    try:
        with pytest.raises(StoreError, match="read failed"):
            await pool.read(lambda conn: conn.execute("SELECT nope FROM jobs").fetchone())
        assert await pool.read(lambda conn: 1) == 1
    finally:
        await pool.aclose()


async def test_a_read_by_key_needs_no_free_connection(tmp_path: Path) -> None:
    path = tmp_path / "jobs.sqlite3"
    connect(path).close()
    pool = ReadPool(lambda: connect(path, readonly=True), size=1)
    await pool.open()
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
            assert pool.lanes_busy() == [True]  # the only connection is held
            with trio.fail_after(10):
                count = await pool.read_now(
                    lambda conn: conn.execute("SELECT count(*) FROM jobs").fetchone()[0]
                )
            assert count == 0
            assert pool.lanes_busy() == [True]  # answered without it
            with pytest.raises(StoreError, match="read failed"):
                await pool.read_now(lambda conn: conn.execute("SELECT nope FROM jobs"))
            release.set()
    finally:
        release.set()
        await pool.aclose()
