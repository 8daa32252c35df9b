"""The outbox's writes: an entry per interested consumer, in the transaction
of the change itself; pruning on acknowledgement."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from agent.core.outbox import OutboxInterest
from agent.jobs import JobState


@dataclass
class OutboxTargets:
    """Who the outbox is written for, and whom the running batch wrote for (to wake them)."""

    consumers: dict[str, OutboxInterest] = field(default_factory=dict)
    touched: set[str] = field(default_factory=set)


def append_outbox(
    conn: sqlite3.Connection,
    targets: OutboxTargets,
    state: JobState,
    event: str,
    data: dict[str, Any],
) -> None:
    """The change, for the job's own transport and every consumer of all jobs."""
    encoded: tuple[str, str] | None = None
    for name, interest in targets.consumers.items():
        if name != state.transport and not interest.all_jobs:
            continue
        if (event == "progress" and not interest.progress) or (
            event == "running" and not interest.running
        ):
            continue
        encoded = encoded or (state.model_dump_json(), json.dumps(data))
        conn.execute(
            "INSERT INTO outbox (consumer, event, state, data, job_id) VALUES (?, ?, ?, ?, ?)",
            (name, event, *encoded, state.job_id),
        )
        targets.touched.add(name)


def ack_outbox(conn: sqlite3.Connection, consumer: str, up_to_id: int) -> None:
    """Delivered: prune the consumer's entries up to and including `up_to_id`."""
    conn.execute("DELETE FROM outbox WHERE consumer = ? AND id <= ?", (consumer, up_to_id))


def drop_unclaimed_outbox(conn: sqlite3.Connection, consumers: Iterable[str]) -> int:
    """Remove entries of consumers this agent no longer has (a transport turned off)."""
    names = list(consumers)
    marks = ",".join("?" * len(names)) or "''"
    cursor = conn.execute(f"DELETE FROM outbox WHERE consumer NOT IN ({marks})", names)
    return cursor.rowcount
