"""The agent's error tree: every error carries its contract code and, where
one is to blame, the field and the reason.

    AgentError                    INTERNAL_ERROR 500   root: raised on purpose
    ├── ValidationError           VALIDATION_ERROR 400 the document breaks the contract
    │   └── ExpiredError            (same code)        arrived after its not_after
    ├── BadRequestError           BAD_REQUEST 400      a request the API cannot read
    ├── UnauthorizedError         UNAUTHORIZED 401     no token, or an unknown one
    ├── ForbiddenError            FORBIDDEN 403        a token without the scope
    │   └── LinkRefusedError        (same code)        a spool symlink (transports.spool.claim)
    ├── NotFoundError             NOT_FOUND 404        a job, a token, a payload's file
    ├── ConflictError             CONFLICT 409         same job_id, different document
    ├── PayloadTooLargeError      PAYLOAD_TOO_LARGE 413
    ├── UnsupportedMediaTypeError UNSUPPORTED_MEDIA_TYPE 415
    ├── RefusedForNowError        503 + Retry-After    refused for a reason that passes;
    │   │                                              nothing was recorded: retry later
    │   ├── QueueFullError        QUEUE_FULL           the pending queue is at its bound
    │   ├── StorageFullError      QUEUE_FULL           the state disk is full
    │   └── DrainingError         QUEUE_FULL           the agent is shutting down
    ├── UnavailableError          UNAVAILABLE 503      libvirt, a broker... is not there now
    ├── UnreachableError          AGENT_UNREACHABLE    the CLI cannot reach the agent
    ├── UsageError                USAGE_ERROR          a command line the CLI cannot use
    ├── StoreError                INTERNAL_ERROR 500   the job store failed a read or write
    ├── ConfigError               CONFIG_ERROR         unusable configuration, names the key
    │   └── StateLockedError        (same code)        another agent holds the state dir
    │                                                  (service.statelock)
    └── HandlerError              JOB_FAILED           a handler failed its operation
        └── HypervisorError       HYPERVISOR_ERROR     libvirt refused or failed

The contract (docs/protocol.md) has one code for every refusal that passes,
QUEUE_FULL; `details["reason"]` says which kind it is. Catch RefusedForNowError
to treat them alike, a subclass to tell one from the others.
"""

from __future__ import annotations

from typing import Any, ClassVar


class AgentError(Exception):
    """Root of every error the agent raises on purpose."""

    code: ClassVar[str] = "INTERNAL_ERROR"
    http_status: ClassVar[int] = 500

    def __init__(
        self,
        message: str,
        *,
        field: str | None = None,
        reason: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.details: dict[str, Any] = dict(details or {})
        if field is not None:
            self.details["field"] = field
        if reason is not None:
            self.details["reason"] = reason

    def to_dict(self) -> dict[str, Any]:
        """The contract's error envelope."""
        return {"error": self.code, "message": self.message, "details": self.details}


class ValidationError(AgentError):
    """A job document or payload does not satisfy the contract."""

    code = "VALIDATION_ERROR"
    http_status = 400


class ExpiredError(ValidationError):
    """The job reached the agent after its `not_after`: refused, never run."""


class NotFoundError(AgentError):
    """What a request names is not there: a job, a token, a file a payload names
    (CLI exit 66)."""

    code = "NOT_FOUND"
    http_status = 404


class ConflictError(AgentError):
    """Same job_id, different document."""

    code = "CONFLICT"
    http_status = 409


class RefusedForNowError(AgentError):
    """A job refused for a reason that passes: nothing was recorded; answered 503 with
    Retry-After. Each kind below says its own contract code."""

    code = "QUEUE_FULL"
    http_status = 503


class QueueFullError(RefusedForNowError):
    """The pending queue is at its configured bound; retry later."""

    code = "QUEUE_FULL"


class DrainingError(RefusedForNowError):
    """The agent is shutting down: nothing was recorded, try again later (elsewhere)."""

    code = "QUEUE_FULL"  # the contract's code for a drain too; details say "draining"

    def __init__(self) -> None:
        super().__init__(
            "The agent is shutting down and takes no new jobs", details={"reason": "draining"}
        )


class StoreError(AgentError):
    """The job store failed a read or write (raised from the SQLite error)."""


class ConfigError(AgentError):
    """The configuration is unusable; names the key."""

    code = "CONFIG_ERROR"


class HandlerError(AgentError):
    """A handler failed its operation; the message becomes the job's error."""

    code = "JOB_FAILED"


class HypervisorError(HandlerError):
    """libvirt refused or failed an operation (translated in agent.hypervisor).

    `details["reason"]` says which kind: not_found, invalid_state, unsupported,
    invalid_argument, denied, unavailable or libvirt_error.
    """

    code = "HYPERVISOR_ERROR"

    @property
    def reason(self) -> str:
        return str(self.details.get("reason", "libvirt_error"))


class BadRequestError(AgentError):
    """A request the API cannot read (not JSON, bad query, body too slow)."""

    code = "BAD_REQUEST"
    http_status = 400


class UnauthorizedError(AgentError):
    """No token, or one the agent does not know."""

    code = "UNAUTHORIZED"
    http_status = 401


class ForbiddenError(AgentError):
    """A known token without the scope the endpoint needs."""

    code = "FORBIDDEN"
    http_status = 403


class PayloadTooLargeError(AgentError):
    code = "PAYLOAD_TOO_LARGE"
    http_status = 413


class UnavailableError(AgentError):
    """Something an answer needs (the libvirt connection, a Kafka broker) is not there now;
    retry later."""

    code = "UNAVAILABLE"
    http_status = 503


class UnreachableError(AgentError):
    """The CLI could not reach the agent (no socket, connection refused, timed out)."""

    code = "AGENT_UNREACHABLE"
    http_status = 503


class UsageError(AgentError):
    """A command line the CLI cannot use (exit 2): the message names the option."""

    code = "USAGE_ERROR"
    http_status = 400


class UnsupportedMediaTypeError(AgentError):
    """A body that is not `application/json` where the API takes JSON."""

    code = "UNSUPPORTED_MEDIA_TYPE"
    http_status = 415


class StorageFullError(RefusedForNowError):
    """The disk holding the job store is full (or below its free-space floor): nothing
    was recorded; retry later."""

    code = "QUEUE_FULL"  # the contract's code for a full disk too; details name the disk
