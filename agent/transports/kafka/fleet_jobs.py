"""What happened across the fleet: job events (agent.transports.kafka.job_events)
folded into one job per host, as `fleet jobs` and `submit --kafka --wait` show them."""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from agent.errors import UsageError
from agent.transports.kafka.events import TERMINAL

# An event's type -> the status its host's job is in after it (rejected and
# expired are no job status: the job never ran there).
_STATUS_AFTER = {
    "accepted": "Pending",
    "running": "Running",
    "progress": "Running",
    "completed": "Completed",
    "failed": "Failed",
    "cancelled": "Cancelled",
    "expired": "Expired",
    "rejected": "Rejected",
}
_SINCE = re.compile(r"(\d+(?:\.\d+)?)([smhd])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_since(text: str, *, now: datetime | None = None) -> datetime:
    """`--since`: a duration back from now (90s, 15m, 1h, 2d) or an RFC 3339 time."""
    now = now or datetime.now(UTC)
    if match := _SINCE.fullmatch(text.strip()):
        return now - timedelta(seconds=float(match[1]) * _UNIT_SECONDS[match[2]])
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(
            f"--since: {text!r} is neither a duration (90s, 15m, 1h, 2d) nor an RFC 3339 time",
            field="since",
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


@dataclass(slots=True)
class HostRun:
    """One job on one host, as its events tell it."""

    worker_id: str
    job_id: str
    operation: str | None = None
    status: str | None = None
    last_event: str | None = None
    submitted_at: str | None = None
    started_at: str | None = None
    completed_at: str | None = None
    # The job's error text (failed, cancelled), or the refusal's envelope (rejected, expired).
    error: Any = None
    progress: float | None = None
    attempts: int = 0
    result: Any = None
    result_fields: dict[str, Any] | None = None
    target: str | None = None
    ended: bool = False
    # The last outbox entry applied (event_id "worker:N"): a repeat is one at or below it.
    seq: int = -1

    def apply(self, event: dict[str, Any]) -> bool:
        """Take the event in; False for a repeat (delivery is at least once)."""
        seq = _outbox_seq(event.get("event_id"))
        if seq is not None:
            if seq <= self.seq:
                return False
            self.seq = seq
        kind = sys.intern(str(event.get("type")))
        data = _data(event)
        at = event.get("timestamp")
        operation = event.get("operation")
        if isinstance(operation, str):
            self.operation = sys.intern(operation)
        self.last_event = kind
        if kind == "duplicate":
            # The host knew this job_id already; its status says how that job stands.
            self.status = self.status or event.get("status")
            self.ended = self.ended or self.status in {"Completed", "Failed", "Cancelled"}
            return True
        self.status = _STATUS_AFTER.get(kind, self.status)
        if kind == "accepted":
            self.submitted_at = at
            self.target = self.target or _target(data.get("origin"))
        elif kind == "running":
            self.started_at = at
            self.attempts += 1
        elif kind == "progress" and isinstance(data.get("percent"), int | float):
            self.progress = float(data["percent"])
        if kind in {"rejected", "expired"}:
            self.target = self.target or _target(data.get("origin"))
        if kind in TERMINAL:
            self.ended = True
            self.completed_at = at
            self.error = data.get("error")
            self.result = data.get("result")
            self.result_fields = {
                k: data[k] for k in ("result_truncated", "result_bytes", "result_url") if k in data
            } or None
        return True

    @property
    def refused(self) -> bool:
        """Rejected or expired: the job never became a job on this host."""
        return self.last_event in {"rejected", "expired"}

    def document(self, *, operation: str | None = None, priority: int | None = 5) -> dict[str, Any]:
        """The job as `hostagent submit --wait` prints it from a local agent, plus worker_id."""
        document: dict[str, Any] = {
            "job_id": self.job_id,
            "operation": self.operation or operation,
            "status": self.status,
            "submitted_at": self.submitted_at,
            "started_at": self.started_at,
            "completed_at": self.completed_at,
            "error": self.error if isinstance(self.error, str | None) else _message(self.error),
            "progress": self.progress,
            "transport": "kafka",
            "attempts": self.attempts,
            "priority": priority,
            "parent": None,  # sent to the fleet by a client, not a runbook's step
            "result": self.result,
            **(self.result_fields or {}),
            "worker_id": self.worker_id,
        }
        if priority is None:
            del document["priority"]
        return document


def _outbox_seq(event_id: object) -> int | None:
    """N of an agent's outbox event id `worker:N` (a worker_id holds no ':'); None for
    the intake's `worker:topic:partition:offset` (re-applying those changes nothing)."""
    if not isinstance(event_id, str) or event_id.count(":") != 1:
        return None
    tail = event_id.partition(":")[2]
    return int(tail) if tail.isdigit() else None


def _data(event: dict[str, Any]) -> dict[str, Any]:
    data = event.get("data")
    return data if isinstance(data, dict) else {}


def _message(error: Any) -> str:
    return str(error.get("message")) if isinstance(error, dict) else str(error)


def _target(origin: Any) -> str | None:
    """`host a`, `pool p1` or `broadcast`, from an event's origin (where the job was read)."""
    topic = origin.get("topic") if isinstance(origin, dict) else str(origin or "").split("/")[0]
    if not isinstance(topic, str) or not topic.endswith(".jobs"):
        return None
    for kind in ("host", "pool"):
        if f".{kind}." in topic:
            return f"{kind} {topic.rsplit(f'.{kind}.', 1)[1].removesuffix('.jobs')}"
    return "broadcast" if topic.endswith(".broadcast.jobs") else None


@dataclass(slots=True)
class FleetJob:
    """One job_id across the fleet: every host that told something of it."""

    job_id: str
    first_at: str | None = None
    last_at: str | None = None
    hosts: dict[str, HostRun] = field(default_factory=dict)

    def apply(self, event: dict[str, Any]) -> HostRun | None:
        """The host's run after the event; None when it was a repeat."""
        worker_id = str(event["worker_id"])
        run = self.hosts.get(worker_id)
        if run is None:
            run = self.hosts[worker_id] = HostRun(sys.intern(worker_id), self.job_id)
        if not run.apply(event):
            return None
        at = event.get("timestamp")
        if isinstance(at, str):
            self.first_at = min(self.first_at or at, at)
            self.last_at = max(self.last_at or at, at)
        return run

    @property
    def operation(self) -> str | None:
        return next((run.operation for run in self.hosts.values() if run.operation), None)

    @property
    def target(self) -> str | None:
        return next((run.target for run in self.hosts.values() if run.target), None)

    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for run in self.hosts.values():
            status = run.status or "Unknown"
            counts[status] = counts.get(status, 0) + 1
        return counts

    def to_dict(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "operation": self.operation,
            "target": self.target,
            "first_event_at": self.first_at,
            "last_event_at": self.last_at,
            "outcome": self.counts(),
            # Without results (collect keeps none): `fleet jobs --follow ID --json` has them.
            "hosts": {
                worker_id: _without_result(run.document(priority=None))
                for worker_id, run in sorted(self.hosts.items())
            },
        }


def _without_result(document: dict[str, Any]) -> dict[str, Any]:
    document.pop("result", None)
    return document


def collect(events: Iterable[dict[str, Any]]) -> dict[str, FleetJob]:
    """job_id -> FleetJob, from events in the order they were written; results are
    dropped as they come (an hour of a fleet's results would not fit in memory)."""
    jobs: dict[str, FleetJob] = {}
    for event in events:
        job_id = str(event["job_id"])
        job = jobs.get(job_id)
        if job is None:
            job = jobs[job_id] = FleetJob(job_id)
        run = job.apply(event)
        if run is not None:
            run.result = None
    return jobs


def select(
    jobs: Iterable[FleetJob],
    *,
    operation: str | None = None,
    host: str | None = None,
    status: str | None = None,
) -> list[FleetJob]:
    """The jobs that match every filter given, newest first."""
    chosen = [
        job
        for job in jobs
        if (operation is None or job.operation == operation)
        and (host is None or host in job.hosts)
        and (status is None or any(run.status == status for run in job.hosts.values()))
    ]
    return sorted(chosen, key=lambda job: job.first_at or "", reverse=True)


def outcome_line(job: FleetJob) -> str:
    counts = job.counts()
    return ", ".join(f"{n} {status.lower()}" for status, n in sorted(counts.items()))


_HOSTS_SHOWN = 4


def render_jobs(jobs: Iterable[FleetJob]) -> str:
    """`hostagent fleet jobs` as a table, one job per line."""
    rows = [("JOB ID", "OPERATION", "TARGET", "FIRST EVENT", "OUTCOME", "HOSTS")]
    for job in jobs:
        runs = sorted(job.hosts.values(), key=lambda run: run.worker_id)
        hosts = " ".join(f"{run.worker_id}:{run.status or '?'}" for run in runs[:_HOSTS_SHOWN])
        if len(runs) > _HOSTS_SHOWN:
            hosts += f" (+{len(runs) - _HOSTS_SHOWN} more: --json)"
        rows.append(
            (
                job.job_id,
                job.operation or "-",
                job.target or "-",
                job.first_at or "-",
                outcome_line(job),
                hosts,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


def render_event(event: dict[str, Any]) -> str:
    """One event of `fleet jobs --follow`, for people."""
    data = _data(event)
    detail = ""
    kind = event.get("type")
    if kind == "progress":
        detail = f"{data.get('percent', '?')}% {data.get('message') or ''}".rstrip()
    elif kind in {"failed", "cancelled", "rejected", "expired"}:
        detail = _message(data.get("error"))
    elif kind == "completed":
        detail = json.dumps(data.get("result"), separators=(",", ":"))[:120]
    return f"{event.get('timestamp')}  {event.get('worker_id')}  {kind}  {detail}".rstrip()
