"""The operation allowlist on the doors of one agent: HTTP (per token, batch and
resource routes), the local socket (per group) and the spool each refuse at intake
what the rules do not allow, naming the field and the rule, and record nothing of
it (Kafka: kafka/test_allowlist_kafka.py)."""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from agent.config import AllowRule, Config
from agent.errors import NotFoundError
from agent.service.daemon import Agent
from agent.transports.http.settings import HttpConfig
from tests.http_helpers import ADMIN, SUBMIT, TOKEN_ENTRIES, client, serving, with_http
from tests.jobs import job, wait_done
from tests.localapi import NOBODY, request_as
from tests.spoolkit import drop, read_json, wait_for_files

RULES: list[dict[str, Any]] = [
    # The `submitter` test token: echo, and vm.start on ci-* domains only.
    {"name": "ci", "tokens": ["submitter"], "operations": ["system.echo"]},
    {"tokens": ["submitter"], "operations": ["vm.start"], "resources": ["ci-*"]},
    # The spool may only echo.
    {"name": "spool", "transports": ["spool"], "operations": ["system.echo"]},
    # Root's group over the socket may only echo.
    {"transports": ["socket"], "groups": ["root"], "operations": ["system.echo"]},
    # nogroup (standing in for hostagent-submit) may only sleep.
    {"transports": ["socket"], "groups": ["nogroup"], "operations": ["system.sleep"]},
]


def ruled(config: Config, rules: list[dict[str, Any]]) -> Config:
    policy = config.policy.model_copy(
        update={"allow": [AllowRule.model_validate(rule) for rule in rules]}
    )
    return config.model_copy(update={"policy": policy})


@pytest.fixture
def socket_path() -> Iterator[Path]:
    # A short directory: pytest's tmp_path can exceed a socket path's 107 bytes.
    with tempfile.TemporaryDirectory(prefix="ha-") as short:
        Path(short).chmod(0o711)  # an unprivileged peer reaches the socket inside
        yield Path(short) / "api.sock"


@pytest.fixture
async def agent(config: Config, socket_path: Path) -> AsyncIterator[Agent]:
    settings = with_http(config, spool=True)
    http = HttpConfig(
        bind="127.0.0.1:0",
        tokens=TOKEN_ENTRIES,
        socket=socket_path,
        socket_submit_group="nogroup",  # nobody (gid nogroup) submits over the socket
    )
    settings = settings.model_copy(update={"http": http})
    async with serving(ruled(settings, RULES)) as running:
        yield running


async def no_job(agent: Agent, job_id: str) -> bool:
    try:
        await agent.intake.status(job_id)
    except NotFoundError:
        return True
    return False


@pytest.mark.slow
async def test_http_refuses_per_token_naming_field_and_rule(agent: Agent) -> None:
    sleeping = job("h-sleep", "system.sleep", {"seconds": 0})
    async with client(agent, SUBMIT) as ci, client(agent, ADMIN) as admin:
        refused_op = await ci.post("/api/v1/jobs", json=sleeping)
        refused_vm = await ci.post("/api/v1/jobs", json=job("h-web", "vm.start", {"name": "web-1"}))
        allowed_vm = await ci.post("/api/v1/jobs", json=job("h-ci", "vm.start", {"name": "ci-1"}))
        echoed = await ci.post("/api/v1/jobs", json=job("h-echo", "system.echo", {"m": 1}))
        batch = await ci.post(
            "/api/v1/jobs/batch",
            json={
                "jobs": [
                    job("b-echo", "system.echo", {}),
                    job("b-sleep", "system.sleep", {"seconds": 0}),
                ]
            },
        )
        # The resource routes are the same door: their jobs are checked alike.
        destroy = await ci.post("/api/v1/vms/test/destroy")
        # A token no rule names keeps today's rights.
        other = await admin.post("/api/v1/jobs", json=sleeping)
    assert refused_op.status_code == 403
    body = refused_op.json()
    assert body["error"] == "FORBIDDEN"
    assert body["details"]["field"] == "operation"
    assert body["details"]["rule"] == "policy.allow[0] (ci)"
    assert refused_vm.status_code == 403
    assert refused_vm.json()["details"]["field"] == "payload.data.name"
    assert refused_vm.json()["details"]["rule"] == "policy.allow[1]"
    assert allowed_vm.status_code == 201
    assert echoed.status_code == 201
    results = batch.json()["data"]["results"]
    assert results[0]["success"]
    assert results[1]["error"] == "FORBIDDEN"
    assert results[1]["details"]["field"] == "operation"
    assert destroy.status_code == 403, destroy.text
    assert destroy.json()["details"]["field"] == "operation"
    assert other.status_code == 201
    assert await no_job(agent, "h-web")
    assert await no_job(agent, "b-sleep")
    # The sleep admitted for the admin token is the one job of that id.
    assert (await agent.intake.status("h-sleep")).transport == "http"


@pytest.mark.slow
async def test_the_socket_refuses_per_group(agent: Agent, socket_path: Path) -> None:
    over_socket = httpx.AsyncClient(
        base_url="http://localhost", transport=httpx.AsyncHTTPTransport(uds=str(socket_path))
    )
    async with over_socket:
        refused = await over_socket.post(
            "/api/v1/jobs", json=job("s-sleep", "system.sleep", {"seconds": 0})
        )
        allowed = await over_socket.post("/api/v1/jobs", json=job("s-echo", "system.echo", {}))
    assert refused.status_code == 403, refused.text
    assert refused.json()["details"]["field"] == "operation"
    assert refused.json()["details"]["rule"] == "policy.allow[3]"
    assert allowed.status_code == 201
    state = await agent.intake.status("s-echo")
    assert state.transport == "socket"
    assert await no_job(agent, "s-sleep")


@pytest.mark.slow
async def test_the_spool_quarantines_what_the_allowlist_refuses(
    agent: Agent, config: Config
) -> None:
    spool = config.spool_dir
    drop(spool, "sleep.json", job("p-sleep", "system.sleep", {"seconds": 0}))
    drop(spool, "echo.json", job("p-echo", "system.echo", {"m": 2}))
    (report,) = await wait_for_files(spool / "failed", "sleep.json.error.json", 1)
    error = read_json(report)
    assert error["error"] == "FORBIDDEN"
    assert error["details"]["field"] == "operation"
    assert error["details"]["rule"] == "policy.allow[2] (spool)"
    assert (await wait_done(agent, "p-echo")).status.value == "Completed"
    assert await no_job(agent, "p-sleep")


@pytest.mark.slow
async def test_a_reload_applies_new_rules_to_new_http_jobs(agent: Agent, config: Config) -> None:
    async with client(agent, ADMIN) as admin:
        before = await admin.post("/api/v1/jobs", json=job("r-1", "system.sleep", {"seconds": 0}))
        await agent.reload(
            ruled(agent.config, [{"tokens": ["admin"], "operations": ["system.echo"]}])
        )
        after = await admin.post("/api/v1/jobs", json=job("r-2", "system.sleep", {"seconds": 0}))
        capabilities = (await admin.get("/api/v1/capabilities")).json()["data"]
    assert before.status_code == 201
    assert after.status_code == 403
    assert after.json()["details"]["rule"] == "policy.allow[0]"
    # Token rules leave each transport's other callers (what capabilities list) alone.
    assert "system.sleep" in capabilities["allowed_operations"]["http"]
    assert capabilities["allowed_operations"]["spool"] == agent.registry.operations


@pytest.mark.slow
async def test_the_socket_names_an_unprivileged_peer_by_its_group(
    agent: Agent, socket_path: Path
) -> None:
    def submit(document: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        return request_as(NOBODY, NOBODY, socket_path, "POST", "/api/v1/jobs", body=document)

    refused = await trio.to_thread.run_sync(submit, job("n-echo", "system.echo", {}))
    allowed = await trio.to_thread.run_sync(submit, job("n-sleep", "system.sleep", {"seconds": 0}))
    assert refused[0] == 403, refused
    assert refused[1]["details"]["rule"] == "policy.allow[4]"
    assert allowed[0] == 201, allowed
    assert await no_job(agent, "n-echo")
    assert await agent.intake.submitter("n-sleep") == f"uid:{NOBODY}"
