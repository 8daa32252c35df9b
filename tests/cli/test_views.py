"""The CLI's human views (status, result, logs, follow) with --json for programs; help
text on every option; `--no-http` keeps the local socket, `--no-socket` removes it.
The agent is real (test:///default) and runs with --no-http: every command here
reaches it over its socket."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.cli.parser import build_parser
from agent.cli.support import EXIT_NOT_FOUND, EXIT_UNREACHABLE
from tests.agentproc import AgentProcess
from tests.localapi import socket_agent

HOSTAGENT = [sys.executable, "-m", "agent"]


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[AgentProcess, Path]]:
    root = tmp_path_factory.mktemp("views")
    agent = socket_agent(root)
    agent.argv.append("--no-http")  # the TCP API off; the socket stays
    agent.start()
    try:
        yield agent, root
    finally:
        assert agent.stop() == 0


def cli(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    where = ["--socket", str(root / "state" / "api.sock")]
    return subprocess.run(
        [*HOSTAGENT, *args, *where], capture_output=True, text=True, timeout=60, check=False
    )


@pytest.mark.slow
def test_no_http_keeps_the_local_socket(running: tuple[AgentProcess, Path]) -> None:
    agent, root = running
    assert (root / "state" / "api.sock").is_socket()
    [ready] = agent.events("http.ready")
    assert ready["url"] is None
    assert not agent.events("http.no_tokens")  # no TCP listener to warn about
    health = json.loads(cli(root, "health", "--json").stdout)
    assert health["components"]["http"]["status"] == "healthy"


@pytest.mark.slow
def test_no_socket_removes_it(tmp_path: Path) -> None:
    agent = AgentProcess(tmp_path / "state", tmp_path / "spool")  # --no-http --no-socket
    agent.start()
    try:
        assert not (tmp_path / "state" / "api.sock").exists()
        assert not agent.events("http.ready")
    finally:
        assert agent.stop() == 0
    asked = cli(tmp_path, "health")
    assert asked.returncode == EXIT_UNREACHABLE


@pytest.mark.slow
def test_status_result_and_logs_are_human_unless_json(
    running: tuple[AgentProcess, Path],
) -> None:
    _, root = running
    data = json.dumps({"seconds": 0.05})
    submitted = cli(root, "submit", "--op", "system.sleep", "--data", data, "--job-id", "v-1")
    assert submitted.returncode == 0, submitted.stderr
    assert cli(root, "follow", "v-1", "--json").returncode == 0

    status = cli(root, "status", "v-1").stdout
    assert status.splitlines()[0].split() == ["job:", "v-1"]
    assert "status:     Completed" in status
    assert "operation:  system.sleep" in status
    assert json.loads(cli(root, "status", "v-1", "--json").stdout)["status"] == "Completed"

    result = cli(root, "result", "v-1").stdout
    assert result.startswith("slept_seconds: ")
    assert json.loads(cli(root, "result", "v-1", "--json").stdout)["slept_seconds"] >= 0.05

    logs = cli(root, "logs", "v-1").stdout.splitlines()
    assert logs, "no log lines"
    assert all(not line.startswith("{") for line in logs)
    assert any(" progress " in line and "%" in line for line in logs), logs
    stored = [json.loads(line) for line in cli(root, "logs", "v-1", "--json").stdout.splitlines()]
    assert any(event["type"] == "progress" for event in stored)


@pytest.mark.slow
def test_follow_prints_the_human_view_or_json(running: tuple[AgentProcess, Path]) -> None:
    _, root = running
    data = json.dumps({"message": {"k": [1, 2]}})
    cli(root, "submit", "--op", "system.echo", "--data", data, "--job-id", "f-1")
    human = cli(root, "follow", "f-1")
    assert human.returncode == 0, human.stderr
    assert "status:     Completed" in human.stdout
    assert "result:" in human.stdout
    with pytest.raises(ValueError, match="Expecting value"):
        json.loads(human.stdout)
    program = cli(root, "follow", "f-1", "--json")
    assert program.returncode == 0
    assert program.stderr == ""  # no live view for a program
    assert json.loads(program.stdout)["status"] == "Completed"


@pytest.mark.slow
def test_a_missing_job_is_not_found(running: tuple[AgentProcess, Path]) -> None:
    _, root = running
    missing = cli(root, "status", "no-such-job")
    assert missing.returncode == EXIT_NOT_FOUND
    assert "not found" in missing.stderr


def _options(parser: argparse.ArgumentParser, path: list[str]) -> Iterator[tuple[str, str]]:
    for action in parser._actions:  # argparse has no public walk of its tree
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _options(sub, [*path, name])
        elif not action.help:
            yield " ".join(path), "/".join(action.option_strings) or action.dest


def test_every_option_and_argument_has_help() -> None:
    assert list(_options(build_parser(), ["hostagent"])) == []


def test_vm_help_says_how_the_ways_to_stop_differ(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["vm", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "ask the guest OS to shut down (ACPI; vm.shutdown)" in text
    assert "pull the plug now (vm.destroy)" in text
    assert "then pull the plug if the guest has not stopped" in text  # off
    assert "the same as poweroff (vm.destroy" in text  # destroy


def test_submit_help_gives_ranges(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["submit", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "0-9, higher runs first" in text
    assert "seconds the job may run, > 0" in text
    assert "1-128 of [A-Za-z0-9._-]" in text
