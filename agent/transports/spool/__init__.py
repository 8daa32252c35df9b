"""The spool transport: job files dropped into a directory (Maildir discipline)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from agent.config import Config
from agent.transports.base import TransportSpec
from agent.transports.spool.settings import SpoolConfig

if TYPE_CHECKING:
    from agent.core.services import Services
    from agent.transports.base import Transport


def _build(settings: SpoolConfig, services: Services) -> Transport | None:
    if not settings.enabled:
        return None
    from agent.transports.spool.transport import SpoolTransport  # noqa: PLC0415 (only when on)

    return SpoolTransport(services.get(Config).spool_dir, settings)


SPEC = TransportSpec(name="spool", settings=SpoolConfig, build=_build)
