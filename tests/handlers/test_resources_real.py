"""The resource view against the private real libvirtd with QEMU (tests/libvirtd.py):
stats move while a guest runs, and the verbs sent over HTTP reach the real domain,
checked through a second, independent libvirt connection."""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from agent.config import Config, LibvirtConfig
from agent.service.daemon import Agent
from agent.transports.spool.settings import SpoolConfig
from tests.handlers.conftest import state_of
from tests.http_helpers import client, serving, with_http
from tests.jobs import wait_done
from tests.libvirtd import PrivateLibvirtd


@pytest.fixture
async def served(config: Config, libvirtd: PrivateLibvirtd) -> AsyncIterator[Agent]:
    real = config.model_copy(
        update={
            "spool": SpoolConfig(enabled=False),
            "libvirt": LibvirtConfig(uri=libvirtd.uri, keepalive_interval=1),
        }
    )
    async with serving(with_http(real)) as agent:
        yield agent


async def act(agent: Agent, http: httpx.AsyncClient, method: str, path: str, **kw: Any) -> Any:
    """Send an action, check its 202 and Location, wait for its job, answer the result."""
    response = await http.request(method, f"/api/v1{path}", **kw)
    assert response.status_code == 202, response.text
    job_id = response.json()["data"]["job_id"]
    assert response.headers["Location"] == f"/api/v1/jobs/{job_id}"
    assert (await wait_done(agent, job_id)).status.value == "Completed", (
        await http.get(f"/api/v1/jobs/{job_id}")
    ).text
    return (await http.get(f"/api/v1/jobs/{job_id}/result")).json()["data"]


async def detail(http: httpx.AsyncClient, name: str, window: float = 0.3) -> dict[str, Any]:
    response = await http.get(f"/api/v1/vms/{name}", params={"window_seconds": window})
    assert response.status_code == 200, response.text
    data: dict[str, Any] = response.json()["data"]
    return data


@pytest.mark.slow
async def test_real_vm_verbs_and_stats_over_http(served: Agent, observer: Any) -> None:
    name = f"real-{uuid.uuid4().hex[:8]}"
    async with client(served) as http:
        await act(served, http, "POST", "/vms", json={"spec": {"name": name, "memory_mib": 64}})
        assert state_of(observer, name) == "shutoff"
        assert (await detail(http, name))["stats"] is None
        resume = await http.post(f"/api/v1/vms/{name}/resume")
        assert (resume.status_code, resume.json()["details"]["state"]) == (409, "shutoff")

        await act(served, http, "POST", f"/vms/{name}/start")
        assert state_of(observer, name) == "running"
        first = await detail(http, name)
        second = await detail(http, name)
        assert first["state"] == "running"
        assert second["stats"]["cpu_time_ns"] > first["stats"]["cpu_time_ns"]
        assert 0 < second["stats"]["cpu_percent"] <= 100
        assert second["stats"]["window_seconds"] >= 0.3
        assert second["graphics"][0]["port"] is not None  # autoport picked one once it ran
        listed = (await http.get("/api/v1/vms", params={"state": "running"})).json()["data"]
        assert name in [vm["name"] for vm in listed["vms"]]
        shot = await http.get(f"/api/v1/vms/{name}/screenshot")
        assert shot.content[:4] == b"\x89PNG"

        await act(served, http, "POST", f"/vms/{name}/suspend")
        assert state_of(observer, name) == "paused"
        assert (await detail(http, name))["actions"] == [
            "poweroff",
            "reset",
            "resume",
            "snapshot",
            "autostart",
        ]
        await act(served, http, "POST", f"/vms/{name}/resume")
        assert state_of(observer, name) == "running"
        # No OS answers ACPI: the shutdown falls back to powering off after its timeout.
        stopped = await act(
            served,
            http,
            "POST",
            f"/vms/{name}/shutdown",
            json={"timeout_seconds": 0.5, "force": True},
        )
        assert stopped["method"] == "destroy"
        assert state_of(observer, name) == "shutoff"
        await act(served, http, "DELETE", f"/vms/{name}")
        assert state_of(observer, name) == "undefined"


@pytest.mark.slow
async def test_real_volume_actions_and_image_dir_usage(
    served: Agent, observer: Any, tmp_path: Path
) -> None:
    pool = f"real-res-{uuid.uuid4().hex[:6]}"
    folder = tmp_path / "images" / "pool"  # under the test config's image root
    async with client(served) as http:
        await act(served, http, "POST", "/storagepools", json={"name": pool, "path": str(folder)})
        stats = (await http.get("/api/v1/host/stats", params={"window_seconds": 0.1})).json()
        images = [d for d in stats["data"]["disks"] if d["role"] == "images"]
        assert str(folder) in [d["path"] for d in images]
        volumes = f"/storagepools/{pool}/volumes"
        await act(
            served, http, "POST", volumes, json={"name": "d.qcow2", "capacity_bytes": 1 << 20}
        )
        await act(
            served, http, "POST", f"{volumes}/d.qcow2/resize", json={"capacity_bytes": 2 << 20}
        )
        image = json.loads(
            subprocess.run(
                ["qemu-img", "info", "--output=json", str(folder / "d.qcow2")],
                check=True,
                capture_output=True,
            ).stdout
        )
        assert image["virtual-size"] == 2 << 20
        await act(served, http, "POST", f"{volumes}/d.qcow2/wipe")
        await act(served, http, "POST", f"{volumes}/d.qcow2/clone", json={"new_name": "c.qcow2"})
        listed = (await http.get(f"/api/v1{volumes}")).json()["data"]
        assert [v["name"] for v in listed["volumes"]] == ["c.qcow2", "d.qcow2"]
        for volume in ("c.qcow2", "d.qcow2"):
            await act(served, http, "DELETE", f"{volumes}/{volume}")
        await act(served, http, "POST", f"/storagepools/{pool}/deactivate")
        assert not observer.storagePoolLookupByName(pool).isActive()
        await act(served, http, "DELETE", f"/storagepools/{pool}", params={"delete_data": "true"})
        assert not folder.exists()
