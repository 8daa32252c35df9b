"""The agent's error tree: every error carries its contract code and, where
one is to blame, the field and the reason."""

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
    code = "NOT_FOUND"
    http_status = 404


class ConflictError(AgentError):
    """Same job_id, different document."""

    code = "CONFLICT"
    http_status = 409


class QueueFullError(AgentError):
    """The pending queue is at its configured bound; retry later."""

    code = "QUEUE_FULL"
    http_status = 503


class DrainingError(QueueFullError):
    """The agent is shutting down: nothing was recorded, try again later (elsewhere)."""

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


class UnsupportedMediaTypeError(AgentError):
    """A body that is not `application/json` where the API takes JSON."""

    code = "UNSUPPORTED_MEDIA_TYPE"
    http_status = 415


class StorageFullError(QueueFullError):
    """The disk holding the job store is full (or below its free-space floor): nothing
    was recorded; retry later. Answered as 503 with Retry-After, like a full queue."""
