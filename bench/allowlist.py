"""The cost of the operation allowlist at intake (agent/policy/allowlist.py).

Measures, in microseconds per job (median of --repeat runs of --jobs jobs, one
process, no I/O):

1. `Allowlist.check` alone: no rules; --rules rules none of which names the
   caller; --rules rules naming it, the allowing one last, with resource globs
   (vm.start on ci-*: the payload's resources read and matched);
2. the whole `prepare_job` of a vm.start document (envelope, payload, allowlist,
   admission hook built) without rules and with the --rules naming ones.

The target: the check with --rules naming rules adds at most --budget percent
to prepare_job (issue 11's budget is ~74 us per job for everything, HTTP
included). Prints the figures and MET/MISSED.

Usage: python bench/allowlist.py [--jobs 5000] [--repeat 7] [--rules 10] [--budget 5]
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, this directory would shadow the standard library's `http` (bench/http.py).
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import argparse  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402

from agent.config import AllowRule, Config, PolicyConfig  # noqa: E402
from agent.core.intake import prepare_job  # noqa: E402
from agent.core.registry import Registry  # noqa: E402
from agent.handlers import vm  # noqa: E402
from agent.policy.allowlist import Allowlist, Caller  # noqa: E402
from agent.policy.paths import Policy  # noqa: E402


def per_job_us(cases: dict[str, Callable[[], object]], jobs: int, repeat: int) -> dict[str, float]:
    """Each case's fastest run of `jobs` calls, in us per call; the cases take turns
    run by run, so a busy moment of a shared machine spreads over all of them."""
    best = dict.fromkeys(cases, float("inf"))
    for _ in range(repeat):
        for label, run in cases.items():
            began = time.perf_counter()
            for _ in range(jobs):
                run()
            best[label] = min(best[label], (time.perf_counter() - began) / jobs * 1e6)
    return best


def rules(count: int, *, naming: bool) -> list[AllowRule]:
    token = "ci" if naming else "other"
    tables = [
        AllowRule(tokens=[token], operations=[f"image.op{n}", f"storage.op{n}.*"])
        for n in range(count - 1)
    ]
    tables.append(AllowRule(tokens=[token], operations=["vm.start"], resources=["ci-*"]))
    return tables


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--rules", type=int, default=10)
    parser.add_argument("--budget", type=float, default=5.0, help="percent of prepare_job")
    args = parser.parse_args()

    caller = Caller("http", token="ci", submitter="token:ci")
    payload = vm.DomainRef(name="ci-7")
    empty = Allowlist()
    naming = Allowlist.from_rules(rules(args.rules, naming=True))
    unnamed = Allowlist.from_rules(rules(args.rules, naming=False))
    document = {
        "version": "1.0",
        "job_id": "bench-1",
        "kind": "VMOperation",
        "operation": "vm.start",
        "payload": {"type": "vm.start.v1", "data": {"name": "ci-7"}},
    }

    def preparing(tables: list[AllowRule]) -> Callable[[], object]:
        config = Config(policy=PolicyConfig(image_roots=[Path("/tmp")], allow=tables))
        registry = Registry(vm.HANDLERS, policy=Policy(config))
        return lambda: prepare_job(registry, document, caller=caller, max_timeout=3600)

    named = f"check, {args.rules} rules naming it (resources)"
    cases: dict[str, Callable[[], object]] = {
        "check, no rules": lambda: empty.check(caller, "vm.start", payload),
        f"check, {args.rules} rules naming others": lambda: unnamed.check(
            caller, "vm.start", payload
        ),
        named: lambda: naming.check(caller, "vm.start", payload),
        "prepare_job, no rules": preparing([]),
        f"prepare_job, {args.rules} rules": preparing(rules(args.rules, naming=True)),
    }
    figures = per_job_us(cases, args.jobs, args.repeat)
    for label, value in figures.items():
        print(f"{label:44} {value:8.2f} us/job")
    base = figures["prepare_job, no rules"]
    share = figures[named] / base * 100
    verdict = "MET" if share <= args.budget else "MISSED"
    print(
        f"allowlist check at intake: {figures[named]:.2f} us/job on a {base:.2f} us "
        f"prepare_job ({share:.1f}%), budget {args.budget:.0f}%: {verdict}"
    )


if __name__ == "__main__":
    main()
