"""runbook.run on a real agent: steps as child jobs, outputs, conditions, refusals."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import trio

from agent.config import AllowRule
from agent.core.context import ChildJobs
from agent.core.withheld import REDACTED
from agent.errors import AgentError, ForbiddenError
from agent.jobs import JobStatus
from agent.policy.allowlist import Caller
from agent.service.daemon import Agent
from agent.service.settings import Settings
from tests.http_helpers import serving
from tests.jobs import eventually, job, wait_done
from tests.runbooks.conftest import ECHO_CHAIN, install

pytestmark = pytest.mark.slow


def run_document(job_id: str, **data: object) -> dict[str, object]:
    return job(job_id, "runbook.run", dict(data))


async def test_steps_run_as_children_and_feed_each_other(agent: Agent) -> None:
    document = run_document("rb-1", runbook="echo-chain", parameters={"greeting": "hello"})
    await agent.intake.submit(document, transport="test")
    state = await wait_done(agent, "rb-1")
    assert state.status == "Completed", state.error
    result = await agent.intake.result("rb-1")
    assert [(s["name"], s["status"]) for s in result["steps"]] == [
        ("first", "Completed"),
        ("shout", "Skipped"),
        ("last", "Completed"),
    ]
    assert result["steps"][0]["result"] == {"said": "hello", "n": 2}
    assert result["steps"][2]["result"] == {"again": "hello", "shouted": "Skipped"}
    assert result["outputs"] == {"said": "hello", "again": "hello"}
    assert result["runbook"]["name"] == "echo-chain"
    assert len(result["runbook"]["sha256"]) == 64
    first = await agent.intake.status(result["steps"][0]["job_id"])
    assert first.parent == "rb-1"
    assert state.progress == 100


async def test_a_bad_parameter_is_refused_at_intake_and_nothing_starts(agent: Agent) -> None:
    document = run_document("rb-2", runbook="echo-chain", parameters={"greeting": "Hi!"})
    with pytest.raises(AgentError) as refused:
        await agent.intake.submit(document, transport="test")
    assert refused.value.details["field"] == "payload.data.parameters.greeting"
    assert "pattern" in refused.value.details["reason"]
    _, total, _ = await agent.intake.list_jobs()
    assert total == 0


async def test_an_inline_step_outside_the_image_roots_is_refused_naming_step_and_field(
    agent: Agent,
) -> None:
    runbook = {
        "schema_version": 1,
        "name": "peek",
        "version": 1,
        "steps": [
            {"name": "hello", "operation": "system.echo"},
            {"name": "look", "operation": "image.info", "payload": {"path": "/etc/shadow"}},
        ],
    }
    with pytest.raises(AgentError) as refused:
        await agent.intake.submit(run_document("rb-3", runbook=runbook), transport="test")
    assert refused.value.http_status == 403
    assert refused.value.details["field"] == "payload.data.steps.1.payload.path"
    assert refused.value.details["step"] == "look"
    _, total, _ = await agent.intake.list_jobs()
    assert total == 0


SECRET = "correct-horse-battery-staple"
WITH_SECRET = {
    "schema_version": 1,
    "name": "keeper",
    "version": 1,
    "parameters": {"token": {"type": "string", "secret": True}, "who": {"type": "string"}},
    "steps": [
        {
            "name": "tell",
            "operation": "system.echo",
            "payload": {"token": {"$param": "token"}, "who": {"$param": "who"}},
            "outputs": {"token": "result.token"},
        },
        {
            "name": "again",
            "operation": "system.echo",
            "payload": {"t": {"$step": "tell.outputs.token"}},
        },
    ],
}


async def test_a_secret_parameter_is_nowhere_in_the_store_events_results_or_logs(
    agent: Agent, config: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    document = run_document(
        "rb-secret", runbook=WITH_SECRET, parameters={"token": SECRET, "who": "ops"}
    )
    await agent.intake.submit(document, transport="test")
    state = await wait_done(agent, "rb-secret")
    assert state.status == "Completed", state.error
    result = await agent.intake.result("rb-secret")
    # The step got the real value (it echoed it), every record shows it redacted.
    assert result["steps"][0]["result"] == {"token": REDACTED, "who": "ops"}
    assert result["outputs"] == {"token": REDACTED}
    for step in result["steps"]:
        assert SECRET not in json.dumps(await agent.intake.result(step["job_id"]))
        assert SECRET not in json.dumps(await agent.intake.logs(step["job_id"]))
    await agent.store.aclose()  # every write on disk before the grep
    found = [
        path
        for path in config.state_dir.rglob("*")
        if path.is_file() and SECRET.encode() in path.read_bytes()
    ]
    assert found == []
    await agent.store.open()
    logged = capsys.readouterr()
    assert "rb-secret" in logged.out + logged.err  # the agent's log was captured
    assert SECRET not in logged.out + logged.err


async def test_a_job_whose_secrets_were_lost_fails_instead_of_running_redacted(
    agent: Agent,
) -> None:
    # As after a restart: recorded redacted, nothing held in memory.
    document = run_document(
        "rb-lost", runbook=WITH_SECRET, parameters={"token": SECRET, "who": "x"}
    )
    prepared = agent.intake.prepare(document, transport="test")
    assert "hostagent.withheld" in prepared.document["labels"]
    assert prepared.document["payload"]["data"]["parameters"]["token"] == REDACTED
    await agent.intake.submit_many([replace(prepared, withheld=None)])
    state = await wait_done(agent, "rb-lost")
    assert state.status == "Failed"
    assert state.error is not None
    assert "held in memory only" in state.error
    _, total, _ = await agent.intake.list_jobs()
    assert total == 1  # no step ran


async def test_a_runbook_whose_third_step_is_outside_the_allowlist_is_refused_whole(
    config: Settings,
) -> None:
    rules = [
        AllowRule(tokens=["ci"], operations=["system.*", "runbook.run"]),
        AllowRule(tokens=["ci"], operations=["vm.start"], resources=["ci-*"]),
    ]
    policy = config.policy.model_copy(update={"allow": rules})
    runbook = {
        "schema_version": 1,
        "name": "ci",
        "version": 1,
        "parameters": {"vm": {"type": "string"}},
        "steps": [
            {"name": "hello", "operation": "system.echo"},
            {"name": "up", "operation": "vm.start", "payload": {"name": {"$param": "vm"}}},
            {"name": "gone", "operation": "vm.destroy", "payload": {"name": "ci-1"}},
        ],
    }
    ci = Caller("http", token="ci", submitter="token:ci")
    async with serving(config.model_copy(update={"policy": policy})) as agent:
        document = run_document("rb-ci", runbook=runbook, parameters={"vm": "ci-1"})
        with pytest.raises(ForbiddenError) as refused:
            await agent.intake.submit(document, caller=ci)
        assert refused.value.details["field"] == "payload.data.steps.2.operation"
        assert refused.value.details["step"] == "gone"
        assert refused.value.details["rule"].startswith("policy.allow[")
        # The resource globs apply to each step: vm.start on web-1 is refused too.
        del runbook["steps"][2]
        document = run_document("rb-web", runbook=runbook, parameters={"vm": "web-1"})
        with pytest.raises(ForbiddenError) as refused:
            await agent.intake.submit(document, caller=ci)
        assert refused.value.details["field"] == "payload.data.steps.1.payload.name"
        _, total, _ = await agent.intake.list_jobs()
        assert total == 0  # refused whole: nothing started
        # Another caller, that no rule names, keeps its rights.
        document = run_document("rb-other", runbook=runbook, parameters={"vm": "web-1"})
        await agent.intake.submit(document, caller=Caller("http", token="ops"))


def sleepy(on_failure: str) -> dict[str, object]:
    return {
        "schema_version": 1,
        "name": "sleepy",
        "version": 1,
        "steps": [
            {
                "name": "short",
                "operation": "system.sleep",
                "payload": {"seconds": 5},
                "timeout_seconds": 0.05,
                "on_failure": on_failure,
            },
            {"name": "after", "operation": "system.echo", "payload": {"ran": True}},
        ],
    }


async def test_a_failed_step_fails_the_runbook_at_that_step(agent: Agent) -> None:
    await agent.intake.submit(run_document("rb-abort", runbook=sleepy("abort")), transport="t")
    state = await wait_done(agent, "rb-abort")
    assert state.status == "Failed"
    assert state.error == "Failed at step 1 (short): Job timed out after 0.05 seconds"
    with pytest.raises(AgentError):
        await agent.intake.status("rb-abort.after")  # never submitted


async def test_on_failure_continue_runs_the_next_step(agent: Agent) -> None:
    await agent.intake.submit(run_document("rb-go", runbook=sleepy("continue")), transport="t")
    state = await wait_done(agent, "rb-go")
    assert state.status == "Completed", state.error
    steps = (await agent.intake.result("rb-go"))["steps"]
    assert [(s["name"], s["status"]) for s in steps] == [
        ("short", "Failed"),
        ("after", "Completed"),
    ]
    assert "timed out" in steps[0]["error"]


async def test_cancelling_the_runbook_cancels_its_running_step(agent: Agent) -> None:
    runbook = sleepy("abort")
    runbook["steps"][0] = {"name": "long", "operation": "system.sleep", "payload": {"seconds": 60}}
    await agent.intake.submit(run_document("rb-stop", runbook=runbook), transport="t")

    async def step_running() -> bool:
        found = await agent.services.get(ChildJobs).find("rb-stop.long")  # type: ignore[type-abstract]
        return found is not None and found.status is JobStatus.RUNNING

    await eventually(step_running, within=30, every=0.01)
    assert (await agent.intake.cancel("rb-stop")).status == "Cancelled"
    assert (await wait_done(agent, "rb-stop.long")).status == "Cancelled"


async def test_a_dry_run_names_every_step_and_runs_none(agent: Agent) -> None:
    document = run_document(
        "rb-dry", runbook="echo-chain", parameters={"greeting": "hi"}, dry_run=True
    )
    await agent.intake.submit(document, transport="t")
    assert (await wait_done(agent, "rb-dry")).status == "Completed"
    result = await agent.intake.result("rb-dry")
    assert result["dry_run"] is True
    assert [(s["name"], s["status"]) for s in result["steps"]] == [
        ("first", "WouldRun"),
        ("shout", "WouldSkip"),
        ("last", "WouldRun"),
    ]
    assert result["steps"][0]["payload"] == {"said": "hi", "n": 2}
    assert result["steps"][2]["payload"]["again"] == {"$step": "first.result.said"}
    assert result["steps"][0]["check_mode"] is False
    _, total, _ = await agent.intake.list_jobs()
    assert total == 1  # the runbook's own job only


async def test_a_submitters_withheld_label_is_not_taken(agent: Agent) -> None:
    document = job("plain", "system.echo", {"m": 1}, labels={"hostagent.withheld": "true"})
    prepared = agent.intake.prepare(document, transport="t")
    assert "hostagent.withheld" not in prepared.document["labels"]


async def test_capabilities_list_the_installed_runbooks(agent: Agent) -> None:
    caps = await agent.intake.capabilities()
    (listed,) = caps["runbooks"]
    assert (listed["name"], listed["version"]) == ("echo-chain", 1)
    assert len(listed["sha256"]) == 64
    assert "runbook.run" in caps["operations"]


async def test_a_reload_installs_new_runbooks(
    agent: Agent, config: Settings, runbook_dir: Path
) -> None:
    install(runbook_dir, {**ECHO_CHAIN, "version": 2})
    with pytest.raises(AgentError):
        agent.runbooks.get("echo-chain", 2)
    await agent.reload(config)
    assert agent.runbooks.get("echo-chain").runbook.version == 2
    await agent.capabilities.refresh()
    listed = (await agent.intake.capabilities())["runbooks"]
    assert [(item["name"], item["version"]) for item in listed] == [
        ("echo-chain", 1),
        ("echo-chain", 2),
    ]


async def test_a_drain_interrupts_a_runbook_between_steps_without_waiting_it_out(
    config: Settings,
) -> None:
    runbook = sleepy("abort")
    runbook["steps"][0] = {"name": "nap", "operation": "system.sleep", "payload": {"seconds": 0.3}}
    service = config.service.model_copy(update={"drain_seconds": 600})
    async with serving(config.model_copy(update={"service": service})) as agent:
        await agent.intake.submit(run_document("rb-drain", runbook=runbook), transport="t")

        async def napping() -> bool:
            found = await agent.services.get(ChildJobs).find("rb-drain.nap")  # type: ignore[type-abstract]
            return found is not None and found.status is JobStatus.RUNNING

        await eventually(napping, within=30, every=0.01)
        with trio.fail_after(20):  # far less than the drain's 600 s
            interrupted = await agent.drain()
        assert interrupted == ["rb-drain"]  # left Running, for recovery to resume
        assert (await agent.intake.status("rb-drain.nap")).status == "Completed"
        assert (await agent.intake.status("rb-drain")).status == "Running"


async def test_a_secret_parameters_default_is_hidden_too(agent: Agent, config: Settings) -> None:
    runbook = {
        "schema_version": 1,
        "name": "pin",
        "version": 1,
        "parameters": {"pin": {"type": "string", "secret": True, "default": "default-pin-4711"}},
        "steps": [{"name": "say", "operation": "system.echo", "payload": {"p": {"$param": "pin"}}}],
    }
    await agent.intake.submit(run_document("rb-pin", runbook=runbook), transport="t")
    assert (await wait_done(agent, "rb-pin")).status == "Completed"
    result = await agent.intake.result("rb-pin")
    assert result["steps"][0]["result"] == {"p": REDACTED}
    assert await agent.intake.result("rb-pin.say") == {"p": REDACTED}
    await agent.store.aclose()
    assert not [
        p
        for p in config.state_dir.rglob("*")
        if p.is_file() and b"default-pin-4711" in p.read_bytes()
    ]
    await agent.store.open()
