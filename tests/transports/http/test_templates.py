"""Templates (Kimchi's /templates) on test:///default: kept in the job store, checked by
the path policy, and `POST /vms {"template": ...}` creating volumes and a domain as a
vm.create job; 409 when the VM's name exists."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from agent.config import Config
from agent.service.daemon import Agent
from tests.http_helpers import ADMIN, READ, SUBMIT, client, serving, with_http
from tests.jobs import wait_done

pytestmark = pytest.mark.slow  # a whole agent per test


@pytest.fixture
async def served(config: Config) -> AsyncIterator[Agent]:
    async with serving(with_http(config)) as agent:
        yield agent


def refusal(response: httpx.Response) -> tuple[int, str | None]:
    """The status and the field an error envelope names."""
    return response.status_code, response.json()["details"].get("field")


def template(name: str, **more: Any) -> dict[str, Any]:
    return {
        "name": name,
        "os_distro": "debian",
        "os_version": "12",
        "folder": ["linux"],
        "cpus": 2,
        "memory": 256,
        "disks": [{"index": 0, "size": 1}],
        "networks": ["default"],
        "storagepool": "default-pool",
        **more,
    }


async def test_template_crud_is_kept_in_the_store(served: Agent, tmp_path: Path) -> None:
    name = f"t-{uuid.uuid4().hex[:6]}"
    async with client(served, ADMIN) as http:
        created = await http.post("/api/v1/templates", json=template(name))
        assert created.status_code == 201, created.text
        assert created.headers["Location"] == f"/api/v1/templates/{name}"
        assert created.json()["data"]["memory"] == 256
        again = await http.post("/api/v1/templates", json=template(name))
        assert refusal(again) == (409, "name")
        listed = (await http.get("/api/v1/templates")).json()["data"]
        assert [t["name"] for t in listed["templates"]] == [name]
        replaced = await http.put(f"/api/v1/templates/{name}", json=template(name, cpus=4))
        assert replaced.status_code == 200, replaced.text
        shown = (await http.get(f"/api/v1/templates/{name}")).json()["data"]
        assert (shown["cpus"], shown["os_distro"]) == (4, "debian")
        renamed = await http.put(f"/api/v1/templates/{name}", json=template("other"))
        assert refusal(renamed) == (400, "body.name")
        deleted = await http.delete(f"/api/v1/templates/{name}")
        assert deleted.json()["data"] == {"name": name, "deleted": True}
        gone = await http.get(f"/api/v1/templates/{name}")
        assert gone.status_code == 404
    # The store holds them: a table of the job store.
    assert served.config.store_path.exists()


async def test_template_fields_and_policy_are_checked(served: Agent, tmp_path: Path) -> None:
    async with client(served, ADMIN) as http:
        bad = await http.post("/api/v1/templates", json=template("x", memory=1))
        assert refusal(bad) == (400, "body.memory")
        two = await http.post("/api/v1/templates", json=template("x", disks=[{"index": 0}]))
        assert two.status_code == 400
        # A CD-ROM outside the image roots is refused as vm.define's disks are.
        outside = await http.post("/api/v1/templates", json=template("x", cdrom="/etc/passwd"))
        assert outside.status_code == 403, outside.text
        assert refusal(outside) == (403, "body.cdrom")
        huge = await http.post("/api/v1/templates", json=template("x", disks=[{"size": 10**6}]))
        assert refusal(huge) == (403, "body.disks.0.size")
        iso = tmp_path / "images" / "install.iso"
        iso.parent.mkdir(parents=True, exist_ok=True)
        iso.write_bytes(b"\0" * 4096)
        inside = await http.post("/api/v1/templates", json=template("x", cdrom=str(iso)))
        assert inside.status_code == 201, inside.text


async def test_templates_need_a_token_to_change(served: Agent) -> None:
    async with client(served, READ) as http:
        assert (await http.get("/api/v1/templates")).status_code == 200
        refused = await http.post("/api/v1/templates", json=template("r"))
        assert refused.status_code == 403
    async with client(served, None) as http:
        assert (await http.get("/api/v1/templates")).status_code == 401
    async with client(served, SUBMIT) as http:
        assert (await http.post("/api/v1/templates", json=template("s"))).status_code == 201


async def test_vm_from_template_creates_volumes_and_domain(served: Agent) -> None:
    name = f"t-{uuid.uuid4().hex[:6]}"
    vm = f"vm-{uuid.uuid4().hex[:6]}"
    async with client(served, ADMIN) as http:
        assert (await http.post("/api/v1/templates", json=template(name))).status_code == 201
        answer = await http.post("/api/v1/vms", json={"template": name, "name": vm})
        assert answer.status_code == 202, answer.text
        job_id = answer.json()["data"]["job_id"]
        await wait_done(served, job_id)
        job = (await http.get(f"/api/v1/jobs/{job_id}")).json()["data"]
        assert (job["operation"], job["status"]) == ("vm.create", "Completed"), job
        result = (await http.get(f"/api/v1/jobs/{job_id}/result")).json()["data"]
        assert [v["name"] for v in result["volumes"]] == [f"{vm}-disk0.qcow2"]
        detail = (await http.get(f"/api/v1/vms/{vm}")).json()["data"]
        assert (detail["vcpus"], detail["memory_kib"]) == (2, 256 * 1024)
        assert detail["disks"][0]["source"] == f"/default-pool/{vm}-disk0.qcow2"
        # The name is taken now: 409, no job.
        taken = await http.post("/api/v1/vms", json={"template": name, "name": vm})
        assert taken.status_code == 409, taken.text
        assert taken.json()["details"]["state"] == "shutoff"
        missing = await http.post("/api/v1/vms", json={"template": "nope"})
        assert missing.status_code == 404
        # Unnamed: named after the template.
        unnamed = await http.post("/api/v1/vms", json={"template": name})
        assert unnamed.status_code == 202
        await wait_done(served, unnamed.json()["data"]["job_id"])
        vms = (await http.get("/api/v1/vms")).json()["data"]["vms"]
        assert any(v["name"].startswith(f"{name}-") for v in vms)


async def test_vm_from_template_copies_a_source_volume(served: Agent) -> None:
    """A template disk naming a volume of the pool gets a copy of it per VM."""
    name = f"t-{uuid.uuid4().hex[:6]}"
    base = f"{name}-base.qcow2"
    vm = f"vm-{uuid.uuid4().hex[:6]}"
    async with client(served, ADMIN) as http:
        made = await http.post(
            "/api/v1/storagepools/default-pool/volumes",
            json={"name": base, "capacity_bytes": 1024**3},
        )
        assert made.status_code == 202, made.text
        await wait_done(served, made.json()["data"]["job_id"])
        body = template(name, disks=[{"index": 0, "volume": base}])
        assert (await http.post("/api/v1/templates", json=body)).status_code == 201
        answer = await http.post("/api/v1/vms", json={"template": name, "name": vm})
        job_id = answer.json()["data"]["job_id"]
        await wait_done(served, job_id)
        result = (await http.get(f"/api/v1/jobs/{job_id}/result")).json()["data"]
        [copy] = result["volumes"]
        assert (copy["name"], copy["capacity_bytes"]) == (f"{vm}-disk0.qcow2", 1024**3)
        # A failed definition takes its volumes back: a network that does not exist.
        body = template(f"{name}-x", networks=["no-such-net"])
        assert (await http.post("/api/v1/templates", json=body)).status_code == 201
        failed = await http.post("/api/v1/vms", json={"template": f"{name}-x", "name": f"{vm}x"})
        state = await wait_done(served, failed.json()["data"]["job_id"])
        assert state.status.value == "Failed"
        assert "no-such-net" in (state.error or "")
        volumes = (await http.get("/api/v1/storagepools/default-pool/volumes")).json()["data"]
        assert f"{vm}x-disk0.qcow2" not in [v["name"] for v in volumes["volumes"]]


async def test_a_retried_vm_create_is_the_same_job(served: Agent) -> None:
    name = f"t-{uuid.uuid4().hex[:6]}"
    key = f"create-{uuid.uuid4().hex[:8]}"
    async with client(served, ADMIN) as http:
        assert (await http.post("/api/v1/templates", json=template(name))).status_code == 201
        headers = {"Idempotency-Key": key}
        first = await http.post("/api/v1/vms", json={"template": name}, headers=headers)
        assert first.status_code == 202, first.text
        await wait_done(served, key)
        # The VM exists now, yet the retry is answered by its job, not refused.
        again = await http.post("/api/v1/vms", json={"template": name}, headers=headers)
        assert again.status_code == 202, again.text
        assert again.json()["data"]["job_id"] == key
        assert again.json()["data"]["created"] is False


async def test_templates_outlive_the_agent(config: Config) -> None:
    """Kept in the job store's file: a restarted agent (or a copy of the store) has them."""
    name = f"t-{uuid.uuid4().hex[:6]}"
    async with serving(with_http(config)) as first, client(first, ADMIN) as http:
        assert (await http.post("/api/v1/templates", json=template(name))).status_code == 201
    async with serving(with_http(config)) as second, client(second, ADMIN) as http:
        shown = (await http.get(f"/api/v1/templates/{name}")).json()["data"]
    assert (shown["name"], shown["memory"], shown["disks"]) == (
        name,
        256,
        [{"index": 0, "size": 1, "volume": None, "format": "qcow2"}],
    )
