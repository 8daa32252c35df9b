"""List and point-read latencies as the store grows: 0, 100k and 1M jobs.

The store is made by the agent itself (its schema, triggers and indexes),
then filled between rounds with fast SQL in bulk (finished system.echo
jobs, as a host accumulates them), with the agent stopped. At each size a
real agent serves the HTTP API and one keep-alive client measures:
1. GET /api/v1/jobs?status=Completed&limit=50 and GET /api/v1/jobs?limit=50;
2. GET /api/v1/jobs/{id} alone, then while a second client lists
   ?status=Completed in a loop (reads must not queue behind each other).
Medians of --requests requests.

Usage: python bench/store_scale.py [--sizes 0,100000,1000000] [--requests 200]
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, this directory would shadow the standard library's `http` (bench/http.py).
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import argparse  # noqa: E402
import http.client  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import socket  # noqa: E402
import sqlite3  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from datetime import UTC, datetime, timedelta  # noqa: E402

_FILL_BATCH = 50_000


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start_agent(root: Path, port: int) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-m", "agent", "run", "--state-dir", str(root / "state")]
    argv += ["--spool-dir", str(root / "spool"), "--libvirt-uri", "test:///default"]
    argv += ["--insecure-no-auth", "--http-bind", f"127.0.0.1:{port}", "--log-level", "warning"]
    agent = subprocess.Popen(argv, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return agent
        except OSError:
            time.sleep(0.05)
    agent.kill()
    raise SystemExit("agent did not start")


def stop_agent(agent: subprocess.Popen[bytes]) -> None:
    agent.terminate()
    agent.wait(timeout=60)


def fill(db_path: Path, start: int, stop: int) -> None:
    """Finished jobs start..stop-1 (1% Failed), inserted in bulk, and their counts."""
    conn = sqlite3.connect(db_path, isolation_level=None)
    conn.execute("PRAGMA synchronous = OFF")  # a bench fixture, not the agent's writes
    document = json.dumps({"version": "1.0", "kind": "Bench", "operation": "system.echo"})
    # An hour ago: inside the retention window, so the agent's pruner leaves them.
    stamp = (datetime.now(UTC) - timedelta(hours=1)).isoformat(timespec="microseconds")
    stamp = stamp.replace("+00:00", "Z")
    for first in range(start, stop, _FILL_BATCH):
        rows = [
            (
                f"scale-{n:08d}",
                "system.echo",
                "Failed" if n % 100 == 0 else "Completed",
                5,
                "http",
                document,
                f"fp-{n}",
                stamp,
                stamp,
                stamp,
                '{"echo": {}}',
            )
            for n in range(first, min(first + _FILL_BATCH, stop))
        ]
        conn.execute("BEGIN")
        conn.executemany(
            "INSERT INTO jobs (job_id, operation, status, priority, transport, document, "
            "fingerprint, submitted_at, started_at, completed_at, result) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )
        # The agent counts new jobs as it inserts them (no insert trigger): so does the fill.
        conn.execute(
            "INSERT INTO job_counts (status, operation, n) SELECT status, operation, count(*) "
            "FROM jobs WHERE seq > (SELECT coalesce(max(seq), 0) FROM jobs) - ? "
            "GROUP BY status, operation "
            "ON CONFLICT (status, operation) DO UPDATE SET n = n + excluded.n",
            (len(rows),),
        )
        conn.execute("COMMIT")
    conn.close()


def timed_gets(port: int, paths: list[str]) -> list[float]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    times = []
    for path in paths:
        began = time.perf_counter()
        conn.request("GET", path)
        response = conn.getresponse()
        response.read()
        times.append((time.perf_counter() - began) * 1000)
        if response.status != 200:
            raise SystemExit(f"GET {path}: {response.status}")
    conn.close()
    return times


def measure(port: int, requests: int, point_id: str) -> dict[str, float]:
    figures = {}
    for name, path in (
        ("list_completed", "/api/v1/jobs?status=Completed&limit=50"),
        ("list_all", "/api/v1/jobs?limit=50"),
    ):
        timed_gets(port, [path] * 10)  # warm the connection and the page cache
        figures[name] = statistics.median(timed_gets(port, [path] * requests))
    point = f"/api/v1/jobs/{point_id}"
    timed_gets(port, [point] * 10)
    figures["get_alone"] = statistics.median(timed_gets(port, [point] * requests))
    stop = threading.Event()

    def lister() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        while not stop.is_set():
            conn.request("GET", "/api/v1/jobs?status=Completed")
            conn.getresponse().read()
        conn.close()

    other = threading.Thread(target=lister)
    other.start()
    try:
        time.sleep(0.2)
        figures["get_beside_list"] = statistics.median(timed_gets(port, [point] * requests))
    finally:
        stop.set()
        other.join()
    return figures


def verdict(ok: bool) -> str:
    return "MET" if ok else "MISSED"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="0,100000,1000000")
    parser.add_argument("--requests", type=int, default=200)
    args = parser.parse_args()
    sizes = [int(size) for size in args.sizes.split(",")]

    results: dict[int, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="hostagent-scale-") as tmp:
        root = Path(tmp)
        port = free_port()
        filled = 0
        for size in sizes:
            if size > filled:
                began = time.monotonic()
                fill(root / "state" / "jobs.sqlite3", filled, size)
                print(f"filled to {size} jobs in {time.monotonic() - began:.1f} s", flush=True)
                filled = size
            agent = start_agent(root, port)
            try:
                if size == 0:
                    # Something to read at every size: one job of the agent's own.
                    timed_gets(port, [])
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                    body = json.dumps(
                        {
                            "version": "1.0",
                            "job_id": "scale-point",
                            "kind": "Bench",
                            "operation": "system.echo",
                            "payload": {"type": "system.echo.v1", "data": {}},
                        }
                    )
                    headers = {"Content-Type": "application/json"}
                    conn.request("POST", "/api/v1/jobs", body=body, headers=headers)
                    conn.getresponse().read()
                    conn.close()
                results[size] = measure(port, args.requests, "scale-point")
            finally:
                stop_agent(agent)
            shown = "  ".join(f"{k}={v:.2f}ms" for k, v in results[size].items())
            print(f"{size:>9} jobs: {shown}")

    print(f"cpus={os.cpu_count()} medians of {args.requests} requests")
    largest = max(sizes)
    top = results[largest]
    print(
        f"GET ?status=Completed&limit=50 at {largest} jobs: {top['list_completed']:.2f} ms "
        f"(empty {results[min(sizes)]['list_completed']:.2f} ms; target <= 10) "
        f"{verdict(top['list_completed'] <= 10)}"
    )
    print(
        f"GET ?limit=50 at {largest} jobs: {top['list_all']:.2f} ms (target <= 5) "
        f"{verdict(top['list_all'] <= 5)}"
    )
    ratio = top["get_beside_list"] / top["get_alone"]
    print(
        f"GET /jobs/{{id}} beside a client listing at {largest} jobs: p50 "
        f"{top['get_beside_list']:.2f} ms vs alone {top['get_alone']:.2f} ms = {ratio:.2f}x "
        f"(target <= 2x) {verdict(ratio <= 2)}"
    )


if __name__ == "__main__":
    main()
