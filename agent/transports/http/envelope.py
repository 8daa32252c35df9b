"""The answers of the HTTP API as bytes, a status and headers, whichever path serves them.

Both the quart app and the front (front.py) answer with an `Answer`
made here: the success envelope `{"success": true, "data": ...}`, the
contract's error envelope with its Retry-After and WWW-Authenticate, and the
envelopes of the HTTP-level refusals (unknown path, body too large or too
slow). Nothing here imports a web framework.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import orjson
import structlog
from pydantic import BaseModel

from agent.errors import AgentError, RefusedForNowError, UnauthorizedError

log = structlog.get_logger("agent.http")

JSON = "application/json"


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    body: bytes
    content_type: str = JSON
    # After content-type and content-length, in this order.
    headers: tuple[tuple[str, str], ...] = ()


def ok(data: Any, status: int = 200) -> Answer:
    body = orjson.dumps({"success": True, "data": data}, option=orjson.OPT_NON_STR_KEYS)
    return Answer(status, body)


def ok_model(model: BaseModel, status: int = 200) -> Answer:
    return Answer(status, b'{"success":true,"data":' + model.model_dump_json().encode() + b"}")


def error_answer(exc: AgentError, *, retry_after: int) -> Answer:
    """The contract's envelope of an AgentError, with the headers its kind calls for."""
    headers: tuple[tuple[str, str], ...] = ()
    if isinstance(exc, RefusedForNowError):
        headers = (("Retry-After", str(retry_after)),)
    elif isinstance(exc, UnauthorizedError):
        headers = (("WWW-Authenticate", 'Bearer realm="hostagent"'),)
    return Answer(exc.http_status, json.dumps(exc.to_dict()).encode(), headers=headers)


def failure_answer(exc: Exception, *, retry_after: int, method: str, path: str) -> Answer:
    """What a request that raised `exc` is answered (and logged, where it is our fault)."""
    if isinstance(exc, AgentError):
        if exc.http_status >= 500 and not isinstance(exc, RefusedForNowError):
            log.error("http.agent_error", code=exc.code, message=exc.message, path=path)
        return error_answer(exc, retry_after=retry_after)
    log.error("http.unexpected_error", path=path, method=method, exc_info=exc)
    internal = AgentError("Internal error", reason=type(exc).__name__)
    return error_answer(internal, retry_after=retry_after)


# Refusals at the HTTP level (unknown path, body too large or too slow, ...): their
# contract code, and the message where the framework's own text would not help.
_HTTP_CODES = {
    401: "UNAUTHORIZED",
    403: "FORBIDDEN",
    404: "NOT_FOUND",
    409: "CONFLICT",
    413: "PAYLOAD_TOO_LARGE",
    429: "RATE_LIMITED",
}
_HTTP_MESSAGES = {
    404: "No such endpoint",
    408: "The request body did not arrive in time",
    413: "The request body is larger than the configured limit",
}
# The reason phrases the front refuses with (the quart app passes werkzeug's own).
REQUEST_TIMEOUT = (408, "Request Timeout")
TOO_LARGE = (413, "Request Entity Too Large")


def http_error_answer(
    status: int,
    name: str,
    *,
    description: str | None = None,
    max_body_bytes: int,
    allow: str | None = None,
) -> Answer:
    code = _HTTP_CODES.get(status, "INTERNAL_ERROR" if status >= 500 else "BAD_REQUEST")
    message = _HTTP_MESSAGES.get(status, description or name)
    details: dict[str, Any] = {"reason": name}
    if status == 413:
        details["max_body_bytes"] = max_body_bytes
    body = json.dumps({"error": code, "message": message, "details": details}).encode()
    return Answer(status, body, headers=() if allow is None else (("Allow", allow),))


def no_store(answer: Answer) -> Answer:
    """`answer` marked not to be cached (as the ASGI front answers health, metrics and an
    early 413)."""
    return Answer(answer.status, answer.body, answer.content_type, (_NO_STORE, *answer.headers))


_NO_STORE = ("Cache-Control", "no-store")


def too_large(max_body_bytes: int) -> Answer:
    """413 for a body found too large while it was read (a chunked one)."""
    return http_error_answer(*TOO_LARGE, max_body_bytes=max_body_bytes)


def request_timeout(max_body_bytes: int) -> Answer:
    return http_error_answer(*REQUEST_TIMEOUT, max_body_bytes=max_body_bytes)
