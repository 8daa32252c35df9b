"""Transports: every way jobs reach this agent, built by the daemon from TRANSPORTS."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agent.transports.base import Transport, TransportSpec

    # Each brings its [name] section; agent.service.settings.Settings declares the same three.
    TRANSPORTS: tuple[TransportSpec[Any], ...]

__all__ = ["TRANSPORTS", "Transport", "TransportSpec"]


def __getattr__(name: str) -> Any:
    # Imported on first use: a client command that reads one transport's module
    # (`hostagent fleet`) does not load the others, trio and the core with them.
    if name == "TRANSPORTS":
        from agent.transports import http, kafka, spool  # noqa: PLC0415

        value: Any = (spool.SPEC, http.SPEC, kafka.SPEC)
    elif name in {"Transport", "TransportSpec"}:
        value = getattr(importlib.import_module("agent.transports.base"), name)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value
