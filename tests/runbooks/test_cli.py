"""hostagent runbook list | show | validate | run, against a real agent process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.localapi import socket_agent
from tests.runbooks.conftest import ECHO_CHAIN, install


def hostagent(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
    )


@pytest.mark.slow
def test_list_show_validate_and_run_with_the_steps_as_a_table(tmp_path: Path) -> None:
    state, spool, books = tmp_path / "state", tmp_path / "spool", tmp_path / "runbooks"
    install(books, ECHO_CHAIN)
    env = {**os.environ, "HOSTAGENT_RUNBOOKS__DIRS": json.dumps([str(books)])}
    where = ["--state-dir", str(state), "--spool-dir", str(spool)]

    listed = hostagent("runbook", "list", *where, env=env)
    assert listed.returncode == 0, listed.stderr
    assert "echo-chain" in listed.stdout
    shown = json.loads(hostagent("runbook", "show", "echo-chain", "--json", *where, env=env).stdout)
    assert shown["version"] == 1
    assert len(shown["sha256"]) == 64
    assert [step["name"] for step in shown["document"]["steps"]] == ["first", "shout", "last"]

    good = books / "echo-chain-v1.json"
    assert hostagent("runbook", "validate", str(good), *where, env=env).returncode == 0
    bad = tmp_path / "bad.json"
    broken = json.loads(good.read_text())
    broken["steps"][2]["payload"]["again"] = {"$step": "later.result"}
    bad.write_text(json.dumps(broken))
    refused = hostagent("runbook", "validate", str(bad), *where, env=env)
    assert refused.returncode == 2
    assert '"field": "steps.2.payload.again"' in refused.stderr

    agent = socket_agent(tmp_path)
    agent.env = env
    agent.start()
    try:
        ran = hostagent(
            "runbook", "run", "echo-chain", "--param", "greeting=hi there", "--param",
            "loud=true", "--job-id", "cli-rb", "--wait", *where, env=env,
        )  # fmt: skip
        assert ran.returncode == 0, ran.stderr
        lines = ran.stdout.splitlines()
        assert lines[0] == "cli-rb"
        assert json.loads("\n".join(lines[1:]))["result"]["outputs"]["said"] == "hi there"
        step = json.loads(hostagent("status", "cli-rb.first", "--json", *where, env=env).stdout)
        assert step["parent"] == "cli-rb"  # a step's status names its runbook's job
        table = ran.stderr.splitlines()
        assert table[1].split()[:2] == ["STEP", "STATUS"]
        assert [row.split()[:2] for row in table[2:5]] == [
            ["first", "Completed"],
            ["shout", "Completed"],
            ["last", "Completed"],
        ]
        dry = hostagent(
            "runbook", "run", "echo-chain", "--param", "greeting=hi", "--dry-run", "--wait",
            *where, env=env,
        )  # fmt: skip
        assert dry.returncode == 0, dry.stderr
        assert "WouldRun" in dry.stderr
        assert "WouldSkip" in dry.stderr  # shout: loud defaults to false
        wrong = hostagent(
            "runbook", "run", "echo-chain", "--param", "count=99", *where, env=env
        )  # fmt: skip
        assert wrong.returncode == 1
        assert "payload.data.parameters" in wrong.stderr
    finally:
        assert agent.stop() == 0
