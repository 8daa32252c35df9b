"""Secret values a job carries, held in memory only: the store, events, results and
logs see "[secret]" in their place.

A job whose handler declares secrets (runbook.run's `secret` parameters), or a child
job handed secret values by its parent, is recorded with its payload redacted and
the label WITHHELD_LABEL; the dispatcher runs it with the payload held here. After
a restart nothing is held: such a job fails with that reason, never runs on
redacted values (README "Runbooks", secrets).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

REDACTED = "[secret]"
MIN_SPLICED = 4
WITHHELD_LABEL = "hostagent.withheld"
LOST = (
    "The job's secret values were held in memory only and did not survive the agent's "
    "restart; submit it again"
)


@dataclass(frozen=True)
class Held:
    """A job's payload data as submitted, and the secret values to keep out of sight."""

    data: dict[str, Any]
    secrets: tuple[Any, ...]


def redact(value: Any, secrets: Sequence[Any]) -> Any:
    """`value` with every secret replaced: a value equal to one, and (in text) every
    occurrence of a secret string of MIN_SPLICED characters or more (a shorter one
    would mangle every text it happens to occur in)."""
    if not secrets:
        return value
    if any(value == secret and type(value) is type(secret) for secret in secrets):
        return REDACTED
    if isinstance(value, str):
        for secret in secrets:
            if isinstance(secret, str) and len(secret) >= MIN_SPLICED:
                value = value.replace(secret, REDACTED)
        return value
    if isinstance(value, dict):
        return {key: redact(item, secrets) for key, item in value.items()}
    if isinstance(value, list):
        return [redact(item, secrets) for item in value]
    return value


def withhold(document: dict[str, Any], secrets: Sequence[Any]) -> tuple[dict[str, Any], Held]:
    """The document to record (payload redacted, labelled) and what to hold in memory."""
    data = document["payload"]["data"]
    stored = {
        **document,
        "payload": {**document["payload"], "data": redact(data, secrets)},
        "labels": {**document.get("labels", {}), WITHHELD_LABEL: "true"},
    }
    return stored, Held(data, tuple(secrets))
