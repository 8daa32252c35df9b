"""Prometheus metrics of the agent (one registry, standard names).

Counters and the duration histogram are updated in one place each: a job
is counted as accepted where the Intake records it, and as finished where
the Dispatcher publishes a terminal status. Gauges of the running agent
(queue depth, running jobs) are read at scrape time from whatever `track()`
was given, so nothing else has to update them. A transport registers its own
series in REGISTRY.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from functools import cache

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from agent.jobs import JobState, JobStatus

# The *_created series double the exposition for a timestamp nobody graphs.
disable_created_metrics()  # type: ignore[no-untyped-call]  # untyped in the library
REGISTRY = CollectorRegistry()

# The standard process_*, python_gc_* and python_info series, in our own registry.
ProcessCollector(registry=REGISTRY)
PlatformCollector(registry=REGISTRY)
GCCollector(registry=REGISTRY)

HTTP_REQUESTS = Counter(
    "hostagent_http_requests",
    "HTTP requests answered, by method, route template and status code",
    ["method", "route", "code"],
    registry=REGISTRY,
)

# prometheus-client appends _total to counter names itself.
JOBS_ACCEPTED = Counter(
    "hostagent_jobs_accepted",
    "Jobs accepted (durably recorded), by the transport that brought them",
    ["transport"],
    registry=REGISTRY,
)
JOBS_FINISHED = Counter(
    "hostagent_jobs_finished",
    "Jobs that reached a final status, by operation and status",
    ["operation", "status"],
    registry=REGISTRY,
)
JOB_DURATION = Histogram(
    "hostagent_job_duration_seconds",
    "Time from a job's start to its final status, by operation",
    ["operation"],
    # Jobs range from an echo (milliseconds) to an image conversion (an hour).
    buckets=(0.005, 0.025, 0.1, 0.5, 1, 5, 15, 60, 300, 900, 1800, 3600, 4 * 3600),
    registry=REGISTRY,
)
QUEUE_WAIT = Histogram(
    "hostagent_job_queue_wait_seconds",
    "Time from a job's acceptance to its start, by operation",
    ["operation"],
    buckets=(0.001, 0.005, 0.025, 0.1, 0.5, 1, 5, 30, 120, 600, 3600),
    registry=REGISTRY,
)
JOBS_REJECTED = Counter(
    "hostagent_jobs_rejected",
    "Job submissions refused before acceptance, by transport and error code",
    ["transport", "code"],
    registry=REGISTRY,
)
# Connection limits of the HTTP transport (agent.transports.http.listener).
HTTP_CONNECTIONS_OPEN = Gauge(
    "hostagent_http_connections_open", "HTTP connections open now", registry=REGISTRY
)
HTTP_CONNECTIONS_REFUSED = Counter(
    "hostagent_http_connections_refused",
    "Connections closed on arrival: over http.max_connections or the per-client cap",
    registry=REGISTRY,
)
HTTP_CONNECTIONS_TIMED_OUT = Counter(
    "hostagent_http_connections_timed_out",
    "Connections closed because a request's headers did not arrive in time",
    registry=REGISTRY,
)
HTTP_CONNECTIONS_EVICTED = Counter(
    "hostagent_http_connections_evicted",
    "Connections not in a request closed to make room for a new one (all were taken)",
    registry=REGISTRY,
)
HTTP_ACCEPT_ERRORS = Counter(
    "hostagent_http_accept_errors",
    "accept() failures for lack of descriptors or memory (retried with backoff)",
    registry=REGISTRY,
)
BACKGROUND_ERRORS = Counter(
    "hostagent_background_errors",
    "Errors in the agent's periodic tasks, logged and retried with backoff, by task",
    ["task"],
    registry=REGISTRY,
)
BUILD_INFO = Info("hostagent_build", "The running agent's version", registry=REGISTRY)


def _version() -> str:
    try:
        return importlib.metadata.version("hostagent")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree, not installed
        return "unknown"


BUILD_INFO.info({"version": _version()})

_FINAL = [status for status in JobStatus if status.terminal]


# A metric's child per label values, looked up once: labels() cost as much as
# the rest of a no-op job's bookkeeping on the event loop (children are never removed).
@cache
def _accepted(transport: str) -> Counter:
    return JOBS_ACCEPTED.labels(transport=transport)


@cache
def _finished(operation: str, status: str) -> Counter:
    return JOBS_FINISHED.labels(operation=operation, status=status)


@cache
def _duration(operation: str) -> Histogram:
    return JOB_DURATION.labels(operation=operation)


@cache
def _queue_wait(operation: str) -> Histogram:
    return QUEUE_WAIT.labels(operation=operation)


def record_accepted(transport: str, count: int = 1) -> None:
    """New jobs were durably recorded."""
    _accepted(transport).inc(count)


def record_rejected(transport: str, code: str) -> None:
    """A submission was refused (invalid, unauthorised, queue full, ...)."""
    JOBS_REJECTED.labels(transport=transport, code=code).inc()


def _seconds_between(start: str | None, end: str | None) -> float | None:
    if start is None or end is None:
        return None
    elapsed = datetime.fromisoformat(end) - datetime.fromisoformat(start)
    return max(elapsed.total_seconds(), 0.0)


def job_duration(state: JobState) -> float | None:
    """Seconds from a job's start to its final status (None if it never started)."""
    return _seconds_between(state.started_at, state.completed_at)


def record_started(state: JobState) -> None:
    """A job started: how long it waited in the queue."""
    waited = _seconds_between(state.submitted_at, state.started_at)
    if waited is not None:
        _queue_wait(state.operation).observe(waited)


def record_finished(state: JobState) -> None:
    """A job reached a final status (the state as recorded, with its timestamps)."""
    _finished(state.operation, state.status.value).inc()
    elapsed = job_duration(state)
    if elapsed is not None:
        _duration(state.operation).observe(elapsed)


@dataclass(frozen=True)
class Sources:
    """Where the running agent's gauges are read at scrape time."""

    queue_depth: Callable[[], int]
    running: Callable[[], int]


class _LiveCollector(Collector):
    def __init__(self) -> None:
        self.sources: Sources | None = None

    def describe(self) -> Iterable[Metric]:
        return self._families()

    def collect(self) -> Iterable[Metric]:
        sources = self.sources
        if sources is None:
            return []  # no agent running in this process
        queue_depth, running = self._families()
        queue_depth.add_metric([], sources.queue_depth())
        running.add_metric([], sources.running())
        return [queue_depth, running]

    @staticmethod
    def _families() -> tuple[GaugeMetricFamily, GaugeMetricFamily]:
        return (
            GaugeMetricFamily("hostagent_queue_depth", "Jobs queued, waiting for a worker"),
            GaugeMetricFamily("hostagent_jobs_running", "Jobs running now"),
        )


_LIVE = _LiveCollector()
REGISTRY.register(_LIVE)


def track(
    sources: Sources, *, transports: Iterable[str] = (), operations: Iterable[str] = ()
) -> Callable[[], None]:
    """Expose a running agent's gauges until the returned function is called.

    The named transports and operations get their counter series at zero
    from the start, so rate() and absent() work before the first job.
    """
    for transport in transports:
        JOBS_ACCEPTED.labels(transport=transport)
    for operation in operations:
        for status in _FINAL:
            JOBS_FINISHED.labels(operation=operation, status=status.value)
    previous, _LIVE.sources = _LIVE.sources, sources

    def untrack() -> None:
        _LIVE.sources = previous

    return untrack


def render() -> tuple[bytes, str]:
    """The exposition text and its content type, for GET /metrics."""
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


LIBVIRT_UP = Gauge(
    "hostagent_libvirt_up",
    "1 while the agent's libvirt connection is open, 0 while it is down or reconnecting",
    registry=REGISTRY,
)
