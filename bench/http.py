"""HTTP API throughput and latency, against three ceilings and the disk's fsync floor.

Starts a real agent process (tokens on, spool on, as deployed) and three
hello-world servers, each its own process, answering the same small JSON:
- quart-trio: a bare QuartTrio app served the agent's way (stock hypercorn
  over the agent's capped listener: agent.transports.http.transport's
  hypercorn_settings and serve_asgi);
- raw ASGI: a bare ASGI callable on that same hypercorn set-up (what the hot
  routes really run on: the front router answers them without quart);
- trio + h11: a bare trio server speaking h11 itself (no ASGI server at all);
and the fsync floor: 4 KiB appends each followed by fdatasync, per second, on
the disk of the agent's state directory (a durable submit waits for one).
It drives the servers on
loopback with wrk (one thread, keep-alive HTTP/1.1, a few percent of a
core; bench/wrk.lua makes unique job ids and counts status codes):

- jobs also run (system.echo, 2 job slots, same process): durable submits,
  batch submits, and the latency at half the submit rate (open loop, from
  the scheduled time: bench/_load.py --rate);
- jobs only queued (both job slots hold long jobs: the HTTP transport and
  intake alone), in ROUNDS interleaved rounds of: the three ceilings (GET /
  on each hello-world server, 32 connections), the fsync floor, then every
  hot route: durable submits (POST /api/v1/jobs, 32 connections, each
  answered once committed), status GETs (GET /api/v1/jobs/{id}, 32
  connections), batch submits (POST /api/v1/jobs/batch of 500 jobs, 4
  connections), health (GET /api/v1/health) and GET /metrics (32
  connections). Each route's rate is taken per round against each of that
  round's ceilings and the medians printed; issue 11's targets are against
  the quart-trio ceiling.

Then checks that every acknowledged job is in the store.

Usage: python bench/http.py [--seconds 5] [--rounds 3] [--profile agent.prof]
       python bench/http.py --hello {quart,asgi,h11} PORT   (one ceiling server alone)
"""

from __future__ import annotations

import sys
from pathlib import Path

# This file is bench/http.py: run as a script, its directory would shadow the
# standard library's `http` package (which httpx imports).
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import argparse  # noqa: E402
import contextlib  # noqa: E402
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
CEILINGS = {"quart": "quart-trio hello", "asgi": "raw ASGI hello", "h11": "trio + h11 hello"}
# The hot GET routes (the front router's, beside the two submits), by name.
HOT_GETS = {"status": "/api/v1/jobs/probe", "health": "/api/v1/health", "metrics": "/metrics"}
HELLO = b'{"success":true,"data":"hello"}'


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
    parser.add_argument(
        "--submits-only",
        action="store_true",
        help="only rounds of the ceilings and durable submits (jobs queued), with CPU per request",
    )
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("bench/http.py drives the load with wrk: `make bench-http` installs it")

    token, entry = create_token("bench", ["admin"])
    auth = {"Authorization": f"Bearer {token}"}
    work = Path(tempfile.mkdtemp(prefix="bench-http-"))
    agent_port = free_port()
    hello_ports = {kind: free_port() for kind in CEILINGS}
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
    hellos = {
        kind: subprocess.Popen([sys.executable, __file__, "--hello", kind, str(port)], cwd=ROOT)
        for kind, port in hello_ports.items()
    }
    url = f"http://127.0.0.1:{agent_port}"
    try:
        wait_ready(f"{url}/api/v1/health", auth)
        for port in hello_ports.values():
            wait_ready(f"http://127.0.0.1:{port}/", {})
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

        if args.submits_only:
            acknowledged += submits_only(args, url, auth, hellos, hello_ports, submits)
            total = httpx.get(f"{url}/api/v1/jobs", params={"limit": 1}, headers=auth).json()
            print(f"acknowledged jobs {acknowledged}, jobs in the store {total['data']['total']}")
            return 0 if total["data"]["total"] >= acknowledged else 1
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
        acknowledged += hold_job_slots(url, auth)
        rounds: list[dict[str, dict[str, Any]]] = []
        for number in range(1, args.rounds + 1):
            print(f"-- round {number}: jobs only queued (both job slots busy), "
                  f"load average {load_average()}")  # fmt: skip
            measures: dict[str, dict[str, Any]] = {}
            for kind, title in CEILINGS.items():
                measures[kind] = measured(hellos[kind].pid, lambda kind=kind: wrk(
                    f"http://127.0.0.1:{hello_ports[kind]}/", conns=args.conns, seconds=seconds
                ))  # fmt: skip
                line(f"ceiling: {title} GET", measures[kind])
            floor = fsync_rate(work / "state", min(seconds, 2.0))
            print(f"{'fsync floor (fdatasync/s, state disk)':34} {floor:10.0f} /s", flush=True)
            measures["fsync"] = {"rate": floor}
            measures["single"] = submits("durable submits")
            for route, path in HOT_GETS.items():
                measures[route] = measured(agent.pid, lambda path=path: wrk(
                    f"{url}{path}", conns=args.conns, seconds=seconds, header=header
                ))  # fmt: skip
                line(f"{route} GETs", measures[route])
            measures["batch"] = batches(f"batch submits ({args.batch}/request)")
            rounds.append(measures)
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
        summary(rounds, args.batch)
        return 0 if total["total"] >= acknowledged else 1
    finally:
        for process in (agent, *hellos.values()):
            process.send_signal(signal.SIGTERM)
        for process in (agent, *hellos.values()):
            process.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)  # the store of 100k+ jobs: ~150 MB a run
        if args.profile:
            stats = pstats.Stats(str(args.profile))
            stats.sort_stats("tottime").print_stats(25)


def hold_job_slots(url: str, auth: dict[str, str]) -> int:
    """Both job slots hold long sleeps, so accepted jobs only queue; the jobs sent."""
    for slot in range(WORKERS):
        httpx.post(f"{url}/api/v1/jobs", json=sleep_document(f"hold-{slot}"), headers=auth)
    httpx.post(f"{url}/api/v1/jobs", json=echo_document("probe"), headers=auth)
    return WORKERS + 1


def submits_only(  # noqa: PLR0917 (main's state, handed over once)
    args: argparse.Namespace,
    url: str,
    auth: dict[str, str],
    hellos: dict[str, subprocess.Popen[bytes]],
    hello_ports: dict[str, int],
    submits: Callable[[str], dict[str, Any]],
) -> int:
    """Interleaved rounds of the quart and raw ASGI ceilings and durable submits, jobs
    queued: each rate against its round's ceilings, and the server's CPU per request
    (which the machine's load moves less than the rates). Returns the jobs sent."""
    sent = hold_job_slots(url, auth)
    rounds: list[dict[str, dict[str, Any]]] = []
    for number in range(1, args.rounds + 1):
        print(f"-- round {number}, load average {load_average()}")
        measures: dict[str, dict[str, Any]] = {}
        for kind in ("quart", "asgi"):
            measures[kind] = measured(hellos[kind].pid, lambda kind=kind: wrk(
                f"http://127.0.0.1:{hello_ports[kind]}/", conns=args.conns, seconds=args.seconds
            ))  # fmt: skip
            line(f"ceiling: {CEILINGS[kind]} GET", measures[kind])
        measures["single"] = submits("durable submits")
        rounds.append(measures)

    def cpu_us(figures: dict[str, Any]) -> float:
        return float(figures["server_cpu"]) / figures["rate"] * 1e6

    def median(figure: Callable[[dict[str, dict[str, Any]]], float]) -> float:
        return statistics.median(figure(r) for r in rounds)

    print(f"medians of {len(rounds)} rounds (load average {load_average()}):")
    for kind in ("quart", "asgi", "single"):
        title = "durable submits" if kind == "single" else CEILINGS[kind]
        rate = median(lambda r, kind=kind: r[kind]["rate"])
        cpu = median(lambda r, kind=kind: cpu_us(r[kind]))
        print(f"  {title:24} {rate:7.0f} req/s  {cpu:5.0f} us CPU/request")
    quart = median(lambda r: r["single"]["rate"] / r["quart"]["rate"])
    asgi = median(lambda r: r["single"]["rate"] / r["asgi"]["rate"])
    print(f"  durable submits / quart {quart:.3f} (target >= 0.8), / raw ASGI {asgi:.3f}")
    return sent + sum(r["single"]["codes"].get("201", 0) for r in rounds)


def summary(rounds: list[dict[str, dict[str, Any]]], batch: int) -> None:
    """Every hot route against each ceiling of its round, and issue 11's targets."""
    # Every hot route against each ceiling of the same round (jobs queued: the
    # transport and intake alone); medians over the rounds.
    print(f"{'medians of ' + str(len(rounds)) + ' rounds, req/s':36} {'rate':>7}  " + "  ".join(
        f"{'/ ' + kind:>8}" for kind in CEILINGS))  # fmt: skip
    routes = {"single": "durable single submits", **{r: f"{r} GETs" for r in HOT_GETS}}
    routes["batch"] = "batch submits (requests)"
    for route, title in routes.items():
        rate = statistics.median(r[route]["rate"] for r in rounds)
        shares = [
            statistics.median(r[route]["rate"] / r[kind]["rate"] for r in rounds)
            for kind in CEILINGS
        ]
        print(f"{title:36} {rate:7.0f}  " + "  ".join(f"{x:8.3f}" for x in shares))
    print(f"{'ceilings, req/s':36} {'':7}  " + "  ".join(
        f"{statistics.median(r[kind]['rate'] for r in rounds):8.0f}" for kind in CEILINGS
    ))  # fmt: skip
    floor = statistics.median(r["fsync"]["rate"] for r in rounds)
    single = statistics.median(r["single"]["rate"] for r in rounds)
    print(f"{'fsync floor, fdatasync/s':36} {floor:7.0f}  "
          f"(durable submits per fdatasync: {single / floor:.2f})")  # fmt: skip
    # Issue 11's targets, per round against that round's quart-trio ceiling.
    print(f"{'issue 11: median of ' + str(len(rounds)) + ' rounds':36} {'median':>6}  rounds")
    for name, figure, target in (
        ("durable single submits / quart", lambda r: r["single"]["rate"], 0.8),
        ("status GETs / quart", lambda r: r["status"]["rate"], 0.9),
        ("batch jobs/s per quart req/s", lambda r: r["batch"]["rate"] * batch, 10.0),
    ):
        shares = [figure(r) / r["quart"]["rate"] for r in rounds]
        share = statistics.median(shares)
        verdict = "MET" if share >= target else "MISSED"
        each = " ".join(f"{value:.2f}" for value in shares)
        print(f"{name:36} {share:6.2f}  [{each}] (target >= {target:g}) {verdict}")


def fsync_rate(directory: Path, seconds: float) -> float:
    """fdatasync per second after 4 KiB appends, in `directory` (the state disk)."""
    path = directory / "fsync-floor.bench"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        block, done = b"\0" * 4096, 0
        began = time.monotonic()
        while time.monotonic() - began < seconds:
            os.write(fd, block)
            os.fdatasync(fd)
            done += 1
        return done / (time.monotonic() - began)
    finally:
        os.close(fd)
        path.unlink()


def hello_listener(port: int) -> socket.socket:
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(1024)
    listener.setblocking(False)
    return listener


def quart_hello() -> Any:
    """Ceiling 1: a bare quart-trio app."""
    app = QuartTrio("hello")

    @app.get("/")
    async def index() -> Response:
        return Response(HELLO, content_type="application/json")

    return app


async def asgi_hello(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Ceiling 2: a raw ASGI app (no framework), as the front router's hot routes."""
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(HELLO))]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": HELLO})


async def h11_hello(stream: trio.SocketStream) -> None:
    """Ceiling 3: trio and h11 alone, keep-alive, no ASGI server."""
    with contextlib.suppress(trio.BrokenResourceError):  # wrk resets its connections at the end
        await _h11_answer(stream)


async def _h11_answer(stream: trio.SocketStream) -> None:
    import h11  # noqa: PLC0415 (hypercorn's own dependency; only this server needs it)

    conn = h11.Connection(h11.SERVER)
    headers = [("content-type", "application/json"), ("content-length", str(len(HELLO)))]
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            data = await stream.receive_some(65536)
            if not data:
                return
            conn.receive_data(data)
        elif isinstance(event, h11.Request):
            continue
        elif isinstance(event, h11.EndOfMessage):
            answer = conn.send(h11.Response(status_code=200, headers=headers))
            answer += conn.send(h11.Data(data=HELLO)) + conn.send(h11.EndOfMessage())
            await stream.send_all(answer)
            if conn.our_state is h11.MUST_CLOSE:
                return
            conn.start_next_cycle()
        elif isinstance(event, h11.ConnectionClosed):
            return


def serve_hello(kind: str, port: int) -> None:
    """One ceiling server until SIGTERM: quart and raw ASGI on the agent's hypercorn set-up."""
    listener = hello_listener(port)

    async def run() -> None:
        with trio.open_signal_receiver(signal.SIGTERM) as signals:
            async with trio.open_nursery() as nursery:
                if kind == "h11":
                    listeners = [trio.SocketListener(trio.socket.from_stdlib_socket(listener))]
                    nursery.start_soon(trio.serve_listeners, h11_hello, listeners)
                else:
                    app = quart_hello() if kind == "quart" else asgi_hello
                    settings = hypercorn_settings(HttpConfig(), None)
                    nursery.start_soon(serve_asgi, app, listener, settings)
                async for _ in signals:
                    nursery.cancel_scope.cancel()

    trio.run(run)


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--hello":
        serve_hello(sys.argv[2], int(sys.argv[3]))
    else:
        sys.exit(main())
