"""Findings 2 and 6 on a real process: held connections never end the daemon.

The agent runs under a descriptor limit (prlimit RLIMIT_NOFILE) and is sent
more half-finished requests than it has descriptors; it refuses the excess
early, times the rest out, keeps its spool rescans going, and health answers.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

NOFILE = 512
HEADER_TIMEOUT = 2.0


@pytest.fixture
def limited_agent(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[str], list[str]]]:
    env = {
        **os.environ,
        "HOSTAGENT_HTTP__HEADER_TIMEOUT_SECONDS": str(HEADER_TIMEOUT),
        "HOSTAGENT_SPOOL__RESCAN_SECONDS": "0.2",
    }
    argv = [
        "prlimit",
        f"--nofile={NOFILE}:{NOFILE}",
        sys.executable,
        "-m",
        "agent",
        "run",
        "--state-dir",
        str(tmp_path / "state"),
        "--spool-dir",
        str(tmp_path / "spool"),
        "--log-format",
        "json",
        "--libvirt-uri",
        "test:///default",
        "--http-bind",
        "127.0.0.1:0",
        "--insecure-no-auth",
    ]
    process = subprocess.Popen(argv, env=env, stderr=subprocess.PIPE, text=True)
    assert process.stderr is not None
    lines: list[str] = []
    url = None
    for line in process.stderr:
        lines.append(line)
        event = json.loads(line)
        url = event.get("url", url)
        if event.get("event") == "agent.ready":
            break
    assert url is not None, "".join(lines)
    stderr = process.stderr
    reader = threading.Thread(target=lambda: lines.extend(stderr), daemon=True)
    reader.start()
    try:
        yield url, process, lines
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=30)
        reader.join(timeout=10)
        stderr.close()


def _metric(url: str, name: str) -> float:
    for line in httpx.get(f"{url}/metrics", timeout=5).text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"no metric {name}")


def test_more_held_connections_than_descriptors_leave_the_daemon_serving(
    limited_agent: tuple[str, subprocess.Popen[str], list[str]],
) -> None:
    url, process, lines = limited_agent
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 4096), max(hard, 4096)))
    host, port = url.removeprefix("http://").split(":")
    held: list[socket.socket] = []
    try:
        for _ in range(NOFILE * 2):  # twice the agent's whole descriptor table
            conn = socket.create_connection((host, int(port)), timeout=5)
            conn.sendall(b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\n")  # never finished
            held.append(conn)
        time.sleep(HEADER_TIMEOUT + 2)
        # The attacker still holds every socket; the agent has closed its ends.
        started = time.monotonic()
        answer = httpx.get(f"{url}/api/v1/health", timeout=5)
        assert answer.status_code == 200
        assert time.monotonic() - started < 1.0
        assert answer.json()["data"]["components"]["background"]["status"] == "healthy"
        assert _metric(url, "hostagent_http_connections_refused_total") > 0
        assert _metric(url, "hostagent_http_connections_timed_out_total") > 0
    finally:
        for conn in held:
            conn.close()
    assert process.poll() is None, "".join(lines[-20:])
    # The spool kept rescanning all along: a job dropped now is taken.
    response = httpx.post(
        f"{url}/api/v1/jobs",
        json={
            "version": "1.0",
            "kind": "Test",
            "operation": "system.echo",
            "payload": {"type": "system.echo.v1", "data": {}},
        },
        timeout=10,
    )
    assert response.status_code == 201
    assert not any("Traceback" in line for line in lines), "".join(lines[-20:])
