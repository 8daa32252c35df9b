"""What the spool's outbox says happened, turned into files: an accepted job's
file moves to active/, a finished job's document and result land in done/.

Each step is idempotent (a rename whose source is gone was done before a
crash; a result file is rewritten whole), because the outbox hands an entry
in flight at a crash out again. Runs in a worker thread.
"""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path
from typing import Any

import orjson

from agent.errors import ValidationError
from agent.jobs import OutboxEntry, check_job_id
from agent.transports.spool.layout import (
    document_name,
    result_name,
    sync_filesystem,
    write_atomically,
)


def deliver(dirs: dict[str, Path], entries: list[OutboxEntry]) -> None:
    """Apply a batch of entries in order, then make them durable with one flush."""
    changed = False
    # Plain strings: pathlib's joins cost as much as the renames, several per job.
    claimed, active, done = (os.fspath(dirs[name]) for name in (".claimed", "active", "done"))
    # A job that finished within the batch goes from .claimed/ straight to done/.
    finished = {entry.job_id for entry in entries if entry.state.status.terminal}
    in_done: set[str] = set()
    for entry in entries:
        # Ids name files here: one that is not a job id (only a store written by
        # an older version can hold one) fails delivery, and is parked, never joined.
        check_job_id(entry.job_id, field="job_id")
        if entry.event == "accepted" and entry.data.get("origin"):
            early = entry.job_id in finished
            moved = _move(
                os.path.join(claimed, entry.data["origin"]), done if early else active, entry.job_id
            )
            # Not moved: delivered to active/ before a crash, and the outcome's
            # move below must take it from there (else it stays in active/).
            if early and moved:
                in_done.add(entry.job_id)
            changed = True
        elif entry.state.status.terminal:
            changed = True
            record = {**entry.state.model_dump(mode="json"), "result": entry.data.get("result")}
            # Durable with the whole batch below: the entry is acknowledged only after.
            write_atomically(
                os.path.join(done, result_name(entry.job_id)), _encode(record), durable=False
            )
            if entry.job_id not in in_done:
                _move(os.path.join(active, document_name(entry.job_id)), done, entry.job_id)
    if changed:
        sync_filesystem(dirs["done"])


# Conditions of the host, not of an entry: delivery waits them out, never parks.
_HOST_CONDITIONS = frozenset(
    {errno.ENOSPC, errno.EDQUOT, errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.EROFS}
)


def host_condition(exc: Exception) -> bool:
    """A failed delivery the host will get over (a full disk, no descriptors left)."""
    return isinstance(exc, OSError) and exc.errno in _HOST_CONDITIONS


def _encode(record: dict[str, Any]) -> bytes:
    try:
        # orjson: the standard encoder drops to pure Python when indenting.
        return orjson.dumps(record, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS)
    except TypeError:
        # What orjson refuses and json takes (an integer over 64 bits, a lone
        # surrogate in a handler's result): escaped, still one JSON document.
        return json.dumps(record, indent=2, default=str).encode()


def _move(source: str, directory: str, job_id: str) -> bool:
    try:
        os.rename(source, os.path.join(directory, document_name(job_id)))
    except FileNotFoundError:  # moved before a crash: done already
        return False
    return True


def forget(dirs: dict[str, Path], job_ids: list[str]) -> None:
    """Remove done/ files of jobs pruned from the store (retention): retention names
    the jobs of every transport, and only a job id is ever joined into a path."""
    for job_id in job_ids:
        try:
            check_job_id(job_id, field="job_id")
        except ValidationError:
            continue
        for name in (document_name(job_id), result_name(job_id)):
            (dirs["done"] / name).unlink(missing_ok=True)
