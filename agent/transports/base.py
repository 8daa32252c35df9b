"""What a transport is to the core: it turns outside input into job documents
and hands them to the intake, and delivers what its outbox says happened."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import trio

from agent.config import Config, Section
from agent.core.health import Status
from agent.core.outbox import OutboxInterest

if TYPE_CHECKING:
    from agent.core.intake import TransportIntake


class Transport(Protocol):
    @property
    def name(self) -> str:
        """The jobs' `transport`, its outbox consumer, health component and metrics label."""

    @property
    def outbox(self) -> OutboxInterest | None:
        """What it wants in its outbox; None when it delivers nothing durable (clients poll)."""

    async def run(
        self,
        intake: TransportIntake,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve until cancelled; call task_status.started() once taking jobs."""

    def features(self) -> list[str]:
        """The capability `features` it brings (how jobs can reach this agent)."""

    async def health(self) -> tuple[Status, str, dict[str, Any]]:
        """Its health component: status, reason and figures."""


@dataclass(frozen=True)
class TransportSpec:
    """One row of the transport table."""

    name: str
    # Its [name] section of the configuration, or None when it has no settings.
    settings: type[Section] | None
    # The transport this config asks for, or None when it is turned off. Heavy
    # modules (hypercorn, watchfiles) are imported inside, only when used.
    build: Callable[[Config], Transport | None]
