"""Time of one guestkit.inspect: appliance launch, inspection, package listing.

Runs the handler in a real agent (in-process) on the test suite's planted guest
disk (built, or taken from ~/.cache/hostagent-test-disks) and times the gaps
between the stage events the job reports, once with the accelerator the agent
chooses (KVM when qemu can use it) and once with TCG forced, when they differ.

Usage: python bench/inspect.py [--runs 1]
"""

from __future__ import annotations

import sys
from pathlib import Path

# This file is bench/inspect.py: run as a script, its directory would shadow the
# standard library's `inspect` (which trio and the daemon import). The checkout
# goes in its place, for tests.guestdisks.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [str(_HERE.parent), *(p for p in sys.path if Path(p or ".").resolve() != _HERE)]

import argparse  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import trio  # noqa: E402

from agent.config import LibvirtConfig  # noqa: E402
from agent.handlers import guestkit  # noqa: E402
from agent.handlers._guestfs_host import Choice  # noqa: E402
from agent.service.daemon import Agent  # noqa: E402
from agent.service.settings import Settings  # noqa: E402
from agent.transports.http.settings import HttpConfig  # noqa: E402
from agent.transports.spool.settings import SpoolConfig  # noqa: E402
from tests import guestdisks  # noqa: E402
from tests.jobs import submit, wait_done  # noqa: E402

# What each stage's span is called in the report: from its event to the next one.
SPANS = {"launch": "appliance launch", "inspect": "inspection", "packages": "package listing"}


async def one_inspection(agent: Agent, disk: Path) -> dict[str, float]:
    """Seconds per stage, measured from the job's progress events as they arrive."""
    marks: list[tuple[str, float]] = []
    data = {"image": {"path": str(disk), "format": "qcow2"}}
    with agent.intake.events() as subscription:
        began = time.monotonic()
        job_id = await submit(agent, "guestkit.inspect", data)
        async for event in subscription.receive:
            if event["job_id"] != job_id:
                continue
            if event["type"] == "progress" and "message" in event["data"]:
                marks.append((event["data"]["message"], time.monotonic()))
            if event["type"] == "status" and event["data"]["status"] in ("Completed", "Failed"):
                break
    state = await wait_done(agent, job_id)
    if state.status != "Completed":
        raise SystemExit(f"inspection failed: {state.error}")
    ended = time.monotonic()
    spans = {"total": ended - began}
    for (stage, at), (_, following) in zip(marks, [*marks[1:], ("end", ended)], strict=True):
        spans[stage] = following - at
    return spans


async def measure(runs: int, force_tcg: bool) -> tuple[str, list[dict[str, float]]]:
    if force_tcg:
        guestkit.ACCELERATOR.choice = Choice("tcg", "forced by bench --tcg")
    disk = guestdisks.build(guestdisks.planted_disk())
    with tempfile.TemporaryDirectory() as state:
        config = Settings(
            state_dir=Path(state),
            spool_dir=Path(state) / "spool",
            spool=SpoolConfig(enabled=False),
            http=HttpConfig(enabled=False),
            libvirt=LibvirtConfig(uri="test:///default"),
        )
        results = []
        async with trio.open_nursery() as nursery:
            agent: Agent = await nursery.start(Agent(config).run)
            for _ in range(runs):
                results.append(await one_inspection(agent, disk))
            nursery.cancel_scope.cancel()
    choice = guestkit.ACCELERATOR.choice
    assert choice is not None
    label = choice.name + (f" (KVM not used: {choice.kvm_problem})" if choice.kvm_problem else "")
    return label, results


def report(label: str, results: list[dict[str, float]]) -> None:
    print(f"accelerator: {label}")
    for index, spans in enumerate(results, start=1):
        parts = [f"{name} {spans.get(stage, 0):.1f} s" for stage, name in SPANS.items()]
        others = spans["total"] - sum(spans.get(stage, 0) for stage in SPANS)
        print(
            f"  run {index}: total {spans['total']:.1f} s = {', '.join(parts)}, rest {others:.1f} s"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1)
    args = parser.parse_args()
    label, results = trio.run(measure, args.runs, False)
    report(label, results)
    choice = guestkit.ACCELERATOR.choice
    if choice is not None and choice.name == "kvm":
        label, results = trio.run(measure, args.runs, True)
        report(label, results)
    else:
        print("TCG only: KVM is not usable here, so there is no KVM figure to compare")


if __name__ == "__main__":
    main()
