"""vm.* handlers on libvirt's in-process test:///default driver.

The test driver's state lives as long as the test process and is shared by
every connection to it, so each test names its domains uniquely.
"""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest
import trio

from agent.config import Config, LibvirtConfig
from agent.errors import ForbiddenError, ValidationError
from agent.handlers.domain_xml import VmSpec, pick_domain_type, spec_to_xml
from agent.service.daemon import Agent
from agent.transports.spool.settings import SpoolConfig
from tests.jobs import failed, job_document, ok
from tests.libvirtd import PrivateLibvirtd


@pytest.fixture
def config(config: Config) -> Config:
    # Handler jobs come through the intake; the spool's watcher would only add start-up time.
    return config.model_copy(update={"spool": SpoolConfig(enabled=False)})


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


async def define(agent: Agent, **spec: object) -> dict[str, object]:
    name = unique("vm")
    result = await ok(agent, "vm.define", {"spec": {"name": name, "memory_mib": 64, **spec}})
    assert result["created"] is True
    return result


async def test_vm_list_shows_the_test_drivers_domain(agent: Agent) -> None:
    result = await ok(agent, "vm.list", {})
    test = next(d for d in result["domains"] if d["name"] == "test")
    assert test["state"] == "running"
    assert result["total"] == len(result["domains"])
    running = await ok(agent, "vm.list", {"state": "running"})
    assert all(d["state"] == "running" for d in running["domains"])


async def test_vm_define_from_spec_builds_disks_and_nics(agent: Agent) -> None:
    created = await define(
        agent,
        vcpus=2,
        disks=[
            {"path": "/default-pool/a.qcow2"},
            {"path": "/default-pool/b.iso", "device": "cdrom", "bus": "sata"},
        ],
        networks=[{"network": "default", "mac": "52:54:00:00:00:01"}],
    )
    info = await ok(agent, "vm.info", {"name": created["name"]})
    assert info["state"] == "shutoff"
    assert info["vcpus"] == 2
    assert info["max_memory_kib"] == 64 * 1024
    assert [(d["target"], d["device"], d["source"]) for d in info["disks"]] == [
        ("vda", "disk", "/default-pool/a.qcow2"),
        ("sda", "cdrom", "/default-pool/b.iso"),
    ]
    assert info["disks"][1]["readonly"] is True
    assert info["nics"][0]["mac"] == "52:54:00:00:00:01"
    assert info["nics"][0]["source"] == "default"


async def test_vm_define_again_updates_and_says_not_created(agent: Agent) -> None:
    created = await define(agent)
    again = await ok(
        agent,
        "vm.define",
        {"spec": {"name": created["name"], "memory_mib": 128, "autostart": True}},
    )
    assert again["created"] is False
    assert again["uuid"] == created["uuid"]
    info = await ok(agent, "vm.info", {"name": created["name"]})
    assert info["max_memory_kib"] == 128 * 1024
    assert info["autostart"] is True


async def test_vm_define_from_xml(agent: Agent) -> None:
    name = unique("xml")
    xml = (
        f"<domain type='test'><name>{name}</name><memory unit='MiB'>32</memory>"
        "<os><type>hvm</type></os></domain>"
    )
    result = await ok(agent, "vm.define", {"xml": xml})
    assert result["name"] == name
    assert result["state"] == "shutoff"


async def test_vm_define_rejects_bad_payloads_at_intake(agent: Agent) -> None:
    for data, field in (
        ({"xml": "<domain><name>x</name"}, "payload.data"),
        ({}, "payload.data"),
        ({"spec": {"name": "bad name", "memory_mib": 64}}, "payload.data.spec.name"),
        (
            {"spec": {"name": "n", "memory_mib": 64, "networks": [{}]}},
            "payload.data.spec.networks.0",
        ),
    ):
        with pytest.raises(ValidationError) as caught:
            await agent.intake.submit(job_document("vm.define", data), transport="test")
        assert caught.value.details["field"] == field


@pytest.mark.slow
async def test_vm_lifecycle_is_idempotent_where_it_can_be(agent: Agent) -> None:
    name = (await define(agent))["name"]
    steps = [
        ("vm.start", {}, "running", True),
        ("vm.start", {}, "running", False),
        ("vm.suspend", {}, "paused", True),
        ("vm.suspend", {}, "paused", False),
        ("vm.resume", {}, "running", True),
        ("vm.resume", {}, "running", False),
        ("vm.reboot", {}, "running", True),
        ("vm.reset", {}, "running", True),
        ("vm.shutdown", {"timeout_seconds": 10}, "shutoff", True),
        ("vm.shutdown", {}, "shutoff", False),
        ("vm.start", {}, "running", True),
        ("vm.destroy", {}, "shutoff", True),
        ("vm.destroy", {}, "shutoff", False),
    ]
    for operation, extra, state, changed in steps:
        result = await ok(agent, operation, {"name": name, **extra})
        assert (operation, result["state"], result["changed"]) == (operation, state, changed)


async def test_vm_shutdown_reports_how_it_stopped(agent: Agent) -> None:
    name = (await define(agent))["name"]
    await ok(agent, "vm.start", {"name": name})
    result = await ok(agent, "vm.shutdown", {"name": name, "timeout_seconds": 5, "force": True})
    assert result["method"] == "shutdown"


async def test_vm_shutdown_of_a_transient_domain_ends_when_it_is_gone(agent: Agent) -> None:
    name = unique("transient")
    xml = (
        f"<domain type='test'><name>{name}</name><memory unit='MiB'>32</memory>"
        "<os><type>hvm</type></os></domain>"
    )
    await agent.libvirt.call(lambda conn: conn.createXML(xml, 0))
    result = await ok(agent, "vm.shutdown", {"name": name, "timeout_seconds": 10})
    assert (result["state"], result["changed"]) == ("undefined", True)


async def test_vm_addressed_by_uuid(agent: Agent) -> None:
    created = await define(agent)
    result = await ok(agent, "vm.start", {"uuid": created["uuid"]})
    assert result["name"] == created["name"]
    await ok(agent, "vm.destroy", {"uuid": created["uuid"]})


async def test_vm_unknown_domain_fails_clearly(agent: Agent) -> None:
    error = await failed(agent, "vm.start", {"name": "no-such-domain"})
    assert error == "domain 'no-such-domain' not found"
    missing = str(uuid.uuid4())
    assert await failed(agent, "vm.info", {"uuid": missing}) == f"domain {missing} not found"


async def test_vm_invalid_state_is_a_clear_error(agent: Agent) -> None:
    name = (await define(agent))["name"]
    error = await failed(agent, "vm.suspend", {"name": name})
    assert "not running" in error


async def test_vm_autostart_on_and_off(agent: Agent) -> None:
    name = (await define(agent))["name"]
    assert (await ok(agent, "vm.autostart", {"name": name}))["changed"] is True
    assert (await ok(agent, "vm.autostart", {"name": name}))["changed"] is False
    off = await ok(agent, "vm.autostart", {"name": name, "enabled": False})
    assert (off["autostart"], off["changed"]) == (False, True)


async def test_vm_undefine_refuses_a_running_domain_unless_forced(agent: Agent) -> None:
    name = (await define(agent))["name"]
    await ok(agent, "vm.start", {"name": name})
    error = await failed(agent, "vm.undefine", {"name": name})
    assert "is running" in error
    result = await ok(agent, "vm.undefine", {"name": name, "force": True})
    assert result["changed"] is True
    again = await ok(agent, "vm.undefine", {"name": name})
    assert again["changed"] is False
    names = [d["name"] for d in (await ok(agent, "vm.list", {}))["domains"]]
    assert name not in names


async def test_vm_undefine_removes_its_volumes(agent: Agent) -> None:
    volume = unique("disk") + ".qcow2"
    created = await ok(
        agent,
        "storage.volume.create",
        {"pool": "default-pool", "name": volume, "capacity_bytes": 1 << 20},
    )
    name = (
        await define(
            agent, disks=[{"path": created["path"]}, {"path": "/default-pool/not-a-volume.raw"}]
        )
    )["name"]
    result = await ok(agent, "vm.undefine", {"name": name, "remove_storage": True})
    assert result["removed_volumes"] == [created["path"]]
    assert result["kept_disks"] == ["/default-pool/not-a-volume.raw"]
    error = await failed(agent, "storage.volume.info", {"pool": "default-pool", "name": volume})
    assert error == f"volume {volume!r} in pool 'default-pool' not found"


async def test_vm_screenshot_is_saved_as_an_artifact(agent: Agent) -> None:
    name = (await define(agent))["name"]
    await ok(agent, "vm.start", {"name": name})
    result = await ok(agent, "vm.screenshot", {"name": name})
    path = Path(result["path"])
    assert path.parent == agent.config.state_dir / "artifacts" / path.parent.name
    assert path.name == "screen.png"
    assert result["mime_type"] == "image/png"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert result["size_bytes"] == path.stat().st_size


async def test_vm_snapshots_create_list_revert_delete(agent: Agent) -> None:
    name = (await define(agent))["name"]
    first = await ok(
        agent, "vm.snapshot.create", {"name": name, "snapshot": "s1", "description": "before"}
    )
    assert first["snapshot"]["name"] == "s1"
    assert first["snapshot"]["description"] == "before"
    await ok(agent, "vm.snapshot.create", {"name": name, "snapshot": "s2"})
    listed = await ok(agent, "vm.snapshot.list", {"name": name})
    assert [s["name"] for s in listed["snapshots"]] == ["s1", "s2"]
    assert listed["snapshots"][1]["parent"] == "s1"
    assert listed["snapshots"][1]["current"] is True
    await ok(agent, "vm.snapshot.revert", {"name": name, "snapshot": "s1"})
    current = await ok(agent, "vm.snapshot.list", {"name": name})
    assert [s["name"] for s in current["snapshots"] if s["current"]] == ["s1"]
    assert (await ok(agent, "vm.snapshot.delete", {"name": name, "snapshot": "s2"}))["changed"]
    assert not (await ok(agent, "vm.snapshot.delete", {"name": name, "snapshot": "s2"}))["changed"]
    error = await failed(agent, "vm.snapshot.revert", {"name": name, "snapshot": "s2"})
    assert "s2" in error


async def test_vm_handlers_declare_rerun_safety_and_domain_locks(agent: Agent) -> None:
    registry = agent.registry
    assert registry.rerun_safe("vm.start")
    assert registry.rerun_safe("vm.shutdown")
    assert not registry.rerun_safe("vm.reboot")
    assert not registry.rerun_safe("vm.snapshot.create")
    start = registry.get("vm.start")
    assert start.resource is not None
    payload = start.payload_model.model_validate({"name": "a"})
    assert start.resource(payload) == "domain:a"
    define_handler = registry.get("vm.define")
    assert define_handler.resource is not None
    xml = {"xml": "<domain type='test'><name>a</name></domain>"}
    assert define_handler.resource(define_handler.payload_model.model_validate(xml)) == "domain:a"


async def test_vm_define_from_xml_holds_only_what_the_spec_writes(agent: Agent) -> None:
    name = unique("xml")
    xml = (
        f"<domain type='test'><name>{name}</name><memory unit='MiB'>32</memory>"
        "<os><type>hvm</type></os><devices><interface type='network'>"
        "<source network='nowhere'/></interface></devices></domain>"
    )
    assert await failed(agent, "vm.define", {"xml": xml}) == "network 'nowhere' not found"
    evil = xml.replace("<devices>", "<devices><hostdev mode='subsystem' type='usb'/>")
    with pytest.raises(ForbiddenError) as caught:
        await agent.intake.submit(job_document("vm.define", {"xml": evil}), transport="test")
    assert caught.value.details["element"] == "/domain/devices/hostdev"


@pytest.mark.slow
async def test_the_specs_own_xml_submitted_as_xml_runs_on_real_qemu(
    config: Config, libvirtd: PrivateLibvirtd, observer: Any, tmp_path: Path
) -> None:
    """What the allowlist lets a submitter write is what QEMU runs: the spec's XML,
    sent as XML, defines and starts with its disk and VNC on loopback."""
    images = tmp_path / "images"
    images.mkdir()
    disk = images / "boot.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "16M"], check=True)
    spec = VmSpec(name=unique("real"), memory_mib=64, disks=[{"path": str(disk)}])
    kind, arch = pick_domain_type(observer.getCapabilities(), None)
    xml = spec_to_xml(spec, kind, arch)
    settings = config.model_copy(update={"libvirt": LibvirtConfig(uri=libvirtd.uri)})
    async with trio.open_nursery() as nursery:
        agent: Agent = await nursery.start(Agent(settings).run)
        assert (await ok(agent, "vm.define", {"xml": xml}))["created"] is True
        assert (await ok(agent, "vm.start", {"name": spec.name}))["state"] == "running"
        running = observer.lookupByName(spec.name).XMLDesc(0)
        assert f"<source file='{disk}'" in running
        assert "listen='127.0.0.1'" in running
        await ok(agent, "vm.destroy", {"name": spec.name})
        nursery.cancel_scope.cancel()
