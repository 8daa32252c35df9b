"""The fleet commands that read answers: `submit --kafka --wait/--follow`, `fleet jobs`
and `fleet jobs --follow ID`. Their rule: never lie.

- A target is checked against the fleet map before anything is sent
  (agent.transports.kafka.fleet_targets); `--force` skips the check.
- `--wait-timeout` bounds the whole command, the map's read included: the
  event reader consumes in short slices against one deadline, so the command
  returns within a slice of it (exit 4, naming the hosts that did not answer).
- A host's answer is printed as the job document a local `--wait` prints (plus
  `worker_id`); a broadcast ends with a summary line on stderr:
  `N completed, M failed, K no answer`.
- The exit code is the worst outcome: 1 if a host failed (or rejected the job,
  or it expired there), else 3 if one cancelled it, else 4 if one did not answer
  in time, else 0.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from collections.abc import Collection
from types import TracebackType
from typing import Any

from agent.errors import UsageError
from agent.jobs import JOB_ID_PATTERN
from agent.transports.kafka.fleet import read_fleet
from agent.transports.kafka.fleet_jobs import (
    FleetJob,
    HostRun,
    collect,
    parse_since,
    render_event,
    render_jobs,
    select,
)
from agent.transports.kafka.fleet_targets import (
    broadcast_reach,
    check_host,
    describe,
    is_live,
    pool_reach,
    require_live,
)
from agent.transports.kafka.job_events import JobEventReader, remaining
from agent.transports.kafka.settings import KafkaConfig

# The exit codes of agent.cli.support (the README's table); the transport may not import the CLI.
EXIT_OK, EXIT_FAILED, EXIT_CANCELLED, EXIT_TIMEOUT = 0, 1, 3, 4
_FAILED = frozenset({"Failed", "Rejected", "Expired"})
# The map's read may take at most this share of a --wait-timeout (the rest waits for answers).
_MAP_SHARE = 0.5


def command_started() -> float:
    """When this process started, on time.monotonic()'s clock: a --wait-timeout counts
    from the command's start (loading Python and librdkafka takes ~0.3 s idle, over a
    second on a busy host), not from when the command gets round to waiting."""
    now = time.monotonic()
    try:
        with open("/proc/self/stat", "rb") as stat:
            # Field 22, after the parenthesised command name: start time in clock ticks since boot.
            started_ticks = int(stat.read().rsplit(b")", 1)[1].split()[19])
        age = time.clock_gettime(time.CLOCK_BOOTTIME) - started_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, AttributeError):
        return now
    return now - max(0.0, age)


def _warn(text: str) -> None:
    print(f"hostagent: {text}", file=sys.stderr)


def check_target(
    settings: KafkaConfig,
    args: argparse.Namespace,
    document: dict[str, Any],
    *,
    deadline: float,
    waiting: bool,
) -> set[str] | None:
    """Check the job's target against the fleet map; the hosts whose answers --wait
    waits for (None: any one host, a pool's)."""
    force = bool(getattr(args, "force", False))
    if force and not (waiting and args.broadcast):
        _warn("--force: the target is not checked against the fleet map")
        return {args.host} if args.host is not None else None
    hosts = read_fleet(settings, timeout=max(0.5, remaining(deadline) * _MAP_SHARE), records=False)
    if args.host is not None:
        host = check_host(hosts, args.host)
        if not is_live(host):
            _warn(f"{describe(host)}: its agent runs the job when it comes back")
        return {host.worker_id}
    if args.pool is not None:
        require_live(pool_reach(hosts, args.pool), f"--pool {args.pool}")
        return None
    selector = document["selector"]
    reach = broadcast_reach(
        hosts,
        operations=[document["operation"], *selector.get("operations", [])],
        labels=selector["labels"],
    )
    if force:
        _warn("--force: sending whatever the fleet map says")
        return {host.worker_id for host in reach.live}
    pairs = " ".join(f"--selector {pair}" for pair in args.selector)
    live = require_live(reach, f"--broadcast {pairs}".rstrip() + f" --op {document['operation']}")
    return {host.worker_id for host in live}


class Waiter:
    """Reads one job's events from the moment before it is sent until every host
    expected has answered, or the deadline."""

    def __init__(
        self,
        settings: KafkaConfig,
        document: dict[str, Any],
        *,
        expected: set[str] | None,
        deadline: float,
        timeout: float,
    ) -> None:
        self._document = document
        self._timeout = timeout
        self._expected = expected
        self._reader = JobEventReader(settings, deadline=deadline)
        self._deadline = deadline
        self.job = FleetJob(str(document["job_id"]))

    def __enter__(self) -> Waiter:
        self._reader.__enter__()
        try:
            self._reader.start()
        except BaseException:
            self._reader.__exit__(None, None, None)
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._reader.__exit__(exc_type, exc, tb)

    def wait(self, *, follow: bool, broadcast: bool) -> int:
        """Print each host's answer (every event, with `follow`); the exit code."""
        answered: set[str] = set()
        for event in self._reader.job_events(job_id=self.job.job_id):
            if event["job_id"] != self.job.job_id:
                continue
            run = self.job.apply(event)
            if run is None:
                continue  # a repeat
            if follow:
                print(json.dumps(event), flush=True)
            if run.ended and run.worker_id not in answered:
                answered.add(run.worker_id)
                if not follow:
                    self._print_answer(run)
            if _done(self.job, self._expected):
                break
        return outcome(self.job, self._expected, summary=broadcast, timeout=self._timeout)

    def _print_answer(self, run: HostRun) -> None:
        if run.refused:
            error = run.error if isinstance(run.error, dict) else {"message": run.error}
            _warn(f"{run.worker_id}: the job was {run.last_event}: {error.get('message')}")
            if error.get("details"):
                print(json.dumps(error["details"]), file=sys.stderr)
            return
        document = run.document(
            operation=self._document.get("operation"),
            priority=int(self._document.get("priority", 5)),
        )
        print(json.dumps(document, indent=2), flush=True)


def _done(job: FleetJob, expected: Collection[str] | None) -> bool:
    ended = {worker for worker, run in job.hosts.items() if run.ended}
    if expected is None:
        return bool(ended)
    return set(expected) <= ended


def outcome(
    job: FleetJob, expected: Collection[str] | None, *, summary: bool, timeout: float
) -> int:
    """The exit code of a wait or follow (worst first), after saying what is missing."""
    runs = list(job.hosts.values())
    ended = {run.worker_id for run in runs if run.ended}
    if expected is None:
        missing = [] if ended else ["(any host of the pool)"]
    else:
        missing = sorted(set(expected) - ended)
    failed = sum(run.ended and run.status in _FAILED for run in runs)
    cancelled = sum(run.ended and run.status == "Cancelled" for run in runs)
    completed = sum(run.ended and run.status == "Completed" for run in runs)
    if summary:
        line = f"{completed} completed, {failed} failed, {len(missing)} no answer"
        if cancelled:
            line = f"{completed} completed, {failed} failed, {cancelled} cancelled, "
            line += f"{len(missing)} no answer"
        print(line, file=sys.stderr, flush=True)
    if missing:
        more = f" and {len(missing) - 10} more" if len(missing) > 10 else ""
        shown = ", ".join(missing[:10]) + more
        _warn(
            f"no answer from {shown} within the wait timeout ({timeout:g} s); "
            f"the job may still run (hostagent fleet jobs --follow {job.job_id})"
        )
    if failed:
        return EXIT_FAILED
    if cancelled:
        return EXIT_CANCELLED
    return EXIT_TIMEOUT if missing else EXIT_OK


def fleet_jobs(args: argparse.Namespace, settings: KafkaConfig) -> int:
    """`hostagent fleet jobs`: each job of `<prefix>.job-events` since --since, per host."""
    since = parse_since(args.since)
    if args.follow is not None:
        return follow_job(args, settings, since)
    deadline = time.monotonic() + args.timeout
    with JobEventReader(settings, deadline=deadline) as reader:
        reader.start(since)
        jobs = collect(reader.job_events(until_end=True))
    chosen = select(jobs.values(), operation=args.op, host=args.host, status=args.host_status)
    shown = chosen[: args.limit]
    if len(chosen) > len(shown):
        _warn(f"showing the newest {len(shown)} of {len(chosen)} jobs (--limit)")
    if args.json:
        listing = {"jobs": [job.to_dict() for job in shown], "total": len(chosen)}
        print(json.dumps(listing, indent=2))
    else:
        print(render_jobs(shown))
    return EXIT_OK


def follow_job(args: argparse.Namespace, settings: KafkaConfig, since: Any) -> int:
    """`fleet jobs --follow ID`: the job's events on every host, from --since until each
    host that showed it has ended it (or --wait-timeout)."""
    if not re.fullmatch(JOB_ID_PATTERN, args.follow):
        raise UsageError(f"--follow: {args.follow!r} is not a job id", field="follow")
    job = FleetJob(args.follow)
    deadline = command_started() + args.wait_timeout
    with JobEventReader(settings, deadline=deadline) as reader:
        reader.start(since)
        for batch in reader.batches(job_id=job.job_id):
            for event in batch:
                if event["job_id"] == job.job_id and job.apply(event) is not None:
                    print(json.dumps(event) if args.json else render_event(event), flush=True)
            if reader.caught_up and job.hosts and _done(job, job.hosts):
                break
    if not job.hosts:
        _warn(f"no event of job {job.job_id} since {since.isoformat()}")
        return EXIT_TIMEOUT
    return outcome(job, set(job.hosts), summary=True, timeout=args.wait_timeout)
