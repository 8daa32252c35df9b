"""What a transport is to the core: it turns outside input into job documents
and hands them to the intake, and delivers what its outbox says happened."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

import trio

from agent.config import Section
from agent.core.health import Status
from agent.core.outbox import OutboxInterest
from agent.core.services import Services

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


SectionT = TypeVar("SectionT", bound=Section)


@dataclass(frozen=True)
class TransportSpec(Generic[SectionT]):
    """One row of the transport table: its name, its settings, how it is built.

    The composition root (agent.service) adds a `[name]` section of this model
    to the settings, loaded from the same file and environment
    (`HOSTAGENT_NAME__KEY`) as the rest, with the model's defaults.
    """

    name: str
    # Its [name] section of the configuration, or None when it has no settings
    # (`build` then gets an empty Section).
    settings: type[SectionT] | None
    # The transport its own section asks for, or None when that turns it off.
    # It is given that section only, and the services registry: the core
    # settings (`services.get(Config)`), the resource view and the like, of
    # which it passes the transport what it needs. Heavy modules (hypercorn,
    # watchfiles) are imported inside, only when used.
    build: Callable[[SectionT, Services], Transport | None]
