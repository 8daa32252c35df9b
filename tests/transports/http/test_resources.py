"""The resource view on libvirt's test:///default: reads answer from libvirt, every
action becomes a job through the intake (202 + Location), a wrong one is 409 with
no job created, and an Idempotency-Key makes a retried POST the same job."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from trio_websocket import open_websocket_url

from agent.config import Config
from agent.service.daemon import Agent
from agent.view.host_stats import cpu_percent, cpu_times, meminfo
from tests.http_helpers import (
    ADMIN,
    READ,
    SUBMIT,
    client,
    http_of,
    serving,
    with_http,
)
from tests.jobs import echo_job, wait_done


@pytest.fixture
async def served(config: Config) -> AsyncIterator[Agent]:
    async with serving(with_http(config)) as agent:
        yield agent


async def act(
    http: httpx.AsyncClient, method: str, path: str, *, expect: str | None = "Completed", **kw: Any
) -> dict[str, Any]:
    """Send an action; check the 202 and its Location; wait for its job when asked."""
    response = await http.request(method, f"/api/v1{path}", **kw)
    assert response.status_code == 202, response.text
    data: dict[str, Any] = response.json()["data"]
    assert response.headers["Location"] == f"/api/v1/jobs/{data['job_id']}"
    job = (await http.get(response.headers["Location"])).json()["data"]
    assert job["transport"] == "http"
    return data


async def finish(agent: Agent, http: httpx.AsyncClient, data: dict[str, Any]) -> dict[str, Any]:
    """Wait for the action's job; answer its status."""
    await wait_done(agent, data["job_id"])
    job: dict[str, Any] = (await http.get(f"/api/v1/jobs/{data['job_id']}")).json()["data"]
    return job


async def new_vm(agent: Agent, http: httpx.AsyncClient) -> str:
    name = f"res-{uuid.uuid4().hex[:8]}"
    spec = {
        "name": name,
        "memory_mib": 128,
        "vcpus": 2,
        "disks": [{"path": f"/default-pool/{name}.qcow2"}],
    }
    job = await finish(agent, http, await act(http, "POST", "/vms", json={"spec": spec}))
    assert (job["operation"], job["status"]) == ("vm.define", "Completed")
    return name


async def vm_state(http: httpx.AsyncClient, name: str) -> str:
    answer = await http.get(f"/api/v1/vms/{name}", params={"window_seconds": 0.05})
    state: str = answer.json()["data"]["state"]
    return state


async def test_list_and_describe_vms(served: Agent) -> None:
    async with client(served, ADMIN) as http:
        name = await new_vm(served, http)
        listed = (await http.get("/api/v1/vms")).json()["data"]
        mine = next(vm for vm in listed["vms"] if vm["name"] == name)
        assert mine["state"] == "shutoff"
        assert (mine["vcpus"], mine["memory_kib"], mine["id"]) == (2, 128 * 1024, None)
        assert mine["persistent"] is True
        assert listed["total"] == len(listed["vms"])
        running = (await http.get("/api/v1/vms", params={"state": "running"})).json()["data"]
        assert name not in [vm["name"] for vm in running["vms"]]
        assert all(vm["state"] == "running" for vm in running["vms"])
        bad = await http.get("/api/v1/vms", params={"state": "asleep"})
        assert (bad.status_code, bad.json()["details"]["field"]) == (400, "state")

        detail = (await http.get(f"/api/v1/vms/{name}")).json()["data"]
        assert detail["disks"][0]["source"] == f"/default-pool/{name}.qcow2"
        assert detail["graphics"][0]["type"] == "vnc"
        assert detail["stats"] is None
        assert detail["actions"] == ["start", "snapshot", "autostart"]

        await finish(served, http, await act(http, "POST", f"/vms/{name}/start"))
        running_detail = await http.get(f"/api/v1/vms/{name}", params={"window_seconds": 0.1})
        detail = running_detail.json()["data"]
        assert detail["state"] == "running"
        assert detail["id"] is not None
        assert detail["stats"]["window_seconds"] >= 0.1
        assert 0 <= detail["stats"]["cpu_percent"] <= 100
        assert "suspend" in detail["actions"]
        assert "start" not in detail["actions"]
        shot = await http.get(f"/api/v1/vms/{name}/screenshot")
        assert (shot.headers["content-type"], shot.content[:4]) == ("image/png", b"\x89PNG")


@pytest.mark.slow
async def test_a_vm_undefined_during_its_rate_window_is_404(served: Agent) -> None:
    async with client(served, ADMIN) as http:
        name = await new_vm(served, http)
        await finish(served, http, await act(http, "POST", f"/vms/{name}/start"))
        answers: list[httpx.Response] = []

        async def describe() -> None:
            answers.append(await http.get(f"/api/v1/vms/{name}", params={"window_seconds": 2}))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(describe)
            await finish(served, http, await act(http, "POST", f"/vms/{name}/poweroff"))
            await finish(served, http, await act(http, "DELETE", f"/vms/{name}"))
        assert answers[0].status_code == 404, answers[0].text
        assert answers[0].json()["error"] == "NOT_FOUND"


# Each verb, the job it must become and the state the VM is in afterwards.
VERBS: list[tuple[str, str, dict[str, Any], str]] = [
    ("start", "vm.start", {}, "running"),
    ("suspend", "vm.suspend", {}, "paused"),
    ("reset", "vm.reset", {}, "paused"),
    ("resume", "vm.resume", {}, "running"),
    ("reboot", "vm.reboot", {}, "running"),
    ("snapshot", "vm.snapshot.create", {"snapshot": "before"}, "running"),
    ("autostart", "vm.autostart", {"enabled": True}, "running"),
    ("shutdown", "vm.shutdown", {"timeout_seconds": 5}, "shutoff"),
    ("on", "vm.start", {}, "running"),
    ("off", "vm.shutdown", {}, "shutoff"),
    ("start", "vm.start", {}, "running"),
    ("poweroff", "vm.destroy", {}, "shutoff"),
    ("on", "vm.start", {}, "running"),
    ("destroy", "vm.destroy", {}, "shutoff"),
]


@pytest.mark.slow
async def test_every_vm_verb_is_a_job_seen_in_the_job_api(served: Agent) -> None:
    async with client(served, ADMIN) as http:
        name = await new_vm(served, http)
        for verb, operation, body, after in VERBS:
            data = await act(http, "POST", f"/vms/{name}/{verb}", json=body)
            job = await finish(served, http, data)
            assert (job["operation"], job["status"]) == (operation, "Completed"), verb
            assert await vm_state(http, name) == after, verb
            listed = await http.get("/api/v1/jobs", params={"operation": operation, "limit": 1000})
            assert data["job_id"] in [j["job_id"] for j in listed.json()["data"]["jobs"]]
        detail = (await http.get(f"/api/v1/vms/{name}")).json()["data"]
        assert [snap["name"] for snap in detail["snapshots"]] == ["before"]
        assert detail["autostart"] is True
        deleted = await finish(served, http, await act(http, "DELETE", f"/vms/{name}"))
        assert (deleted["operation"], deleted["status"]) == ("vm.undefine", "Completed")
        assert (await http.get(f"/api/v1/vms/{name}")).status_code == 404


@pytest.mark.slow
async def test_an_action_that_does_not_fit_is_409_and_creates_no_job(served: Agent) -> None:
    async with client(served, ADMIN) as http:
        name = await new_vm(served, http)
        before = (await http.get("/api/v1/jobs")).json()["data"]["total"]
        for verb in ("resume", "suspend", "reboot", "reset"):
            response = await http.post(
                f"/api/v1/vms/{name}/{verb}", headers={"Idempotency-Key": f"never-{verb}"}
            )
            assert response.status_code == 409, verb
            body = response.json()
            assert body["error"] == "CONFLICT"
            assert body["details"]["state"] == "shutoff"
            assert body["details"]["action"] == verb
            assert (await http.get(f"/api/v1/jobs/never-{verb}")).status_code == 404
        await finish(served, http, await act(http, "POST", f"/vms/{name}/start"))
        refused = await http.delete(f"/api/v1/vms/{name}")
        assert (refused.status_code, refused.json()["details"]["state"]) == (409, "running")
        after = (await http.get("/api/v1/jobs")).json()["data"]["total"]
        assert after == before + 1  # the start only
        # Starting a running VM fits: its job answers that nothing changed.
        again = await finish(served, http, await act(http, "POST", f"/vms/{name}/start"))
        assert (await http.get(f"/api/v1/jobs/{again['job_id']}/result")).json()["data"][
            "changed"
        ] is False
        forced = await act(http, "DELETE", f"/vms/{name}", params={"force": "true"})
        assert (await finish(served, http, forced))["status"] == "Completed"


async def test_the_same_idempotency_key_twice_is_one_job(served: Agent) -> None:
    async with client(served, ADMIN) as http:
        name = await new_vm(served, http)
        key = f"start-{name}"
        first = await act(http, "POST", f"/vms/{name}/start", headers={"Idempotency-Key": key})
        await finish(served, http, first)
        # The VM runs now; the retry is still answered by the same job, not checked anew.
        again = await act(http, "POST", f"/vms/{name}/start", headers={"Idempotency-Key": key})
        assert (first["job_id"], first["created"]) == (key, True)
        assert (again["job_id"], again["created"]) == (key, False)
        listed = await http.get("/api/v1/jobs", params={"operation": "vm.start", "limit": 1000})
        assert [j["job_id"] for j in listed.json()["data"]["jobs"]].count(key) == 1
        other = await http.post(f"/api/v1/vms/{name}/suspend", headers={"Idempotency-Key": key})
        assert (other.status_code, other.json()["error"]) == (409, "CONFLICT")
        bad = await http.post(f"/api/v1/vms/{name}/start", headers={"Idempotency-Key": "a b"})
        assert (bad.status_code, bad.json()["details"]["field"]) == (400, "Idempotency-Key")


@pytest.mark.slow
async def test_action_events_arrive_on_the_websocket(served: Agent) -> None:
    assert http_of(served) is not None
    url = http_of(served).url.replace("http://", "ws://") + "/api/v1/ws"
    async with client(served, ADMIN) as http:
        name = await new_vm(served, http)
        auth = [("Authorization", f"Bearer {ADMIN}")]
        async with open_websocket_url(url, extra_headers=auth) as ws:
            await ws.send_message(json.dumps({"type": "subscribe_all"}))
            data = await act(http, "POST", f"/vms/{name}/start")
            seen: list[str] = []
            with trio.fail_after(20):
                while "Completed" not in seen:
                    message = json.loads(await ws.get_message())
                    if message.get("job_id") == data["job_id"]:
                        seen.append(message["type"] if message["type"] != "status" else
                                    message["data"]["status"])  # fmt: skip
        assert seen[0] == "created"
        assert "Running" in seen


async def test_unknown_resources_are_404(served: Agent) -> None:
    async with client(served, ADMIN) as http:
        for method, path in [
            ("GET", "/vms/ghost"),
            ("GET", "/vms/ghost/screenshot"),
            ("POST", "/vms/ghost/start"),
            ("DELETE", "/vms/ghost"),
            ("GET", "/storagepools/ghost"),
            ("GET", "/storagepools/ghost/volumes"),
            ("GET", "/storagepools/default-pool/volumes/ghost"),
            ("POST", "/storagepools/default-pool/volumes/ghost/wipe"),
            ("POST", "/storagepools/ghost/activate"),
            ("GET", "/networks/ghost"),
            ("POST", "/networks/ghost/start"),
            ("GET", "/vms/a%00b"),
        ]:
            response = await http.request(method, f"/api/v1{path}")
            assert response.status_code == 404, path
            assert response.json()["error"] == "NOT_FOUND"


async def test_scopes_read_for_reads_submit_for_actions(served: Agent) -> None:
    async with client(served, READ) as reader, client(served, SUBMIT) as submitter:
        assert (await reader.get("/api/v1/vms")).status_code == 200
        assert (await reader.post("/api/v1/vms/test/start")).status_code == 403
        assert (await submitter.get("/api/v1/vms")).status_code == 403
        assert (await submitter.get("/api/v1/host")).status_code == 403
    async with client(served, token=None) as anonymous:
        assert (await anonymous.get("/api/v1/networks")).status_code == 401


async def test_pools_and_volumes(served: Agent, tmp_path: Path) -> None:
    pool = f"res-pool-{uuid.uuid4().hex[:6]}"
    async with client(served, ADMIN) as http:
        define = {"name": pool, "path": str(tmp_path / "images" / "p")}  # under the image root
        await finish(served, http, await act(http, "POST", "/storagepools", json=define))
        info = (await http.get(f"/api/v1/storagepools/{pool}")).json()["data"]
        assert (info["state"], info["volumes"], info["actions"]) == ("running", 0, ["deactivate"])
        assert pool in [
            p["name"] for p in (await http.get("/api/v1/storagepools")).json()["data"]["pools"]
        ]
        volume = {"name": "disk.qcow2", "capacity_bytes": 1 << 20}
        await finish(
            served, http, await act(http, "POST", f"/storagepools/{pool}/volumes", json=volume)
        )
        listed = (await http.get(f"/api/v1/storagepools/{pool}/volumes")).json()["data"]
        assert [v["name"] for v in listed["volumes"]] == ["disk.qcow2"]
        one = (await http.get(f"/api/v1/storagepools/{pool}/volumes/disk.qcow2")).json()["data"]
        assert (one["pool"], one["capacity_bytes"]) == (pool, 1 << 20)
        base = f"/storagepools/{pool}/volumes/disk.qcow2"
        for verb, operation, body in [
            ("resize", "storage.volume.resize", {"capacity_bytes": 2 << 20}),
            ("wipe", "storage.volume.wipe", {}),
            ("clone", "storage.volume.clone", {"new_name": "copy.qcow2"}),
        ]:
            job = await finish(served, http, await act(http, "POST", f"{base}/{verb}", json=body))
            # The test driver has no resize or wipe: the job says so (the real test runs them).
            assert job["operation"] == operation
            assert job["status"] == "Completed" or "not supported" in job["error"]
        refused = await http.delete(f"/api/v1/storagepools/{pool}")
        assert (refused.status_code, refused.json()["details"]["state"]) == (409, "running")
        await finish(served, http, await act(http, "POST", f"/storagepools/{pool}/deactivate"))
        inactive = await http.get(f"/api/v1/storagepools/{pool}/volumes")
        assert inactive.status_code == 409
        wipe = await http.post(f"/api/v1{base}/wipe")
        assert (wipe.status_code, wipe.json()["details"]["state"]) == (409, "inactive")
        deleted = await finish(served, http, await act(http, "DELETE", f"/storagepools/{pool}"))
        assert deleted["operation"] == "storage.pool.delete"
        assert (await http.get(f"/api/v1/storagepools/{pool}")).status_code == 404


async def test_networks(served: Agent) -> None:
    name = f"res-net-{uuid.uuid4().hex[:4]}"
    async with client(served, ADMIN) as http:
        spec = {"name": name, "ipv4_address": "192.168.177.1/24", "autostart": True}
        await finish(served, http, await act(http, "POST", "/networks", json=spec))
        info = (await http.get(f"/api/v1/networks/{name}")).json()["data"]
        assert (info["state"], info["forward"], info["autostart"]) == ("active", "nat", True)
        assert info["ips"][0]["dhcp_start"] == "192.168.177.2"
        assert info["actions"] == ["stop", "autostart"]
        refused = await http.delete(f"/api/v1/networks/{name}")
        assert (refused.status_code, refused.json()["details"]["state"]) == (409, "active")
        for verb, body, state in [("stop", {}, "inactive"), ("start", {}, "active"),
                                  ("autostart", {"enabled": False}, "active"),
                                  ("stop", {}, "inactive")]:  # fmt: skip
            job = await finish(
                served, http, await act(http, "POST", f"/networks/{name}/{verb}", json=body)
            )
            assert (job["operation"], job["status"]) == (f"network.{verb}", "Completed")
            assert (await http.get(f"/api/v1/networks/{name}")).json()["data"]["state"] == state
        listed = (await http.get("/api/v1/networks")).json()["data"]["networks"]
        assert next(n for n in listed if n["name"] == name)["autostart"] is False
        await finish(served, http, await act(http, "DELETE", f"/networks/{name}"))
        assert (await http.get(f"/api/v1/networks/{name}")).status_code == 404


@pytest.mark.slow
async def test_host_facts_and_stats_match_proc(served: Agent, config: Config) -> None:
    async with client(served, READ) as http:
        facts = (await http.get("/api/v1/host")).json()["data"]
        before = cpu_times()
        stats = (await http.get("/api/v1/host/stats", params={"window_seconds": 1})).json()["data"]
        after = cpu_times()
    assert facts["cpus"] == os.cpu_count()
    assert facts["hypervisor"] == "TEST"
    assert facts["memory_bytes"] == meminfo()["MemTotal"]
    assert abs(facts["uptime_seconds"] - float(Path("/proc/uptime").read_text().split()[0])) < 5
    assert stats["window_seconds"] == 1
    # The agent's window lies inside ours: on a shared machine the two shares stay close.
    assert abs(stats["cpu_percent"] - cpu_percent(before, after)) < 25
    for theirs, ours in zip(stats["load_average"], os.getloadavg(), strict=True):
        assert abs(theirs - ours) < 1.5
    memory = meminfo()
    assert stats["memory"]["total_bytes"] == memory["MemTotal"]
    assert (
        abs(stats["memory"]["available_bytes"] - memory["MemAvailable"]) < memory["MemTotal"] / 20
    )
    roles = {disk["role"]: disk for disk in stats["disks"]}
    assert roles["state"]["path"] == str(config.state_dir)
    usage = os.statvfs(config.state_dir)
    assert abs(roles["state"]["total_bytes"] - usage.f_blocks * usage.f_frsize) < 1 << 20


async def test_openapi_documents_the_resource_endpoints(served: Agent) -> None:
    async with client(served, token=None) as http:
        document = (await http.get("/openapi.json")).json()
    paths = document["paths"]
    for path, method, scope in [
        ("/api/v1/vms", "get", "read"),
        ("/api/v1/vms", "post", "submit"),
        ("/api/v1/vms/{name}", "get", "read"),
        ("/api/v1/vms/{name}", "delete", "submit"),
        ("/api/v1/vms/{name}/screenshot", "get", "read"),
        *[(f"/api/v1/vms/{{name}}/{verb}", "post", "submit") for verb in
          ("start", "shutdown", "poweroff", "reboot", "reset", "suspend", "resume", "snapshot",
           "autostart", "on", "off", "destroy")],
        ("/api/v1/storagepools/{name}/activate", "post", "submit"),
        ("/api/v1/storagepools/{pool}/volumes/{name}/clone", "post", "submit"),
        ("/api/v1/networks/{name}/stop", "post", "submit"),
        ("/api/v1/host", "get", "read"),
        ("/api/v1/host/stats", "get", "read"),
    ]:  # fmt: skip
        operation = paths[path][method]
        assert operation["x-scope"] == scope, path
        assert (
            "404" in operation["responses"] or path.startswith("/api/v1/host") or method == "post"
        )
        if scope == "submit":
            assert "Location" in operation["responses"]["202"]["headers"]
            assert "409" in operation["responses"]
            assert "Idempotency-Key" in [p["name"] for p in operation["parameters"]]
    start = paths["/api/v1/vms/{name}/start"]["post"]
    assert start["requestBody"]["required"] is False
    detail = paths["/api/v1/vms/{name}"]["get"]["responses"]["200"]["content"]
    assert detail["application/json"]["schema"]["properties"]["data"]["$ref"].endswith("VmDetail")


@pytest.mark.slow
async def test_the_caller_is_recorded_as_the_jobs_submitter(served: Agent) -> None:
    async with client(served, ADMIN) as admin, client(served, SUBMIT) as submitter:
        name = await new_vm(served, admin)
        action = await act(admin, "POST", f"/vms/{name}/start", json={}, expect=None)
        single = (await submitter.post("/api/v1/jobs", json=echo_job())).json()["data"]
        batch = await submitter.post("/api/v1/jobs/batch", json={"jobs": [echo_job()]})
        [item] = batch.json()["data"]["results"]
        await finish(served, admin, action)
    assert await served.intake.submitter(action["job_id"]) == "token:admin"
    assert await served.intake.submitter(single["job_id"]) == "token:submitter"
    assert await served.intake.submitter(item["data"]["job_id"]) == "token:submitter"
