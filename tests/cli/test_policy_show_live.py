"""`hostagent policy show` asks the running agent: the rules in effect there, which a
changed config file becomes only after a reload (SIGHUP); --offline reads the file."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.agentproc import AgentProcess
from tests.jobs import wait_for
from tests.localapi import NOBODY, request_as, socket_agent

FIRST = """
[[policy.allow]]
name = "spool-inspects"
transports = ["spool"]
operations = ["image.info"]
"""

SECOND = """
[[policy.allow]]
name = "socket-reads"
transports = ["socket"]
operations = ["vm.list", "vm.info"]

[[policy.allow]]
name = "kafka-starts"
transports = ["kafka"]
operations = ["vm.start"]
resources = ["ci-*"]
"""


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(FIRST)
    return path


@pytest.fixture
def agent(tmp_path: Path, config_file: Path) -> Iterator[AgentProcess]:
    # nogroup stands in for hostagent-submit: its members hold read over the socket.
    env = {"HOSTAGENT_HTTP__SOCKET_SUBMIT_GROUP": "nogroup"}
    process = socket_agent(tmp_path, "--config", str(config_file), env=env).start()
    yield process
    process.stop()


def policy_show(tmp_path: Path, config_file: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    where = ["--config", str(config_file), "--state-dir", str(tmp_path / "state")]
    return subprocess.run(
        [sys.executable, "-m", "agent", "policy", "show", *where, *flags],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def shown(tmp_path: Path, config_file: Path, *flags: str) -> dict[str, Any]:
    done = policy_show(tmp_path, config_file, "--json", *flags)
    assert done.returncode == 0, done.stderr
    report: dict[str, Any] = json.loads(done.stdout)
    return report


def names(report: dict[str, Any]) -> list[str | None]:
    return [rule["name"] for rule in report["rules"]]


@pytest.mark.slow
def test_policy_show_follows_the_running_agent_through_a_reload(
    agent: AgentProcess, tmp_path: Path, config_file: Path
) -> None:
    assert names(shown(tmp_path, config_file)) == ["spool-inspects"]

    # The file changed, the agent has not reloaded: the agent's rules are still in effect.
    config_file.write_text(SECOND)
    assert names(shown(tmp_path, config_file)) == ["spool-inspects"]
    assert names(shown(tmp_path, config_file, "--offline")) == ["socket-reads", "kafka-starts"]

    assert agent.process is not None
    agent.process.send_signal(signal.SIGHUP)
    wait_for(lambda: agent.events("agent.reloaded"), 30, "the reload")
    report = shown(tmp_path, config_file)
    assert names(report) == ["socket-reads", "kafka-starts"]
    callers = {entry["transport"]: entry for entry in report["callers"] if entry["token"] is None}
    assert callers["kafka"]["operations"] == {"vm.start": ["ci-*"]}
    assert set(callers["socket"]["operations"]) == {"vm.list", "vm.info"}
    assert "image.info" in callers["spool"]["operations"]  # no rule names the spool now
    assert len(callers["spool"]["operations"]) > 1

    table = policy_show(tmp_path, config_file)
    assert table.returncode == 0, table.stderr
    assert "policy.allow[1] kafka-starts" in table.stdout
    assert "vm.start [ci-*]" in table.stdout


@pytest.mark.slow
def test_the_socket_answers_policy_to_peers_holding_read(
    agent: AgentProcess, tmp_path: Path
) -> None:
    sock = tmp_path / "state" / "api.sock"
    status, body = request_as(NOBODY, NOBODY, sock, "GET", "/api/v1/policy")
    assert status == 200
    assert names(body["data"]) == ["spool-inspects"]
    status, body = request_as(NOBODY, NOBODY + 1000, sock, "GET", "/api/v1/policy")
    assert status == 403  # neither root, nor admin, nor the submit group: no read
    assert body["details"]["field"] == "scope"
