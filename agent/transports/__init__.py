"""Transports: every way jobs reach this agent, built by the daemon from TRANSPORTS."""

from __future__ import annotations

from typing import Any

from agent.transports import http, kafka, spool
from agent.transports.base import Transport, TransportSpec

# Each brings its [name] section; agent.service.settings.Settings declares the same three.
TRANSPORTS: tuple[TransportSpec[Any], ...] = (spool.SPEC, http.SPEC, kafka.SPEC)

__all__ = ["TRANSPORTS", "Transport", "TransportSpec"]
