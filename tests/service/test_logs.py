"""Every JSON log line names the agent that wrote it (worker_id), as a fleet's log
pipeline needs to tell agents apart."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.agentproc import AgentProcess
from tests.jobs import job, wait_for
from tests.spoolkit import drop


@pytest.mark.slow
def test_every_json_log_line_carries_the_worker_id(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    agent = AgentProcess(tmp_path / "state", spool)
    agent.env = {**os.environ, "HOSTAGENT_WORKER_ID": "log-host-7"}
    agent.start()
    try:
        drop(spool, "j.json", job("j"))
        wait_for(lambda: agent.events("job.finished"), 30, "the job to finish")
    finally:
        assert agent.stop() == 0
    records = [json.loads(line) for line in agent.lines if line.startswith("{")]
    assert {"agent.ready", "job.started", "job.finished"} <= {r["event"] for r in records}
    assert {record.get("worker_id") for record in records} == {"log-host-7"}
