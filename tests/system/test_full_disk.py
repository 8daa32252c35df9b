"""Finding 3 on a real process: the job store's disk fills to the brim and frees again.

The state directory is a small tmpfs filled up while the agent runs: new jobs
get 503 (Retry-After, the disk named), never a 500; health says the store's
disk is full; the spool leaves its files where they are; the daemon lives;
and once space returns it carries on by itself with every acknowledged job.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.jobs import job
from tests.spoolkit import drop
from tests.tmpfs import small_tmpfs


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    with small_tmpfs(tmp_path / "state", "8m") as mount:
        yield mount


def _start(state: Path, spool: Path) -> tuple[subprocess.Popen[str], str, list[str]]:
    env = {**os.environ, "HOSTAGENT_STATE_MIN_FREE_BYTES": "0"}  # the real SQLITE_FULL
    process = subprocess.Popen(
        [
            *(sys.executable, "-m", "agent", "run", "--log-format", "json"),
            *("--state-dir", str(state), "--spool-dir", str(spool)),
            *("--libvirt-uri", "test:///default", "--http-bind", "127.0.0.1:0"),
            "--insecure-no-auth",
        ],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
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
    threading.Thread(target=lambda: lines.extend(stderr), daemon=True).start()
    return process, url, lines


def _stop(process: subprocess.Popen[str]) -> int:
    process.send_signal(signal.SIGTERM)
    code = process.wait(timeout=60)
    assert process.stderr is not None
    time.sleep(0.1)  # the reader thread reaches the end of the pipe
    process.stderr.close()
    return code


def _fill(folder: Path) -> Path:
    filler = folder / "filler"
    with filler.open("wb") as out, contextlib.suppress(OSError):
        while True:
            out.write(b"\0" * 65536)
            out.flush()
    return filler


def _echo(job_id: str, **extra: Any) -> dict[str, Any]:
    return {
        "version": "1.0",
        "job_id": job_id,
        "kind": "Test",
        "operation": "system.echo",
        "payload": {"type": "system.echo.v1", "data": {"pad": "x" * 2000}},
        **extra,
    }


@pytest.mark.slow
def test_a_full_store_disk_answers_503_and_recovers_by_itself(
    small_disk: Path, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    process, url, lines = _start(small_disk, spool)
    http = httpx.Client(base_url=url, timeout=30)
    acknowledged: list[str] = []
    try:
        # A job that is running while the disk fills must end well afterwards.
        slow = {**_echo("slow"), "operation": "system.sleep"}
        slow["payload"] = {"type": "system.sleep.v1", "data": {"seconds": 2}}
        assert http.post("/api/v1/jobs", json=slow).status_code == 201
        acknowledged.append("slow")
        filler = _fill(small_disk)
        codes: dict[int, int] = {}
        refusal: dict[str, Any] = {}
        for number in range(300):
            response = http.post("/api/v1/jobs", json=_echo(f"j{number}"))
            codes[response.status_code] = codes.get(response.status_code, 0) + 1
            assert response.status_code in (201, 503), response.text
            if response.status_code == 201:
                acknowledged.append(f"j{number}")
            else:
                refusal = response.json()
                assert response.headers["Retry-After"]
        assert codes.get(503), codes
        assert refusal["error"] == "QUEUE_FULL"
        assert str(small_disk) in refusal["details"]["reason"]
        drop(spool, "while-full.json", job("while-full"))
        time.sleep(2.5)  # the slow job's end meets the full disk; a health refresh passes
        health = http.get("/api/v1/health").json()["data"]
        assert health["status"] == "unhealthy"
        assert str(small_disk) in health["components"]["store"]["reason"]
        assert process.poll() is None, "".join(lines[-20:])
        assert not list((spool / "failed").iterdir())  # nothing quarantined for a full disk
        filler.unlink()
        # No restart: the agent notices by itself (bounded generously: a shared CI host).
        deadline = time.monotonic() + 90
        while http.post("/api/v1/jobs", json=_echo("after")).status_code != 201:
            assert time.monotonic() < deadline, "no recovery"
            time.sleep(0.2)
        acknowledged.append("after")
        for job_id in [*acknowledged, "while-full"]:
            while True:
                status = http.get(f"/api/v1/jobs/{job_id}")
                if status.status_code == 200 and status.json()["data"]["status"] == "Completed":
                    break
                assert time.monotonic() < deadline, (job_id, status.text)
                time.sleep(0.1)
        while http.get("/api/v1/health").json()["data"]["status"] != "healthy":
            assert time.monotonic() < deadline, "health did not recover"
            time.sleep(0.2)
        assert not any('"level": "critical"' in line for line in lines)
        assert not any("Traceback" in line for line in lines), "".join(lines[-30:])
    finally:
        http.close()
        assert _stop(process) == 0, "".join(lines[-30:])
    # Restarted, everything acknowledged is still there.
    conn_check = subprocess.run(
        [sys.executable, "-m", "agent", "jobs", "--state-dir", str(small_disk), "--limit", "1000"],
        capture_output=True,
        text=True,
        check=True,
    )
    for job_id in acknowledged:
        assert job_id in conn_check.stdout


@pytest.mark.slow
def test_files_have_their_modes_whatever_the_umask(tmp_path: Path) -> None:
    """Finding 7: store 0600 in 0700, results 0640, spool dirs as the tmpfiles say."""
    state, spool = tmp_path / "state", tmp_path / "spool"
    old = os.umask(0)
    try:
        process, url, _ = _start(state, spool)
    finally:
        os.umask(old)
    try:
        assert httpx.post(f"{url}/api/v1/jobs", json=_echo("m1")).status_code == 201
        drop(spool, "m2.json", job("m2"))
        result = spool / "done" / "m2.result.json"
        deadline = time.monotonic() + 30
        while not result.exists():
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        _stop(process)
    modes = {
        path.name: path.stat().st_mode & 0o7777
        for path in [state, *state.iterdir(), *spool.iterdir(), result]
    }
    assert modes["state"] == 0o751  # others may reach the local socket, not list
    assert modes["jobs.sqlite3"] == 0o600
    assert all(mode & 0o077 == 0 for name, mode in modes.items() if name.startswith("jobs"))
    assert modes["m2.result.json"] == 0o640
    assert modes["done"] == 0o2750
    assert modes["incoming"] == 0o2770
    assert not any(mode & 0o002 for mode in modes.values())  # nothing writable by others
