"""Taking one file from incoming/: move it where only the agent writes, read it
without following links, and decide: a job, not a job (quarantine), or not
complete yet. Runs in worker threads; nothing here touches trio."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import stat
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import structlog

from agent.core import periodic as background
from agent.core.targets import refused_value
from agent.errors import (
    AgentError,
    BadRequestError,
    ForbiddenError,
    PayloadTooLargeError,
    UnavailableError,
    ValidationError,
)
from agent.jobs import NewJob, parse_json
from agent.transports.spool.layout import write_atomically
from agent.transports.spool.settings import SpoolConfig

log = structlog.get_logger("agent.spool")

# Namespace for job ids derived from a spool file that names none: the same
# file seen again after a crash gets the same id, so it is one job.
# Errors of the host, not of the file: the file is looked at again later.
_NOT_THE_FILES_FAULT = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}
_SPOOL_ID_NAMESPACE = uuid.UUID("6f1c4a52-8e0b-4c44-9a53-3d2f7c1e9b10")
# A file whose admission needs something that is away (libvirt) waits this long.
_UNAVAILABLE_RETRY_SECONDS = 5.0

# Validates a document (intake.prepare): (raw, stable id for a document without one, origin,
# the uid owning the claimed file: the job's submitter).
Prepare = Callable[[object, str | None, str, int], NewJob]


@dataclass(frozen=True)
class Ready:
    name: str
    job: NewJob
    # The file's bytes: a refusal at submit names the value they gave the refused field.
    document: bytes = b""


@dataclass(frozen=True)
class Refused:
    name: str
    error: AgentError
    # The file's bytes as read (empty when it was refused unread: a link, a FIFO, too big).
    document: bytes = b""


@dataclass(frozen=True)
class Unsettled:
    name: str
    retry_in: float


Examined = Ready | Refused | Unsettled


def take(incoming: Path, claimed: Path, name: str) -> bool:
    """Move incoming/<name> into the claimed directory; False when it is gone
    or a file of that name is still being looked at there."""
    if os.path.lexists(claimed / name):
        return False  # only the agent writes there: the check cannot race
    try:
        os.rename(incoming / name, claimed / name)
    except FileNotFoundError:
        return False
    return True


def still_arriving(
    incoming: Path, name: str, config: SpoolConfig, *, renamed: bool = False
) -> Unsettled | None:
    """A file in incoming/ that does not parse yet and changed within the settle
    interval: possibly still being copied in (`cp` writes in place), so it is
    left where its writer may still append. None: claim it. Nothing is decided
    from this read; the file is checked and read again once claimed.

    A file that arrived by rename (`renamed`), or has not changed for the settle
    interval, is complete as far as its writer is concerned: it is not peeked at."""
    if renamed or _settled(incoming / name, config):
        return None
    try:
        read = _read_safely(incoming, name, config)
    except AgentError:
        return None  # refused once claimed, with the reason
    except OSError as exc:  # out of descriptors: look again later
        background.note_failure("spool.claim", exc)
        return Unsettled(name, 1.0)
    return None if read is None else _incomplete(name, *read, config)


def _incomplete(
    name: str, data: bytes, info: os.stat_result, config: SpoolConfig
) -> Unsettled | None:
    try:
        parse_json(data)  # complete JSON the contract refuses (10,000 deep) is claimed
    except ValidationError:
        return None  # and refused once claimed, with the reason
    except ValueError:  # JSONDecodeError, UnicodeDecodeError: maybe still being written
        unchanged_for = time.time() - info.st_mtime
        if unchanged_for < config.settle_seconds:
            return Unsettled(name, config.settle_seconds - unchanged_for + 0.05)
    return None


def _settled(path: Path, config: SpoolConfig) -> bool:
    """Unchanged for the settle interval (or gone: refused with the reason once claimed)."""
    try:
        return time.time() - os.lstat(path).st_mtime >= config.settle_seconds
    except OSError:
        return True


def examine(claimed: Path, name: str, config: SpoolConfig, prepare: Prepare) -> Examined | None:
    """Decide about one claimed file; None when it is gone."""
    try:
        read = _read_safely(claimed, name, config)
    except AgentError as refusal:
        return Refused(name, refusal)
    except OSError as exc:  # out of descriptors or memory: a good file waits, unjudged
        background.note_failure("spool.claim", exc)
        return Unsettled(name, 1.0)
    if read is None:
        return None
    try:
        return _judge(name, *read, config, prepare)
    # A fault of ours the file exposed: refused with the reason, the next file goes on.
    except Exception as exc:
        log.exception("spool.examine_failed", file=shown_name(name))
        return Refused(name, internal_error("judging the file", exc), read[0])


def internal_error(step: str, exc: BaseException) -> AgentError:
    """The envelope for a fault of the agent's own met while `step` (never raised on)."""
    text = f"{type(exc).__name__}: {exc}".encode(errors="backslashreplace").decode()[:500]
    return AgentError(f"The agent failed {step}: {text}", field="document", reason=text)


def shown_name(name: str) -> str:
    """A file name as reports and logs show it (bytes that are not UTF-8 replaced)."""
    return name.encode(errors="surrogateescape").decode(errors="replace")


def _judge(
    name: str, data: bytes, info: os.stat_result, config: SpoolConfig, prepare: Prepare
) -> Examined:
    try:
        raw = parse_json(data)  # the very parse HTTP uses: depth, duplicate keys, NaN
    except ValidationError as refusal:
        return Refused(name, refusal, data)
    except ValueError as exc:  # not JSON (yet): JSONDecodeError, UnicodeDecodeError
        unchanged_for = time.time() - info.st_mtime
        if unchanged_for < config.settle_seconds:
            # Possibly still being copied in: look again once it has settled.
            return Unsettled(name, config.settle_seconds - unchanged_for + 0.05)
        return Refused(
            name,
            ValidationError(f"not valid JSON: {exc}", field="document", reason=str(exc)),
            data,
        )
    stable_id = None
    if isinstance(raw, dict) and not raw.get("job_id"):
        identity = (name, str(info.st_ino), str(info.st_ctime_ns), hashlib.sha256(data).hexdigest())
        stable_id = str(uuid.uuid5(_SPOOL_ID_NAMESPACE, "\0".join(identity)))
    return _prepared(name, raw, stable_id, info.st_uid, prepare, data=data)


def _prepared(
    name: str, raw: object, stable_id: str | None, owner: int, prepare: Prepare, *, data: bytes
) -> Examined:
    try:
        return Ready(name, prepare(raw, stable_id, name, owner), data)
    except (ValidationError, ForbiddenError) as refusal:  # ForbiddenError: the host policy
        return Refused(name, refusal, data)
    except UnavailableError as exc:  # what admission asks (libvirt) is away: look again later
        background.note_failure("spool.prepare", exc)
        return Unsettled(name, _UNAVAILABLE_RETRY_SECONDS)
    except AgentError as refusal:
        return Refused(name, refusal, data)


class LinkRefusedError(ForbiddenError):
    """A symbolic or hard link: the entry is removed (the file it points at is another
    owner's), never moved where the agent keeps files; the report says so."""


def _read_safely(
    directory: Path, name: str, config: SpoolConfig
) -> tuple[bytes, os.stat_result] | None:
    """The file's bytes, never through a link nor from anything but a plain file."""
    try:
        name.encode()
    except UnicodeEncodeError:
        raise BadRequestError("file name is not valid UTF-8", field="name") from None
    path = directory / name
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno in _NOT_THE_FILES_FAULT:
            raise
        if exc.errno == errno.ELOOP:
            raise LinkRefusedError(
                "symbolic links are refused", field="file", reason="symbolic link"
            ) from exc
        raise ForbiddenError(
            f"cannot open: {exc.strerror}", field="file", reason=str(exc.strerror)
        ) from exc
    try:
        info = os.fstat(fd)
        _check(info, config)
        data = _read_up_to(fd, info.st_size, config.max_file_bytes)
    finally:
        os.close(fd)
    if len(data) > config.max_file_bytes:
        raise PayloadTooLargeError(
            "file grew over the size limit", field="file", reason="over max_file_bytes"
        )
    return data, info


def _read_up_to(fd: int, size: int, limit: int) -> bytes:
    """The file's bytes, at most `limit` + 1 (over the limit: refused). Sized by
    fstat, not the limit: a 1 MiB buffer per file cost an mmap and a munmap."""
    data = os.read(fd, min(size, limit) + 1)
    if len(data) <= size:
        return data
    # It grew since fstat (still being written): read on to the end or the limit.
    parts = [data]
    while (got := sum(map(len, parts))) <= limit and (more := os.read(fd, limit + 1 - got)):
        parts.append(more)
    return b"".join(parts)


def _check(info: os.stat_result, config: SpoolConfig) -> None:
    reason: str | None = None
    if stat.S_ISDIR(info.st_mode):
        reason = "not a regular file (a directory)"
    elif not stat.S_ISREG(info.st_mode):
        reason = "not a regular file (a FIFO, socket or device)"
    elif info.st_nlink != 1:
        reason = f"hard-linked files are refused ({info.st_nlink} links)"
        raise LinkRefusedError(reason, field="file", reason=reason)
    elif config.allowed_uids and info.st_uid not in config.allowed_uids:
        reason = f"owner uid {info.st_uid} is not allowed"
    elif info.st_size > config.max_file_bytes:
        raise PayloadTooLargeError(
            f"file is {info.st_size} bytes, over the limit of {config.max_file_bytes}",
            field="file",
            reason="over max_file_bytes",
        )
    if reason is not None:
        raise ForbiddenError(reason, field="file", reason=reason)


def quarantine(claimed: Path, failed: Path, item: Refused) -> bool:
    """Move a refused file to failed/ with <name>.error.json saying why (a link is
    removed instead, and the report says so); False if it is gone. The report is
    written first: a full disk leaves the file claimed, to be refused again later,
    never moved without its reason."""
    shown = shown_name(item.name)
    safe = shown.replace("/", "_") or "unnamed"
    target = failed / safe
    if os.path.lexists(target) or os.path.lexists(f"{target}.error.json"):
        target = target.with_name(f"{safe}.{time.time_ns()}")
    removed = isinstance(item.error, LinkRefusedError)
    report: dict[str, object] = {"file": shown, "at": time.time()}
    report.update({"removed": True} if removed else {"quarantined_as": target.name})
    report.update(item.error.to_dict())
    # Staged under a name the start-up sweep removes (.*.tmp), shown once the file moved:
    # a reader who finds the report finds the file quarantined too.
    staged = target.with_name(f".{target.name}.error.json.tmp")
    # ensure_ascii (the default): text a job smuggled in is escaped, never unencodable.
    write_atomically(staged, json.dumps(report, indent=2, default=str).encode())
    try:
        if removed:
            os.unlink(claimed / item.name)
        else:
            os.rename(claimed / item.name, target)
    except BaseException as exc:
        staged.unlink(missing_ok=True)
        if isinstance(exc, FileNotFoundError):
            return False
        raise
    os.replace(staged, target.with_name(f"{target.name}.error.json"))
    details = item.error.details
    field = details.get("field")
    log.warning(
        "spool.quarantined",
        file=shown,
        reason=str(details.get("reason")),
        field=str(field),
        # What the file gave the refused field (a secret's value redacted), as http.refused.
        value=refused_value(field, item.document) if isinstance(field, str) else None,
    )
    return True
