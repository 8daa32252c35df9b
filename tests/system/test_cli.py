"""The hostagent command line against a real agent process and its spool."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from agent.cli.command import main
from tests.agentproc import AgentProcess
from tests.jobs import job, wait_for


def hostagent(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_the_command_line_loads_only_what_its_command_needs() -> None:
    # `hostagent run` turns the collector off before its heavy imports (agent.cli.command),
    # so the module itself must not import them.
    loaded = subprocess.run(
        [sys.executable, "-c", "import sys, agent.cli.command; print(' '.join(sys.modules))"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.split()
    assert sorted(name for name in loaded if name.startswith("agent")) == [
        "agent",
        "agent.cli",
        "agent.cli.command",
        "agent.errors",
    ]
    assert not {"pydantic", "trio", "structlog"} & set(loaded)


@pytest.mark.slow
def test_submit_wait_status_result_logs_and_jobs(tmp_path: Path) -> None:
    state, spool = tmp_path / "state", tmp_path / "spool"
    where = ["--state-dir", str(state), "--spool-dir", str(spool)]
    agent = AgentProcess(state, spool).start()
    try:
        submitted = hostagent(
            "submit",
            *where,
            "--op",
            "system.sleep",
            "--data",
            '{"seconds": 0.1}',
            "--job-id",
            "nap-1",
            "--wait",
        )
        assert submitted.returncode == 0, submitted.stderr
        lines = submitted.stdout.splitlines()
        assert lines[0] == "nap-1"
        record = json.loads("\n".join(lines[1:]))
        assert record["status"] == "Completed"
        assert record["result"]["slept_seconds"] >= 0.1

        status = json.loads(hostagent("status", *where, "nap-1", "--json").stdout)
        assert status["status"] == "Completed"
        result = json.loads(hostagent("result", *where, "nap-1", "--json").stdout)
        assert result["slept_seconds"] >= 0.1
        logged = hostagent("logs", *where, "nap-1", "--json").stdout
        logs = [json.loads(line) for line in logged.splitlines()]
        assert any(entry["type"] == "progress" for entry in logs)
        assert "nap-1" in hostagent("jobs", *where, "--status", "Completed").stdout

        failing = hostagent(
            "submit",
            *where,
            "--op",
            "system.sleep",
            "--data",
            '{"seconds": 30}',
            "--timeout",
            "0.2",
            "--wait",
        )
        assert failing.returncode == 1
        assert "timed out" in failing.stdout

        refused = hostagent("submit", *where, "--op", "nonamespace", "--wait")
        assert refused.returncode == 1
        assert "Operation must be namespaced" in refused.stdout
    finally:
        agent.stop()


@pytest.mark.slow
def test_cancel_through_the_spool(tmp_path: Path) -> None:
    state, spool = tmp_path / "state", tmp_path / "spool"
    where = ["--state-dir", str(state), "--spool-dir", str(spool)]
    agent = AgentProcess(state, spool).start()
    try:
        assert (
            hostagent(
                "submit",
                *where,
                "--op",
                "system.sleep",
                "--data",
                '{"seconds": 60}',
                "--job-id",
                "long",
            ).returncode
            == 0
        )
        waiting = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "agent",
                "submit",
                *where,
                "--op",
                "system.echo",
                "--job-id",
                "marker",
                "--wait",
            ],
            stdout=subprocess.DEVNULL,
        )
        waiting.wait(60)
        cancelled = hostagent("cancel", *where, "long")
        assert cancelled.returncode == 0, cancelled.stderr
        result = spool / "done" / "long.result.json"
        wait_for(result.exists, 30, "the cancelled job's result")
        assert json.loads(result.read_text())["status"] == "Cancelled"
        again = hostagent("cancel", *where, "long")
        assert again.returncode == 1
        assert "already Cancelled" in again.stderr
    finally:
        agent.stop()


def test_validate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "good.json"
    good.write_text(json.dumps(job("ok-1")))
    assert main(["validate", str(good)]) == 0
    assert "valid system.echo job ok-1" in capsys.readouterr().out
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(job("bad-1", "system.sleep", {"seconds": "x"})))
    assert main(["validate", str(bad)]) == 1
    assert "payload.data.seconds" in capsys.readouterr().err
