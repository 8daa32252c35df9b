"""runbook.run on a real agent: steps as child jobs, outputs, conditions, refusals."""

from __future__ import annotations

import pytest

from agent.errors import AgentError
from agent.service.daemon import Agent
from tests.jobs import job, wait_done

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
