"""Errors of the agent's periodic tasks: logged, counted, shown in health, retried.

A periodic task (the spool's rescan, the capabilities fingerprint, the HTTP
accept loop) that meets an OS error (EMFILE when a flood of connections took
the descriptors, ENOSPC, EIO) must not end the daemon: it reports here and
tries again with backoff. Health's `background` component is degraded while
such an error is recent.
"""

from __future__ import annotations

import time
from typing import Any

import structlog

from agent.core import metrics
from agent.core.health import Status

log = structlog.get_logger("agent.core.periodic")

# An error this recent keeps the component degraded.
RECENT_SECONDS = 60.0
_last: dict[str, tuple[float, str]] = {}


def note_failure(task: str, exc: BaseException) -> None:
    """A periodic task failed this round (it will try again)."""
    metrics.BACKGROUND_ERRORS.labels(task).inc()
    _last[task] = (time.monotonic(), f"{type(exc).__name__}: {exc}")
    log.warning("background.task_failed", task=task, error=str(exc), error_type=type(exc).__name__)


def backoff(attempt: int, *, first: float = 0.5, most: float = 30.0) -> float:
    """Seconds to wait before retry `attempt` (1, 2, ...): doubling, capped."""
    return float(min(most, first * 2 ** max(attempt - 1, 0)))


async def health() -> tuple[Status, str, dict[str, Any]]:
    """The `background` health component."""
    now = time.monotonic()
    recent = {task: error for task, (at, error) in _last.items() if now - at < RECENT_SECONDS}
    if recent:
        return "degraded", "periodic tasks are failing and retrying", {"errors": recent}
    return "healthy", "periodic tasks run", {}
