"""SIGHUP: a reloaded config is applied without dropping jobs."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import trio

from agent.config import Config, Section
from agent.jobs import JobStatus
from agent.service.daemon import Agent
from agent.service.logs import _LEVEL_FILTER, configure_logging, set_log_level
from agent.transports import TRANSPORTS
from agent.transports.base import TransportSpec
from agent.transports.spool.settings import SpoolConfig
from tests.jobs import job, sleep_job
from tests.spoolkit import spool_of


class FakeConfig(Section):
    """The fake transport's own section."""

    certificate: str = "old.pem"


class ReloadingTransport:
    """A transport with an async reload (as the HTTP transport reloads TLS certificates)."""

    name = "fake"
    outbox = None

    def __init__(self) -> None:
        self.reloaded: list[FakeConfig] = []

    def features(self) -> list[str]:
        return []

    async def health(self) -> tuple[str, str, dict[str, object]]:
        return "healthy", "fake", {}

    async def run(self, intake: object, *, task_status: trio.TaskStatus[None]) -> None:
        task_status.started()
        await trio.sleep_forever()

    async def reload(self, config: FakeConfig) -> None:
        await trio.lowlevel.checkpoint()
        self.reloaded.append(config)


class BrokenTransport(ReloadingTransport):
    name = "broken"

    async def reload(self, config: FakeConfig) -> None:
        raise OSError("certificate file unreadable")


@pytest.mark.slow
async def test_reload_applies_limits_labels_and_transports(config: Config, tmp_path: Path) -> None:
    fake, broken = ReloadingTransport(), BrokenTransport()
    table = (
        *TRANSPORTS,
        TransportSpec("broken", FakeConfig, lambda _section, _services: broken),
        TransportSpec("fake", FakeConfig, lambda _section, _services: fake),
    )
    agent = Agent(config, transports=table)
    async with trio.open_nursery() as nursery:
        await nursery.start(agent.run)
        await agent.intake.submit(sleep_job("through-reload", 0.5), transport="test")
        new = agent.config.model_copy(
            update={
                "max_concurrent_jobs": 3,
                "max_pending_jobs": 10,
                "labels": {"rack": "r12"},
                "log_level": "warning",
                "state_dir": tmp_path / "elsewhere",  # needs a restart: kept
                "spool": SpoolConfig(settle_seconds=9, rescan_seconds=5, watch_step_ms=7),
                "fake": FakeConfig(certificate="new.pem"),
            }
        )
        await agent.reload(new)
        assert agent.config.max_concurrent_jobs == 3
        assert agent.config.state_dir == config.state_dir
        assert spool_of(agent) is not None
        assert spool_of(agent).config.settle_seconds == 9
        assert spool_of(agent).config.watch_step_ms == config.spool.watch_step_ms
        assert (await agent.intake.capabilities())["labels"] == {"rack": "r12"}
        # Each transport gets its own section; one failing to reload stops no other.
        assert fake.reloaded == [FakeConfig(certificate="new.pem")]
        assert _LEVEL_FILTER.level == logging.WARNING
        # More workers now: three long jobs run at once.
        for n in range(3):
            await agent.intake.submit(sleep_job(f"wide-{n}", 30), transport="test")
        with trio.fail_after(10):
            while agent.dispatcher.running_count < 3:
                await trio.sleep(0.01)
        for n in range(3):
            await agent.intake.cancel(f"wide-{n}")
        # Fewer again: surplus workers leave once idle.
        await agent.reload(agent.config.model_copy(update={"max_concurrent_jobs": 1}))
        for n in range(3):
            await agent.intake.submit(sleep_job(f"narrow-{n}", 0.1), transport="test")
        most = 0
        with trio.fail_after(10):
            while (await agent.intake.status("narrow-2")).status is not JobStatus.COMPLETED:
                most = max(most, agent.dispatcher.running_count)
                await trio.sleep(0.005)
        assert most == 1
        state = await agent.intake.status("through-reload")
        assert state.status is JobStatus.COMPLETED
        nursery.cancel_scope.cancel()
    set_log_level("info")


def test_log_level_filter_drops_below_the_level(capsys: pytest.CaptureFixture[str]) -> None:
    import structlog

    configure_logging("json", "warning")
    try:
        log = structlog.get_logger("test.reload")
        log.info("hidden")
        log.warning("shown")
        set_log_level("debug")
        log.debug("now-shown")
        try:
            int("boom")
        except ValueError:
            log.exception("failure")
        err = capsys.readouterr().err
        assert "hidden" not in err
        assert "shown" in err
        assert "now-shown" in err
        assert "failure" in err
    finally:
        structlog.reset_defaults()
        set_log_level("info")


async def test_reload_reaches_the_limits_handlers_read(config: Config, tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        agent: Agent = await nursery.start(Agent(config).run)
        await agent.reload(agent.config.model_copy(update={"max_disk_size_gb": 1}))
        (tmp_path / "images").mkdir()  # the test config's image root
        image = {"path": str(tmp_path / "images" / "big.qcow2"), "size_bytes": 2 * 1024**3}
        await agent.intake.submit(job("big", "image.create", image), transport="test")
        with trio.fail_after(10):
            while not (state := await agent.intake.status("big")).status.terminal:
                await trio.sleep(0.01)
        assert state.status is JobStatus.FAILED
        assert state.error is not None
        assert "max_disk_size_gb (1)" in state.error
        assert not (tmp_path / "images" / "big.qcow2").exists()
        nursery.cancel_scope.cancel()
