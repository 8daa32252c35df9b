"""Topic and group names under the prefix, and broadcast selectors."""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from agent.errors import ConfigError, ValidationError

_LEGAL = re.compile(r"^[A-Za-z0-9._-]+$")
# Kafka refuses longer topic names.
_MAX_TOPIC = 249


def _part(value: str, field: str) -> str:
    if not _LEGAL.match(value):
        raise ConfigError(
            f"{field} {value!r} cannot be part of a Kafka topic name",
            field=field,
            reason="Only [A-Za-z0-9._-] may appear in a topic name",
        )
    return value


@dataclass(frozen=True)
class Topics:
    """Every topic and consumer group name, for one prefix."""

    prefix: str

    def host(self, worker_id: str) -> str:
        return self._checked(f"{self.prefix}.host.{_part(worker_id, 'worker_id')}.jobs")

    def host_group(self, worker_id: str) -> str:
        return f"{self.prefix}.{worker_id}"

    def pool(self, pool: str) -> str:
        return self._checked(f"{self.prefix}.pool.{_part(pool, 'kafka.pools')}.jobs")

    def pool_group(self, pool: str) -> str:
        return f"{self.prefix}.pool.{pool}"

    @property
    def broadcast(self) -> str:
        return f"{self.prefix}.broadcast.jobs"

    def broadcast_group(self, worker_id: str) -> str:
        return f"{self.prefix}.broadcast.{worker_id}"

    @property
    def events(self) -> str:
        return f"{self.prefix}.job-events"

    @property
    def capabilities(self) -> str:
        return f"{self.prefix}.capabilities"

    @property
    def heartbeats(self) -> str:
        return f"{self.prefix}.heartbeats"

    @property
    def schemas(self) -> str:
        """Operation schema sets, compacted, key = their digest (README, "Fleet")."""
        return f"{self.prefix}.schemas"

    @property
    def fleet(self) -> str:
        """Small fleet-wide records, compacted: the fleet's size, decommission markers."""
        return f"{self.prefix}.fleet"

    def kind(self, topic: str) -> str:
        """'host', 'pool' or 'broadcast': how a job topic addresses its agents."""
        if topic == self.broadcast:
            return "broadcast"
        return "pool" if topic.startswith(f"{self.prefix}.pool.") else "host"

    @staticmethod
    def _checked(topic: str) -> str:
        if len(topic) > _MAX_TOPIC:
            raise ConfigError(
                f"Kafka topic name {topic!r} is too long",
                field="kafka.topic_prefix",
                reason=f"Topic names are at most {_MAX_TOPIC} characters",
            )
        return topic


@dataclass(frozen=True)
class Selector:
    """What a broadcast job asks of an agent: labels (all must match) and operations."""

    labels: Mapping[str, str]
    operations: Collection[str]

    @classmethod
    def parse(cls, raw: object) -> Selector:
        """The `selector` of a broadcast message; absent means every agent."""
        if raw is None:
            return cls({}, ())
        if not isinstance(raw, dict) or set(raw) - {"labels", "operations"}:
            raise ValidationError(
                "selector must be an object with 'labels' and/or 'operations'",
                field="selector",
                reason="Expected {'labels': {k: v}, 'operations': [name, ...]}",
            )
        labels: Any = raw.get("labels", {})
        operations: Any = raw.get("operations", [])
        if not isinstance(labels, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in labels.items()
        ):
            raise ValidationError(
                "selector.labels must map strings to strings",
                field="selector.labels",
                reason="Expected an object of string values",
            )
        if not isinstance(operations, list) or not all(isinstance(o, str) for o in operations):
            raise ValidationError(
                "selector.operations must be a list of operation names",
                field="selector.operations",
                reason="Expected a list of strings",
            )
        return cls(dict(labels), tuple(operations))

    def matches(self, labels: Mapping[str, str], operations: Collection[str]) -> bool:
        return all(labels.get(key) == value for key, value in self.labels.items()) and all(
            operation in operations for operation in self.operations
        )


def parse_selector_args(pairs: Collection[str]) -> dict[str, Any]:
    """`k=v` (a label) and `op=NAME` (an operation) from the command line, as a selector."""
    labels: dict[str, str] = {}
    operations: list[str] = []
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValidationError(
                f"selector {pair!r} is not key=value", field="selector", reason="Expected k=v"
            )
        if key == "op":
            operations.append(value)
        else:
            labels[key] = value
    selector: dict[str, Any] = {"labels": labels}
    if operations:
        selector["operations"] = operations
    return selector
