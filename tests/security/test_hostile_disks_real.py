"""Issue 20: hostile images as domain disks, on a real libvirtd with real QEMU.

vm.define (spec) refuses a disk whose image names anything unchecked; a domain
defined behind the agent's back (an independent connection) with such a disk
is not started by vm.start. Nothing outside the roots changes, the secret shows
nowhere the submitter reads.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from agent.config import Config, LibvirtConfig
from agent.service.daemon import Agent
from agent.transports.spool.settings import SpoolConfig
from tests.handlers.conftest import state_of
from tests.jobs import ok
from tests.libvirtd import PrivateLibvirtd
from tests.security.hostile_images import (
    Planted,
    build,
    files_holding,
    fingerprints,
    plant,
    qemu_img,
)
from tests.security.test_hostile_images import outcome

# The driver type libvirt would hand qemu for each case's image.
_DRIVER = {".qcow2": "qcow2", ".vmdk": "vmdk", ".raw": "raw"}


@pytest.fixture
def config(config: Config, libvirtd: PrivateLibvirtd) -> Config:
    return config.model_copy(
        update={
            "spool": SpoolConfig(enabled=False),
            "libvirt": LibvirtConfig(uri=libvirtd.uri),
        }
    )


@pytest.fixture
def planted(tmp_path: Path) -> Planted:
    return plant(tmp_path / "images", tmp_path / "outside")


def domain_xml(name: str, disk: Path, driver: str) -> str:
    return (
        f"<domain type='qemu'><name>{name}</name><memory unit='MiB'>64</memory>"
        "<os><type arch='x86_64'>hvm</type></os><devices>"
        f"<disk type='file' device='disk'><driver name='qemu' type='{driver}'/>"
        f"<source file='{disk}'/><target dev='vda' bus='virtio'/></disk>"
        "</devices></domain>"
    )


@pytest.mark.slow
async def test_hostile_disks_are_neither_defined_nor_started(
    agent: Agent, observer: Any, planted: Planted
) -> None:
    cases = build(planted)
    outside_before = fingerprints(planted.outside)
    for case, image in cases.items():
        driver = _DRIVER[image.suffix]
        spec_format = "raw" if driver == "raw" else "qcow2"
        name = f"real-{uuid.uuid4().hex[:8]}"
        disk = {"path": str(image), "format": spec_format}
        spec = {"name": name, "memory_mib": 64, "disks": [disk]}
        defined = await outcome(agent, "vm.define", {"spec": spec})
        if case == "raw-first-sector-descriptor":
            # Given as raw, it is raw to qemu too: defined, and its descriptor is inert.
            assert defined["status"] == "Completed", defined
            observer.lookupByName(name).undefine()
        else:
            assert defined["status"] in {"Refused", "Failed"}, (case, defined)
            assert state_of(observer, name) == "undefined", case
        assert planted.marker not in json.dumps(defined, default=str).encode()

        # Defined behind the agent's back (with the driver that would follow the
        # references): vm.start checks the disk before libvirt opens it.
        behind = f"real-{uuid.uuid4().hex[:8]}"
        driver = "vmdk" if case == "raw-first-sector-descriptor" else driver
        observer.defineXML(domain_xml(behind, image, driver))
        started = await outcome(agent, "vm.start", {"name": behind})
        assert started["status"] == "Failed", (case, started)
        assert started["error"].startswith("domain.devices.disk.0.source.file: "), started
        assert state_of(observer, behind) == "shutoff", case
        assert planted.marker not in json.dumps(started, default=str).encode()
    assert fingerprints(planted.outside) == outside_before


@pytest.mark.slow
async def test_a_checked_chain_is_defined_and_started(
    agent: Agent, observer: Any, planted: Planted
) -> None:
    root = planted.root
    qemu_img("create", "-q", "-f", "qcow2", str(root / "base.qcow2"), "16M")
    qemu_img("create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2",
             str(root / "vm.qcow2"))  # fmt: skip
    name = f"real-{uuid.uuid4().hex[:8]}"
    spec = {"name": name, "memory_mib": 64, "disks": [{"path": str(root / "vm.qcow2")}]}
    await ok(agent, "vm.define", {"spec": spec})
    started = await ok(agent, "vm.start", {"name": name})
    assert started["changed"] is True
    assert state_of(observer, name) == "running"


@pytest.mark.slow
async def test_hostile_volumes_are_neither_cloned_nor_resized(
    agent: Agent, planted: Planted
) -> None:
    cases = build(planted)
    pool_dir = planted.root / "pool"
    pool_dir.mkdir()
    hostile = ["backing-absolute-outside", "qcow2-data-file-outside", "vmdk-flat-absolute"]
    for case in hostile:
        cases[case].rename(pool_dir / cases[case].name)
    outside_before = fingerprints(planted.outside)
    pool = f"real-{uuid.uuid4().hex[:8]}"
    await ok(agent, "storage.pool.define", {"name": pool, "path": str(pool_dir)})
    try:
        for case in hostile:
            volume = {"pool": pool, "name": cases[case].name}
            for operation, extra in (
                ("storage.volume.clone", {"new_name": f"copy-{cases[case].name}"}),
                ("storage.volume.resize", {"capacity_bytes": 4 * 1024 * 1024}),
            ):
                found = await outcome(agent, operation, {**volume, **extra})
                assert planted.marker not in json.dumps(found, default=str).encode()
                if found["status"] == "Completed":
                    # libvirt took the descriptor for raw bytes: copied as text, inert.
                    assert case == "vmdk-flat-absolute", (case, operation, found)
                    assert found["result"]["format"] == "raw"
                    continue
                assert found["status"] == "Failed", (case, operation, found)
                assert found["error"].startswith("payload.data.name: "), found
        assert [path.name for path in pool_dir.glob("copy-*")] == ["copy-flat.vmdk"]
        assert files_holding(planted.root, planted.marker) == []
        assert fingerprints(planted.outside) == outside_before
    finally:
        await ok(agent, "storage.pool.delete", {"name": pool})
