"""HTTP API throughput and latency, against the ceiling of a bare quart-trio app.

Starts a real agent process (tokens on, spool on, as deployed) and a bare
quart-trio hello-world served the same way (stock hypercorn over the agent's
capped listener: agent.transports.http.transport's hypercorn_settings and
serve_asgi), then drives both on
loopback with wrk (one thread, keep-alive HTTP/1.1, a few percent of a
core; bench/wrk.lua makes unique job ids and counts status codes):

- jobs also run (system.echo, 2 job slots, same process): durable submits,
  batch submits, and the latency at half the submit rate (open loop, from
  the scheduled time: bench/_load.py --rate);
- jobs only queued (both job slots hold long jobs: the HTTP transport and
  intake alone), in ROUNDS interleaved rounds of: the ceiling (GET / on the
  hello-world app, 32 connections), durable submits (POST /api/v1/jobs, 32
  connections, each answered once committed), status GETs (GET
  /api/v1/jobs/{id}, 32 connections), batch submits (POST
  /api/v1/jobs/batch of 500 jobs, 4 connections). Issue 11's ratios are
  taken per round against that round's ceiling and their medians printed.

Then checks that every acknowledged job is in the store.

Usage: python bench/http.py [--seconds 5] [--rounds 3] [--profile agent.prof]
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
import shutil  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
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
WRK = ROOT / "bench" / "wrk.lua"
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


def measured(pid: int | None, run: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    before = cpu_seconds(pid) if pid else 0.0
    figures = run()
    if pid:
        figures["server_cpu"] = round((cpu_seconds(pid) - before) / figures["seconds"], 2)
    return figures


def wrk(
    url: str, *, conns: int, seconds: float, header: str = "", template: Path | None = None
) -> dict[str, Any]:
    """Closed loop: `conns` connections, each sending its next request on an answer."""
    duration = f"-d{max(1, round(seconds))}s"  # wrk takes whole seconds
    argv = ["wrk", "-t1", f"-c{conns}", duration, "--timeout", "30s", "-s", str(WRK)]
    if header:
        argv += ["-H", header]
    argv.append(url)
    if template is not None:
        argv += ["--", str(template), f"{time.time_ns():x}"]
    output = subprocess.run(argv, check=True, capture_output=True, text=True).stdout
    line_ = next(text for text in output.splitlines() if text.startswith("JSON "))
    figures: dict[str, Any] = json.loads(line_.removeprefix("JSON "))
    return figures


def paced(port: int, path: str, *args: str, seconds: float) -> dict[str, Any]:
    """Open loop at a fixed rate, latency from the scheduled time (bench/_load.py)."""
    output = subprocess.run(
        [*LOAD, "--port", str(port), "--path", path, "--seconds", str(seconds), *args],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    figures: dict[str, Any] = json.loads(output)
    return figures


def line(name: str, figures: dict[str, Any], unit: str = "req/s", scale: int = 1) -> None:
    print(
        f"{name:34} {figures['rate'] * scale:10.0f} {unit:7}  p50 {figures['p50_ms']:7.2f} ms  "
        f"p99 {figures['p99_ms']:7.2f} ms  codes {figures['codes']}"
        + (f"  server cpu {figures['server_cpu']:.2f}" if "server_cpu" in figures else ""),
        flush=True,
    )


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--conns", type=int, default=32)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--profile", type=Path, help="run the agent under cProfile, dump here")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("bench/http.py drives the load with wrk: `make bench-http` installs it")

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
        header = f"Authorization: Bearer {token}"
        template = work / "submit.json"
        template.write_text(json.dumps(echo_document("s-{n}")))
        batch_template = work / "batch.json"
        batch_template.write_text(
            json.dumps({"jobs": [echo_document(f"b-{{n}}-{i}") for i in range(args.batch)]})
        )
        seconds = args.seconds
        print(
            f"loopback, wrk, {args.conns} connections, {seconds:g} s per phase, "
            f"cpus {os.cpu_count()}, load average {load_average()}"
        )
        acknowledged = 0

        def submits(name: str) -> dict[str, Any]:
            nonlocal acknowledged
            figures = measured(agent.pid, lambda: wrk(
                f"{url}/api/v1/jobs", conns=args.conns, seconds=seconds, header=header,
                template=template,
            ))  # fmt: skip
            acknowledged += figures["codes"].get("201", 0)
            line(name, figures)
            return figures

        def batches(name: str) -> dict[str, Any]:
            nonlocal acknowledged
            figures = measured(agent.pid, lambda: wrk(
                f"{url}/api/v1/jobs/batch", conns=4, seconds=seconds, header=header,
                template=batch_template,
            ))  # fmt: skip
            acknowledged += figures["codes"].get("200", 0) * args.batch
            line(name, figures, "jobs/s", args.batch)
            return figures

        def paced_submits(name: str, rate: float) -> dict[str, Any]:
            nonlocal acknowledged
            figures = measured(agent.pid, lambda: paced(
                agent_port, "/api/v1/jobs", "--conns", str(args.conns), "--header", header,
                "--method", "POST", "--body-template", str(template), "--rate", str(rate),
                seconds=seconds,
            ))  # fmt: skip
            acknowledged += figures["codes"].get("201", 0)
            line(name, figures)
            return figures

        print("-- jobs also run (system.echo, 2 job slots, same process)")
        running = submits("durable submits")
        wait_idle(url, auth)
        running_batch = batches(f"batch submits ({args.batch}/request)")
        wait_idle(url, auth)
        running_paced = paced_submits(
            f"submits paced at {running['rate'] / 2:.0f}/s", running["rate"] / 2
        )
        wait_idle(url, auth)

        # Intake alone: both job slots hold long sleeps, so accepted jobs only queue.
        for slot in range(WORKERS):
            httpx.post(f"{url}/api/v1/jobs", json=sleep_document(f"hold-{slot}"), headers=auth)
        httpx.post(f"{url}/api/v1/jobs", json=echo_document("probe"), headers=auth)
        acknowledged += WORKERS + 1
        rounds: list[dict[str, dict[str, Any]]] = []
        for number in range(1, args.rounds + 1):
            print(f"-- round {number}: jobs only queued (both job slots busy), "
                  f"load average {load_average()}")  # fmt: skip
            ceiling = measured(hello.pid, lambda: wrk(
                f"http://127.0.0.1:{hello_port}/", conns=args.conns, seconds=seconds
            ))  # fmt: skip
            line("ceiling: bare quart-trio GET", ceiling)
            queued = submits("durable submits")
            status = measured(agent.pid, lambda: wrk(
                f"{url}/api/v1/jobs/probe", conns=args.conns, seconds=seconds, header=header
            ))  # fmt: skip
            line("status GETs", status)
            queued_batch = batches(f"batch submits ({args.batch}/request)")
            rounds.append(
                {"ceiling": ceiling, "single": queued, "status": status, "batch": queued_batch}
            )
        queued_paced = paced_submits(
            f"submits paced at {rounds[-1]['single']['rate'] / 2:.0f}/s",
            rounds[-1]["single"]["rate"] / 2,
        )

        total = httpx.get(f"{url}/api/v1/jobs", params={"limit": 1}, headers=auth).json()["data"]
        print(f"acknowledged jobs {acknowledged}, jobs in the store {total['total']}")
        print(f"load average {load_average()}")
        print()
        for name, single, batch, paced_ in (
            ("jobs run", running, running_batch, running_paced),
            ("jobs queued", rounds[-1]["single"], rounds[-1]["batch"], queued_paced),
        ):
            batch_rate = batch["rate"] * args.batch
            print(
                f"{name:12} single {single['rate']:6.0f} req/s  batch {batch_rate:6.0f} jobs/s  "
                f"p99 at half rate {paced_['p99_ms']:5.2f} ms (<= {P99_TARGET_MS:g} "
                f"{'ok' if paced_['p99_ms'] <= P99_TARGET_MS else 'MISSED'})"
            )
        # Issue 11's targets (jobs queued: the transport and intake alone), per round.
        print(f"{'median of ' + str(len(rounds)) + ' rounds':36} {'median':>6}  rounds")
        for name, figure, target in (
            ("durable single submits / ceiling", lambda r: r["single"]["rate"], 0.8),
            ("status GETs / ceiling", lambda r: r["status"]["rate"], 0.9),
            ("batch jobs/s per ceiling req/s", lambda r: r["batch"]["rate"] * args.batch, 10.0),
        ):
            shares = [figure(r) / r["ceiling"]["rate"] for r in rounds]
            share = statistics.median(shares)
            verdict = "MET" if share >= target else "MISSED"
            each = " ".join(f"{value:.2f}" for value in shares)
            print(f"{name:36} {share:6.2f}  [{each}] (target >= {target:g}) {verdict}")
        ceilings = " ".join(f"{r['ceiling']['rate']:.0f}" for r in rounds)
        print(f"{'ceiling req/s':36} {'':6}  [{ceilings}]")
        return 0 if total["total"] >= acknowledged else 1
    finally:
        for process in (agent, hello):
            process.send_signal(signal.SIGTERM)
        for process in (agent, hello):
            process.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)  # the store of 100k+ jobs: ~150 MB a run
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
