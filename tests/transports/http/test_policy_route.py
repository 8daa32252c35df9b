"""GET /api/v1/policy: the allowlist in effect in the running agent (reloads
included), and what each transport, token, Kafka key and named group may run."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio

from agent.cli.command import main
from agent.cli.policy import describe
from agent.config import AllowRule, Config
from agent.service.daemon import Agent
from tests.http_helpers import ADMIN, READ, SUBMIT, client, http_of, serving, with_http

RULES = [
    AllowRule(name="ci", tokens=["submitter"], operations=["vm.start"], resources=["ci-*"]),
    AllowRule(transports=["spool"], operations=["image.*"]),
]


@pytest.fixture
async def served(config: Config) -> AsyncIterator[Agent]:
    settings = with_http(config)
    policy = settings.policy.model_copy(update={"allow": RULES})
    async with serving(settings.model_copy(update={"policy": policy})) as agent:
        yield agent


async def get_policy(agent: Agent, token: str | None = READ) -> tuple[int, Any]:
    async with client(agent, token) as http:
        response = await http.get("/api/v1/policy")
    return response.status_code, response.json()


def by_caller(report: dict[str, Any]) -> dict[tuple[str, str | None], dict[str, Any]]:
    return {(entry["transport"], entry["token"]): entry for entry in report["callers"]}


@pytest.mark.slow
async def test_policy_route_needs_the_read_scope(served: Agent) -> None:
    assert (await get_policy(served, None))[0] == 401
    status, body = await get_policy(served, SUBMIT)
    assert status == 403
    assert body["details"]["reason"] == "Requires scope 'read'"
    for token in (READ, ADMIN):
        assert (await get_policy(served, token))[0] == 200


@pytest.mark.slow
async def test_policy_route_answers_the_rules_and_what_each_caller_may_run(served: Agent) -> None:
    status, body = await get_policy(served)
    assert status == 200
    report = body["data"]
    assert [rule["rule"] for rule in report["rules"]] == ["policy.allow[0]", "policy.allow[1]"]
    callers = by_caller(report)
    assert callers["http", "submitter"]["operations"] == {"vm.start": ["ci-*"]}
    assert callers["http", "submitter"]["named_by"] == ["policy.allow[0]"]
    assert set(callers["spool", None]["operations"]) == {
        op for op in served.registry.operations if op.startswith("image.")
    }
    assert sorted(callers["http", "reader"]["operations"]) == served.registry.operations
    # The same content `hostagent policy show --json --offline` prints: one builder.
    assert report == describe(served.config, served.registry.operations)


@pytest.mark.slow
async def test_policy_route_follows_a_reload(served: Agent) -> None:
    fresh = [AllowRule(transports=["http"], operations=["vm.list", "system.*"])]
    policy = served.config.policy.model_copy(update={"allow": fresh})
    renewed = served.config.model_copy(update={"policy": policy})
    await served.reload(renewed)  # as SIGHUP
    report = (await get_policy(served))[1]["data"]
    assert [rule["operations"] for rule in report["rules"]] == [["vm.list", "system.*"]]
    http_ops = set(by_caller(report)["http", None]["operations"])
    assert "vm.list" in http_ops
    assert "vm.start" not in http_ops
    assert sorted(by_caller(report)["spool", None]["operations"]) == served.registry.operations


async def test_policy_route_is_in_the_openapi_document(served: Agent) -> None:
    async with client(served, READ) as http:
        document = (await http.get("/openapi.json")).json()
    route = document["paths"]["/api/v1/policy"]["get"]
    assert "403" in route["responses"]
    schema = document["components"]["schemas"]["PolicyReport"]
    assert set(schema["properties"]) == {"rules", "callers"}


@pytest.mark.slow
async def test_policy_show_over_url_needs_a_read_token(
    served: Agent, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = http_of(served).url

    async def show(token: str) -> int:
        token_file = tmp_path / "token"
        token_file.write_text(token)
        argv = ["policy", "show", "--json", "--url", url, "--token-file", str(token_file)]
        # The CLI's client is synchronous: off the loop that serves it.
        return await trio.to_thread.run_sync(main, argv)

    assert await show(READ) == 0
    lines = capsys.readouterr().out.splitlines()  # the agent's own log lines come here too
    report = json.loads("\n".join(lines[lines.index("{") : lines.index("}") + 1]))
    assert by_caller(report)["http", "submitter"]["operations"] == {"vm.start": ["ci-*"]}
    assert await show(SUBMIT) == 77  # EXIT_DENIED: the token lacks read
    assert "Requires scope 'read'" in capsys.readouterr().err
