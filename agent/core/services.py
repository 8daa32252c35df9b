"""Shared services (the config, the job store, the libvirt connection, the
resource view), registered once with a health ping and a close hook, in the
manner of hynek/svcs: handlers and transports ask for one by type
(`ctx.get(LibvirtConnection)`, `services.get(ResourceView)`), health asks each
for its ping, a reload swaps a value in this one place."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import structlog

from agent.core.health import Check
from agent.errors import HandlerError

log = structlog.get_logger("agent.core.services")

T = TypeVar("T")


@dataclass
class _Registered:
    name: str
    value: object
    ping: Check | None
    close: Callable[[], Awaitable[None]] | None


class Services:
    def __init__(self) -> None:
        self._by_type: dict[type, _Registered] = {}

    def register(
        self,
        kind: type[T],
        value: T,
        *,
        name: str,
        ping: Check | None = None,
        close: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """Offer `value` as the `kind` service; `name` is its health component."""
        self._by_type[kind] = _Registered(name, value, ping, close)

    def get(self, kind: type[T]) -> T:
        found = self._by_type.get(kind)
        if found is None:
            raise HandlerError(f"{kind.__name__} is not available on this agent")
        return found.value  # type: ignore[return-value]  # keyed by its own type

    def find(self, kind: type[T]) -> T | None:
        """The `kind` service, or None where this agent offers none."""
        found = self._by_type.get(kind)
        return None if found is None else found.value  # type: ignore[return-value]  # as get()

    def replace(self, kind: type[T], value: T) -> None:
        """Swap a service's value (a reloaded config): the next get() answers it."""
        self._by_type[kind].value = value

    def pings(self) -> dict[str, Check]:
        """Each service's health check by component name."""
        return {item.name: item.ping for item in self._by_type.values() if item.ping is not None}

    async def aclose(self) -> None:
        """Close every service, last registered first; one failing does not stop the rest."""
        for item in reversed(list(self._by_type.values())):
            if item.close is None:
                continue
            try:
                await item.close()
            except Exception:  # closing at exit: report it and go on with the others
                log.exception("services.close_failed", service=item.name)
