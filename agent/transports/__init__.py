"""Transports: every way jobs reach this agent, built by the daemon from TRANSPORTS."""

from __future__ import annotations

from agent.transports import http, kafka, spool
from agent.transports.base import Transport, TransportSpec

TRANSPORTS: tuple[TransportSpec, ...] = (spool.SPEC, http.SPEC, kafka.SPEC)

__all__ = ["TRANSPORTS", "Transport", "TransportSpec"]
