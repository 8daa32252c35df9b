"""HTTP API throughput and latency, against the ceiling of a bare quart-trio app.

Starts a real agent process (tokens on, spool on, as deployed) and a bare
quart-trio hello-world served with the same hypercorn settings
(agent.transports.http.hypercorn_settings/serve_asgi), then drives both
from a separate load process (bench/_load.py: one thread, keep-alive
HTTP/1.1) on loopback:

1. ceiling: GET / on the hello-world app, 32 connections;
2. durable submits: POST /api/v1/jobs of system.echo, 32 connections
   (each answer is sent after the job is committed; the jobs also run);
3. status GETs: GET /api/v1/jobs/{id}, 32 connections;
4. batch submits: POST /api/v1/jobs/batch of 500 jobs, 4 connections;
5. latency at half the submit rate (open loop, from the scheduled time).

Then checks that every acknowledged job is in the store.

Usage: python bench/http.py [--seconds 5] [--profile agent.prof]
"""

from __future__ import annotations

import sys
from pathlib import Path

# This file is bench/http.py: run as a script, its directory would shadow the
# standard library's `http` package (which httpx imports).
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import pstats  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

import httpx  # noqa: E402
import trio  # noqa: E402
from quart import Response  # noqa: E402
from quart_trio import QuartTrio  # noqa: E402

from agent.transports.http.auth import create_token  # noqa: E402
from agent.transports.http.settings import HttpConfig  # noqa: E402
from agent.transports.http.transport import hypercorn_settings, serve_asgi  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
LOAD = [sys.executable, str(ROOT / "bench" / "_load.py")]
CEILING_TARGET = 0.80
BATCH_TARGET = 10_000
P99_TARGET_MS = 10.0
WORKERS = 2  # max_concurrent_jobs of the benchmarked agent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def echo_document(job_id: str) -> dict[str, Any]:
    return {
        "version": "1.0",
        "job_id": job_id,
        "kind": "Bench",
        "operation": "system.echo",
        "payload": {"type": "system.echo.v1", "data": {"message": "hello"}},
    }


def sleep_document(job_id: str) -> dict[str, Any]:
    return {
        "version": "1.0",
        "job_id": job_id,
        "kind": "Bench",
        "operation": "system.sleep",
        "payload": {"type": "system.sleep.v1", "data": {"seconds": 3600}},
    }


def wait_ready(url: str, headers: dict[str, str], limit: float = 30.0) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, headers=headers, timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise SystemExit(f"{url} did not come up")


def wait_idle(url: str, headers: dict[str, str], limit: float = 300.0) -> None:
    """Until the agent has run every queued job (so phases do not overlap)."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        store = httpx.get(f"{url}/api/v1/health", headers=headers).json()["data"]["components"]
        if store["store"]["queue_depth"] == 0 and store["store"]["running"] == 0:
            return
        time.sleep(0.2)
    raise SystemExit("the agent did not drain its queue")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def load(
    port: int, path: str, *args: str, seconds: float, pid: int | None = None
) -> dict[str, Any]:
    before = cpu_seconds(pid) if pid else 0.0
    output = subprocess.run(
        [*LOAD, "--port", str(port), "--path", path, "--seconds", str(seconds), *args],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    figures: dict[str, Any] = json.loads(output)
    if pid:
        figures["server_cpu"] = round((cpu_seconds(pid) - before) / figures["seconds"], 2)
    return figures


def line(name: str, figures: dict[str, Any], unit: str = "req/s", scale: int = 1) -> None:
    print(
        f"{name:34} {figures['rate'] * scale:10.0f} {unit:7}  p50 {figures['p50_ms']:7.2f} ms  "
        f"p99 {figures['p99_ms']:7.2f} ms  codes {figures['codes']}"
        + (f"  server cpu {figures['server_cpu']:.2f}" if "server_cpu" in figures else "")
    )


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--conns", type=int, default=32)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--profile", type=Path, help="run the agent under cProfile, dump here")
    args = parser.parse_args()

    token, entry = create_token("bench", ["admin"])
    auth = {"Authorization": f"Bearer {token}"}
    work = Path(tempfile.mkdtemp(prefix="bench-http-"))
    agent_port, hello_port = free_port(), free_port()
    env = {
        **os.environ,
        "HOSTAGENT_HTTP__TOKENS": json.dumps([entry.model_dump()]),
        "HOSTAGENT_MAX_PENDING_JOBS": "1000000",
        "HOSTAGENT_MAX_CONCURRENT_JOBS": str(WORKERS),
        # Its long "hold" jobs are interrupted at the end rather than waited for.
        "HOSTAGENT_SERVICE__DRAIN_SECONDS": "1",
        "HOSTAGENT_LIBVIRT__URI": "test:///default",
    }
    profile = ["-m", "cProfile", "-o", str(args.profile)] if args.profile else []
    agent = subprocess.Popen(
        [
            sys.executable,
            *profile,
            "-m",
            "agent",
            "run",
            "--state-dir",
            str(work / "state"),
            "--spool-dir",
            str(work / "spool"),
            "--http-bind",
            f"127.0.0.1:{agent_port}",
            "--log-level",
            "warning",
        ],
        env=env,
        cwd=ROOT,
    )
    hello = subprocess.Popen([sys.executable, __file__, "--hello", str(hello_port)], cwd=ROOT)
    url = f"http://127.0.0.1:{agent_port}"
    try:
        wait_ready(f"{url}/api/v1/health", auth)
        wait_ready(f"http://127.0.0.1:{hello_port}/", {})
        header = ["--header", f"Authorization: Bearer {token}"]
        template = work / "submit.json"
        template.write_text(json.dumps(echo_document("s-{n}")))
        batch_template = work / "batch.json"
        batch_template.write_text(
            json.dumps({"jobs": [echo_document(f"b-{{n}}-{i}") for i in range(args.batch)]})
        )
        conns = ["--conns", str(args.conns)]
        seconds = args.seconds
        print(f"loopback, {args.conns} connections, {seconds:g} s per phase, cpus {os.cpu_count()}")

        ceiling = load(hello_port, "/", *conns, seconds=seconds, pid=hello.pid)
        line("ceiling: bare quart-trio GET", ceiling)
        acknowledged = 0

        def submits(name: str, *extra: str) -> dict[str, Any]:
            nonlocal acknowledged
            figures = load(
                agent_port, "/api/v1/jobs", *conns, *header, "--method", "POST",
                "--body-template", str(template), *extra, seconds=seconds, pid=agent.pid,
            )  # fmt: skip
            acknowledged += figures["codes"].get("201", 0)
            line(name, figures)
            return figures

        def batches(name: str) -> dict[str, Any]:
            nonlocal acknowledged
            figures = load(
                agent_port, "/api/v1/jobs/batch", "--conns", "4", *header, "--method", "POST",
                "--body-template", str(batch_template), seconds=seconds, pid=agent.pid,
            )  # fmt: skip
            acknowledged += figures["codes"].get("200", 0) * args.batch
            line(name, figures, "jobs/s", args.batch)
            return figures

        # Intake alone: both job slots hold long sleeps, so accepted jobs only queue.
        for slot in range(WORKERS):
            httpx.post(f"{url}/api/v1/jobs", json=sleep_document(f"hold-{slot}"), headers=auth)
        httpx.post(f"{url}/api/v1/jobs", json=echo_document("probe"), headers=auth)
        acknowledged += WORKERS + 1
        print("-- jobs only queued (both job slots busy): the HTTP transport and intake")
        queued = submits("durable submits")
        queued_batch = batches(f"batch submits ({args.batch}/request)")
        status = load(
            agent_port, "/api/v1/jobs/probe", *conns, *header, seconds=seconds, pid=agent.pid
        )
        line("status GETs", status)
        queued_paced = submits(
            f"submits paced at {queued['rate'] / 2:.0f}/s", "--rate", str(queued["rate"] / 2)
        )
        for slot in range(WORKERS):
            httpx.post(f"{url}/api/v1/jobs/hold-{slot}/cancel", headers=auth)
        wait_idle(url, auth)
        print("-- jobs also run (system.echo, 2 job slots, same process)")
        running = submits("durable submits")
        running_batch = batches(f"batch submits ({args.batch}/request)")
        wait_idle(url, auth)
        running_paced = submits(
            f"submits paced at {running['rate'] / 2:.0f}/s", "--rate", str(running["rate"] / 2)
        )
        wait_idle(url, auth)

        total = httpx.get(f"{url}/api/v1/jobs", params={"limit": 1}, headers=auth).json()["data"]
        print(f"acknowledged jobs {acknowledged}, jobs in the store {total['total']}")
        print()
        for name, single, batch, paced in (
            ("jobs queued", queued, queued_batch, queued_paced),
            ("jobs run", running, running_batch, running_paced),
        ):
            share = single["rate"] / ceiling["rate"]
            batch_rate = batch["rate"] * args.batch
            print(
                f"{name:12} single/ceiling {share:4.0%} (>= {CEILING_TARGET:.0%} "
                f"{'ok' if share >= CEILING_TARGET else 'MISSED'})  "
                f"batch {batch_rate:6.0f} jobs/s (>= {BATCH_TARGET} "
                f"{'ok' if batch_rate >= BATCH_TARGET else 'MISSED'})  "
                f"p99 at half rate {paced['p99_ms']:5.2f} ms (<= {P99_TARGET_MS:g} "
                f"{'ok' if paced['p99_ms'] <= P99_TARGET_MS else 'MISSED'})"
            )
        # Issue 11's targets (jobs queued: the transport and intake alone).
        for name, share, target in (
            ("durable single submits / ceiling", queued["rate"] / ceiling["rate"], 0.8),
            ("status GETs / ceiling", status["rate"] / ceiling["rate"], 0.9),
            (
                "batch jobs/s per ceiling req/s",
                queued_batch["rate"] * args.batch / ceiling["rate"],
                10.0,
            ),
        ):
            verdict = "MET" if share >= target else "MISSED"
            print(f"{name:36} {share:6.2f} (target >= {target:g}) {verdict}")
        return 0 if total["total"] >= acknowledged else 1
    finally:
        for process in (agent, hello):
            process.send_signal(signal.SIGTERM)
        for process in (agent, hello):
            process.wait(timeout=30)
        if args.profile:
            stats = pstats.Stats(str(args.profile))
            stats.sort_stats("tottime").print_stats(25)


def serve_hello(port: int) -> None:
    """The ceiling: a bare quart-trio app on the agent's own hypercorn set-up."""
    app = QuartTrio("hello")

    @app.get("/")
    async def index() -> Response:
        return Response(b'{"success":true,"data":"hello"}', content_type="application/json")

    listener = socket.socket()
    listener.bind(("127.0.0.1", port))
    listener.listen(1024)
    listener.setblocking(False)

    async def run() -> None:
        with trio.open_signal_receiver(signal.SIGTERM) as signals:
            async with trio.open_nursery() as nursery:
                settings = hypercorn_settings(HttpConfig(), None)
                nursery.start_soon(serve_asgi, app, listener, settings)
                async for _ in signals:
                    nursery.cancel_scope.cancel()

    trio.run(run)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--hello":
        serve_hello(int(sys.argv[2]))
    else:
        sys.exit(main())
