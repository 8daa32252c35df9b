"""What an idle agent costs: start time, CPU, RSS and wake-ups over a quiet minute,
and that sleeping did not cost the spool its latency.

Starts the agent as `make run` does (HTTP on loopback without tokens, the
spool, libvirt's test driver) with a NOTIFY_SOCKET of its own (--config FILE:
that file, e.g. make run's ./hostagent.toml with its runbooks and local socket,
its state and spool moved to a temporary directory and HTTP to a free port), then:
1. exec to READY=1 (the systemd notification), median of --starts starts, and
   the CPU time it took (steadier than wall time on a shared machine);
2. over --seconds of idleness: CPU seconds (utime+stime of every thread),
   wake-ups/s (context switches of every thread, voluntary and not), RSS;
3. drop->running latency of --latency-jobs spool jobs dropped one at a time.
Each start also records RSS and PSS once start-up settled (--settle seconds
after READY=1); their medians over the starts are printed beside the idle
window's.

--baseline DIR runs the same figures for another tree's agent package (DIR
holds agent/, e.g. `git archive main agent | tar -x -C DIR`) in the same run,
its starts interleaved with this tree's (A, B, A, B...), and prints both; the
baseline runs in DIR (relative paths of --config resolve there).

The agent's byte-code is compiled first, as the .deb's postinst does (and as any
run without PYTHONDONTWRITEBYTECODE leaves it); --no-compile measures starts
that compile every module of the agent from source.

Usage: python bench/idle.py [--seconds 60] [--starts 3] [--latency-jobs 200] [--no-compile]
                           [--config hostagent.toml] [--settle 3] [--baseline DIR]
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

TARGETS = {"cpu_s": 0.03, "rss_mb": 50.0, "ready_s": 0.5, "drop_p50_ms": 5.0}


def verdict(ok: bool) -> str:
    return "MET" if ok else "MISSED"


CONFIG: Path | None = None  # --config


def start(
    root: Path, tree: Path | None = None
) -> tuple[subprocess.Popen[bytes], float, socket.socket]:
    """Start an agent (this checkout's, or the agent package under `tree`); answer it
    once READY=1 arrived, and the seconds that took."""
    notify_path = root / "notify.sock"
    notify_path.unlink(missing_ok=True)
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(notify_path))
    notify.settimeout(60)
    argv = [sys.executable, "-m", "agent", "run", "--state-dir", str(root / "state")]
    if CONFIG is not None:
        argv += ["--config", str(CONFIG)]
    argv += ["--spool-dir", str(root / "spool"), "--libvirt-uri", "test:///default"]
    argv += ["--insecure-no-auth", "--http-bind", "127.0.0.1:0", "--log-level", "warning"]
    env = {**os.environ, "NOTIFY_SOCKET": str(notify_path)}
    if tree is not None:
        env["PYTHONPATH"] = str(tree)  # before the editable install's finder
    # `python -m` puts the working directory first on sys.path: run in the tree.
    began = time.monotonic()
    agent = subprocess.Popen(argv, env=env, cwd=tree, stderr=subprocess.DEVNULL)
    while True:
        message = notify.recv(4096).decode()
        if "READY=1" in message.split("\n"):
            return agent, time.monotonic() - began, notify


def cpu_exact(pid: int) -> float:
    """Seconds on a CPU of the live threads (schedstat: nanoseconds, not clock ticks)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (FileNotFoundError, ProcessLookupError):
            continue  # a thread that ended meanwhile
    return total / 1e9


def cpu_seconds(pid: int) -> float:
    """utime+stime of the whole process (threads that ended included)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def switches_by_thread(pid: int) -> dict[str, int]:
    """Context switches (voluntary and not) of each live thread: each is a wake-up."""
    counts = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            lines = (task / "status").read_text().splitlines()
        except (FileNotFoundError, ProcessLookupError):
            continue  # a thread that ended meanwhile
        counts[task.name] = sum(
            int(line.split()[1])
            for line in lines
            if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches"))
        )
    return counts


def wakeups(before: dict[str, int], after: dict[str, int]) -> int:
    return sum(count - before.get(tid, 0) for tid, count in after.items())


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return 0.0


def pss_mb(pid: int) -> float:
    """Proportional set size: shared library pages divided among the processes mapping
    them (libvirt's libraries are shared with libvirtd, libpython with other Pythons)."""
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) / 1024
    return 0.0


def drop_latencies(root: Path, count: int) -> list[float]:
    spool = root / "spool"
    db = sqlite3.connect(root / "state" / "jobs.sqlite3")
    latencies = []
    for n in range(count):
        job_id = f"idle-lat-{n}"
        document = {
            "version": "1.0",
            "job_id": job_id,
            "kind": "Bench",
            "operation": "system.echo",
            "payload": {"type": "system.echo.v1", "data": {}},
        }
        staged = spool / "tmp" / f"{job_id}.json"
        fd = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
        os.write(fd, json.dumps(document).encode())
        os.fsync(fd)
        os.close(fd)
        time.sleep(0.02)  # the agent idle again between drops, as in real life
        dropped = time.time()
        staged.rename(spool / "incoming" / staged.name)
        deadline = time.monotonic() + 30
        while True:
            row = db.execute("SELECT started_at FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
            if row and row[0]:
                break
            if time.monotonic() > deadline:
                raise SystemExit(f"{job_id} did not start")
            time.sleep(0.0005)
        started = datetime.fromisoformat(row[0].replace("Z", "+00:00")).timestamp()
        latencies.append((started - dropped) * 1000)
    return latencies


def memory(pid: int) -> dict[str, float]:
    """RSS (anonymous and file-backed) and PSS now, MB."""
    return {
        "rss": rss_mb(pid),
        "anon": rss_mb(pid, "RssAnon"),
        "file": rss_mb(pid, "RssFile"),
        "pss": pss_mb(pid),
    }


def one_start(tree: Path | None, settle: float) -> tuple[float, float, dict[str, float]]:
    """exec -> READY=1 seconds, CPU to READY=1, and memory once start-up settled."""
    with tempfile.TemporaryDirectory(prefix="hostagent-idle-") as tmp:
        agent, ready, notify = start(Path(tmp), tree)
        try:
            cpu = cpu_exact(agent.pid)
            time.sleep(settle)
            settled = memory(agent.pid)
        finally:
            agent.terminate()
            agent.wait(timeout=60)
            notify.close()
    return ready, cpu, settled


def idle_window(tree: Path | None, seconds: float, latency_jobs: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="hostagent-idle-") as tmp:
        root = Path(tmp)
        agent, _, notify = start(root, tree)
        try:
            time.sleep(3)  # start-up work (first capability probe, gc) settles
            cpu0, switches0 = cpu_seconds(agent.pid), switches_by_thread(agent.pid)
            time.sleep(seconds)
            cpu1, switches1 = cpu_seconds(agent.pid), switches_by_thread(agent.pid)
            figures: dict[str, Any] = memory(agent.pid)
            figures["latencies"] = drop_latencies(root, latency_jobs)
        finally:
            agent.terminate()
            agent.wait(timeout=60)
            notify.close()
    figures["cpu"] = cpu1 - cpu0
    figures["woke"] = wakeups(switches0, switches1) / seconds
    return figures


def report(
    name: str, starts: list[tuple[float, float, dict[str, float]]], idle: dict[str, Any]
) -> None:
    """Print one tree's figures with MET/MISSED."""
    ready_times = [ready for ready, _, _ in starts]
    ready = statistics.median(ready_times)

    def median_of(key: str) -> float:
        return statistics.median(settled[key] for _, _, settled in starts)

    def each(key: str) -> str:
        return ", ".join(f"{settled[key]:.1f}" for _, _, settled in starts)

    latencies = idle["latencies"]
    p50 = statistics.median(latencies)
    p99 = sorted(latencies)[min(len(latencies) - 1, int(0.99 * len(latencies)))]
    rss = idle["rss"]
    print(f"== {name}")
    print(
        f"idle CPU: {idle['cpu']:.3f} s (target <= {TARGETS['cpu_s']}) "
        f"{verdict(idle['cpu'] <= TARGETS['cpu_s'])}; wake-ups {idle['woke']:.1f}/s"
    )
    print(
        f"idle RSS: {rss:.1f} MB (target <= {TARGETS['rss_mb']:g}) "
        f"{verdict(rss <= TARGETS['rss_mb'])}; anonymous {idle['anon']:.1f} MB, "
        f"file-backed {idle['file']:.1f} MB, PSS {idle['pss']:.1f} MB"
    )
    print(
        f"settled RSS, median of {len(starts)} starts: {median_of('rss'):.1f} MB "
        f"({each('rss')}); anonymous "
        f"{median_of('anon'):.1f}, file-backed {median_of('file'):.1f}, "
        f"PSS {median_of('pss'):.1f} MB ({each('pss')})"
    )
    print(
        f"exec to READY=1: median {ready:.3f} s of {len(starts)} "
        f"({', '.join(f'{t:.3f}' for t in ready_times)}) (target <= {TARGETS['ready_s']}) "
        f"{verdict(ready <= TARGETS['ready_s'])}; CPU to READY=1 median "
        f"{statistics.median(cpu for _, cpu, _ in starts):.3f} s"
    )
    print(
        f"spool drop->running after idling: p50 {p50:.2f} ms p99 {p99:.2f} ms "
        f"(target p50 <= {TARGETS['drop_p50_ms']:g}) {verdict(p50 <= TARGETS['drop_p50_ms'])}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--starts", type=int, default=3)
    parser.add_argument("--latency-jobs", type=int, default=200)
    parser.add_argument("--no-compile", action="store_true", help="leave byte-code as it is")
    parser.add_argument("--config", type=Path, help="a config file (make run's: hostagent.toml)")
    parser.add_argument("--settle", type=float, default=3.0, help="seconds after READY=1")
    parser.add_argument("--baseline", type=Path, help="a tree holding another agent/ to compare")
    args = parser.parse_args()
    global CONFIG  # noqa: PLW0603 (one setting for every start)
    CONFIG = args.config.resolve() if args.config else None
    here = Path(__file__).resolve().parent.parent
    trees: dict[str, Path | None] = {"this tree": None}
    if args.baseline is not None:
        trees = {f"baseline {args.baseline}": args.baseline.resolve(), "this tree": None}
    if not args.no_compile:
        for tree in trees.values():
            compileall.compile_dir((tree or here) / "agent", quiet=1)

    starts: dict[str, list[tuple[float, float, dict[str, float]]]] = {name: [] for name in trees}
    for _ in range(args.starts):
        for name, tree in trees.items():  # interleaved: A, B, A, B...
            starts[name].append(one_start(tree, args.settle))
    idle = {
        name: idle_window(tree, args.seconds, args.latency_jobs) for name, tree in trees.items()
    }
    print(
        f"cpus={os.cpu_count()} load average {os.getloadavg()[0]:.2f} "
        f"idle window={args.seconds:g} s"
        f" byte-code {'as found' if args.no_compile else 'compiled first'}"
        f" config {CONFIG or 'flags only'}"
    )
    for name in trees:
        report(name, starts[name], idle[name])


if __name__ == "__main__":
    main()
