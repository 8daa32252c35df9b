"""The shipped five-step runbook snapshot-resize on a real libvirtd with a real QEMU
domain (tests/libvirtd.py): snapshot, shut down, grow the volume, start, report;
each step checked through an independent libvirt connection."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.config import LibvirtConfig, RunbooksConfig
from agent.service.daemon import Agent
from agent.service.settings import Settings
from agent.transports.spool.settings import SpoolConfig
from tests.handlers.conftest import observer, state_of
from tests.jobs import job, ok, wait_done
from tests.libvirtd import PrivateLibvirtd

__all__ = ["observer"]  # the real-QEMU connection fixture (libvirtd: the root conftest)

SHIPPED = Path(__file__).resolve().parents[2] / "etc" / "hostagent" / "runbooks"


@pytest.fixture
def config(config: Settings, libvirtd: PrivateLibvirtd) -> Settings:
    return config.model_copy(
        update={
            "spool": SpoolConfig(enabled=False),
            "max_concurrent_jobs": 2,
            "libvirt": LibvirtConfig(uri=libvirtd.uri, keepalive_interval=1),
            "runbooks": RunbooksConfig(dirs=[SHIPPED]),
        }
    )


@pytest.fixture
def pool(observer: Any, tmp_path: Path) -> Iterator[str]:
    name = f"real-rb-{uuid.uuid4().hex[:6]}"
    yield name
    try:
        found = observer.storagePoolLookupByName(name)
    except Exception:
        return
    for volume in found.listAllVolumes(0):
        volume.delete(0)
    if found.isActive():
        found.destroy()
    found.undefine()


@pytest.mark.slow
async def test_snapshot_resize_runs_five_steps_on_real_qemu(
    agent: Agent, observer: Any, tmp_path: Path, pool: str
) -> None:
    folder = tmp_path / "images" / "pool"  # under the test config's image root
    folder.mkdir(parents=True)
    # qemu-img's own qcow2 (v3: resizable with internal snapshots; libvirt makes v2).
    path = str(folder / "d.qcow2")
    await ok(agent, "image.create", {"path": path, "size_bytes": 1 << 20})
    await ok(agent, "storage.pool.define", {"name": pool, "path": str(folder)})
    name = f"real-{uuid.uuid4().hex[:8]}"
    disk = {"path": path, "format": "qcow2"}
    await ok(agent, "vm.define", {"spec": {"name": name, "memory_mib": 64, "disks": [disk]}})
    await ok(agent, "vm.start", {"name": name})
    assert state_of(observer, name) == "running"
    try:
        await run_snapshot_resize(agent, observer, name, pool)
    finally:
        dom = observer.lookupByName(name)
        for snap in dom.listAllSnapshots(0):
            snap.delete(0)


async def run_snapshot_resize(agent: Agent, observer: Any, name: str, pool: str) -> None:

    parameters = {
        "vm": name,
        "pool": pool,
        "volume": "d.qcow2",
        "size": 2 << 20,
        "grace_seconds": 0.5,  # no OS answers the ACPI request: forced after that
    }
    document = job(
        "rb-real", "runbook.run", {"runbook": "snapshot-resize", "parameters": parameters}
    )
    await agent.intake.submit(document, transport="test")
    state = await wait_done(agent, "rb-real", within=300)
    assert state.status == "Completed", state.error
    result = await agent.intake.result("rb-real")
    assert [step["name"] for step in result["steps"]] == ["snap", "stop", "grow", "start", "check"]
    assert {step["status"] for step in result["steps"]} == {"Completed"}
    assert result["outputs"] == {
        "snapshot": "before-resize",
        "capacity_bytes": 2 << 20,
        "state": "running",
    }
    dom = observer.lookupByName(name)
    assert dom.snapshotLookupByName("before-resize").getName() == "before-resize"
    assert observer.storagePoolLookupByName(pool).storageVolLookupByName("d.qcow2").info()[1] == (
        2 << 20
    )
    assert state_of(observer, name) == "running"
    for step in result["steps"]:
        child = await agent.intake.status(step["job_id"])
        assert child.parent == "rb-real"
