"""The fleet transport: jobs and job events through Kafka, and the fleet capability map.

confluent-kafka is imported only by the modules that need it, so an agent
without `[kafka]` configured never loads librdkafka.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from agent.transports.kafka.settings import KafkaConfig
from agent.transports.kafka.topics import Selector, Topics

if TYPE_CHECKING:
    from agent.core.services import Services
    from agent.transports.base import Transport, TransportSpec
    from agent.transports.kafka.fleet import FleetHost


def _build(settings: KafkaConfig, services: Services) -> Transport | None:
    if not settings.enabled:
        return None
    from agent.config import Config  # noqa: PLC0415
    from agent.transports.kafka.transport import KafkaTransport  # noqa: PLC0415 (librdkafka)

    core = services.get(Config)
    # Checks that worker_id and pools make legal topic names before anything starts.
    return KafkaTransport(
        settings,
        worker_id=core.worker_id,
        labels=core.labels,
        max_result_bytes=core.max_event_result_bytes,
    )


if TYPE_CHECKING:
    SPEC: TransportSpec[KafkaConfig]


def __getattr__(name: str) -> Any:
    # Made on first use (the daemon's settings): `hostagent fleet` and read_fleet()
    # programs do without the transport seam's modules (trio, the core).
    if name != "SPEC":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from agent.transports.base import TransportSpec  # noqa: PLC0415

    spec = TransportSpec(name="kafka", settings=KafkaConfig, build=_build)
    globals()["SPEC"] = spec
    return spec


def read_fleet(
    settings: KafkaConfig, *, timeout: float = 15.0, schemas: bool = False
) -> list[FleetHost]:
    """The fleet map from the compacted capabilities topic and the heartbeats (blocking).

    Each host carries worker_id, status (live, stale, decommissioned-but-alive),
    reason and last_heartbeat; `schemas` resolves its operation schemas by digest.
    """
    from agent.transports.kafka.fleet import read_fleet as read  # noqa: PLC0415 (librdkafka)

    return read(settings, timeout=timeout, schemas=schemas)


__all__ = ["SPEC", "KafkaConfig", "Selector", "Topics", "read_fleet"]
