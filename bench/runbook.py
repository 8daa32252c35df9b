"""What a runbook costs (agent/runbooks, agent/handlers/runbook.py).

1. At intake: `prepare_job` plus the admission check of a runbook.run naming a
   five-step runbook (every step's payload model, host policy, allowlist), against
   a plain system.echo; microseconds per job, the fastest of --repeat runs.
2. Running: a runbook of --steps system.echo steps (each a child job, one after
   another) on a real agent (temp store, test:///default), against the same
   number of echo jobs submitted one after another; milliseconds per step.

Targets: the whole check of a five-step runbook under --check-budget ms; a step's
overhead over a plain job under --step-budget ms. Prints figures and MET/MISSED.

Usage: python bench/runbook.py [--steps 20] [--repeat 5] [--check-budget 1] [--step-budget 10]
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, this directory would shadow the standard library's `http` (bench/http.py).
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

import trio  # noqa: E402

from agent.config import LibvirtConfig, PolicyConfig, RunbooksConfig  # noqa: E402
from agent.core.intake import admit_now  # noqa: E402
from agent.service.daemon import Agent  # noqa: E402
from agent.service.logs import configure_logging  # noqa: E402
from agent.service.settings import Settings  # noqa: E402
from agent.transports.http.settings import HttpConfig  # noqa: E402
from agent.transports.spool.settings import SpoolConfig  # noqa: E402


def document(job_id: str, operation: str, data: dict[str, Any]) -> dict[str, Any]:
    return {
        "version": "1.0",
        "job_id": job_id,
        "kind": "Bench",
        "operation": operation,
        "payload": {"type": f"{operation}.v1", "data": data},
    }


def runbook(name: str, steps: int, images: Path) -> dict[str, Any]:
    items: list[dict[str, Any]] = [
        {"name": f"s{n}", "operation": "system.echo", "payload": {"n": {"$param": "n"}}}
        for n in range(steps)
    ]
    if steps == 5:  # the intake case: a path the policy checks, and a step reference
        items[1] = {
            "name": "s1",
            "operation": "image.create",
            "payload": {"path": str(images / "x.qcow2"), "size_bytes": 1 << 20},
        }
        items[2]["payload"] = {"prev": {"$step": "s0.result.n"}}
    return {
        "schema_version": 1,
        "name": name,
        "version": 1,
        "parameters": {"n": {"type": "integer", "min": 0, "default": 1}},
        "steps": items,
    }


async def measure(args: argparse.Namespace, work: Path) -> dict[str, float]:
    images, books = work / "images", work / "runbooks"
    images.mkdir()
    books.mkdir()
    (books / "five.json").write_text(json.dumps(runbook("five", 5, images)))
    (books / "long.json").write_text(json.dumps(runbook("long", args.steps, images)))
    config = Settings(
        state_dir=work / "state",
        spool_dir=work / "spool",
        max_concurrent_jobs=2,
        spool=SpoolConfig(enabled=False),
        http=HttpConfig(enabled=False),
        libvirt=LibvirtConfig(uri="test:///default"),
        policy=PolicyConfig(image_roots=[images]),
        runbooks=RunbooksConfig(dirs=[books]),
    )
    figures: dict[str, float] = {}
    async with trio.open_nursery() as nursery:
        agent: Agent = await nursery.start(Agent(config).run)
        intake = agent.intake

        def check(raw: dict[str, Any]) -> None:
            admit_now(intake.prepare(raw, transport="bench"))

        for label, raw in (
            ("check_echo_us", document("e", "system.echo", {"n": 1})),
            ("check_runbook_us", document("r", "runbook.run", {"runbook": "five"})),
        ):
            best = float("inf")
            for _ in range(args.repeat):
                began = time.perf_counter()
                for _ in range(200):
                    check(raw)
                best = min(best, (time.perf_counter() - began) / 200 * 1e6)
            figures[label] = best
        best_jobs = best_runbook = float("inf")
        for attempt in range(args.repeat):
            began = trio.current_time()
            for n in range(args.steps):
                await intake.submit(
                    document(f"j{attempt}-{n}", "system.echo", {"n": n}), transport="b"
                )
                await agent.dispatcher.awaited(f"j{attempt}-{n}").wait()
            best_jobs = min(best_jobs, (trio.current_time() - began) / args.steps * 1e3)
            began = trio.current_time()
            job_id = f"rb{attempt}"
            ended = agent.dispatcher.awaited(job_id)
            await intake.submit(document(job_id, "runbook.run", {"runbook": "long"}), transport="b")
            await ended.wait()
            state = await intake.status(job_id)
            assert state.status == "Completed", state.error
            best_runbook = min(best_runbook, (trio.current_time() - began) / args.steps * 1e3)
        figures["job_ms"], figures["step_ms"] = best_jobs, best_runbook
        nursery.cancel_scope.cancel()
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--check-budget", type=float, default=1.0, help="ms")
    parser.add_argument("--step-budget", type=float, default=10.0, help="ms")
    args = parser.parse_args()
    configure_logging("console", "warning")
    with tempfile.TemporaryDirectory() as work:
        figures = trio.run(measure, args, Path(work))
    overhead = figures["step_ms"] - figures["job_ms"]
    print(f"load average: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"intake check, system.echo:          {figures['check_echo_us']:8.1f} us per job")
    print(f"intake check, five-step runbook.run: {figures['check_runbook_us']:8.1f} us per job")
    print(f"a plain echo job, end to end:        {figures['job_ms']:8.2f} ms")
    print(f"a runbook step ({args.steps} steps):        {figures['step_ms']:8.2f} ms")
    check_ok = figures["check_runbook_us"] / 1000 <= args.check_budget
    step_ok = overhead <= args.step_budget
    print(f"check under {args.check_budget} ms: {'MET' if check_ok else 'MISSED'}")
    print(
        f"step overhead {overhead:.2f} ms under {args.step_budget} ms: "
        f"{'MET' if step_ok else 'MISSED'}"
    )
    return 0 if check_ok and step_ok else 1


if __name__ == "__main__":
    sys.exit(main())
