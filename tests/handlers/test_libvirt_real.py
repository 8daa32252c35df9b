"""Against a real libvirtd with real QEMU domains (see tests/libvirtd.py).

The daemon is private to the test session: started here, in its own mount
namespace, and stopped at the end. A domain with no disk boots SeaBIOS to
"no bootable device", which is enough to start, pause, resume and stop it;
having no OS, it ignores an ACPI shutdown request, which shows vm.shutdown's
timeout and its fallback to destroy.

Each step is checked through a second, independent libvirt connection.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest
import trio

from agent.config import Config, LibvirtConfig
from agent.core.metrics import REGISTRY
from agent.service.daemon import Agent
from agent.transports.spool.settings import SpoolConfig
from tests.handlers.conftest import state_of
from tests.jobs import failed, ok, submit, wait_done
from tests.libvirtd import PrivateLibvirtd


@pytest.fixture
def config(config: Config, libvirtd: PrivateLibvirtd) -> Config:
    return config.model_copy(
        update={
            "spool": SpoolConfig(enabled=False),
            "max_concurrent_jobs": 4,
            "libvirt": LibvirtConfig(
                uri=libvirtd.uri,
                keepalive_interval=1,
                reconnect_min_seconds=0.05,
                reconnect_max_seconds=0.5,
            ),
        }
    )


async def define(agent: Agent, observer: Any) -> str:
    name = f"real-{uuid.uuid4().hex[:8]}"
    result = await ok(agent, "vm.define", {"spec": {"name": name, "memory_mib": 64}})
    assert result["created"] is True
    assert state_of(observer, name) == "shutoff"
    return name


@pytest.mark.slow
async def test_real_qemu_domain_lifecycle_through_jobs(agent: Agent, observer: Any) -> None:
    name = await define(agent, observer)
    xml = observer.lookupByName(name).XMLDesc(0)
    assert "<emulator>/usr/bin/qemu-system-x86_64</emulator>" in xml
    steps: list[tuple[str, dict[str, Any], str]] = [
        ("vm.start", {}, "running"),
        ("vm.suspend", {}, "paused"),
        ("vm.resume", {}, "running"),
    ]
    for operation, extra, expected in steps:
        await ok(agent, operation, {"name": name, **extra})
        assert state_of(observer, name) == expected, operation

    info = await ok(agent, "vm.info", {"name": name})
    assert info["state"] == "running"
    assert info["stats"]["cpu.time"] > 0
    assert info["max_memory_kib"] == 64 * 1024
    shot = await ok(agent, "vm.screenshot", {"name": name})
    assert Path(shot["path"]).read_bytes()[:4] == b"\x89PNG"

    # No OS answers the ACPI request: without force the job says so and the domain runs on.
    error = await failed(agent, "vm.shutdown", {"name": name, "timeout_seconds": 0.5})
    assert error == f"domain {name} did not shut down within 0.5 s (force: true destroys it)"
    assert state_of(observer, name) == "running"
    stopped = await ok(agent, "vm.shutdown", {"name": name, "timeout_seconds": 0.5, "force": True})
    assert (stopped["method"], stopped["state"]) == ("destroy", "shutoff")
    assert state_of(observer, name) == "shutoff"

    await ok(agent, "vm.start", {"name": name})
    assert state_of(observer, name) == "running"
    await ok(agent, "vm.destroy", {"name": name})
    assert state_of(observer, name) == "shutoff"
    await ok(agent, "vm.undefine", {"name": name})
    assert state_of(observer, name) == "undefined"


@pytest.mark.slow
async def test_real_jobs_on_one_domain_wait_for_each_other_but_not_for_others(
    agent: Agent, observer: Any
) -> None:
    first, second = await define(agent, observer), await define(agent, observer)
    for name in (first, second):
        await ok(agent, "vm.start", {"name": name})
    slow = await submit(
        agent, "vm.shutdown", {"name": first, "timeout_seconds": 1.5, "force": True}
    )
    same = await submit(agent, "vm.info", {"name": first})
    other = await submit(agent, "vm.info", {"name": second})
    other_state = await wait_done(agent, other)
    slow_state, same_state = await wait_done(agent, slow), await wait_done(agent, same)
    assert None not in (slow_state.completed_at, same_state.started_at, other_state.completed_at)
    # ISO timestamps in one format compare as text.
    assert other_state.completed_at < slow_state.completed_at
    assert same_state.started_at >= slow_state.completed_at
    assert (await agent.intake.result(same))["state"] == "shutoff"


@pytest.mark.slow
async def test_real_storage_pool_and_volumes(agent: Agent, observer: Any, tmp_path: Path) -> None:
    pool = f"real-pool-{uuid.uuid4().hex[:6]}"
    folder = tmp_path / "images" / "pool"  # under the test config's image root
    defined = await ok(agent, "storage.pool.define", {"name": pool, "path": str(folder)})
    assert (defined["state"], folder.is_dir()) == ("running", True)
    volume = {"pool": pool, "name": "disk.qcow2"}
    created = await ok(agent, "storage.volume.create", {**volume, "capacity_bytes": 1 << 20})
    resized = await ok(agent, "storage.volume.resize", {**volume, "capacity_bytes": 2 << 20})
    assert resized["capacity_bytes"] == 2 << 20
    image = json.loads(
        subprocess.run(
            ["qemu-img", "info", "--output=json", created["path"]],
            check=True,
            capture_output=True,
        ).stdout
    )
    assert (image["format"], image["virtual-size"]) == ("qcow2", 2 << 20)
    await ok(agent, "storage.volume.wipe", volume)
    clone = await ok(agent, "storage.volume.clone", {**volume, "new_name": "copy.qcow2"})
    assert Path(clone["path"]).exists()
    for name in ("disk.qcow2", "copy.qcow2"):
        await ok(agent, "storage.volume.delete", {"pool": pool, "name": name})
    assert list(folder.iterdir()) == []
    await ok(agent, "storage.pool.delete", {"name": pool, "delete_data": True})
    assert not folder.exists()
    assert pool not in observer.listStoragePools() + observer.listDefinedStoragePools()


async def wait_for_capabilities_event(agent: Agent, events: Any) -> dict[str, Any]:
    with trio.fail_after(30):
        async for event in events.receive:
            if event["type"] == "capabilities" and "hypervisor" in event["data"]["changed"]:
                return await agent.intake.capabilities()
    raise AssertionError("event stream ended")


@pytest.mark.slow
async def test_real_libvirtd_restart_turns_health_unhealthy_then_recovers(
    agent: Agent, libvirtd: PrivateLibvirtd
) -> None:
    health = await agent.intake.health()
    assert health["components"]["libvirt"]["status"] == "healthy"
    with agent.intake.events() as events:
        await trio.to_thread.run_sync(libvirtd.stop)
        try:
            caps = await wait_for_capabilities_event(agent, events)
            assert caps["hypervisor"] is None
            health = await agent.intake.health()
            assert health["status"] == "unhealthy"
            assert health["components"]["libvirt"]["connected"] is False
            assert REGISTRY.get_sample_value("hostagent_libvirt_up") == 0
            assert "not connected" in await failed(agent, "vm.list", {})
        finally:
            await trio.to_thread.run_sync(libvirtd.start)
        caps = await wait_for_capabilities_event(agent, events)
    assert caps["hypervisor"]["type"] == "QEMU"
    health = await agent.intake.health()
    assert health["status"] == "healthy"
    assert health["components"]["libvirt"]["connected"] is True
    assert REGISTRY.get_sample_value("hostagent_libvirt_up") == 1
    await ok(agent, "vm.list", {})
