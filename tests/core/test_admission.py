"""The host policy's check (it opens and stats files) runs once per job, at submit,
in a worker thread, whichever transport hands the job in; its refusal is that job's
answer and nothing of the job is recorded."""

from __future__ import annotations

import threading

import pytest
import trio

from agent.config import Config
from agent.core.context import JobContext
from agent.core.registry import handler
from agent.errors import ForbiddenError, NotFoundError
from agent.handlers.system import EchoPayload
from agent.policy.paths import Admission
from agent.service.daemon import Agent
from tests.jobs import dispatching, job
from tests.memstore import MemoryStore

checked_on: list[tuple[str, bool, bool]] = []


def _admit(payload: EchoPayload, admission: Admission) -> None:
    checked_on.append(
        (
            payload.message,
            trio.lowlevel.in_trio_task(),
            threading.current_thread() is threading.main_thread(),
        )
    )
    if payload.message == "forbidden":
        raise ForbiddenError("not here", field="payload.data.message", reason="forbidden word")


@handler("test.guarded", payload=EchoPayload, rerun_safe=True, admit=_admit)
async def guarded(payload: EchoPayload, ctx: JobContext) -> str:
    return payload.message


def _guarded(job_id: str, message: str) -> dict[str, object]:
    document = job(job_id, "test.guarded")
    document["payload"] = {"type": "test.guarded.v1", "data": {"message": message}}
    return document


@pytest.fixture
def core(config: Config) -> Agent:
    checked_on.clear()
    return Agent(config, store=MemoryStore(), transports=(), extra_handlers=[guarded])


async def test_prepare_leaves_the_policy_check_to_submit_which_runs_it_off_the_trio_thread(
    core: Agent,
) -> None:
    async with dispatching(core):
        prepared = [
            core.intake.prepare(_guarded(f"g{n}", word), transport="t")
            for n, word in enumerate(["fine", "forbidden", "also fine"])
        ]
        assert checked_on == []  # prepare does no file I/O on the caller's thread
        answers = await core.intake.submit_many(prepared)
        with pytest.raises(ForbiddenError) as single:
            await core.intake.submit(_guarded("g3", "forbidden"), transport="t")
        with pytest.raises(NotFoundError):
            await core.intake.status("g1")

    assert [type(answer).__name__ for answer in answers] == [
        "Submission",
        "ForbiddenError",
        "Submission",
    ]
    refusal = answers[1]
    assert isinstance(refusal, ForbiddenError)
    assert refusal.details == {"field": "payload.data.message", "reason": "forbidden word"}
    assert single.value.details["field"] == "payload.data.message"
    # Every check ran once, in a worker thread, never in a trio task.
    assert checked_on == [
        ("fine", False, False),
        ("forbidden", False, False),
        ("also fine", False, False),
        ("forbidden", False, False),
    ]
