"""The command line as people use it: exit codes, no tracebacks, pipes, Ctrl-C,
config check/show, tokens, paging, completion."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.cli.support import (
    EXIT_CANCELLED,
    EXIT_DENIED,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_TIMEOUT,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
)
from tests.agentproc import AgentProcess
from tests.localapi import socket_agent

HOSTAGENT = [sys.executable, "-m", "agent"]


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[AgentProcess, Path]]:
    root = tmp_path_factory.mktemp("cli")
    process = socket_agent(root).start()
    yield process, root
    process.stop()


def run(root: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    command, *rest = args
    where = ["--state-dir", str(root / "state"), "--spool-dir", str(root / "spool")]
    return subprocess.run(
        [*HOSTAGENT, command, *where, *rest],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def sleep(seconds: float) -> list[str]:
    return ["--op", "system.sleep", "--data", json.dumps({"seconds": seconds})]


def no_traceback(result: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in result.stderr, result.stderr


@pytest.mark.slow
def test_exit_codes_tell_how_a_job_ended(agent: tuple[AgentProcess, Path]) -> None:
    _, root = agent
    assert run(root, "submit", *sleep(0), "--wait").returncode == EXIT_OK
    failed = run(root, "submit", *sleep(5), "--timeout", "0.2", "--wait")
    assert failed.returncode == EXIT_FAILED
    assert "timed out" in failed.stdout
    slow = run(root, "submit", *sleep(30), "--wait", "--wait-timeout", "0.5")
    assert slow.returncode == EXIT_TIMEOUT
    assert "keeps running" in slow.stderr
    job_id = slow.stdout.strip()
    assert run(root, "cancel", job_id).returncode == EXIT_OK
    followed = run(root, "follow", job_id, "--json")
    assert followed.returncode == EXIT_CANCELLED
    assert json.loads(followed.stdout)["status"] == "Cancelled"
    missing = run(root, "status", "no-such-job")
    assert missing.returncode == EXIT_NOT_FOUND
    for result in (failed, slow, followed, missing):
        no_traceback(result)


@pytest.mark.slow
def test_exit_codes_of_unreachable_refused_and_usage(tmp_path: Path) -> None:
    nowhere = run(tmp_path, "jobs")
    assert nowhere.returncode == EXIT_UNREACHABLE
    assert "no running agent" in nowhere.stderr
    # Nothing was created where the agent's directories would be.
    assert not (tmp_path / "spool").exists()
    assert not (tmp_path / "state").exists()
    submit = run(tmp_path, "submit", *sleep(0))
    assert submit.returncode == EXIT_UNREACHABLE
    assert not (tmp_path / "spool").exists()
    closed_port = run(tmp_path, "health", "--url", "http://127.0.0.1:9")
    assert closed_port.returncode == EXIT_UNREACHABLE
    usage = subprocess.run([*HOSTAGENT, "jobs", "--bogus"], capture_output=True, check=False)
    assert usage.returncode == EXIT_USAGE
    for result in (nowhere, submit, closed_port):
        no_traceback(result)


@pytest.mark.slow
def test_auth_refused_over_http_exits_77(tmp_path: Path) -> None:
    # Tokens required (none configured): every read is refused with 401.
    agent = socket_agent(tmp_path, "--config", str(write_config(tmp_path, ""))).start()
    try:
        [ready] = agent.events("http.ready")
        refused = subprocess.run(
            [*HOSTAGENT, "jobs", "--url", str(ready["url"])],
            capture_output=True,
            text=True,
            check=False,
            env={**os.environ, "HOSTAGENT_TOKEN": "hat_wrong"},
        )
        assert refused.returncode == EXIT_DENIED
        no_traceback(refused)
        # Starting HTTP without tokens says so, and how to add one.
        [warning] = agent.events("http.no_tokens")
        assert "hostagent token create" in str(warning["message"])
        assert warning["level"] == "warning"
    finally:
        agent.stop()


@pytest.mark.slow
def test_jobs_newest_first_with_a_header_pages_and_a_closed_pipe(
    agent: tuple[AgentProcess, Path],
) -> None:
    _, root = agent
    for n in range(3):
        assert run(root, "submit", *sleep(0), "--job-id", f"page-{n}").returncode == 0
    table = run(root, "jobs", "--limit", "2")
    lines = table.stdout.splitlines()
    assert lines[0].split()[:2] == ["JOB", "ID"]
    assert [line.split()[0] for line in lines[1:]] == ["page-2", "page-1"]
    cursor = table.stderr.split("--cursor ")[1].split(")")[0]
    rest = json.loads(run(root, "jobs", "--limit", "2", "--cursor", cursor, "--json").stdout)
    assert rest["jobs"][0]["job_id"] == "page-0"
    every = run(root, "jobs", "--limit", "1", "--all", "--json").stdout.splitlines()
    assert len(every) == json.loads(every[0])["total"]
    piped = subprocess.run(
        f"{sys.executable} -m agent jobs --state-dir {root / 'state'} | head -1",
        shell=True,
        capture_output=True,
        text=True,
        check=False,
    )
    assert piped.returncode == 0
    assert piped.stdout.startswith("JOB ID")
    assert piped.stderr == "" or "Traceback" not in piped.stderr
    assert "Error" not in piped.stderr


@pytest.mark.slow
def test_ctrl_c_while_following_says_the_job_keeps_running(
    agent: tuple[AgentProcess, Path],
) -> None:
    _, root = agent
    where = ["--state-dir", str(root / "state")]
    follower = subprocess.Popen(
        [*HOSTAGENT, "submit", *where, *sleep(30), "--follow"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert follower.stdout is not None
    job_id = follower.stdout.readline().strip()
    time.sleep(1.0)
    follower.send_signal(signal.SIGINT)
    _, stderr = follower.communicate(timeout=30)
    assert follower.returncode == EXIT_INTERRUPTED
    assert f"job {job_id} keeps running" in stderr
    assert f"hostagent cancel {job_id}" in stderr
    assert "Traceback" not in stderr
    status = json.loads(run(root, "status", job_id, "--json").stdout)
    assert status["status"] == "Running"
    assert run(root, "cancel", job_id).returncode == 0


def write_config(root: Path, extra: str) -> Path:
    path = root / "agent.toml"
    path.write_text(
        f'state_dir = "{root / "state"}"\nspool_dir = "{root / "spool"}"\n'
        '[libvirt]\nuri = "test:///default"\n[http]\nbind = "127.0.0.1:0"\n' + extra
    )
    return path


@pytest.mark.slow
def test_config_check_show_and_tokens(tmp_path: Path) -> None:
    config = write_config(
        tmp_path,
        '[[http.tokens]]\nname = "fleet"\nsha256 = "' + "a" * 64 + '"\nscopes = ["read"]\n'
        '[[http.tokens]]\nname = "ci"\nsha256 = "' + "b" * 64 + '"\nscopes = ["submit"]\n',
    )
    ok = subprocess.run(
        [*HOSTAGENT, "config", "check", str(config)], capture_output=True, check=False
    )
    assert ok.returncode == EXIT_OK
    bad = tmp_path / "bad.toml"
    bad.write_text("[spool]\nmax_file_bytes = -1\n")
    checked = subprocess.run(
        [*HOSTAGENT, "config", "check", str(bad)], capture_output=True, text=True, check=False
    )
    assert checked.returncode == EXIT_USAGE
    assert "spool.max_file_bytes" in checked.stderr
    shown = subprocess.run(
        [*HOSTAGENT, "config", "show", "--config", str(config)],
        capture_output=True,
        text=True,
        check=False,
    )
    effective = json.loads(shown.stdout)
    assert effective["libvirt"]["uri"] == "test:///default"
    assert "a" * 64 not in shown.stdout
    assert effective["http"]["tokens"][0]["sha256"] == "<redacted>"
    listed = subprocess.run(
        [*HOSTAGENT, "token", "list", "--config", str(config)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert listed.stdout.splitlines()[1:] == [
        "fleet                    read",
        "ci" + " " * 23 + "submit",
    ]
    revoked = subprocess.run(
        [*HOSTAGENT, "token", "revoke", "ci", "--config", str(config)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert revoked.returncode == EXIT_OK, revoked.stderr
    assert "ci" not in config.read_text()
    assert '"fleet"' in config.read_text()
    again = subprocess.run(
        [*HOSTAGENT, "token", "revoke", "ci", "--config", str(config)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert again.returncode == EXIT_NOT_FOUND


@pytest.mark.slow
def test_version_caps_summary_and_completion(agent: tuple[AgentProcess, Path]) -> None:
    _, root = agent
    version = subprocess.run([*HOSTAGENT, "--version"], capture_output=True, text=True, check=False)
    assert version.stdout.startswith("hostagent ")
    summary = run(root, "caps")
    assert summary.returncode == 0
    assert "operations:" in summary.stdout
    assert "operation_schemas" not in summary.stdout
    full = json.loads(run(root, "caps", "--json").stdout)
    assert "system.echo" in full["operation_schemas"]
    bash = subprocess.run(
        [*HOSTAGENT, "completion", "bash"], capture_output=True, text=True, check=False
    )
    assert "complete" in bash.stdout
    assert "follow" in bash.stdout
