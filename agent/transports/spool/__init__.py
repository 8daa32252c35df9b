"""The spool transport: job files dropped into a directory (Maildir discipline)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from agent.transports.base import TransportSpec
from agent.transports.spool.settings import SpoolConfig

if TYPE_CHECKING:
    from agent.config import Config
    from agent.transports.base import Transport


def _build(config: Config) -> Transport | None:
    settings = config.section(SpoolConfig)
    if not settings.enabled:
        return None
    from agent.transports.spool.transport import SpoolTransport  # noqa: PLC0415 (only when on)

    return SpoolTransport(config.spool_dir, settings)


SPEC = TransportSpec(name="spool", settings=SpoolConfig, build=_build)
