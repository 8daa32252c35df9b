"""The fleet transport: jobs and job events through Kafka, and the fleet capability map.

confluent-kafka is imported only by the modules that need it, so an agent
without `[kafka]` configured never loads librdkafka.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from agent.transports.kafka._settings import KafkaSettings
from agent.transports.kafka._topics import Selector, Topics

if TYPE_CHECKING:
    from agent.transports.kafka._fleet import FleetHost
    from agent.transports.kafka._transport import KafkaTransport


def build(
    settings: KafkaSettings, *, worker_id: str, labels: dict[str, str], store_path: Path
) -> KafkaTransport | None:
    """The transport, or None while `bootstrap_servers` is empty (off)."""
    if not settings.enabled:
        return None
    from agent.transports.kafka._transport import KafkaTransport  # noqa: PLC0415 (librdkafka)

    return KafkaTransport(settings, worker_id=worker_id, labels=labels, store_path=store_path)


def read_fleet(settings: KafkaSettings, *, timeout: float = 15.0) -> list[FleetHost]:
    """The fleet map from the compacted capabilities topic (blocking)."""
    from agent.transports.kafka._fleet import read_fleet as read  # noqa: PLC0415 (librdkafka)

    return read(settings, timeout=timeout)


__all__ = ["KafkaSettings", "Selector", "Topics", "build", "read_fleet"]
