"""What the spool's outbox says happened, turned into files: an accepted job's
file moves to active/, a finished job's document and result land in done/.

Each step is idempotent (a rename whose source is gone was done before a
crash; a result file is rewritten whole), because the outbox hands an entry
in flight at a crash out again. Runs in a worker thread.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

from agent.jobs import OutboxEntry
from agent.transports.spool.layout import (
    document_name,
    result_name,
    sync_filesystem,
    write_atomically,
)


def deliver(dirs: dict[str, Path], entries: list[OutboxEntry]) -> None:
    """Apply a batch of entries in order, then make them durable with one flush."""
    changed = False
    for entry in entries:
        if entry.event == "accepted" and entry.data.get("origin"):
            _move(dirs[".claimed"] / entry.data["origin"], dirs["active"], entry.job_id)
            changed = True
        elif entry.state.status.terminal:
            changed = True
            record = {**entry.state.model_dump(mode="json"), "result": entry.data.get("result")}
            # Durable with the whole batch below: the entry is acknowledged only after.
            write_atomically(
                dirs["done"] / result_name(entry.job_id),
                json.dumps(record, indent=2).encode(),
                durable=False,
            )
            _move(dirs["active"] / document_name(entry.job_id), dirs["done"], entry.job_id)
    if changed:
        sync_filesystem(dirs["done"])


def _move(source: Path, directory: Path, job_id: str) -> None:
    with contextlib.suppress(FileNotFoundError):  # moved before a crash: done already
        os.rename(source, directory / document_name(job_id))
