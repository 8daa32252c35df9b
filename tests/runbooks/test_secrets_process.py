"""A secret runbook parameter, given to a real agent process over its local API: the
value is found nowhere in the state directory nor in the agent's log; and after a
kill -9 the runbook does not run on, it fails saying why, its queued step cancelled."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest

from tests.jobs import job, wait_for
from tests.localapi import socket_agent

SECRET = "hunter2-is-not-a-password"
KEEPER = {
    "schema_version": 1,
    "name": "keeper",
    "version": 1,
    "parameters": {"token": {"type": "string", "secret": True}},
    "steps": [
        {"name": "use", "operation": "system.echo", "payload": {"t": {"$param": "token"}}},
        {"name": "wait", "operation": "system.sleep", "payload": {"seconds": 60}},
    ],
}


def grep(directory: Path, needle: bytes) -> list[Path]:
    return [p for p in directory.rglob("*") if p.is_file() and needle in p.read_bytes()]


@pytest.mark.slow
def test_a_secret_is_in_no_file_nor_log_line_and_does_not_survive_a_restart(
    tmp_path: Path,
) -> None:
    state, books = tmp_path / "state", tmp_path / "runbooks"
    books.mkdir()
    (books / "keeper.json").write_text(json.dumps(KEEPER))
    agent = socket_agent(tmp_path, env={"HOSTAGENT_RUNBOOKS__DIRS": json.dumps([str(books)])})
    agent.start()
    api = httpx.Client(
        base_url="http://localhost",
        transport=httpx.HTTPTransport(uds=str(state / "api.sock")),
        timeout=30,
    )
    document = job("rb-s", "runbook.run", {"runbook": "keeper", "parameters": {"token": SECRET}})
    try:
        assert api.post("/api/v1/jobs", json=document).status_code == 201
        used = "/api/v1/jobs/rb-s.use"
        wait_for(
            lambda: api.get(used).json().get("data", {}).get("status") == "Completed", 30, "use"
        )
        assert api.get(f"{used}/result").json()["data"] == {"t": "[secret]"}
        wait_for(
            lambda: (
                api.get("/api/v1/jobs/rb-s.wait").json().get("data", {}).get("status") == "Running"
            ),
            30,
            "the second step",
        )
        agent.kill()
        assert grep(state, SECRET.encode()) == []
        assert not any(SECRET in line for line in agent.lines)
        assert any("rb-s" in line for line in agent.lines)  # the log speaks of the job
        agent.start()
        deadline = time.monotonic() + 30
        while (status := api.get("/api/v1/jobs/rb-s").json()["data"])["status"] not in (
            "Completed",
            "Failed",
        ):
            assert time.monotonic() < deadline, status
            time.sleep(0.05)
        assert status["status"] == "Failed"
        assert "held in memory only" in status["error"]
        # Its step that was running at the kill (re-queued: safe to re-run) does not
        # run on without it.
        wait_for(
            lambda: (
                api.get("/api/v1/jobs/rb-s.wait").json()["data"]["status"]
                in ("Completed", "Failed", "Cancelled")
            ),
            30,
            "the step to end",
        )
        step = api.get("/api/v1/jobs/rb-s.wait").json()["data"]
        assert step["status"] == "Cancelled", step
    finally:
        api.close()
        agent.stop(timeout=60)
    assert grep(state, SECRET.encode()) == []
    assert not any(SECRET in line for line in agent.lines)
