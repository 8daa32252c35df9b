"""Spool throughput and latency: drop -> running latency and jobs/s for no-op jobs.

Starts a real agent process on a temporary state dir and spool, then:
1. latency: drops N system.echo jobs one at a time (tmp/ -> rename into
   incoming/), each after the previous one started, and reports the time
   from the rename to the job's recorded started_at (p50, p99);
2. throughput: renames M staged jobs into incoming/ at once, and reports
   jobs/s from the first rename to the last job completed.

Files are written into tmp/ and fsynced before they are timed; the clock
starts at the rename into incoming/, which is the moment the agent may take them.

Usage: python bench/spool.py [--latency-jobs 500] [--jobs 5000] [--max-concurrent N]
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path


def stage(spool: Path, job_id: str) -> Path:
    """Write a job file into tmp/ and fsync it: the writer's half of a drop."""
    document = {
        "version": "1.0",
        "job_id": job_id,
        "kind": "Bench",
        "operation": "system.echo",
        "payload": {"type": "system.echo.v1", "data": {"n": job_id}},
    }
    staged = spool / "tmp" / f"{job_id}.json"
    fd = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
    os.write(fd, json.dumps(document).encode())
    os.fsync(fd)
    os.close(fd)
    return staged


def drop(staged: Path) -> float:
    """The rename into incoming/ that hands the file to the agent; when it happened."""
    dropped = time.time()
    staged.rename(staged.parent.parent / "incoming" / staged.name)
    return dropped


def epoch(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def wait_for(
    db: sqlite3.Connection, query: str, args: tuple[object, ...], want: int, limit: float = 120.0
) -> None:
    deadline = time.monotonic() + limit
    while db.execute(query, args).fetchone()[0] < want:
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {query} >= {want}")
        time.sleep(0.0005)


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency-jobs", type=int, default=500)
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--max-concurrent", type=int, default=os.cpu_count() or 2)
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="hostagent-bench-"))
    spool, state = root / "spool", root / "state"
    argv = [sys.executable, "-m", "agent", "run", "--spool-dir", str(spool), "--state-dir"]
    argv += [str(state), "--max-concurrent", str(args.max_concurrent), "--log-level", "warning"]
    argv += ["--libvirt-uri", "test:///default", "--no-http"]
    agent = subprocess.Popen(argv, stderr=subprocess.DEVNULL)
    try:
        while not (state / "jobs.sqlite3").exists() or not (spool / "incoming").exists():
            time.sleep(0.05)
        time.sleep(0.5)  # let the agent finish its start-up scan
        db = sqlite3.connect(state / "jobs.sqlite3")
        done = "SELECT count(*) FROM jobs WHERE status = 'Completed'"
        started = "SELECT count(*) FROM jobs WHERE job_id = ? AND started_at IS NOT NULL"

        latencies = []
        for n in range(args.latency_jobs):
            job_id = f"lat-{n}"
            dropped = drop(stage(spool, job_id))
            wait_for(db, started, (job_id,), 1)
            (stamp,) = db.execute(
                "SELECT started_at FROM jobs WHERE job_id = ?", (job_id,)
            ).fetchone()
            latencies.append((epoch(stamp) - dropped) * 1000)
        wait_for(db, done, (), args.latency_jobs)

        # Staged first, so that the figure is the agent's rate, not one writer's.
        staged = [stage(spool, f"tput-{n}") for n in range(args.jobs)]
        first = time.time()
        for path in staged:
            drop(path)
        dropping = time.time() - first
        wait_for(db, done, (), args.latency_jobs + args.jobs)
        (last,) = db.execute(
            "SELECT max(completed_at) FROM jobs WHERE job_id LIKE 'tput-%'"
        ).fetchone()
        elapsed = epoch(last) - first
        results = len(list((spool / "done").glob("tput-*.result.json")))
        deadline = time.monotonic() + 60
        while results < args.jobs and time.monotonic() < deadline:
            time.sleep(0.05)
            results = len(list((spool / "done").glob("tput-*.result.json")))

        print(f"cpus={os.cpu_count()} max_concurrent={args.max_concurrent}")
        print(
            f"drop->running latency over {len(latencies)} jobs: "
            f"p50={statistics.median(latencies):.2f} ms p99={percentile(latencies, 0.99):.2f} ms "
            f"max={max(latencies):.2f} ms"
        )
        print(
            f"throughput: {args.jobs} staged jobs renamed into incoming/ in {dropping:.2f} s, "
            "all completed "
            f"{elapsed:.2f} s after the first drop: {args.jobs / elapsed:.0f} jobs/s "
            f"({results} result files in done/)"
        )
    finally:
        agent.terminate()
        agent.wait(timeout=30)


if __name__ == "__main__":
    main()
