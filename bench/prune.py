"""Retention at scale: submits during a prune pass, and a full pass, on a 1M-job store.

Builds the agent's store (its schema, triggers, indexes; WAL and
synchronous=FULL as deployed) in a temporary directory and fills it in bulk
(one INSERT ... SELECT from a recursive CTE) with --jobs finished system.echo
jobs that completed 30 days ago, each with its Running and final
transitions, as a host accumulates them. Then, in this process:

1. one client submits one job per call in a loop (the store's durable
   insert, --gap seconds between an answer and the next submit: an HTTP
   client's round trip), in --rounds interleaved windows of --window
   seconds: alone, then beside the agent's Pruner running a pass (7 days'
   retention: every job is due). Medians of the windows' rates, and their
   ratio (issue 25: >= 80%);
2. a full pass over what is left (nearly --jobs expired jobs), timed, and
   the time for 1M jobs at that rate (issue 25: <= 2 minutes); a pass still
   going after --pass-limit seconds is stopped and its rate so far extrapolated.

Usage: python bench/prune.py [--jobs 1000000] [--rounds 3] [--window 3] [--gap 0.001]
       [--pass-limit 300]
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, this directory would shadow the standard library's `http` (bench/http.py).
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import argparse  # noqa: E402
import itertools  # noqa: E402
import os  # noqa: E402
import sqlite3  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from datetime import UTC, datetime  # noqa: E402

import trio  # noqa: E402

from agent.jobs import NewJob  # noqa: E402
from agent.service.logs import configure_logging  # noqa: E402
from agent.store import SqliteStore  # noqa: E402
from agent.store.retention import Pruner, RetentionPolicy  # noqa: E402

_FILL = """
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?)
INSERT INTO jobs (job_id, operation, status, priority, transport, document, fingerprint,
                  attempts, submitted_at, started_at, completed_at, result)
SELECT printf('old-%08d', i), 'system.echo',
       CASE WHEN i % 100 = 0 THEN 'Failed' ELSE 'Completed' END, 5, 'http',
       '{"version":"1.0","kind":"Bench","operation":"system.echo"}', 'fp-' || i, 1,
       ?, ?, strftime('%Y-%m-%dT%H:%M:%fZ', ?, '+' || (i / 100) || ' seconds'), '{"echo":{}}'
FROM n
"""


def fill(path: Path, jobs: int) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA synchronous = OFF")  # a bench fixture, not the agent's writes
    stamp = "2026-01-01T00:00:00.000000Z"  # far older than 7 days
    conn.execute("BEGIN")
    conn.execute(_FILL, (jobs, stamp, stamp, stamp))
    for status, at in (("'Running'", "started_at"), ("status", "completed_at")):
        conn.execute(
            f"INSERT INTO transitions (job_id, status, at) SELECT job_id, {status}, {at} FROM jobs"
        )
    conn.execute(
        "INSERT INTO job_counts (status, operation, n) SELECT status, operation, count(*) "
        "FROM jobs GROUP BY status, operation "
        "ON CONFLICT (status, operation) DO UPDATE SET n = n + excluded.n"
    )
    conn.execute("COMMIT")
    conn.close()


_ids = itertools.count()


def one_job() -> NewJob:
    job_id = f"new-{next(_ids):08d}"
    return NewJob(
        job_id=job_id,
        operation="system.echo",
        priority=5,
        transport="bench",
        document={"job_id": job_id, "operation": "system.echo"},
        fingerprint=job_id,
        timeout_seconds=None,
    )


async def submit_rate(store: SqliteStore, seconds: float, gap: float) -> float:
    done = 0
    began = time.monotonic()
    while time.monotonic() - began < seconds:
        await store.insert_jobs([one_job()])
        done += 1
        if gap:
            await trio.sleep(gap)
    return done / (time.monotonic() - began)


async def pruning_begun(store: SqliteStore) -> None:
    """Once the pass has counted what is due and removed its first batch."""
    before = await store.count_by_status()
    while await store.count_by_status() == before:
        await trio.sleep(0.05)


async def main_async(args: argparse.Namespace, root: Path) -> None:
    store = SqliteStore(root / "jobs.sqlite3")
    await store.open()
    await store.aclose()
    began = time.monotonic()
    await trio.to_thread.run_sync(fill, store.path, args.jobs)
    print(f"filled {args.jobs} expired jobs in {time.monotonic() - began:.1f} s", flush=True)
    await store.open()
    policy = RetentionPolicy(retention_days=7)
    now = datetime.now(UTC)
    pruner = Pruner(store, lambda: policy, every=lambda: 3600, clock=lambda: now)
    alone: list[float] = []
    beside: list[float] = []
    pruned_in_rounds = 0
    try:
        for round_ in range(args.rounds):
            alone.append(await submit_rate(store, args.window, args.gap))
            async with trio.open_nursery() as nursery:
                nursery.start_soon(pruner.prune_pass)
                await pruning_begun(store)
                beside.append(await submit_rate(store, args.window, args.gap))
                nursery.cancel_scope.cancel()
            counts = await store.count_by_status()
            left = counts.get("Completed", 0) + counts.get("Failed", 0)
            print(
                f"round {round_ + 1}: alone {alone[-1]:.0f}/s, during a prune pass "
                f"{beside[-1]:.0f}/s (finished jobs left {left})",
                flush=True,
            )
        counts = await store.count_by_status()
        pruned_in_rounds = args.jobs - counts.get("Completed", 0) - counts.get("Failed", 0)
        began = time.monotonic()
        with trio.move_on_after(args.pass_limit):
            await pruner.prune_pass()
        seconds = time.monotonic() - began
        counts = await store.count_by_status()
        pruned = args.jobs - pruned_in_rounds - counts.get("Completed", 0) - counts.get("Failed", 0)
    finally:
        await store.aclose()
    load = os.getloadavg()
    rate_alone, rate_beside = statistics.median(alone), statistics.median(beside)
    ratio = rate_beside / rate_alone
    print(f"cpus={os.cpu_count()} load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print(
        f"one client's submits at {args.jobs} jobs: alone {rate_alone:.0f}/s, during a prune "
        f"pass {rate_beside:.0f}/s = {ratio:.0%} (medians of {args.rounds} rounds; target >= 80%) "
        f"{'MET' if ratio >= 0.8 else 'MISSED'}"
    )
    per_million = seconds / max(pruned, 1) * 1_000_000
    print(
        f"full pass: {pruned} expired jobs in {seconds:.1f} s"
        f"{' (stopped at --pass-limit)' if seconds >= args.pass_limit else ''}, "
        f"{pruned / seconds:.0f} jobs/s = {per_million:.0f} s per 1M "
        f"(target <= 120) {'MET' if per_million <= 120 else 'MISSED'} "
        f"({pruned_in_rounds} pruned during the rounds)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--window", type=float, default=3.0)
    parser.add_argument("--gap", type=float, default=0.001)
    parser.add_argument("--pass-limit", type=float, default=300.0, help="stop the full pass then")
    args = parser.parse_args()
    configure_logging("console", "warning")
    with tempfile.TemporaryDirectory(prefix="hostagent-prune-") as tmp:
        trio.run(main_async, args, Path(tmp))


if __name__ == "__main__":
    main()
