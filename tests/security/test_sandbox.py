"""The sandbox qemu-img and libguestfs run in (agent/policy/sandbox.py): it shows
only the files bound into it, and without it image jobs are refused, never run bare."""

from __future__ import annotations

import os
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from agent.config import Config
from agent.policy import sandbox
from agent.policy.sandbox import SANDBOX, Bind
from agent.service.daemon import Agent
from agent.transports.spool.settings import SpoolConfig
from tests.jobs import failed, ok
from tests.security.hostile_images import MIB, plant, qemu_img


@pytest.fixture
def config(config: Config) -> Config:
    return config.model_copy(update={"spool": SpoolConfig(enabled=False)})


def run_wrapped(argv: list[str], binds: list[Bind]) -> subprocess.CompletedProcess[bytes]:
    wrapped = sandbox.wrap(argv, binds)
    return subprocess.run(
        wrapped, capture_output=True, check=False, pass_fds=sandbox.pass_fds(binds)
    )


def test_a_tool_in_the_sandbox_sees_only_the_files_bound_into_it(tmp_path: Path) -> None:
    planted = plant(tmp_path / "images", tmp_path / "outside")
    disk = planted.root / "disk.qcow2"
    # A qcow2 whose backing file is the secret: had a check missed it, qemu-img would
    # still find no such file.
    qemu_img("create", "-q", "-f", "qcow2", "-u", "-b", str(planted.secret), "-F", "raw",
             str(disk), "1M")  # fmt: skip
    fd = os.open(disk, os.O_RDONLY | os.O_CLOEXEC)
    try:
        shown = [Bind(fd, str(disk))]
        found = run_wrapped(["qemu-img", "convert", "-O", "raw", str(disk), "/tmp/out"], shown)
        assert found.returncode != 0
        assert b"No such file or directory" in found.stderr
        assert planted.marker not in found.stdout + found.stderr
        seen = run_wrapped(["qemu-img", "info", str(planted.secret)], shown)
        assert b"No such file or directory" in seen.stderr
        # Read-only: qemu-img cannot write the image it was shown read-only.
        resized = run_wrapped(["qemu-img", "resize", str(disk), "2M"], shown)
        assert resized.returncode != 0
        assert b"Read-only file system" in resized.stderr
    finally:
        os.close(fd)
    assert (tmp_path / "outside" / "secret.raw").stat().st_size == MIB


@pytest.mark.slow
async def test_capabilities_and_health_say_the_sandbox_works(agent: Agent) -> None:
    described = await agent.intake.capabilities()
    assert described["sandbox"] == {"tool": "bwrap", "available": True, "problem": None}
    health = await agent.intake.health()
    assert health["components"]["sandbox"]["status"] == "healthy"


@pytest.fixture
async def no_bwrap(
    config: Config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Agent]:
    monkeypatch.setattr(sandbox, "BWRAP", str(tmp_path / "no-bwrap"))
    # Probed again here; what it finds is put back after (monkeypatch restores both).
    monkeypatch.setattr(SANDBOX, "checked", False)
    monkeypatch.setattr(SANDBOX, "problem", SANDBOX.problem)
    async with trio.open_nursery() as nursery:
        agent: Agent = await nursery.start(Agent(config).run)
        yield agent
        nursery.cancel_scope.cancel()


@pytest.mark.slow
async def test_without_bwrap_image_jobs_are_refused_and_health_says_why(
    no_bwrap: Agent, tmp_path: Path
) -> None:
    agent = no_bwrap
    expected = f"{tmp_path / 'no-bwrap'} is missing (Debian: bubblewrap)"
    component = (await agent.intake.health())["components"]["sandbox"]
    assert component["status"] == "degraded"
    assert component["reason"] == f"image jobs are refused: {expected}"
    assert (await agent.intake.capabilities())["sandbox"]["problem"] == expected
    disk = tmp_path / "images" / "disk.raw"
    disk.parent.mkdir(exist_ok=True)
    disk.write_bytes(bytes(MIB))
    error = await failed(agent, "image.info", {"path": str(disk)})
    assert error == f"qemu-img: the sandbox cannot run here: {expected}"
    # What needs no tool still works.
    assert (await ok(agent, "image.checksum", {"path": str(disk)}))["size_bytes"] == MIB
