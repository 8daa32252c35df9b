"""The HTTP transport: the /api/v1 job API, live events, tokens and TLS."""

from __future__ import annotations

from typing import TYPE_CHECKING

from agent.config import Config
from agent.transports.base import TransportSpec
from agent.transports.http.settings import HttpConfig

if TYPE_CHECKING:
    from agent.core.services import Services
    from agent.transports.base import Transport


def _build(settings: HttpConfig, services: Services) -> Transport | None:
    if not settings.enabled and not settings.socket_enabled:
        return None  # no TCP listener (--no-http) and no local socket (--no-socket)
    # hypercorn and quart are imported only when the API is on.
    from agent.transports.http.transport import HttpTransport  # noqa: PLC0415

    # Checks the exposure rules (no open API off loopback) before anything starts.
    return HttpTransport(settings, state_dir=services.get(Config).state_dir, services=services)


SPEC = TransportSpec(name="http", settings=HttpConfig, build=_build)
