"""Finding 8: one agent per state directory, for its whole life."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from agent.cli.command import main
from tests.agentproc import AgentProcess
from tests.jobs import job, wait_for
from tests.spoolkit import drop


@pytest.mark.slow
def test_a_second_agent_is_refused_and_nothing_runs_twice(tmp_path: Path) -> None:
    state, spool = tmp_path / "state", tmp_path / "spool"
    first = AgentProcess(state, spool).start()
    try:
        drop(spool, "slow.json", job("slow", "system.sleep", {"seconds": 3}))
        wait_for(lambda: first.events("job.started"), 30, "the job to start")
        second = subprocess.run(
            AgentProcess(state, spool).argv,
            check=False,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert second.returncode == 2, second.stderr
        assert first.process is not None
        assert f"pid {first.process.pid}" in second.stderr
        assert "job.started" not in second.stderr
        # The CLI's direct reads of the store still work beside the running agent.
        assert main(["status", "slow", "--state-dir", str(state), "--spool-dir", str(spool)]) == 0
        result = spool / "done" / "slow.result.json"
        wait_for(result.exists, 30, "the job to finish")
        record = json.loads(result.read_text())
        assert (record["status"], record["attempts"]) == ("Completed", 1)
        assert len(first.events("job.started")) == 1
    finally:
        assert first.stop() == 0
    # Once the holder has gone, the next agent starts (a dead holder never blocks).
    third = AgentProcess(state, spool).start()
    third.kill()
    again = AgentProcess(state, spool).start()  # after kill -9, too
    assert again.stop() == 0
