"""Interim durable event feed, until the core outbox (issue 9) lands on main.

The job store already writes every status change (`transitions`) and every
progress report (`job_events`) in the transaction that makes it, with
increasing ids: read in id order from a cursor that is saved only after the
events are delivered, they are an outbox. A crash re-sends what was in
flight (readers drop repeats by event_id); nothing is skipped. It reads the
store's file through its own read-only connection and writes only its cursor
file, so the core is untouched.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import AsyncIterator, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from agent.transports.kafka._events import EventType

# A status change, as the event type the Kafka contract names.
_EVENT: dict[str, EventType] = {
    "Pending": "accepted",
    "Running": "running",
    "Completed": "completed",
    "Failed": "failed",
    "Cancelled": "cancelled",
}
_POLL_SECONDS = 0.05


@dataclass(frozen=True)
class OutboxEntry:
    key: str  # stable identity: "t<transition id>" or "p<progress event id>"
    job_id: str
    transport: str
    event: EventType
    status: str
    at: str
    data: dict[str, Any]


@dataclass(frozen=True)
class _Cursor:
    transition: int
    progress: int


class TransitionOutbox:
    """Events of jobs from `transports` (None: every job), in order, resumable."""

    def __init__(
        self, store_path: Path, cursor_path: Path, *, transports: Collection[str] | None,
        batch: int = 1000,
    ) -> None:  # fmt: skip
        self._store_path = store_path
        self._cursor_path = cursor_path
        self._transports = None if transports is None else set(transports)
        self._batch = batch
        self._conn: sqlite3.Connection | None = None
        self._cursor = _Cursor(0, 0)
        self._after: dict[str, _Cursor] = {}

    def _open(self) -> None:
        self._conn = sqlite3.connect(
            f"file:{self._store_path}?mode=ro", uri=True, check_same_thread=False
        )
        if self._cursor_path.exists():
            saved = json.loads(self._cursor_path.read_text())
            self._cursor = _Cursor(saved["transition"], saved["progress"])
            return
        # First start: events from now on (an existing store's history is not news).
        self._cursor = _Cursor(
            self._conn.execute("SELECT coalesce(max(id), 0) FROM transitions").fetchone()[0],
            self._conn.execute("SELECT coalesce(max(id), 0) FROM job_events").fetchone()[0],
        )
        self._save(self._cursor)

    async def open(self) -> None:
        await trio.to_thread.run_sync(self._open)

    def _save(self, cursor: _Cursor) -> None:
        temporary = self._cursor_path.with_suffix(".tmp")
        with temporary.open("w") as out:
            json.dump({"transition": cursor.transition, "progress": cursor.progress}, out)
            out.flush()
            os.fsync(out.fileno())
        temporary.replace(self._cursor_path)

    def _read(self) -> list[OutboxEntry]:
        assert self._conn is not None
        start = self._cursor
        transitions = self._conn.execute(
            "SELECT t.id, t.job_id, j.transport, t.status, t.at, t.reason, j.result "
            "FROM transitions t JOIN jobs j ON j.job_id = t.job_id "
            "WHERE t.id > ? ORDER BY t.id LIMIT ?",
            (start.transition, self._batch),
        ).fetchall()
        progress = self._conn.execute(
            "SELECT e.id, e.job_id, j.transport, e.at, e.data "
            "FROM job_events e JOIN jobs j ON j.job_id = e.job_id "
            "WHERE e.id > ? AND e.type = 'progress' ORDER BY e.id LIMIT ?",
            (start.progress, self._batch),
        ).fetchall()
        # A full window may have more rows after it: keep the merge within what both hold.
        full = [t[4] for t in transitions[-1:] if len(transitions) == self._batch]
        full += [p[3] for p in progress[-1:] if len(progress) == self._batch]
        cut = min(full) if full else None
        entries: list[tuple[str, int, OutboxEntry]] = []
        last_t, last_p = start.transition, start.progress
        for row_id, job_id, transport, status, at, reason, result in transitions:
            if cut is not None and at > cut:
                break
            last_t = row_id
            data: dict[str, Any] = {}
            if status == "Completed":
                data["result"] = None if result is None else json.loads(result)
            elif status in ("Failed", "Cancelled"):
                data["error"] = reason
            elif status == "Pending":
                data["origin"] = reason
            entry = OutboxEntry(f"t{row_id}", job_id, transport, _EVENT[status], status, at, data)
            entries.append((at, 0, entry))
        for row_id, job_id, transport, at, raw in progress:
            if cut is not None and at > cut:
                break
            last_p = row_id
            entry = OutboxEntry(f"p{row_id}", job_id, transport, "progress", "Running", at,
                                json.loads(raw))  # fmt: skip
            entries.append((at, 1, entry))
        entries.sort(key=lambda item: (item[0], item[1]))
        wanted = [
            entry
            for _at, _kind, entry in entries
            if self._transports is None or entry.transport in self._transports
        ]
        after = _Cursor(last_t, last_p)
        self._cursor = after
        if not wanted and after != start:
            # Nothing for us in this stretch: move on without a delivery to wait for.
            self._save(after)
            return []
        if wanted:
            self._after[wanted[-1].key] = after
        return wanted

    async def batches(self) -> AsyncIterator[list[OutboxEntry]]:
        """Non-empty batches, in order; waits when there is nothing new."""
        while True:
            batch = await trio.to_thread.run_sync(self._read)
            if batch:
                yield batch
            else:
                await trio.sleep(_POLL_SECONDS)

    async def ack(self, last: OutboxEntry) -> None:
        """Everything up to `last` (the end of a batch) is delivered."""
        after = self._after.pop(last.key)
        await trio.to_thread.run_sync(self._save, after)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
