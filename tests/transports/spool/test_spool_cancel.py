"""The spool's cancel/ honours the submitter: a cancel file's owner cancels only the
jobs it submitted (it owned their job files when claimed); root, the agent's user and
members of spool.admin_group cancel any. Real files owned by other uids (chown as root)."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio
from structlog.testing import capture_logs

from agent.errors import NotFoundError
from agent.jobs import JobStatus
from agent.service.daemon import Agent
from agent.service.settings import Settings
from tests.jobs import job
from tests.localapi import NOBODY

DAEMON = 1  # uid daemon (gid daemon): present on every Debian system
OTHER = 65533  # a uid with no passwd entry at all

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="chown to other uids needs root"),
    pytest.mark.slow,  # an agent with three running jobs per test
]


def drop_as(spool: Path, job_id: str, uid: int) -> None:
    """A job file (a long sleep) written by `uid`, arriving in incoming/ by rename."""
    staged = spool / "tmp" / f"{job_id}.json"
    staged.write_text(json.dumps(job(job_id, "system.sleep", {"seconds": 600})))
    os.chown(staged, uid, -1)
    staged.rename(spool / "incoming" / staged.name)


def cancel_as(spool: Path, job_id: str, uid: int) -> None:
    staged = spool / "tmp" / f"cancel-{job_id}"
    staged.touch()
    os.chown(staged, uid, -1)
    staged.rename(spool / "cancel" / job_id)


async def answered(logs: list[dict[str, Any]], job_id: str) -> dict[str, Any]:
    """The spool's answer to a cancel file for `job_id` (cancelled or refused)."""
    with trio.fail_after(10):
        while True:
            for entry in logs:
                if entry.get("job_id") == job_id and entry["event"] in (
                    "spool.cancelled",
                    "spool.cancel_refused",
                ):
                    logs.remove(entry)
                    return entry
            await trio.sleep(0.01)


def with_admin_group(config: Settings, group: str) -> Settings:
    spool = config.spool.model_copy(update={"admin_group": group})
    return config.model_copy(update={"spool": spool, "max_concurrent_jobs": 4})


@pytest.fixture
async def running(config: Settings, request: pytest.FixtureRequest) -> AsyncIterator[Agent]:
    settings = with_admin_group(config, getattr(request, "param", ""))
    async with trio.open_nursery() as nursery:
        agent: Agent = await nursery.start(Agent(settings).run)
        spool = settings.spool_dir
        for job_id, uid in (("nobodys", NOBODY), ("daemons", DAEMON), ("roots", 0)):
            drop_as(spool, job_id, uid)
        with trio.fail_after(10):
            for job_id in ("nobodys", "daemons", "roots"):
                while not await _running(agent, job_id):
                    await trio.sleep(0.01)
        yield agent
        nursery.cancel_scope.cancel()


async def _running(agent: Agent, job_id: str) -> bool:
    try:
        return (await agent.intake.status(job_id)).status is JobStatus.RUNNING
    except NotFoundError:
        return False  # not claimed yet


async def test_a_spool_jobs_submitter_is_the_uid_owning_its_file(running: Agent) -> None:
    assert await running.intake.submitter("nobodys") == f"uid:{NOBODY}"
    assert await running.intake.submitter("daemons") == f"uid:{DAEMON}"
    assert await running.intake.submitter("roots") == "uid:0"


async def test_a_cancel_file_cancels_only_its_owners_jobs(running: Agent) -> None:
    spool = running.config.spool_dir
    with capture_logs() as logs:
        for job_id in ("roots", "daemons", "unknown"):
            cancel_as(spool, job_id, NOBODY)
            refused = await answered(logs, job_id)
            assert refused["event"] == "spool.cancel_refused", refused
            assert refused["uid"] == NOBODY
        cancel_as(spool, "daemons", OTHER)
        assert (await answered(logs, "daemons"))["event"] == "spool.cancel_refused"
        cancel_as(spool, "nobodys", NOBODY)
        assert (await answered(logs, "nobodys"))["event"] == "spool.cancelled"
        # Root cancels anyone's.
        cancel_as(spool, "daemons", 0)
        assert (await answered(logs, "daemons"))["event"] == "spool.cancelled"
    status = {
        job_id: (await running.intake.status(job_id)).status
        for job_id in ("nobodys", "daemons", "roots")
    }
    assert status == {
        "nobodys": JobStatus.CANCELLED,
        "daemons": JobStatus.CANCELLED,
        "roots": JobStatus.RUNNING,  # nobody's three refused cancels changed nothing
    }
    assert list((spool / "cancel").iterdir()) == []  # every request was taken


@pytest.mark.parametrize("running", ["nogroup"], indirect=True)
async def test_the_admin_group_cancels_any_job(running: Agent) -> None:
    spool = running.config.spool_dir
    with capture_logs() as logs:
        cancel_as(spool, "roots", NOBODY)  # nobody's primary group is nogroup: an admin
        assert (await answered(logs, "roots"))["event"] == "spool.cancelled"
        cancel_as(spool, "nobodys", DAEMON)  # daemon is not in nogroup
        assert (await answered(logs, "nobodys"))["event"] == "spool.cancel_refused"
    assert (await running.intake.status("roots")).status is JobStatus.CANCELLED
    assert (await running.intake.status("nobodys")).status is JobStatus.RUNNING
