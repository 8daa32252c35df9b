"""Component health: each component says healthy/degraded/unhealthy and why."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Literal

from agent.jobs import utc_now

Status = Literal["healthy", "degraded", "unhealthy"]
# A check answers its status, a reason, and any figures worth showing.
Check = Callable[[], Awaitable[tuple[Status, str, dict[str, Any]]]]

_RANK: dict[Status, int] = {"healthy": 0, "degraded": 1, "unhealthy": 2}


class Health:
    def __init__(self) -> None:
        self._checks: dict[str, Check] = {}

    def add(self, component: str, check: Check) -> None:
        self._checks[component] = check

    async def report(self) -> dict[str, Any]:
        """The contract's health object (`GET /api/v1/health`)."""
        components: dict[str, Any] = {}
        overall: Status = "healthy"
        for name, check in self._checks.items():
            try:
                status, reason, figures = await check()
            except Exception as exc:  # noqa: BLE001 (a failing check is itself the finding)
                status, reason, figures = "unhealthy", f"check failed: {exc}", {}
            components[name] = {"status": status, "reason": reason, **figures}
            if _RANK[status] > _RANK[overall]:
                overall = status
        return {"status": overall, "timestamp": utc_now(), "components": components}
