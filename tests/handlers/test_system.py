"""system.* handlers through the real dispatcher."""

from __future__ import annotations

import os
import socket

import pytest

from agent.jobs import JobStatus
from agent.service.daemon import Agent
from tests.jobs import job, wait_done


async def test_echo_answers_its_payload(agent: Agent) -> None:
    data = {"message": "hello", "nested": {"n": [1, 2]}}
    await agent.intake.submit(job("echo", data=data), transport="t")
    assert (await wait_done(agent, "echo")).status is JobStatus.COMPLETED
    assert await agent.intake.result("echo") == data


async def test_info_reports_host_facts(agent: Agent) -> None:
    await agent.intake.submit(job("info", "system.info"), transport="t")
    assert (await wait_done(agent, "info")).status is JobStatus.COMPLETED
    facts = await agent.intake.result("info")
    assert facts["hostname"] == socket.gethostname()
    assert facts["cpus"] == os.cpu_count()
    assert facts["kernel"] == os.uname().release
    assert facts["memory_total_bytes"] > 0
    assert facts["uptime_seconds"] > 0
    assert len(facts["load_average"]) == 3
    assert any(disk["mountpoint"] == "/" for disk in facts["disks"])


@pytest.mark.slow
async def test_sleep_reports_progress_each_second(agent: Agent) -> None:
    await agent.intake.submit(job("nap", "system.sleep", {"seconds": 1.2}), transport="t")
    assert (await wait_done(agent, "nap")).status is JobStatus.COMPLETED
    progress = [
        e["data"]["percent"] for e in await agent.intake.logs("nap") if e["type"] == "progress"
    ]
    assert progress[0] < 5  # at the start
    assert 80 <= progress[1] < 100  # after the first second
    assert progress[-1] == 100
