"""The command line's values, checked before anything is read or sent: a mistake is a
UsageError (exit 2) whose one line names the option and says what is wrong."""

from __future__ import annotations

import argparse
import json
import math
import re
from pathlib import Path
from typing import Any

from agent.errors import UsageError

# The API's own bounds for a page of jobs (agent.transports.http.models.JobListQuery).
MAX_PAGE = 1000
_CURSOR = re.compile(r"[0-9]{1,18}")
_OPERATION = re.compile(r"[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+")
# Commands whose job_id is the positional argument, not --job-id.
_JOB_ID_POSITIONAL = frozenset({"status", "result", "logs", "cancel", "follow"})


def option_name(args: argparse.Namespace, dest: str) -> str:
    """How the user wrote the value stored in `dest`."""
    if dest == "job_id":
        return "JOB_ID" if args.command in _JOB_ID_POSITIONAL else "--job-id"
    if dest == "name" and args.command == "token" and args.token_command == "create":  # noqa: S105 (a subcommand, not a secret)
        return "--name"
    if dest in {"file", "name", "pool", "shell"}:
        return dest.upper()
    return "--" + dest.replace("_", "-")


def check_arguments(args: argparse.Namespace) -> None:
    """Refuse what no agent could take, before any file or socket is touched."""
    for dest, value in vars(args).items():
        if isinstance(value, str | Path):
            _encodable(str(value), option_name(args, dest))
    for dest in ("name", "pool") if getattr(args, "verb", None) else ():  # a resource's
        value = getattr(args, dest, None)
        if isinstance(value, str) and ("/" in value or value in {"", ".", ".."}):
            raise UsageError(
                f"{dest.upper()}: {value!r} is not a name (no '/', not empty, '.' or '..')",
                field=dest,
            )
    if getattr(args, "job_id", None) is not None:
        check_job_id(args.job_id, option_name(args, "job_id"))
    if (limit := getattr(args, "limit", None)) is not None and not 1 <= limit <= MAX_PAGE:
        raise UsageError(f"--limit: must be 1-{MAX_PAGE}, not {limit}", field="limit")
    if (status := getattr(args, "status", None)) is not None:
        from agent.jobs import JobStatus

        if status not in {member.value for member in JobStatus}:
            names = ", ".join(member.value for member in JobStatus)
            raise UsageError(f"--status: must be one of {names}, not {status!r}", field="status")
    if (operation := getattr(args, "operation", None)) is not None and not _OPERATION.fullmatch(
        operation
    ):
        raise UsageError(
            f"--operation: {operation!r} is not an operation name (such as system.echo)",
            field="operation",
        )
    if (cursor := getattr(args, "cursor", None)) is not None and not _CURSOR.fullmatch(cursor):
        raise UsageError(
            f"--cursor: {cursor!r} is not a cursor (the digits a previous page printed)",
            field="cursor",
        )
    wait = getattr(args, "wait_timeout", None)
    if wait is not None and not (math.isfinite(wait) and wait >= 0):
        raise UsageError(
            f"--wait-timeout: must be 0 or more seconds, not {wait}", field="wait_timeout"
        )


def check_job_id(value: str, option: str) -> str:
    """A job id as the contract allows it (so it can never name another path)."""
    from agent.jobs import JOB_ID_PATTERN, RESERVED_JOB_IDS

    if not re.fullmatch(JOB_ID_PATTERN, value) or value in RESERVED_JOB_IDS:
        raise UsageError(
            f"{option}: {value!r} is not a job id (1-128 characters of [A-Za-z0-9._-], "
            "not starting with '.')",
            field="job_id",
        )
    return value


def json_object(text: str, option: str) -> dict[str, Any]:
    """`text` read as a JSON object whose strings are all encodable UTF-8."""
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise UsageError(f"{option}: not valid JSON ({exc})", field=option.strip("-")) from exc
    except RecursionError as exc:
        raise UsageError(f"{option}: nested too deep", field=option.strip("-")) from exc
    if not isinstance(value, dict):
        raise UsageError(
            f"{option}: must be a JSON object, not {type(value).__name__}", field=option.strip("-")
        )
    _encodable(json.dumps(value, ensure_ascii=False), option)
    return value


def json_file(path: Path, option: str) -> dict[str, Any]:
    """The JSON object a file named on the command line holds."""
    try:
        text = path.read_bytes().decode()
    except OSError as exc:
        raise UsageError(
            f"{option}: cannot read {path}: {exc.strerror or exc}", field=option.lower()
        ) from exc
    except UnicodeDecodeError as exc:
        raise UsageError(f"{option}: {path} is not UTF-8 text", field=option.lower()) from exc
    return json_object(text, f"{option} ({path})")


def _encodable(text: str, option: str) -> None:
    try:
        text.encode()
    except UnicodeEncodeError as exc:
        raise UsageError(
            f"{option}: holds text that is not valid UTF-8 (a lone surrogate at {exc.start})",
            field=option.strip("-").lower(),
        ) from exc
