"""The cost of a durable submit below HTTP: the core every transport shares.

Builds the agent's core in this process (the SQLite store on a temporary
directory, WAL + synchronous=FULL as deployed, the registry, the dispatcher
running system.echo jobs, the intake) with no transport at all, and measures:

1. per-stage CPU of one job, in microseconds (medians of --repeat runs of
   --stage-jobs jobs): strict JSON parse, envelope validation, payload
   validation and admission, the whole prepare_job (which includes both), the
   fingerprint, the store's insert per job in a batch transaction (no commit),
   and the answer's dump (the transport's share, for scale);
2. one client submitting one job per call in a loop (intake.submit, each
   answered once committed), --single jobs, --gap seconds between an answer
   and the next submit (an HTTP client's round trip; 0: none): jobs/s
   (gaps included) and submit latency p50/p99;
3. batches: --batches submit_many calls of --batch prepared jobs (prepare
   timed apart from the insert and commit): jobs/s;
4. the HTTP front without sockets: --front submits from --conns concurrent
   tasks through the front router's submit route (token, JSON body, slots,
   the answer's bytes) into this core, jobs only queued: CPU per submit, and
   two figures the machine's load does not move: trio task steps per submit
   and submits per commit.
2 and 3 run first with the jobs only queued (no dispatcher), then again
with the dispatcher running them.

The targets of issue 11 that these figures feed: batch submits need
>= 10 jobs/s per ceiling request/s (ceiling ~1,350 req/s on one core: about
74 us per job for everything, HTTP included), and the single loop is
latency bound (commit fsync, thread hops, wake-ups). Prints the figures and,
for the batch, whether the core alone leaves room for the target (MET/MISSED
against --ceiling).

Usage: python bench/submit_core.py [--single 2000] [--batch 500] [--batches 10]
       [--gap 0.001] [--ceiling 1350] [--front 4000] [--conns 32] [--profile core.prof]
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, this directory would shadow the standard library's `http` (bench/http.py).
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import argparse  # noqa: E402
import cProfile  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from typing import Any  # noqa: E402

import trio  # noqa: E402

from agent.config import Config  # noqa: E402
from agent.core.capabilities import Capabilities  # noqa: E402
from agent.core.dispatcher import Dispatcher  # noqa: E402
from agent.core.events import EventBus  # noqa: E402
from agent.core.health import Health  # noqa: E402
from agent.core.intake import Intake, prepare_job  # noqa: E402
from agent.core.registry import Registry  # noqa: E402
from agent.core.services import Services  # noqa: E402
from agent.handlers import system  # noqa: E402
from agent.jobs import fingerprint, parse_document, parse_json  # noqa: E402
from agent.policy.allowlist import Caller  # noqa: E402
from agent.service.logs import configure_logging  # noqa: E402
from agent.store import SqliteStore, writes  # noqa: E402
from agent.store.outbox_sql import OutboxTargets  # noqa: E402
from agent.transports.http import job_api  # noqa: E402
from agent.transports.http.auth import TokenTable, create_token  # noqa: E402
from agent.transports.http.front import Front  # noqa: E402
from agent.transports.http.routes import ApiState  # noqa: E402
from agent.transports.http.settings import HttpConfig  # noqa: E402


def document(job_id: str) -> dict[str, Any]:
    """The job bench/http.py and bench/compare.py submit."""
    return {
        "version": "1.0",
        "job_id": job_id,
        "kind": "Bench",
        "operation": "system.echo",
        "payload": {"type": "system.echo.v1", "data": {}},
    }


def per_job_us(work: Callable[[int], object], jobs: int, repeat: int) -> float:
    """Median over `repeat` runs of `work(i)` for i in range(jobs), per job."""
    runs = []
    for _ in range(repeat):
        began = time.perf_counter()
        for index in range(jobs):
            work(index)
        runs.append((time.perf_counter() - began) / jobs * 1e6)
    return statistics.median(runs)


class Core:
    def __init__(self, root: Path, registry: Registry) -> None:
        config = Config(state_dir=root / "state", spool_dir=root / "spool")
        self.registry = registry
        self.store = SqliteStore(config.store_path)
        bus = EventBus()
        self.dispatcher = Dispatcher(
            self.store,
            registry,
            bus,
            max_concurrent=os.cpu_count() or 2,
            default_timeout=60,
            max_timeout=3600,
            services=Services(),
        )
        # Commits of the writer (one fsync each): counted, the figure noise cannot blur.
        self.commits = 0
        run_batch = self.store._writes._run_batch

        def counted(batch: list[Any]) -> list[Any]:
            self.commits += 1
            return run_batch(batch)

        self.store._writes._run_batch = counted
        self.intake = Intake(
            registry,
            self.store,
            self.dispatcher,
            bus,
            max_pending=1_000_000,
            max_timeout=3600,
            capabilities=Capabilities(config, registry, bus),
            health=Health(),
        )


def stages(registry: Registry, core: Core, jobs: int, repeat: int) -> dict[str, float]:
    bodies = [json.dumps(document(f"stage-{n}")).encode() for n in range(jobs)]
    raws = [parse_json(body) for body in bodies]
    docs = [parse_document(raw) for raw in raws]
    figures = {
        "parse_json": per_job_us(lambda i: parse_json(bodies[i]), jobs, repeat),
        "parse_document": per_job_us(lambda i: parse_document(raws[i]), jobs, repeat),
        "validate_payload+admit": per_job_us(
            lambda i: registry.admission(
                docs[i], registry.validate_payload(docs[i]), caller=Caller("http")
            ),
            jobs,
            repeat,
        ),
        "fingerprint": per_job_us(lambda i: fingerprint(raws[i]), jobs, repeat),
        "prepare_job": per_job_us(
            lambda i: prepare_job(registry, raws[i], transport="http", max_timeout=3600),
            jobs,
            repeat,
        ),
    }
    prepared = [prepare_job(registry, raw, transport="http", max_timeout=3600) for raw in raws]
    conn = core.store._writer  # the store's own writer: its schema, triggers and indexes
    assert conn is not None
    runs = []
    for _ in range(repeat):
        conn.execute("BEGIN IMMEDIATE")
        began = time.perf_counter()
        outcomes = writes.insert_jobs(conn, OutboxTargets(), prepared)
        runs.append((time.perf_counter() - began) / jobs * 1e6)
        conn.execute("ROLLBACK")
    figures["store insert (in a batch)"] = statistics.median(runs)
    states = [outcome[0] for outcome in outcomes if isinstance(outcome, tuple)]
    figures["answer dump (transport's)"] = per_job_us(
        lambda i: states[i].model_dump(mode="json"), len(states), repeat
    )
    return figures


async def single_loop(
    core: Core, count: int, tag: str, gap: float, *, jobs_run: bool
) -> tuple[float, float, float, float, float]:
    """(jobs/s, latency p50 and p99, commits per job, CPU us per job)."""
    bodies = [json.dumps(document(f"single-{tag}-{n}")).encode() for n in range(count)]
    latencies = []
    commits = core.commits
    began, began_cpu = time.perf_counter(), time.process_time()
    for body in bodies:
        start = time.perf_counter()
        await core.intake.submit(parse_json(body), transport="http")
        latencies.append(time.perf_counter() - start)
        if gap:  # the client's round trip before its next submit (the loop sleeps meanwhile)
            await trio.sleep(gap)
    elapsed = time.perf_counter() - began
    cpu = time.process_time() - began_cpu
    if jobs_run:
        await drain(core)  # the last jobs' own writes count too
    per_job = (core.commits - commits) / count
    latencies.sort()
    middle, high = latencies[len(latencies) // 2], latencies[len(latencies) * 99 // 100]
    return count / elapsed, middle, high, per_job, cpu / count


async def batches(
    core: Core, size: int, count: int, tag: str
) -> tuple[float, float, float, float, float]:
    """(jobs/s overall, prepare us/job, submit_many us/job, and both as CPU us/job).

    The CPU figures (this process, all threads) hardly move with the machine's
    load, which the wall-clock ones do: compare those between runs."""
    prepare_s = commit_s = prepare_cpu = commit_cpu = 0.0
    for round_ in range(count):
        bodies = [json.dumps(document(f"batch-{tag}-{round_}-{n}")).encode() for n in range(size)]
        began, began_cpu = time.perf_counter(), time.process_time()
        prepared = [core.intake.prepare(parse_json(body), transport="http") for body in bodies]
        mid, mid_cpu = time.perf_counter(), time.process_time()
        await core.intake.submit_many(prepared)
        ended, ended_cpu = time.perf_counter(), time.process_time()
        prepare_s += mid - began
        commit_s += ended - mid
        prepare_cpu += mid_cpu - began_cpu
        commit_cpu += ended_cpu - mid_cpu
    jobs = size * count
    return (
        jobs / (prepare_s + commit_s),
        prepare_s / jobs * 1e6,
        commit_s / jobs * 1e6,
        prepare_cpu / jobs * 1e6,
        commit_cpu / jobs * 1e6,
    )


class _Steps(trio.abc.Instrument):
    """Task steps (a task scheduled and run until it next waits), all tasks."""

    def __init__(self) -> None:
        self.count = 0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self.count += 1


async def front_loop(core: Core, count: int, conns: int) -> tuple[float, float, float]:
    """(CPU us, task steps and commits per submit) of `count` submits through the
    HTTP front's submit route from `conns` concurrent tasks (no sockets)."""
    token, entry = create_token("bench", ["submit"])
    config = HttpConfig()
    front = Front(None, ApiState(core.intake, config, TokenTable([entry])), job_api.ROUTES)
    answered: list[int] = []

    async def client(number: int, jobs: int) -> None:
        for n in range(jobs):
            body = json.dumps(document(f"front-{number}-{n}")).encode()
            headers = [
                (b"authorization", b"Bearer " + token.encode()),
                (b"content-type", b"application/json"),
                (b"content-length", b"%d" % len(body)),
            ]
            scope = {"type": "http", "method": "POST", "path": "/api/v1/jobs", "headers": headers}

            async def receive(body: bytes = body) -> dict[str, Any]:
                return {"type": "http.request", "body": body, "more_body": False}

            async def send(message: dict[str, Any]) -> None:
                if message["type"] == "http.response.start":
                    answered.append(message["status"])

            await front(scope, receive, send)

    steps = _Steps()
    commits = core.commits
    began_cpu = time.process_time()
    trio.lowlevel.add_instrument(steps)
    try:
        async with trio.open_nursery() as nursery:
            for number in range(conns):
                nursery.start_soon(client, number, count // conns)
    finally:
        trio.lowlevel.remove_instrument(steps)
    cpu = time.process_time() - began_cpu
    if set(answered) != {201}:
        raise SystemExit(f"the front answered {sorted(set(answered))}")
    done = len(answered)
    return cpu / done * 1e6, steps.count / done, done / max(1, core.commits - commits)


async def drain(core: Core) -> None:
    while core.dispatcher.queue_depth or core.dispatcher.running_count:
        await trio.sleep(0.01)


async def run(args: argparse.Namespace) -> None:
    registry = Registry(system.HANDLERS)
    figures: dict[str, tuple[float, ...]] = {}
    with tempfile.TemporaryDirectory(prefix="hostagent-submit-core-") as tmp:
        core = Core(Path(tmp), registry)
        await core.store.open()
        try:
            split = stages(registry, core, args.stage_jobs, args.repeat)
            profile = cProfile.Profile() if args.profile else None
            if profile:
                profile.enable()
            # Jobs only queued (no dispatcher yet): the intake alone, as bench/http.py's
            # "jobs queued" phase that the batch target is measured in.
            figures["single, queued"] = await single_loop(
                core, args.single, "q", args.gap, jobs_run=False
            )
            figures["batch, queued"] = await batches(core, args.batch, args.batches, "q")
            if args.front:
                figures["front"] = await front_loop(core, args.front, args.conns)
            async with trio.open_nursery() as nursery:
                await nursery.start(core.dispatcher.run)
                await drain(core)
                # The jobs also run, as in bench/compare.py's one-job-per-request loop.
                figures["single, run"] = await single_loop(
                    core, args.single, "r", args.gap, jobs_run=True
                )
                await drain(core)
                figures["batch, run"] = await batches(core, args.batch, args.batches, "r")
                await drain(core)
                nursery.cancel_scope.cancel()
            if profile:
                profile.disable()
                profile.dump_stats(args.profile)
        finally:
            await core.store.aclose()
    load = os.getloadavg()
    print(f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; cpus={os.cpu_count()}")
    print(f"per job, medians of {args.repeat} x {args.stage_jobs} jobs (us):")
    for name, value in split.items():
        print(f"  {name:28s} {value:8.1f}")
    for name in ("single, queued", "single, run"):
        rate, p50, p99, commits, cpu = figures[name]
        print(
            f"{name:15s} ({args.single} jobs): {rate:6.0f} jobs/s  "
            f"p50 {p50 * 1000:.2f} ms  p99 {p99 * 1000:.2f} ms  {commits:.2f} commits/job  "
            f"(CPU {cpu * 1e6:.0f} us/job)"
        )
    if "front" in figures:
        cpu, steps, per_commit = figures["front"]
        print(
            f"front, {args.conns} concurrent ({args.front} submits, jobs queued): "
            f"CPU {cpu:.0f} us/submit, {steps:.2f} task steps/submit, "
            f"{per_commit:.1f} submits/commit"
        )
    for name in ("batch, queued", "batch, run"):
        rate, prepare_us, commit_us, prepare_cpu, commit_cpu = figures[name]
        print(
            f"{name:15s} ({args.batches} x {args.batch}): {rate:6.0f} jobs/s  "
            f"prepare {prepare_us:.1f} us/job  submit_many {commit_us:.1f} us/job  "
            f"(CPU: prepare {prepare_cpu:.1f}, submit_many {commit_cpu:.1f} us/job)"
        )
    budget = 1e6 / (10 * args.ceiling)
    _, prepare_us, commit_us, _, _ = figures["batch, queued"]
    core_us = prepare_us + commit_us
    print(
        f"core share of the batch budget: {core_us:.1f} of {budget:.1f} us/job "
        f"(10 jobs/s per ceiling req/s at {args.ceiling:.0f} req/s; HTTP needs the rest) "
        f"{'MET' if core_us <= budget / 2 else 'MISSED'} (core <= half the budget)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--single", type=int, default=2000)
    parser.add_argument(
        "--gap", type=float, default=0.001, help="seconds between a submit's answer and the next"
    )
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--batches", type=int, default=10)
    parser.add_argument("--stage-jobs", type=int, default=500)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--ceiling", type=float, default=1350.0)
    parser.add_argument("--front", type=int, default=4000, help="submits at the front (0: none)")
    parser.add_argument("--conns", type=int, default=32, help="concurrent submitters at the front")
    parser.add_argument("--profile", help="write a cProfile of the loops to this file")
    configure_logging(level="warning")  # as the benches run the daemon
    trio.run(run, parser.parse_args())


if __name__ == "__main__":
    main()
