"""The spool's directories and file names (shared/spec/protocol.md), and the
durable-write helpers the agent and the CLI both use.

    tmp/       writers create and fsync files here, then rename into incoming/
    incoming/  the agent reads only this; dot-files are skipped
    .claimed/  the agent's own: a file is moved here before it is read
    active/    claimed jobs, as <job_id>.job.json, until they finish
    done/      <job_id>.job.json and <job_id>.result.json of finished jobs
    failed/    files that are not valid jobs, each with <name>.error.json
    cancel/    an empty file named <job_id> asks the agent to cancel that job
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import uuid
from itertools import count
from pathlib import Path

SUBDIRS = ("tmp", "incoming", "active", "done", "failed", "cancel")
# Where the agent takes a file before reading it: only the agent writes here, so
# nothing a dropper does after the move can change what was checked.
CLAIMED = ".claimed"

_libc = ctypes.CDLL(None, use_errno=True)


def document_name(job_id: str) -> str:
    return f"{job_id}.job.json"


def result_name(job_id: str) -> str:
    return f"{job_id}.result.json"


# Each directory's mode when the agent creates it (systemd/hostagent.tmpfiles says the same).
DIR_MODES = {
    "tmp": 0o2770,
    "incoming": 0o2770,
    "cancel": 0o2770,
    "active": 0o750,
    "done": 0o2750,
    "failed": 0o2750,
}


_WRITER = uuid.uuid4().hex[:12]
_temporaries = count()


def spool_dirs(root: Path) -> dict[str, Path]:
    return {name: root / name for name in (*SUBDIRS, CLAIMED)}


def write_atomically(
    path: str | Path, data: bytes, *, durable: bool = True, mode: int = 0o640
) -> None:
    """Write a file so that a reader never sees it half-written; with `durable`,
    also on disk before this returns (otherwise the caller syncs a batch)."""
    # Unique per writer: two writers of the same file must not share a temporary
    # (a token per process and a counter: uuid4 cost a getrandom call per file).
    # Plain strings: pathlib's joins cost as much as the syscalls, once per job.
    directory, name = os.path.split(path)
    temporary = os.path.join(directory, f".{name}.{_WRITER}{next(_temporaries)}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        try:
            os.fchmod(fd, mode)  # the mode asked for, whatever the umask
            os.write(fd, data)
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise


def sync_filesystem(path: Path) -> None:
    """Flush the whole filesystem holding `path` (syncfs): one flush for a batch of files."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        if _libc.syncfs(fd) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, os.strerror(errno), str(path))
    finally:
        os.close(fd)


def drop_job(root: Path, name: str, data: bytes) -> Path:
    """Drop a job file the safe way: written and fsynced in tmp/, renamed into incoming/."""
    staged = root / "tmp" / name
    write_atomically(staged, data)
    target = root / "incoming" / name
    staged.replace(target)
    return target


def request_cancel(root: Path, job_id: str) -> None:
    """Ask the running agent to cancel a job (it watches cancel/)."""
    (root / "cancel" / job_id).touch()
