"""hostagent beside Celery+Redis on the same machine, interleaved, with ratios.

Celery is the peer a fleet would otherwise use: a Redis broker and result
backend, a 2-process prefork worker, a no-op task. It is installed into a
benchmark venv of its own (--bench-venv, created on first use with pip;
never the project's venv) and redis-server from Debian (apt-get).

Per round (--rounds, default 3), each side in turn:
1. spool end to end: 5,000 no-op jobs renamed into incoming/ at once, until
   all completed; Celery: 5,000 .delay() then every result fetched;
2. HTTP batch end to end: 10 POST /api/v1/jobs/batch of 500, until all completed;
3. one client, one job per request, 5,000 in a loop (submission rate):
   hostagent's durable POST /api/v1/jobs against Celery's .delay() loop with
   acks_late and Redis appendfsync always (durable) and plain.
Medians of the rounds; each target printed with MET or MISSED.

Usage: python bench/compare.py [--rounds 3] [--jobs 5000] [--e2e-only | --loops-only]
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
import shutil  # noqa: E402
import socket  # noqa: E402
import sqlite3  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from contextlib import contextmanager  # noqa: E402
from datetime import datetime  # noqa: E402

DEFAULT_BENCH_VENV = Path.home() / ".cache" / "hostagent-bench-venv"
CELERY_PIN = "celery[redis]==5.7.0"

CELERY_APP = """
import os
from celery import Celery

app = Celery("bench", broker=os.environ["BROKER"], backend=os.environ["BROKER"])
app.conf.update(
    task_acks_late=os.environ.get("DURABLE") == "1",
    worker_prefetch_multiplier=4,
    result_expires=3600,
    broker_connection_retry_on_startup=True,
)


@app.task(name="noop")
def noop():
    return None
"""

CELERY_CLIENT = """
import json, sys, time
from celeryapp import noop

mode, count = sys.argv[1], int(sys.argv[2])
noop.delay().get(timeout=60)  # worker up, connections made
began = time.perf_counter()
results = [noop.delay() for _ in range(count)]
sent = time.perf_counter()
if mode == "e2e":
    for result in results:
        result.get(timeout=300)
ended = time.perf_counter()
print(json.dumps({"rate": count / ((ended if mode == "e2e" else sent) - began)}))
"""


def document(job_id: str) -> dict[str, object]:
    return {
        "version": "1.0",
        "job_id": job_id,
        "kind": "Bench",
        "operation": "system.echo",
        "payload": {"type": "system.echo.v1", "data": {}},
    }


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def epoch(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


# --- hostagent ---


def cpu_seconds(pid: int) -> float:
    """A process's CPU time so far, user + system, all threads (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextmanager
def agent_running() -> Iterator[tuple[Path, int, int]]:
    with tempfile.TemporaryDirectory(prefix="hostagent-compare-") as tmp:
        root, port = Path(tmp), free_port()
        argv = [sys.executable, "-m", "agent", "run", "--state-dir", str(root / "state")]
        argv += ["--spool-dir", str(root / "spool"), "--libvirt-uri", "test:///default"]
        argv += ["--insecure-no-auth", "--http-bind", f"127.0.0.1:{port}"]
        argv += ["--log-level", "warning", "--max-concurrent", str(os.cpu_count() or 2)]
        agent = subprocess.Popen(argv, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise SystemExit("agent did not start") from None
                    time.sleep(0.05)
            yield root, port, agent.pid
        finally:
            agent.terminate()
            agent.wait(timeout=60)


def wait_completed(db_path: Path, prefix: str, count: int) -> float:
    """When the last of `count` jobs named prefix* completed (epoch seconds)."""
    db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    deadline = time.monotonic() + 300
    query = "SELECT count(*), max(completed_at) FROM jobs WHERE job_id LIKE ? AND completed_at"
    while True:
        done, last = db.execute(query, (f"{prefix}%",)).fetchone()
        if done >= count:
            db.close()
            return epoch(last)
        if time.monotonic() > deadline:
            raise SystemExit(f"only {done} of {count} {prefix} jobs completed")
        time.sleep(0.01)


def hostagent_spool(count: int) -> tuple[float, float]:
    """jobs/s, and the agent's CPU microseconds per job (the shared machine's
    load moves the first far more than the second)."""
    with agent_running() as (root, _, pid):
        spool = root / "spool"
        staged = []
        for n in range(count):
            path = spool / "tmp" / f"sp-{n}.json"
            path.write_bytes(json.dumps(document(f"sp-{n}")).encode())
            staged.append(path)
        os.sync()  # the writers' fsync, outside the timed part
        cpu = cpu_seconds(pid)
        first = time.time()
        for path in staged:
            path.rename(spool / "incoming" / path.name)
        last = wait_completed(root / "state" / "jobs.sqlite3", "sp-", count)
        return count / (last - first), (cpu_seconds(pid) - cpu) / count * 1e6


def hostagent_batch(count: int, per_batch: int = 500) -> float:
    with agent_running() as (root, port, _):
        bodies = [
            json.dumps(
                {"jobs": [document(f"hb-{n}") for n in range(first, min(first + per_batch, count))]}
            )
            for first in range(0, count, per_batch)
        ]
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        headers = {"Content-Type": "application/json"}
        first = time.time()
        for body in bodies:
            conn.request("POST", "/api/v1/jobs/batch", body=body, headers=headers)
            response = conn.getresponse()
            response.read()
            if response.status >= 300:
                raise SystemExit(f"batch answered {response.status}")
        conn.close()
        return count / (wait_completed(root / "state" / "jobs.sqlite3", "hb-", count) - first)


def hostagent_loop(count: int) -> float:
    with agent_running() as (_, port, _):
        bodies = [json.dumps(document(f"hl-{n}")) for n in range(count)]
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        headers = {"Content-Type": "application/json"}
        began = time.perf_counter()
        for body in bodies:
            conn.request("POST", "/api/v1/jobs", body=body, headers=headers)
            response = conn.getresponse()
            response.read()
            if response.status >= 300:
                raise SystemExit(f"submit answered {response.status}")
        elapsed = time.perf_counter() - began
        conn.close()
        return count / elapsed


# --- Celery ---


def ensure_bench_venv(venv: Path) -> Path:
    python = venv / "bin" / "python"
    check = [str(python), "-c", "import celery, redis"]
    if python.exists() and subprocess.run(check, capture_output=True, check=False).returncode == 0:
        return python
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", CELERY_PIN], check=True)
    return python


def ensure_redis() -> str:
    found = shutil.which("redis-server")
    if found is None:
        subprocess.run(["apt-get", "install", "-y", "-q", "redis-server"], check=True)
        found = shutil.which("redis-server") or "/usr/bin/redis-server"
    return found


@contextmanager
def celery_running(python: Path, redis: str, *, durable: bool) -> Iterator[dict[str, str]]:
    with tempfile.TemporaryDirectory(prefix="hostagent-celery-") as tmp:
        work, port = Path(tmp), free_port()
        (work / "celeryapp.py").write_text(CELERY_APP)
        (work / "client.py").write_text(CELERY_CLIENT)
        fsync = ["--appendonly", "yes", "--appendfsync", "always"] if durable else []
        server = subprocess.Popen(
            [redis, "--port", str(port), "--save", "", "--dir", str(work), *fsync],
            stdout=subprocess.DEVNULL,
        )
        env = {**os.environ, "BROKER": f"redis://127.0.0.1:{port}/0"}
        env["DURABLE"] = "1" if durable else "0"
        env["PYTHONPATH"] = str(work)
        worker = None
        try:
            time.sleep(0.3)
            worker = subprocess.Popen(
                [
                    *(str(python), "-m", "celery", "-A", "celeryapp", "worker", "-c", "2"),
                    *("-P", "prefork", "--loglevel", "warning", "--without-gossip"),
                    *("--without-mingle", "--without-heartbeat"),
                ],
                cwd=work,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            yield {**env, "WORK": str(work)}
        finally:
            if worker is not None:
                worker.terminate()
                worker.wait(timeout=60)
            server.terminate()
            server.wait(timeout=30)


def celery_rate(python: Path, redis: str, mode: str, count: int, *, durable: bool) -> float:
    with celery_running(python, redis, durable=durable) as env:
        out = subprocess.run(
            [str(python), "client.py", mode, str(count)],
            cwd=env["WORK"],
            env=env,
            capture_output=True,
            text=True,
            check=True,
            timeout=600,
        )
        return float(json.loads(out.stdout.strip().splitlines()[-1])["rate"])


def verdict(ok: bool) -> str:
    return "MET" if ok else "MISSED"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--bench-venv", type=Path, default=DEFAULT_BENCH_VENV)
    parser.add_argument(
        "--e2e-only", action="store_true", help="spool and HTTP batch end to end, no loops"
    )
    parser.add_argument(
        "--loops-only", action="store_true", help="the one-job-per-request loops alone"
    )
    args = parser.parse_args()
    python = ensure_bench_venv(args.bench_venv)
    redis = ensure_redis()
    n = args.jobs

    def celery_loop(*, durable: bool) -> float:
        return celery_rate(python, redis, "loop", n, durable=durable)

    spool_cpu: list[float] = []

    def spool_rate(count: int) -> float:
        rate, cpu = hostagent_spool(count)
        spool_cpu.append(cpu)
        print(f"  (agent CPU {cpu:.0f} us/job, load average {os.getloadavg()[0]:.1f})")
        return rate

    figures: dict[str, list[float]] = {}
    for number in range(args.rounds):
        # Interleaved: the machine's noise falls on both sides alike.
        for name, measure in (
            ("hostagent spool e2e", lambda: spool_rate(n)),
            ("celery e2e", lambda: celery_rate(python, redis, "e2e", n, durable=False)),
            ("hostagent http batch e2e", lambda: hostagent_batch(n)),
            ("hostagent submit loop", lambda: hostagent_loop(n)),
            (
                "celery delay loop durable",
                lambda: celery_rate(python, redis, "loop", n, durable=True),
            ),
            (
                "celery delay loop plain",
                lambda: celery_rate(python, redis, "loop", n, durable=False),
            ),
        ):
            if (args.e2e_only and "loop" in name) or (args.loops_only and "loop" not in name):
                continue
            rate = measure()
            figures.setdefault(name, []).append(rate)
            print(f"round {number + 1}: {name}: {rate:.0f} jobs/s", flush=True)

    median = {name: statistics.median(rates) for name, rates in figures.items()}
    print(f"\ncpus={os.cpu_count()} jobs={n} rounds={args.rounds} (medians, jobs/s)")
    for name, rate in median.items():
        print(f"  {name:28} {rate:8.0f}")
    if not args.loops_only:
        spool = median["hostagent spool e2e"] / median["celery e2e"]
        batch = median["hostagent http batch e2e"] / median["celery e2e"]
        print(f"  hostagent spool agent CPU {statistics.median(spool_cpu):6.0f} us/job")
        print(f"spool end to end vs Celery: {spool:.2f}x (target >= 3x) {verdict(spool >= 3)}")
        print(f"HTTP batch end to end vs Celery: {batch:.2f}x (target >= 4x) {verdict(batch >= 4)}")
    if args.e2e_only:
        return
    durable = median["hostagent submit loop"] / median["celery delay loop durable"]
    plain = median["hostagent submit loop"] / median["celery delay loop plain"]
    print(
        f"one client, one job per request, vs durable Celery .delay(): {durable:.2f}x "
        f"(target >= 1x) {verdict(durable >= 1)}; vs plain Celery: {plain:.2f}x"
    )


if __name__ == "__main__":
    main()
