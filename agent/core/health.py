"""Component health: each component says healthy/degraded/unhealthy and why."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Literal

import structlog

from agent.jobs import utc_now

log = structlog.get_logger("agent.health")

Status = Literal["healthy", "degraded", "unhealthy"]
# A check answers its status, a reason, and any figures worth showing.
Check = Callable[[], Awaitable[tuple[Status, str, dict[str, Any]]]]

_RANK: dict[Status, int] = {"healthy": 0, "degraded": 1, "unhealthy": 2}


class Health:
    def __init__(self) -> None:
        self._checks: dict[str, Check] = {}
        # The failure each component's check last raised (absent: it last answered), so
        # a check failing on every probe is logged once per change, not once per probe.
        self._failing: dict[str, str] = {}

    def add(self, component: str, check: Check) -> None:
        self._checks[component] = check

    async def report(self) -> dict[str, Any]:
        """The contract's health object (`GET /api/v1/health`)."""
        components: dict[str, Any] = {}
        overall: Status = "healthy"
        for name, check in self._checks.items():
            try:
                status, reason, figures = await check()
            except Exception as exc:  # noqa: BLE001 (a failing check is itself the finding: logged, reported)
                status, reason, figures = "unhealthy", f"check failed: {exc}", {}
                self._note_failure(name, exc, reason)
            else:
                self._note_answer(name, status)
            components[name] = {"status": status, "reason": reason, **figures}
            if _RANK[status] > _RANK[overall]:
                overall = status
        return {"status": overall, "timestamp": utc_now(), "components": components}

    def _note_failure(self, component: str, exc: Exception, reason: str) -> None:
        failure = f"{type(exc).__name__}: {exc}"
        if self._failing.get(component) == failure:
            return
        self._failing[component] = failure
        log.error(
            "health.check_failed",
            component=component,
            error=type(exc).__name__,
            reason=reason,
            exc_info=exc,
        )

    def _note_answer(self, component: str, status: Status) -> None:
        if self._failing.pop(component, None) is not None:
            log.info("health.check_recovered", component=component, status=status)
