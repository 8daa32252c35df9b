"""storage.* handlers on libvirt's test:///default driver (it has `default-pool`).

The test driver cannot resize or wipe volumes; those two are exercised on the
real libvirtd in test_libvirt_real.py, here only their clear refusal.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from agent.config import Config
from agent.errors import ForbiddenError
from agent.service.daemon import Agent
from agent.transports.spool.settings import SpoolConfig
from tests.jobs import failed, job_document, ok

POOL = "default-pool"


@pytest.fixture
def config(config: Config) -> Config:
    return config.model_copy(update={"spool": SpoolConfig(enabled=False), "max_disk_size_gb": 1})


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


async def test_pool_list_and_info(agent: Agent) -> None:
    pools = await ok(agent, "storage.pool.list", {})
    default = next(p for p in pools["pools"] if p["name"] == POOL)
    assert default["state"] == "running"
    assert default["type"] == "dir"
    info = await ok(agent, "storage.pool.info", {"name": POOL})
    assert info["path"] == "/default-pool"
    assert info["capacity_bytes"] > 0
    assert isinstance(info["volumes"], int)


async def test_pool_define_start_stop_delete(agent: Agent) -> None:
    name = unique("pool")
    srv = str(agent.config.policy.image_roots[0])  # pools lie under an image root
    defined = await ok(
        agent, "storage.pool.define", {"name": name, "path": f"{srv}/{name}", "start": False}
    )
    assert (defined["created"], defined["state"], defined["path"]) == (
        True,
        "inactive",
        f"{srv}/{name}",
    )
    # Made by the agent beneath the image root (never through a link), not by libvirt.
    assert Path(srv, name).is_dir()
    assert not Path(srv, name).is_symlink()
    assert (await ok(agent, "storage.pool.define", {"name": name, "path": f"{srv}/{name}"}))[
        "created"
    ] is False
    assert (await ok(agent, "storage.pool.start", {"name": name}))["changed"] is False
    stopped = await ok(agent, "storage.pool.stop", {"name": name})
    assert (stopped["changed"], stopped["active"]) == (True, False)
    assert (await ok(agent, "storage.pool.stop", {"name": name}))["changed"] is False
    started = await ok(agent, "storage.pool.start", {"name": name})
    assert (started["changed"], started["state"]) == (True, "running")
    assert (await ok(agent, "storage.pool.delete", {"name": name}))["changed"] is True
    assert (await ok(agent, "storage.pool.delete", {"name": name}))["changed"] is False
    assert await failed(agent, "storage.pool.info", {"name": name}) == (
        f"storage pool {name!r} not found"
    )


async def test_volume_create_is_idempotent_for_the_same_volume(agent: Agent) -> None:
    name = unique("vol") + ".qcow2"
    volume = {"pool": POOL, "name": name}
    created = await ok(agent, "storage.volume.create", {**volume, "capacity_bytes": 1 << 20})
    assert (created["changed"], created["format"], created["capacity_bytes"]) == (
        True,
        "qcow2",
        1 << 20,
    )
    again = await ok(agent, "storage.volume.create", {**volume, "capacity_bytes": 1 << 20})
    assert again["changed"] is False
    error = await failed(agent, "storage.volume.create", {**volume, "capacity_bytes": 2 << 20})
    assert "exists with another capacity or format" in error
    listed = await ok(agent, "storage.volume.list", {"name": POOL})
    assert name in [v["name"] for v in listed["volumes"]]
    info = await ok(agent, "storage.volume.info", volume)
    assert info["path"] == f"/default-pool/{name}"


async def test_volume_clone_and_delete(agent: Agent) -> None:
    name = unique("vol")
    await ok(agent, "storage.volume.create", {"pool": POOL, "name": name, "capacity_bytes": 4096})
    clone = await ok(
        agent, "storage.volume.clone", {"pool": POOL, "name": name, "new_name": name + "-copy"}
    )
    assert clone["name"] == name + "-copy"
    assert clone["source"] == f"/default-pool/{name}"
    for victim in (name, name + "-copy"):
        assert (await ok(agent, "storage.volume.delete", {"pool": POOL, "name": victim}))["changed"]
    again = await ok(agent, "storage.volume.delete", {"pool": POOL, "name": name})
    assert again["changed"] is False


async def test_volume_over_max_disk_size_is_refused(agent: Agent) -> None:
    error = await failed(
        agent,
        "storage.volume.create",
        {"pool": POOL, "name": unique("big"), "capacity_bytes": 2 * 1024**3},
    )
    assert "max_disk_size_gb (1)" in error


async def test_volume_resize_and_wipe_unsupported_by_test_driver_fail_clearly(
    agent: Agent,
) -> None:
    name = unique("vol")
    volume = {"pool": POOL, "name": name}
    await ok(agent, "storage.volume.create", {**volume, "capacity_bytes": 4096})
    assert (await ok(agent, "storage.volume.resize", {**volume, "capacity_bytes": 4096}))[
        "changed"
    ] is False
    shrink = await failed(agent, "storage.volume.resize", {**volume, "capacity_bytes": 1024})
    assert "allow_shrink" in shrink
    error = await failed(agent, "storage.volume.resize", {**volume, "capacity_bytes": 8192})
    assert "not supported" in error
    assert "not supported" in await failed(agent, "storage.volume.wipe", volume)


async def test_volume_in_missing_pool_fails_clearly(agent: Agent) -> None:
    error = await failed(agent, "storage.volume.info", {"pool": "nope", "name": "x"})
    assert error == "storage pool 'nope' not found"


async def test_pool_define_refuses_a_directory_reached_through_a_link(
    agent: Agent, tmp_path: Path
) -> None:
    srv = agent.config.policy.image_roots[0]
    srv.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (srv / "elsewhere").symlink_to(outside)
    for path in (srv / "elsewhere", srv / "elsewhere" / "pool"):
        document = job_document("storage.pool.define", {"name": unique("pool"), "path": str(path)})
        with pytest.raises(ForbiddenError) as caught:
            await agent.intake.submit(document, transport="test")
        assert caught.value.details == {
            "field": "payload.data.path",
            "reason": "symbolic links are not followed",
        }
    assert list(outside.iterdir()) == []
