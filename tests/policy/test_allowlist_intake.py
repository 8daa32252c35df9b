"""The intake enforces the operation allowlist for every caller, before anything is
recorded; a reload applies new rules to new jobs; the admit hooks see the caller."""

from __future__ import annotations

import pytest

from agent.config import AllowRule, Config
from agent.core.context import JobContext
from agent.core.registry import handler
from agent.errors import ForbiddenError, NotFoundError
from agent.handlers.system import EchoPayload
from agent.policy.allowlist import Caller
from agent.policy.paths import Admission
from agent.service.daemon import Agent
from tests.jobs import dispatching, job
from tests.memstore import MemoryStore

seen_callers: list[Caller | None] = []


def _admit(payload: EchoPayload, admission: Admission) -> None:
    seen_callers.append(admission.caller)


@handler("test.watched", payload=EchoPayload, rerun_safe=True, admit=_admit)
async def watched(payload: EchoPayload, ctx: JobContext) -> str:
    return payload.message


def with_rules(config: Config, *tables: dict[str, object]) -> Config:
    policy = config.policy.model_copy(
        update={"allow": [AllowRule.model_validate(table) for table in tables]}
    )
    return config.model_copy(update={"policy": policy})


@pytest.fixture
def core(config: Config) -> Agent:
    seen_callers.clear()
    ruled = with_rules(
        config,
        {"name": "kafka-ro", "transports": ["kafka"], "operations": ["system.echo", "vm.info"]},
        {"tokens": ["ci"], "operations": ["vm.start"], "resources": ["ci-*"]},
    )
    return Agent(ruled, store=MemoryStore(), transports=(), extra_handlers=[watched])


async def test_refused_at_prepare_and_nothing_recorded(core: Agent) -> None:
    kafka = Caller("kafka", token="fleet", submitter="kafka:fleet")
    async with dispatching(core):
        with pytest.raises(ForbiddenError) as refused:
            core.intake.prepare(job("k1", "system.sleep", {"seconds": 0}), caller=kafka)
        with pytest.raises(ForbiddenError):
            await core.intake.submit(job("k2", "system.sleep", {"seconds": 0}), caller=kafka)
        for job_id in ("k1", "k2"):
            with pytest.raises(NotFoundError):
                await core.intake.status(job_id)
        accepted = await core.intake.submit(
            job("k3", "system.echo", {"message": "hi"}), caller=kafka
        )
        submitter = await core.intake.submitter("k3")
    assert refused.value.details["field"] == "operation"
    assert refused.value.details["rule"] == "policy.allow[0] (kafka-ro)"
    # The caller's door and identity are what the job records.
    assert accepted.state.transport == "kafka"
    assert submitter == "kafka:fleet"


async def test_token_rules_name_only_that_token(core: Agent) -> None:
    ci = Caller("http", token="ci")
    async with dispatching(core):
        with pytest.raises(ForbiddenError) as refused:
            core.intake.prepare(job("v1", "vm.start", {"name": "web-1"}), caller=ci)
        core.intake.prepare(job("v2", "vm.start", {"name": "ci-1"}), caller=ci)
        # Another token, and the short form with no token: no rule names them.
        core.intake.prepare(
            job("v3", "vm.destroy", {"name": "web-1"}), caller=Caller("http", token="ops")
        )
        core.intake.prepare(job("v4", "vm.destroy", {"name": "web-1"}), transport="http")
    assert refused.value.details["field"] == "payload.data.name"
    assert refused.value.details["rule"] == "policy.allow[1]"


async def test_reload_applies_new_rules_to_new_jobs(core: Agent, config: Config) -> None:
    spool = Caller("spool")
    async with dispatching(core):
        await core.intake.submit(job("r1", "system.echo", {"message": "a"}), caller=spool)
        await core.reload(with_rules(config, {"transports": ["spool"], "operations": ["vm.info"]}))
        with pytest.raises(ForbiddenError) as refused:
            await core.intake.submit(job("r2", "system.echo", {"message": "b"}), caller=spool)
        await core.reload(config)  # the rules gone: today's rights again
        await core.intake.submit(job("r3", "system.echo", {"message": "c"}), caller=spool)
    assert refused.value.details["rule"] == "policy.allow[0]"


async def test_admit_hooks_see_the_caller(core: Agent) -> None:
    caller = Caller("socket", groups=frozenset({"ops"}), submitter="uid:1000")
    document = job("w1", "test.watched", {"message": "x"})
    async with dispatching(core):
        await core.intake.submit(document, caller=caller)
    assert seen_callers == [caller]


async def test_capabilities_say_what_each_transport_may_run(core: Agent, config: Config) -> None:
    before = await core.capabilities.describe()
    allowed = before["allowed_operations"]
    assert allowed["kafka"] == ["system.echo", "vm.info"]
    # The token rule names no transport's tokenless callers: they keep everything.
    assert allowed["spool"] == allowed["http"] == allowed["socket"] == core.registry.operations
    assert before["allowed_resources"]["kafka"] == {}
    assert before["operations"] == core.registry.operations  # the existing keys stay

    await core.reload(
        with_rules(
            config,
            {"transports": ["spool"], "operations": ["vm.start", "image.info"]},
            {"transports": ["spool"], "operations": ["vm.*"], "resources": ["ci-*"]},
        )
    )
    after = await core.capabilities.refresh()
    assert after["allowed_operations"]["kafka"] == core.registry.operations
    spool_ops = after["allowed_operations"]["spool"]
    assert "vm.list" not in spool_ops  # names no resource: the resource rule cannot allow it
    assert {"vm.start", "image.info", "vm.destroy"} <= set(spool_ops)
    assert after["allowed_resources"]["spool"]["vm.destroy"] == ["ci-*"]
    assert "vm.start" not in after["allowed_resources"]["spool"]  # any resource
    assert core.capabilities.fingerprint != before["fingerprint"]
