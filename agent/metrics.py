"""Prometheus metrics of the agent (one registry, standard names)."""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    generate_latest,
)

REGISTRY = CollectorRegistry()

HTTP_REQUESTS = Counter(
    "hostagent_http_requests",
    "HTTP requests answered, by method, route template and status code",
    ["method", "route", "code"],
    registry=REGISTRY,
)


def render() -> tuple[bytes, str]:
    """The exposition text and its content type, for GET /metrics."""
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


LIBVIRT_UP = Gauge(
    "hostagent_libvirt_up",
    "1 while the agent's libvirt connection is open, 0 while it is down or reconnecting",
    registry=REGISTRY,
)
