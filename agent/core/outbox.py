"""The durable feed of job changes a transport delivers (results, events).

The store appends an entry in the same transaction as each change; a
transport reads its entries in order, delivers them, and acknowledges them,
which prunes them. After a crash the feed starts again at the first entry
not acknowledged: nothing is skipped, and only entries in flight at the
crash come twice, so delivery must be idempotent.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import trio

from agent.jobs import OutboxEntry


@dataclass(frozen=True)
class OutboxInterest:
    """What a consumer (a transport) wants in its outbox."""

    all_jobs: bool = False  # also jobs other transports brought in
    progress: bool = False  # also progress entries (most consumers want outcomes only)
    # "running" entries: a consumer that only delivers outcomes (the spool) skips
    # them, a third fewer rows written, read and pruned per job.
    running: bool = True


class OutboxSource(Protocol):
    """The part of the job store an outbox reads."""

    async def outbox_entries(self, consumer: str, after_id: int, limit: int) -> list[OutboxEntry]:
        """Entries after `after_id`, oldest first."""

    async def ack_outbox(self, consumer: str, up_to_id: int) -> None:
        """Prune the consumer's entries up to and including `up_to_id`."""

    def outbox_changed(self, consumer: str) -> trio.Event:
        """An event set by the next commit that adds entries for `consumer`."""


class Outbox:
    """One consumer's view: `async for batch in outbox`, then `await outbox.ack(id)`."""

    def __init__(self, source: OutboxSource, consumer: str, *, batch: int = 256) -> None:
        self._source = source
        self.consumer = consumer
        self._batch = batch
        self._after = 0  # the last entry handed out by this reader
        # Set once a read finds nothing new: what was there at start is handed out.
        self.caught_up = trio.Event()

    def __aiter__(self) -> Outbox:
        return self

    async def __anext__(self) -> list[OutboxEntry]:
        """The next entries, oldest first; waits while there are none."""
        while True:
            # Taken before the read: a commit between the read and the wait sets it.
            changed = self._source.outbox_changed(self.consumer)
            entries = await self._source.outbox_entries(self.consumer, self._after, self._batch)
            if entries:
                self._after = entries[-1].id
                return entries
            self.caught_up.set()
            await changed.wait()

    async def ack(self, up_to_id: int) -> None:
        """Everything up to `up_to_id` is delivered."""
        await self._source.ack_outbox(self.consumer, up_to_id)
