"""Capability discovery and health of an agent on test:///default, and on a URI
nobody answers (recovery after a real libvirtd restart is in test_libvirt_real.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from agent.cli.command import _config
from agent.cli.parser import build_parser
from agent.config import Config, LibvirtConfig
from agent.core.capabilities import Capabilities
from agent.core.events import EventBus
from agent.hypervisor.facts import summarize_domain_capabilities, version_text
from agent.service.daemon import Agent, build_registry
from agent.service.settings import Settings, load_settings
from agent.transports.spool.settings import SpoolConfig
from tests.jobs import failed
from tests.spoolkit import spool_of


@pytest.fixture
def config(config: Config) -> Config:
    return config.model_copy(update={"spool": SpoolConfig(enabled=False), "labels": {"rack": "r1"}})


@pytest.mark.slow
async def test_capabilities_list_every_operation_and_the_test_hypervisor(agent: Agent) -> None:
    caps = await agent.intake.capabilities()
    assert caps["operations"] == agent.registry.operations
    assert set(caps["operation_schemas"]) == set(agent.registry.operations)
    for family in ("vm.start", "vm.snapshot.revert", "storage.pool.define", "image.convert"):
        assert family in caps["operations"]
    assert caps["operation_schemas"]["vm.shutdown"]["rerun_safe"] is True
    assert "timeout_seconds" in caps["operation_schemas"]["vm.shutdown"]["schema"]["properties"]
    assert caps["hypervisor"] == {"type": "TEST", "version": "0.0.2"}
    assert caps["libvirt"]["connected"] is True
    assert caps["libvirt"]["version"].count(".") == 2
    assert caps["libvirt"]["host"]["arch"] == "i686"
    assert caps["libvirt"]["host"]["guests"][0]["domain_types"] == ["test"]
    assert "not supported" in caps["libvirt"]["domain"]["unavailable"]
    assert {"qcow2", "raw"} <= set(caps["disk_formats"])
    assert "throttle" not in caps["disk_formats"]
    assert {"libvirt", "qemu-img", "http", "websocket", "sse"} <= set(caps["features"])
    assert "spool" not in caps["features"]  # turned off in this config
    assert caps["labels"] == {"rack": "r1"}
    assert caps["max_disk_size_gb"] == agent.config.max_disk_size_gb
    assert caps["max_concurrent_jobs"] == 2
    assert caps["fingerprint"] == agent.capabilities.fingerprint


async def test_health_reports_libvirt_connected_with_latency(agent: Agent) -> None:
    health = await agent.intake.health()
    assert health["status"] == "healthy"
    libvirt = health["components"]["libvirt"]
    assert (libvirt["status"], libvirt["connected"]) == ("healthy", True)
    assert libvirt["latency_ms"] >= 0
    assert health["components"]["store"]["status"] == "healthy"
    assert health["components"]["http"]["status"] == "healthy"


@pytest.mark.slow
async def test_unreachable_libvirt_makes_health_unhealthy_and_jobs_fail_clearly(
    tmp_path: Path,
) -> None:
    socket = tmp_path / "nobody-listens"
    config = Settings(
        state_dir=tmp_path / "state",
        spool_dir=tmp_path / "spool",
        libvirt=LibvirtConfig(uri=f"qemu:///system?socket={socket}", reconnect_min_seconds=60),
        spool=SpoolConfig(enabled=False),
    )
    async with trio.open_nursery() as nursery:
        agent: Agent = await nursery.start(Agent(config).run)
        health = await agent.intake.health()
        assert health["status"] == "unhealthy"
        libvirt = health["components"]["libvirt"]
        assert (libvirt["status"], libvirt["connected"]) == ("unhealthy", False)
        assert str(socket) in libvirt["reason"]
        caps = await agent.intake.capabilities()
        assert caps["hypervisor"] is None
        assert caps["libvirt"]["connected"] is False
        error = await failed(agent, "vm.list", {})
        assert error.startswith(f"libvirt at qemu:///system?socket={socket} is not connected")
        nursery.cancel_scope.cancel()


async def test_spool_health(tmp_path: Path) -> None:
    config = Config(
        state_dir=tmp_path / "state",
        spool_dir=tmp_path / "spool",
        libvirt=LibvirtConfig(uri="test:///default"),
    )
    agent = Agent(config)
    (tmp_path / "spool" / "incoming").mkdir(parents=True, exist_ok=True)
    status, reason, figures = await spool_of(agent).health()
    assert (status, reason) == ("healthy", "spool directory writable")
    assert figures["free_bytes"] > 0
    (tmp_path / "spool" / "incoming").rmdir()
    status, reason, _ = await spool_of(agent).health()
    assert status == "unhealthy"
    assert "missing or not writable" in reason


def described(facts: dict[str, Any], tmp_path: Path) -> tuple[Capabilities, EventBus]:
    """Capabilities whose one contributor answers `facts` as they are when asked."""

    async def contributor() -> dict[str, Any]:
        return dict(facts)

    bus = EventBus()
    config = Config(state_dir=tmp_path, capabilities_refresh_seconds=300)
    capabilities = Capabilities(config, build_registry(), bus)
    capabilities.contribute(contributor)
    return capabilities, bus


async def test_capabilities_refresh_publishes_a_change(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    facts: dict[str, Any] = {"hypervisor": {"type": "QEMU"}}
    capabilities, bus = described(facts, tmp_path)
    with bus.subscribe() as events:
        async with trio.open_nursery() as nursery:
            await nursery.start(capabilities.run)
            first = capabilities.fingerprint
            facts["hypervisor"] = None
            capabilities.request_refresh()
            event = await events.receive.receive()
            assert event["type"] == "capabilities"
            assert event["data"]["changed"] == ["hypervisor"]
            assert event["data"]["fingerprint"] != first
            facts["hypervisor"] = {"type": "QEMU"}
            before = trio.current_time()
            event = await events.receive.receive()  # the periodic re-fingerprint finds it
            assert trio.current_time() - before == pytest.approx(300)
            assert event["data"]["fingerprint"] == first
            nursery.cancel_scope.cancel()
    assert (await capabilities.describe())["hypervisor"] == {"type": "QEMU"}


async def test_a_watcher_of_changes_wakes_only_when_the_fingerprint_changes(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    facts: dict[str, Any] = {"hypervisor": {"type": "QEMU"}}
    capabilities, bus = described(facts, tmp_path)
    async with trio.open_nursery() as nursery:
        await nursery.start(capabilities.run)
        first = await capabilities.changed(None)  # known: answered at once
        assert first == capabilities.fingerprint
        capabilities.request_refresh()  # the same facts: no change to wake for
        with trio.move_on_after(60) as waited:
            await capabilities.changed(first)
        assert waited.cancelled_caught
        facts["hypervisor"] = None
        capabilities.request_refresh()
        assert await capabilities.changed(first) not in {first, None}
        # Nobody followed the bus for it: job events are not built for a watcher.
        assert not bus.listening
        nursery.cancel_scope.cancel()


def test_libvirt_uri_from_flag_env_and_file(tmp_path: Path) -> None:
    args = build_parser().parse_args(["run", "--libvirt-uri", "test:///default"])
    assert _config(args).libvirt.uri == "test:///default"
    env = {
        "HOSTAGENT_LIBVIRT__URI": "qemu+ssh://h/system",
        "HOSTAGENT_LIBVIRT__KEEPALIVE_COUNT": "0",
    }
    loaded = load_settings(None, environ=env)
    assert (loaded.libvirt.uri, loaded.libvirt.keepalive_count) == ("qemu+ssh://h/system", 0)
    file = tmp_path / "agent.toml"
    file.write_text('[libvirt]\nuri = "qemu:///session"\nreconnect_max_seconds = 5\n')
    from_file = load_settings(file, environ={})
    assert (from_file.libvirt.uri, from_file.libvirt.reconnect_max_seconds) == (
        "qemu:///session",
        5,
    )
    assert Config().libvirt.uri == "qemu:///system"


def test_domain_capabilities_summary() -> None:
    xml = """<domainCapabilities>
      <path>/usr/bin/qemu-system-x86_64</path><domain>kvm</domain>
      <machine>pc-q35-7.2</machine><arch>x86_64</arch><vcpu max='255'/>
      <os supported='yes'><enum name='firmware'><value>efi</value></enum></os>
      <cpu><mode name='host-passthrough' supported='yes'/>
        <mode name='host-model' supported='yes'><model fallback='forbid'>Skylake</model></mode>
        <mode name='custom' supported='no'/></cpu>
      <devices><disk supported='yes'><enum name='bus'><value>virtio</value><value>sata</value>
      </enum></disk></devices></domainCapabilities>"""
    assert summarize_domain_capabilities(xml) == {
        "emulator": "/usr/bin/qemu-system-x86_64",
        "domain_type": "kvm",
        "machine": "pc-q35-7.2",
        "arch": "x86_64",
        "max_vcpus": 255,
        "cpu_modes": ["host-passthrough", "host-model"],
        "cpu_model": "Skylake",
        "firmware": ["efi"],
        "disk_buses": ["virtio", "sata"],
        "video_models": [],
    }
    assert version_text(9_000_000) == "9.0.0"
    assert version_text(7_002_022) == "7.2.22"


_FIRST_USE = """
from agent.view import models as resource_models
from agent.service.daemon import build_registry

registry = build_registry()
models = [item.payload_model for item in registry._handlers.values()]
shapes = [resource_models.VmSummary, resource_models.HostStats, resource_models.VmListQuery]
print(sum(model.__pydantic_complete__ for model in models + shapes), len(models))
registry.schemas()
print(sum(model.__pydantic_complete__ for model in models))
"""


@pytest.mark.slow
def test_payload_and_resource_models_are_built_on_first_use() -> None:
    # A fresh interpreter: this one's tests built them long ago.
    out = subprocess.run(
        [sys.executable, "-c", _FIRST_USE], capture_output=True, text=True, check=True, timeout=60
    ).stdout.split()
    built_at_start, count, built_after = (int(word) for word in out)
    assert built_at_start == 0  # none built while the agent starts
    assert built_after == count  # the capabilities' schemas built each of them
