"""The job document and job status of the wire contract (shared/spec/protocol.md)."""

from __future__ import annotations

import hashlib
import json
import math
import re
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal, NoReturn

import pydantic
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    Strict,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from agent.errors import ValidationError

JOB_ID_PATTERN = r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}$"
# Nesting deeper than this is refused before anything else looks at a document.
MAX_JSON_DEPTH = 32
# A year: longer is a mistake (max_timeout_seconds caps it further); shorter than
# 10 ms is one too.
MAX_JOB_TIMEOUT = 365 * 86400.0
# Path segments of the HTTP API that a job id would shadow (/api/v1/jobs/batch).
RESERVED_JOB_IDS = frozenset({"batch"})
_OPERATION_PART = re.compile(r"^[a-z][a-z0-9_]*$")
# A well-formed operation in one match (the per-part check only runs to say what is wrong).
_OPERATION = re.compile(r"[a-z][a-z0-9_]*(?:\.[a-z][a-z0-9_]*)+")
_VERSION = re.compile(r"[1-9][0-9]*")

_JOB_ID = re.compile(JOB_ID_PATTERN)


def _job_id_problem(value: str) -> str | None:
    """Why `value` cannot be a job_id (None: it can). The one rule, whatever brings the id."""
    # fullmatch: `$` would also match before a trailing newline ("abcd\n").
    if not _JOB_ID.fullmatch(value):
        return "job_id must be 1-128 characters of [A-Za-z0-9._-], not starting with '.'"
    if value in RESERVED_JOB_IDS:
        return f"job_id '{value}' is reserved"
    return None


def _check_job_id(value: str) -> str:
    problem = _job_id_problem(value)
    if problem is not None:
        raise PydanticCustomError("job_id", problem)
    return value


def check_job_id(value: object, *, field: str) -> str:
    """`value` as a job_id, or the ValidationError naming `field` (a document's job_id,
    a Kafka key, a spool file name, an Idempotency-Key header): the contract's pattern
    and length for every id, whichever transport derives it. An id that passes holds
    no path separator and no leading dot, but is still never joined into a path."""
    if not isinstance(value, str):
        reason = f"Expected a string, got {type(value).__name__}"
        raise ValidationError(f"Invalid {field}: {reason}", field=field, reason=reason)
    problem = _job_id_problem(value)
    if problem is not None:
        raise ValidationError(f"Invalid {field}: {problem}", field=field, reason=problem)
    return value


JobId = Annotated[str, AfterValidator(_check_job_id)]


class JobStatus(StrEnum):
    """Status words exactly as clients compare them."""

    PENDING = "Pending"
    ASSIGNED = "Assigned"
    RUNNING = "Running"
    COMPLETED = "Completed"
    FAILED = "Failed"
    CANCELLED = "Cancelled"

    @property
    def terminal(self) -> bool:
        return self in (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED)


class Payload(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: str = Field(description="`<operation>.v<N>`")
    data: dict[str, Any] = Field(default_factory=dict)


class JobDocument(BaseModel):
    """One job, the same whichever transport brings it."""

    model_config = ConfigDict(extra="forbid")

    version: Literal["1.0"]
    job_id: JobId | None = None
    kind: str = Field(min_length=1, max_length=128)
    operation: str = Field(max_length=128)
    created_at: pydantic.AwareDatetime | None = None
    payload: Payload
    # Strict: "5", 5.0 and true are not priorities; NaN, Infinity and 1e-9 not timeouts.
    priority: Annotated[int, Strict()] = Field(default=5, ge=0, le=9)
    timeout_seconds: Annotated[float, Strict()] | None = Field(
        default=None, ge=0.01, le=MAX_JOB_TIMEOUT, allow_inf_nan=False
    )
    labels: dict[str, str] = Field(default_factory=dict)
    # A job that reaches the agent after this moment is refused, never run.
    not_after: pydantic.AwareDatetime | None = None

    @field_validator("operation")
    @classmethod
    def _namespaced(cls, value: str) -> str:
        if _OPERATION.fullmatch(value):
            return value
        parts = value.split(".")
        if len(parts) < 2:
            raise PydanticCustomError("operation", "Operation must be namespaced")
        if not all(_OPERATION_PART.match(part) for part in parts):
            raise PydanticCustomError(
                "operation", "Each part of the operation must match [a-z][a-z0-9_]*"
            )
        return value

    @model_validator(mode="after")
    def _payload_type_matches(self) -> JobDocument:
        prefix = self.operation + ".v"
        kind = self.payload.type
        if not (kind.startswith(prefix) and _VERSION.fullmatch(kind, len(prefix))):
            raise ValidationError(
                "payload.type does not match the operation",
                field="payload.type",
                reason=f"Expected '{self.operation}.v<N>', got '{self.payload.type}'",
            )
        return self

    @property
    def payload_version(self) -> int:
        return int(self.payload.type.rsplit(".v", 1)[1])


class JobState(BaseModel):
    """A job's status as the API answers it."""

    job_id: str
    operation: str
    status: JobStatus
    submitted_at: str
    started_at: str | None = None
    completed_at: str | None = None
    error: str | None = None
    progress: float | None = None
    transport: str
    attempts: int = 0
    priority: int = 5
    # The job this one is a step of (a runbook's job); None for a job of its own.
    parent: str | None = None


@dataclass(frozen=True)
class NewJob:
    """A validated job ready to be recorded."""

    job_id: str
    operation: str
    priority: int
    transport: str
    document: dict[str, Any]
    fingerprint: str
    timeout_seconds: float | None
    # The transport's own reference to where the job came from (a spool file
    # name, a topic offset), handed back in the job's "accepted" outbox entry.
    origin: str | None = None
    # Who handed the job in, recorded with it (agent.core.submitter): "uid:N" (a
    # socket peer, a spool file's owner), "token:NAME" (HTTP); None: not known.
    submitter: str | None = None
    # The job that submitted this one as its child (agent.core.children).
    parent: str | None = None


@dataclass(frozen=True)
class PendingJob:
    """What the dispatcher needs to run a job."""

    seq: int
    job_id: str
    operation: str
    priority: int
    document: dict[str, Any]
    timeout_seconds: float | None
    attempts: int = 0  # runs so far (a job re-queued after a crash has one)


@dataclass(frozen=True)
class OutboxEntry:
    """One state change a transport must hear about, from the durable outbox.

    `event` is accepted, running, progress, completed, failed or cancelled;
    `data` holds {"origin"} (accepted), {"percent", "message"} (progress),
    {"result"} (completed) or {"error"} (failed, cancelled).
    """

    id: int  # increasing: a job's entries come in the order of its changes
    event: str
    state: JobState
    data: dict[str, Any]

    @property
    def job_id(self) -> str:
        return self.state.job_id


# The last second utc_now formatted, and its text: most calls fall in the same second
# (one tuple, replaced whole, so threads calling utc_now never see half of it).
_last_second: list[tuple[int, str]] = [(-1, "")]


def utc_now() -> str:
    """RFC 3339, microseconds, Z suffix: the one timestamp format the agent writes.

    The text of datetime.now(UTC).isoformat(timespec="microseconds") with "Z", at a
    third of its cost (it is taken once or twice per job)."""
    second, micro = divmod(time.time_ns() // 1000, 1_000_000)
    last = _last_second[0]
    if last[0] != second:
        last = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
        _last_second[0] = last
    return f"{last[1]}.{micro:06d}Z"


def format_timestamp(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


# Built once: json.dumps and json.loads with options build a new coder on every call.
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)
COMPACT = json.JSONEncoder(separators=(",", ":"))


def fingerprint(raw: dict[str, Any]) -> str:
    """Identity of a document as submitted, for the idempotency rule on job_id.

    Raises the ValidationError naming the field whose text is not encodable UTF-8
    (a lone surrogate such as "\\ud800": valid JSON, never storable text)."""
    # The same text as json.dumps(raw, sort_keys=True, separators=(",", ":"),
    # ensure_ascii=False): stored fingerprints must keep matching.
    try:
        return hashlib.sha256(_CANONICAL.encode(raw).encode()).hexdigest()
    except UnicodeEncodeError:
        raise unencodable_text(raw) from None


def unencodable_text(value: object, prefix: str = "") -> ValidationError:
    """The ValidationError for the first string (key or value) in `value` that UTF-8
    cannot encode, naming its field; the text itself is never echoed."""
    field = _unencodable_field(value, []) or []
    name = ".".join([*([prefix] if prefix else []), *field]) or "document"
    reason = "text is not encodable as UTF-8 (a lone surrogate)"
    return ValidationError(f"Invalid {name}: {reason}", field=name, reason=reason)


def check_encodable(value: object) -> None:
    """Raise unencodable_text's ValidationError if any string (key or value) in `value`
    is not encodable UTF-8: for a transport that must refuse such text before anything
    encodes it (an event, a log line), ahead of the fingerprint."""
    if _unencodable_field(value, []) is not None:
        raise unencodable_text(value)


def _encodable(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _unencodable_field(value: object, path: list[str]) -> list[str] | None:
    """The path to the first unencodable string in `value`, walked a level at a time
    (no recursion: depth is bounded by parse_json, but not for every caller)."""
    level: list[tuple[object, list[str]]] = [(value, path)]
    while level:
        deeper: list[tuple[object, list[str]]] = []
        for item, where in level:
            if isinstance(item, str):
                if not _encodable(item):
                    return where
            elif isinstance(item, dict):
                for key, child in item.items():
                    shown = str(key).encode(errors="backslashreplace").decode()
                    if isinstance(key, str) and not _encodable(key):
                        return [*where, shown]
                    deeper.append((child, [*where, shown]))
            elif isinstance(item, list | tuple):
                deeper.extend((child, [*where, str(i)]) for i, child in enumerate(item))
        level = deeper
    return None


def new_job_id() -> str:
    return str(uuid.uuid4())


def raise_validation_error(exc: pydantic.ValidationError, *, prefix: str = "") -> NoReturn:
    """Turn pydantic's report into the contract's error: the first field and its reason."""
    first = exc.errors(include_url=False)[0]
    head = [prefix] if prefix else []
    field = ".".join([*head, *(str(part) for part in first["loc"])])
    reason = first["msg"]
    others = [
        {"field": ".".join(str(p) for p in error["loc"]), "reason": error["msg"]}
        for error in exc.errors(include_url=False)[1:]
    ]
    details: dict[str, Any] = {"errors": others} if others else {}
    raise ValidationError(
        f"Invalid {field or 'document'}: {reason}",
        field=field or None,
        reason=reason,
        details=details,
    ) from exc


_CONTAINERS = (dict, list)  # what the JSON decoder makes of objects and arrays


def _refuse_json(reason: str) -> ValidationError:
    return ValidationError(
        f"The document is not acceptable JSON: {reason}", field="document", reason=reason
    )


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    found = dict(pairs)
    if len(found) != len(pairs):
        seen: set[str] = set()
        duplicate = next(key for key, _ in pairs if key in seen or seen.add(key))  # type: ignore[func-returns-value]
        raise _refuse_json(f"duplicate key {duplicate!r}")
    return found


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _refuse_json(f"number {text} is out of range")
    return value


def _no_constants(text: str) -> Any:
    raise _refuse_json(f"{text} is not a JSON number")


def _depth_ok(value: Any) -> bool:
    """At most MAX_JSON_DEPTH levels, a value inside an object or array one level
    below it (the innermost scalar counts), walked a level at a time."""
    level = [value]
    depth = 1
    while level:
        if depth > MAX_JSON_DEPTH:
            return False
        level = [
            child
            for item in level
            if type(item) in _CONTAINERS
            for child in (item.values() if type(item) is dict else item)
        ]
        depth += 1
    return True


_STRICT = json.JSONDecoder(
    object_pairs_hook=_unique_keys, parse_float=_finite, parse_constant=_no_constants
)


def parse_json(data: bytes | str) -> Any:
    """JSON as every transport must read it: no duplicate keys, no NaN or Infinity
    (nor numbers that overflow to them), at most MAX_JSON_DEPTH levels.

    Raises ValueError (json.JSONDecodeError, UnicodeDecodeError) when it is not
    JSON at all, ValidationError when it is JSON the contract refuses.
    """
    if isinstance(data, str):
        if data.startswith("\ufeff"):  # as json.loads refuses it
            raise json.JSONDecodeError("Unexpected UTF-8 BOM (decode using utf-8-sig)", data, 0)
        text = data
    else:  # as json.loads reads bytes: UTF-8, -16 or -32, by their first bytes
        text = data.decode(json.detect_encoding(data), "surrogatepass")
    try:
        value = _STRICT.decode(text)
    except RecursionError as exc:  # the C decoder's own bound, far past ours
        raise _refuse_json(f"nested deeper than {MAX_JSON_DEPTH} levels") from exc
    # Each level but the innermost needs an opening bracket: with fewer brackets
    # than levels allowed in the whole text, there is nothing to walk.
    if text.count("{") + text.count("[") >= MAX_JSON_DEPTH and not _depth_ok(value):
        raise _refuse_json(f"nested deeper than {MAX_JSON_DEPTH} levels")
    return value


def parse_document(raw: object) -> JobDocument:
    """Validate the document envelope (not yet the handler's payload)."""
    if not isinstance(raw, dict):
        raise ValidationError(
            "A job document must be a JSON object",
            field="document",
            reason="Expected a JSON object",
        )
    try:
        return JobDocument.model_validate(raw)
    except pydantic.ValidationError as exc:
        raise_validation_error(exc)
