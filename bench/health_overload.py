"""Health and /metrics latency while the job API is saturated (issue 14, finding 6).

Starts a real agent (tokens on, spool on, as deployed), then at once:

- saturated durable submits: bench/_load.py, closed loop, 32 keep-alive connections;
- 50 slowloris connections, each sending a header byte per second, never finishing;
- a 17 MB body posted again and again (refused with 413);

and meanwhile probes GET /api/v1/health and GET /metrics every 20 ms, each on
a new connection (as an orchestrator's probe does). Prints p50/p99 of both;
the target is p99 <= 50 ms.

Usage: python bench/health_overload.py [--seconds 30]
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, bench/ would shadow the standard library's `http` (see bench/http.py).
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402

from agent.transports.http.auth import create_token  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TARGET_P99_MS = 50.0
BIG_BODY = 17 * 1024 * 1024


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))] if ordered else 0.0


def start_agent(work: Path, token_entry: dict[str, object]) -> tuple[subprocess.Popen[str], int]:
    env = {**os.environ, "HOSTAGENT_HTTP__TOKENS": json.dumps([token_entry])}
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "agent",
            "run",
            "--state-dir",
            str(work / "state"),
            "--spool-dir",
            str(work / "spool"),
            "--libvirt-uri",
            "test:///default",
            "--http-bind",
            "127.0.0.1:0",
            "--log-format",
            "json",
        ],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stderr is not None
    port = 0
    for line in process.stderr:
        event = json.loads(line)
        if "url" in event:
            port = int(event["url"].rsplit(":", 1)[1])
        if event.get("event") == "agent.ready":
            break
    if not port:
        raise SystemExit("the agent did not start")
    threading.Thread(target=lambda: [None for _ in process.stderr or []], daemon=True).start()
    return process, port


def slowloris(port: int, count: int, stop: threading.Event) -> None:
    conns = []
    for _ in range(count):
        conn = socket.create_connection(("127.0.0.1", port))
        conn.sendall(b"POST /api/v1/jobs HTTP/1.1\r\nHost: x\r\n")
        conns.append(conn)
    while not stop.wait(1.0):
        for index, conn in enumerate(conns):
            try:
                conn.sendall(b"X")
            except OSError:  # closed by the header deadline: come back, as an attacker does
                conns[index] = socket.create_connection(("127.0.0.1", port))
                conns[index].sendall(b"POST /api/v1/jobs HTTP/1.1\r\nHost: x\r\n")
    for conn in conns:
        conn.close()


def big_bodies(port: int, token: str, stop: threading.Event) -> None:
    chunk = b"a" * (1 << 20)
    while not stop.is_set():
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
                head = (
                    "POST /api/v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                    f"Authorization: Bearer {token}\r\nContent-Length: {BIG_BODY}\r\n\r\n"
                )
                conn.sendall(head.encode())
                for _ in range(BIG_BODY >> 20):
                    conn.sendall(chunk)
                conn.recv(4096)
        except OSError:
            time.sleep(0.05)


def probe(port: int, path: str, token: str) -> float:
    started = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(
            f"GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
            "Connection: close\r\n\r\n".encode()
        )
        head = conn.recv(65536)
        while conn.recv(65536):
            pass
    if not head.startswith(b"HTTP/1.1 200"):
        raise SystemExit(f"{path}: {head[:80]!r}")
    return (time.perf_counter() - started) * 1000


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=30.0)
    args = parser.parse_args()
    token, entry = create_token("bench", ["admin"])
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        agent, port = start_agent(work, entry.model_dump())
        template = work / "job.json"
        template.write_text(
            json.dumps(
                {
                    "version": "1.0",
                    "job_id": "h-{n}",
                    "kind": "Bench",
                    "operation": "system.echo",
                    "payload": {"type": "system.echo.v1", "data": {}},
                }
            )
        )
        load = subprocess.Popen(
            [
                sys.executable,
                "-P",  # bench/ on sys.path would shadow the standard library (inspect.py)
                str(ROOT / "bench" / "_load.py"),
                *("--port", str(port), "--path", "/api/v1/jobs", "--method", "POST"),
                *("--body-template", str(template), "--conns", "32"),
                *("--seconds", str(args.seconds), "--header", f"Authorization: Bearer {token}"),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        stop = threading.Event()
        threads = [
            threading.Thread(target=slowloris, args=(port, 50, stop), daemon=True),
            threading.Thread(target=big_bodies, args=(port, token, stop), daemon=True),
        ]
        for thread in threads:
            thread.start()
        time.sleep(1.0)  # let the load ramp up
        health: list[float] = []
        scraped: list[float] = []
        deadline = time.monotonic() + args.seconds - 2
        while time.monotonic() < deadline:
            health.append(probe(port, "/api/v1/health", token))
            scraped.append(probe(port, "/metrics", token))
            time.sleep(0.02)
        stop.set()
        submits = json.loads(load.communicate()[0])
        agent.send_signal(signal.SIGTERM)
        agent.wait(60)
    print(
        f"submits under test  {submits['rate']:8.0f} req/s  p99 {submits['p99_ms']:.1f} ms  "
        f"codes {submits['codes']}"
    )
    for name, values in (("GET /api/v1/health", health), ("GET /metrics", scraped)):
        print(
            f"{name:19} {len(values):5} probes  p50 {percentile(values, 0.5):6.2f} ms  "
            f"p99 {percentile(values, 0.99):6.2f} ms  max {max(values):6.2f} ms"
        )
    worst = max(percentile(health, 0.99), percentile(scraped, 0.99))
    print(f"target p99 <= {TARGET_P99_MS:.0f} ms: {'met' if worst <= TARGET_P99_MS else 'MISSED'}")
    return 0 if worst <= TARGET_P99_MS else 1


if __name__ == "__main__":
    sys.exit(main())
