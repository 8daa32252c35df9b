"""The spool's watcher: kernel events wake it (no polling step); lost events mean a rescan."""

from __future__ import annotations

import os
import struct
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from agent.config import Config
from agent.service.daemon import Agent
from agent.transports.spool import inotify
from agent.transports.spool.settings import SpoolConfig
from tests.jobs import job
from tests.spoolkit import drop, read_json, wait_for_files


async def test_a_rename_into_the_directory_is_read_as_one_change(tmp_path: Path) -> None:
    (tmp_path / "tmp").mkdir()
    (tmp_path / "in").mkdir()
    with inotify.Inotify() as watcher:
        watcher.watch(tmp_path / "in", inotify.IN_MOVED_TO | inotify.IN_CREATE)
        (tmp_path / "tmp" / "a.json").write_text("{}")
        os.rename(tmp_path / "tmp" / "a.json", tmp_path / "in" / "a.json")
        with trio.fail_after(10):
            [change] = await watcher.read()
    assert change.directory == tmp_path / "in"
    assert change.name == "a.json"
    assert change.renamed_in


async def test_a_name_that_is_not_utf8_still_reaches_the_claimer(tmp_path: Path) -> None:
    with inotify.Inotify() as watcher:
        watcher.watch(tmp_path, inotify.IN_CREATE)
        os.close(os.open(os.fsencode(tmp_path) + b"/bad-\xff.json", os.O_CREAT | os.O_WRONLY))
        with trio.fail_after(10):
            [change] = await watcher.read()
    assert os.fsencode(change.name).endswith(b"bad-\xff.json")


def test_a_queue_overflow_asks_for_a_rescan() -> None:
    with inotify.Inotify() as watcher:
        event = struct.pack("iIII", -1, inotify.IN_Q_OVERFLOW, 0, 0)
        with pytest.raises(inotify.Overflow):
            watcher.parse(event)


@pytest.fixture
def quiet_config(config: Config) -> Config:
    # No periodic rescan within the test: only the watcher can find a new file.
    return config.model_copy(update={"spool": SpoolConfig(settle_seconds=0.3, rescan_seconds=3600)})


@pytest.fixture
async def quiet_agent(quiet_config: Config) -> AsyncIterator[Agent]:
    async with trio.open_nursery() as nursery:
        running: Agent = await nursery.start(Agent(quiet_config).run)
        yield running
        nursery.cancel_scope.cancel()


@pytest.mark.slow
async def test_a_dropped_file_is_claimed_on_the_kernel_event(
    quiet_agent: Agent, quiet_config: Config
) -> None:
    spool = quiet_config.spool_dir
    drop(spool, "a.json", job("watched-1"))
    [result] = await wait_for_files(spool / "done", "watched-1.result.json", 1)
    assert read_json(result)["status"] == "Completed"


async def test_lost_events_are_made_good_by_a_rescan(
    quiet_agent: Agent, quiet_config: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool = quiet_config.spool_dir
    real_parse = inotify.Inotify.parse

    def overflowing(self: inotify.Inotify, data: bytes) -> list[inotify.Change]:
        # The kernel queue overflowed: this buffer's events are lost.
        monkeypatch.setattr(inotify.Inotify, "parse", real_parse)
        raise inotify.Overflow

    monkeypatch.setattr(inotify.Inotify, "parse", overflowing)
    drop(spool, "b.json", job("lost-1"))
    [result] = await wait_for_files(spool / "done", "lost-1.result.json", 1)
    assert read_json(result)["status"] == "Completed"
