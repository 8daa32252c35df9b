"""The fleet transport: jobs and job events through Kafka, and the fleet capability map.

confluent-kafka is imported only by the modules that need it, so an agent
without `[kafka]` configured never loads librdkafka.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from agent.config import Config
from agent.transports.base import TransportSpec
from agent.transports.kafka.settings import KafkaConfig
from agent.transports.kafka.topics import Selector, Topics

if TYPE_CHECKING:
    from agent.core.services import Services
    from agent.transports.base import Transport
    from agent.transports.kafka.fleet import FleetHost


def _build(settings: KafkaConfig, services: Services) -> Transport | None:
    if not settings.enabled:
        return None
    from agent.transports.kafka.transport import (  # noqa: PLC0415 (librdkafka)
        DEFAULT_MAX_RESULT_BYTES,
        KafkaTransport,
    )

    core = services.get(Config)
    # The core's max_event_result_bytes once it exists; until then the transport's default.
    max_result = getattr(core, "max_event_result_bytes", DEFAULT_MAX_RESULT_BYTES)
    # Checks that worker_id and pools make legal topic names before anything starts.
    return KafkaTransport(
        settings, worker_id=core.worker_id, labels=core.labels, max_result_bytes=max_result
    )


SPEC = TransportSpec(name="kafka", settings=KafkaConfig, build=_build)


def read_fleet(settings: KafkaConfig, *, timeout: float = 15.0) -> list[FleetHost]:
    """The fleet map from the compacted capabilities topic (blocking)."""
    from agent.transports.kafka.fleet import read_fleet as read  # noqa: PLC0415 (librdkafka)

    return read(settings, timeout=timeout)


__all__ = ["SPEC", "KafkaConfig", "Selector", "Topics", "read_fleet"]
