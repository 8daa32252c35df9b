"""Shared fixtures: a real agent on a temporary state dir and spool."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import trio

from agent.config import LibvirtConfig, PolicyConfig
from agent.service.daemon import Agent
from agent.service.settings import Settings
from agent.transports.http.settings import HttpConfig
from agent.transports.spool.settings import SpoolConfig
from tests.libvirtd import PrivateLibvirtd, private_libvirtd


@pytest.fixture(scope="session")
def libvirtd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateLibvirtd]:
    """One private real libvirtd (tests/libvirtd.py) for the session's real-QEMU tests
    (handlers, resource view, the browser's console)."""
    with private_libvirtd(tmp_path_factory.mktemp("libvirtd")) as daemon:
        yield daemon


@pytest.fixture
def config(tmp_path: Path) -> Settings:
    return Settings(
        state_dir=tmp_path / "state",
        spool_dir=tmp_path / "spool",
        max_concurrent_jobs=2,
        spool=SpoolConfig(settle_seconds=0.3, rescan_seconds=5),
        # libvirt's in-process test driver: no daemon, shared by the whole test process.
        libvirt=LibvirtConfig(uri="test:///default"),
        # The HTTP API is on by default; an ephemeral port keeps parallel runs apart.
        http=HttpConfig(bind="127.0.0.1:0"),
        # Handler tests make their images here: the path policy's one root.
        policy=PolicyConfig(image_roots=[tmp_path / "images"]),
    )


@pytest.fixture
async def agent(config: Settings) -> AsyncIterator[Agent]:
    async with trio.open_nursery() as nursery:
        running: Agent = await nursery.start(Agent(config).run)
        yield running
        nursery.cancel_scope.cancel()
