"""Models of the HTTP API's requests and answers: they validate and they document.

The job document itself is `agent.jobs.JobDocument` (validated by the
Intake); the models here are the API's own envelopes and query strings.
"""

from __future__ import annotations

import re
from typing import Any, Literal

import pydantic
from pydantic import BaseModel, ConfigDict, Field

from agent.errors import ValidationError
from agent.jobs import JobState, JobStatus, raise_validation_error

CURSOR_PATTERN = r"^[0-9]{1,18}$"
OPERATION_PATTERN = r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$"


class _Deferred(BaseModel):
    # Most of these only document the API (OpenAPI, built on the first docs request);
    # building every validator at import cost an idle agent ~1 MB it may never use.
    model_config = ConfigDict(defer_build=True)


class ErrorBody(_Deferred):
    """Every error answer."""

    error: str = Field(description="VALIDATION_ERROR, BAD_REQUEST, UNAUTHORIZED, ...")
    message: str
    details: dict[str, Any] = Field(description="`field` and `reason` where one is to blame")


class Submitted(_Deferred):
    """Answer to a submit; an identical re-submit answers the same, with created=false."""

    job_id: str
    status: Literal["submitted"] = "submitted"
    message: str
    created: bool = Field(description="false: this document was already accepted under job_id")
    job: JobState


class BatchRequest(_Deferred):
    # Objects, each validated as a JobDocument on its own and answered in `results`
    # (one bad job does not refuse the batch); anything but an object refuses it all.
    jobs: list[dict[str, Any]] = Field(
        min_length=1, description="job documents (JobDocument), each answered on its own"
    )


class BatchItem(_Deferred):
    """One job's answer in a batch: `data` as for POST /jobs, or the error's fields."""

    success: bool
    data: Submitted | None = None
    error: str | None = None
    message: str | None = None
    details: dict[str, Any] | None = None


class BatchAnswer(_Deferred):
    results: list[BatchItem] = Field(description="one per job, in the order sent")
    submitted: int
    failed: int


class JobListQuery(_Deferred):
    model_config = ConfigDict(extra="forbid")

    status: JobStatus | None = None
    operation: str | None = Field(default=None, max_length=128, pattern=OPERATION_PATTERN)
    limit: int = Field(default=100, ge=1, le=1000)
    cursor: str | None = Field(
        default=None,
        pattern=CURSOR_PATTERN,
        description="`next_cursor` of the previous page (any such value is a valid position)",
    )
    order: Literal["oldest", "newest"] = Field(
        default="oldest", description="`newest`: the most recently submitted first"
    )

    @classmethod
    def from_args(cls, args: dict[str, str]) -> JobListQuery:
        try:
            return cls.model_validate(args)
        except pydantic.ValidationError as exc:
            raise_validation_error(exc)
        raise AssertionError("unreachable")


class JobList(_Deferred):
    jobs: list[JobState]
    total: int = Field(description="jobs matching the filters, all pages")
    next_cursor: str | None = Field(description="pass as `cursor` for the next page; null: last")


class LogEntry(_Deferred):
    at: str
    type: str = Field(description="log or progress")
    data: dict[str, Any]


class JobLogs(_Deferred):
    job_id: str
    logs: list[LogEntry]


class HealthReport(_Deferred):
    status: Literal["healthy", "degraded", "unhealthy"]
    timestamp: str
    components: dict[str, Any]


class CapabilitiesReport(_Deferred):
    model_config = ConfigDict(extra="allow")

    worker_id: str
    operations: list[str]
    features: list[str]
    disk_formats: list[str]
    max_concurrent_jobs: int
    max_disk_size_gb: int
    labels: dict[str, str]


class AnyResult(_Deferred):
    """The handler's result object, as the handler returned it."""

    model_config = ConfigDict(extra="allow")


def encode_cursor(seq: int) -> str:
    # Opaque to clients, but every value the schema admits means a position: the
    # document and the behaviour agree (an unknown position is simply a later page).
    return str(seq)


def decode_cursor(cursor: str) -> int:
    if not re.fullmatch(CURSOR_PATTERN, cursor):
        raise ValidationError(
            "Invalid cursor", field="cursor", reason="Not a cursor this agent issued"
        )
    return int(cursor)
