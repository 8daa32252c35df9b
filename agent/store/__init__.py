"""The SQLite job store: every accepted job, its transitions, events, result and outbox.

`SqliteStore` implements `agent.core.jobstore.JobStore`, the daemon's store. The
SQL lives in `queries` (reads, also used by the CLI), `writes`, `outbox_sql`
and `schema`; group commit in `batcher`.
"""

from agent.store.sqlite import SqliteStore

__all__ = ["SqliteStore"]
