"""The local API over a Unix socket: who may do what is decided by the peer's uid
(SO_PEERCRED), with real processes running as other users."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.agentproc import AgentProcess
from tests.localapi import NOBODY, request_as, socket_agent


def echo(job_id: str) -> dict[str, object]:
    return {
        "version": "1.0",
        "job_id": job_id,
        "kind": "VMOperation",
        "operation": "system.echo",
        "payload": {"type": "system.echo.v1", "data": {"m": 1}},
    }


def sleeper(job_id: str) -> dict[str, object]:
    return {
        "version": "1.0",
        "job_id": job_id,
        "kind": "VMOperation",
        "operation": "system.sleep",
        "payload": {"type": "system.sleep.v1", "data": {"seconds": 60}},
    }


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[AgentProcess]:
    # nogroup stands in for hostagent-submit: a child with that gid is a submitter.
    process = socket_agent(tmp_path, env={"HOSTAGENT_HTTP__SOCKET_SUBMIT_GROUP": "nogroup"})
    process.start()
    yield process
    process.stop()


def hostagent(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    where = ["--state-dir", str(tmp_path / "state"), "--spool-dir", str(tmp_path / "spool")]
    command, *rest = args
    return subprocess.run(
        [sys.executable, "-m", "agent", command, *where, *rest],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.slow
def test_root_uses_the_socket_without_flags_or_token(agent: AgentProcess, tmp_path: Path) -> None:
    sock = tmp_path / "state" / "api.sock"
    assert sock.is_socket()
    done = hostagent(tmp_path, "submit", "--op", "system.echo", "--data", '{"m": 2}', "--wait")
    assert done.returncode == 0, done.stderr
    record = json.loads(done.stdout.split("\n", 1)[1])
    # Over the socket (the HTTP transport's door), not dropped into the spool.
    assert record["transport"] == "socket"
    assert record["result"] == {"m": 2}
    assert not any((tmp_path / "spool" / "done").iterdir())


@pytest.mark.slow
def test_a_stranger_is_refused_and_the_refusal_is_audited(
    agent: AgentProcess, tmp_path: Path
) -> None:
    sock = tmp_path / "state" / "api.sock"
    status, body = request_as(NOBODY, NOBODY + 1000, sock, "GET", "/api/v1/jobs")
    assert status == 403
    assert body["error"] == "FORBIDDEN"
    [refusal] = [line for line in agent.events("http.refused") if line["client"] == f"uid:{NOBODY}"]
    assert refusal["status"] == 403
    assert refusal["route"] == "/api/v1/jobs"
    assert refusal["level"] == "warning"
    assert "submit group" in str(refusal["reason"])


@pytest.mark.slow
def test_a_submitter_submits_reads_and_cancels_only_their_own(
    agent: AgentProcess, tmp_path: Path
) -> None:
    sock = tmp_path / "state" / "api.sock"
    status, _ = request_as(NOBODY, NOBODY, sock, "POST", "/api/v1/jobs", body=sleeper("theirs"))
    assert status == 201
    status, page = request_as(NOBODY, NOBODY, sock, "GET", "/api/v1/jobs")
    assert status == 200
    assert [job["job_id"] for job in page["data"]["jobs"]] == ["theirs"]
    # root's job, submitted over the socket too
    mine = hostagent(tmp_path, "submit", "--op", "system.sleep", "--data", '{"seconds": 60}')
    assert mine.returncode == 0, mine.stderr
    roots = mine.stdout.strip()
    status, refused = request_as(NOBODY, NOBODY, sock, "POST", f"/api/v1/jobs/{roots}/cancel")
    assert status == 403
    assert refused["details"]["reason"] == "Not the job's submitter"
    status, cancelled = request_as(NOBODY, NOBODY, sock, "POST", "/api/v1/jobs/theirs/cancel")
    assert status == 200
    assert cancelled["data"]["status"] in ("Cancelled", "Running")
    # The submitter holds no admin powers: metrics are read, tokens are not a thing here.
    status, _ = request_as(NOBODY, NOBODY, sock, "GET", "/api/v1/capabilities")
    assert status == 200
    assert hostagent(tmp_path, "cancel", roots).returncode == 0


@pytest.mark.slow
def test_a_socket_left_by_a_killed_agent_is_replaced(tmp_path: Path) -> None:
    first = socket_agent(tmp_path).start()
    first.kill()
    sock = tmp_path / "state" / "api.sock"
    assert sock.is_socket()  # left behind by kill -9
    second = socket_agent(tmp_path).start()
    try:
        status = hostagent(tmp_path, "health", "--json")
        assert status.returncode == 0, status.stderr
        assert json.loads(status.stdout)["status"] == "healthy"
    finally:
        second.stop()
    assert not sock.exists()  # a clean stop removes it


@pytest.mark.slow
def test_a_submitters_jobs_stay_theirs_across_a_restart_and_the_old_owner_file_goes(
    tmp_path: Path,
) -> None:
    env = {"HOSTAGENT_HTTP__SOCKET_SUBMIT_GROUP": "nogroup"}
    state = tmp_path / "state"
    state.mkdir()
    old_book = state / "socket-owners.sqlite3"  # where an older agent kept owners
    old_book.write_bytes(b"SQLite format 3\0")
    sock = state / "api.sock"
    first = socket_agent(tmp_path, env=env).start()
    try:
        assert not old_book.exists()
        status, _ = request_as(NOBODY, NOBODY, sock, "POST", "/api/v1/jobs", body=sleeper("one"))
        assert status == 201
        status, batch = request_as(
            NOBODY, NOBODY, sock, "POST", "/api/v1/jobs/batch", body={"jobs": [sleeper("two")]}
        )
        assert (status, batch["data"]["submitted"]) == (200, 1)
    finally:
        first.kill()  # no drain to wait through: the jobs are recovered at the next start
    second = socket_agent(tmp_path, env=env).start()
    try:
        for job_id in ("one", "two"):
            status, cancelled = request_as(
                NOBODY, NOBODY, sock, "POST", f"/api/v1/jobs/{job_id}/cancel"
            )
            assert (status, cancelled["data"]["status"]) == (200, "Cancelled"), cancelled
        # An unknown job is not theirs either: refused as another's job is.
        status, refused = request_as(NOBODY, NOBODY, sock, "POST", "/api/v1/jobs/nope/cancel")
        assert (status, refused["details"]["reason"]) == (403, "Not the job's submitter")
    finally:
        second.stop()
    assert not any(path.name.startswith("socket-owners") for path in state.iterdir())
