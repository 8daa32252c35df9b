"""Transports turn outside input into job documents and hand them to the Intake."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import trio

if TYPE_CHECKING:
    from agent.intake import Intake


class Transport(Protocol):
    name: str

    async def run(
        self, intake: Intake, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Serve until cancelled; call task_status.started() once taking jobs."""


__all__ = ["Transport"]
