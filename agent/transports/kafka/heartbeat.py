"""How often an agent heartbeats, and when the map calls a host stale (Nomad's rule).

The whole fleet sends at most `kafka.max_heartbeats_per_second` heartbeats: an
agent's interval is max(`heartbeat_interval_seconds`, hosts / that rate), the
fleet's size read from the `size` record of `<prefix>.fleet` (kept by fleet
readers), and each wait is jittered by up to JITTER either way so a fleet that
starts at once spreads out. A host is stale once its last heartbeat is older
than STALE_INTERVALS of its own published intervals plus STALE_GRACE_SECONDS.
"""

from __future__ import annotations

import random

from agent.transports.kafka.settings import KafkaConfig

STALE_INTERVALS = 3
# Clock skew between hosts and the time a heartbeat spends in the producer's queue.
STALE_GRACE_SECONDS = 2.0
JITTER = 0.1
# Keys of <prefix>.fleet: the fleet's size, and one decommission marker per host.
SIZE_KEY = "size"
DECOMMISSIONED_PREFIX = "decommissioned."


def fleet_interval(settings: KafkaConfig, hosts: int) -> float:
    """Seconds between one agent's heartbeats in a fleet of `hosts`."""
    return max(settings.heartbeat_interval_seconds, hosts / settings.max_heartbeats_per_second)


def jittered(interval: float) -> float:
    """`interval`, moved by up to JITTER of itself either way."""
    return interval * random.uniform(1 - JITTER, 1 + JITTER)  # noqa: S311 (jitter)


def stale_after(interval: float) -> float:
    """Age (seconds) past which a heartbeat sent every `interval` means a stale host."""
    return STALE_INTERVALS * interval + STALE_GRACE_SECONDS


def decommission_key(worker_id: str) -> str:
    return f"{DECOMMISSIONED_PREFIX}{worker_id}"
