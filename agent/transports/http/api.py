"""The /api/v1 job API as a quart-trio app: routes, envelopes, auth, error mapping.

Every route is declared once, in ROUTES, with its scope and models; the
app registers views from it and the OpenAPI document is generated from it,
so what is documented is what is served and checked.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, cast

import orjson
import structlog
import trio
from pydantic import BaseModel
from quart import Response, current_app, g, request
from werkzeug.exceptions import HTTPException

from agent import metrics
from agent.errors import (
    AgentError,
    BadRequestError,
    DrainingError,
    QueueFullError,
    UnauthorizedError,
    UnsupportedMediaTypeError,
    ValidationError,
)
from agent.intake import Submission, TransportIntake
from agent.jobs import JobDocument, JobState, NewJob, parse_json
from agent.transports.http.auth import Principal, TokenTable, bearer_token
from agent.transports.http.models import (
    AnyResult,
    BatchAnswer,
    BatchRequest,
    CapabilitiesReport,
    HealthReport,
    JobList,
    JobListQuery,
    JobLogs,
    Submitted,
    decode_cursor,
    encode_cursor,
)
from agent.transports.http.settings import HttpConfig, Scope

log = structlog.get_logger("agent.http")

API = "/api/v1"


class ApiState:
    """What the views need; the transport swaps `tokens` and `config` on reload."""

    def __init__(self, intake: TransportIntake, config: HttpConfig, tokens: TokenTable) -> None:
        self.intake = intake
        self.config = config
        self.tokens = tokens


@dataclass(frozen=True)
class Route:
    method: str
    rule: str  # quart's rule syntax: /api/v1/jobs/<job_id>
    view: Callable[..., Awaitable[Response]]
    scope: Scope | None  # None: open to anyone
    summary: str
    status: int = 200
    body: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    answer: type[BaseModel] | None = None  # the `data` of the success envelope
    errors: tuple[int, ...] = ()
    # Health may be opened by config (http.open_health) for probes.
    open_if_configured: bool = False
    # Browsers cannot set headers on EventSource/WebSocket: accept ?access_token=.
    token_in_query: bool = False
    websocket: bool = False
    raw: str | None = None  # a non-JSON answer's media type
    # Takes an Idempotency-Key header (the job_id) and answers Location: the job.
    idempotency_key: bool = False

    @property
    def endpoint(self) -> str:
        return self.view.__name__


ROUTES: list[Route] = []


def route(method: str, rule: str, **spec: Any) -> Callable[[Callable[..., Any]], Any]:
    def register(view: Callable[..., Awaitable[Response]]) -> Callable[..., Awaitable[Response]]:
        ROUTES.append(Route(method=method, rule=rule, view=view, **spec))
        return view

    return register


def state() -> ApiState:
    return cast(ApiState, current_app.extensions["hostagent"])


# --- envelopes ---


def json_response(body: bytes, status: int = 200) -> Response:
    return Response(body, status=status, content_type="application/json")


def ok(data: Any, status: int = 200) -> Response:
    body = orjson.dumps({"success": True, "data": data}, option=orjson.OPT_NON_STR_KEYS)
    return json_response(body, status)


def ok_model(model: BaseModel, status: int = 200) -> Response:
    return json_response(
        b'{"success":true,"data":' + model.model_dump_json().encode() + b"}", status
    )


def error_response(exc: AgentError) -> Response:
    response = json_response(json.dumps(exc.to_dict()).encode(), exc.http_status)
    if isinstance(exc, QueueFullError):
        response.headers["Retry-After"] = str(state().config.retry_after_seconds)
    if isinstance(exc, UnauthorizedError):
        response.headers["WWW-Authenticate"] = 'Bearer realm="hostagent"'
    return response


# HTTP errors quart raises itself (unknown path, body too large or too slow, ...).
_HTTP_CODES = {
    401: "UNAUTHORIZED",
    403: "FORBIDDEN",
    404: "NOT_FOUND",
    409: "CONFLICT",
    413: "PAYLOAD_TOO_LARGE",
    429: "RATE_LIMITED",
}


def http_error_response(exc: HTTPException) -> Response:
    status = exc.code or 500
    code = _HTTP_CODES.get(status, "INTERNAL_ERROR" if status >= 500 else "BAD_REQUEST")
    message = {
        404: "No such endpoint",
        408: "The request body did not arrive in time",
        413: "The request body is larger than the configured limit",
    }.get(status, exc.description or exc.name)
    details: dict[str, Any] = {"reason": exc.name}
    if status == 413:
        details["max_body_bytes"] = state().config.max_body_bytes
    body = {"error": code, "message": message, "details": details}
    response = json_response(json.dumps(body).encode(), status)
    for name, value in exc.get_headers():
        if name.lower() == "allow":
            response.headers[name] = value
    return response


# --- request helpers ---


def authorize(spec: Route, headers: Any, args: Any) -> Principal | None:
    if spec.scope is None:
        return None
    api = state()
    if spec.open_if_configured and api.config.open_health:
        return None
    token = bearer_token(headers.get("Authorization"))
    if token is None and spec.token_in_query:
        token = args.get("access_token")
    return api.tokens.authorize(token, spec.scope)


async def json_body() -> Any:
    """The request's JSON, read the way every transport reads documents (parse_json)."""
    if request.mimetype != "application/json":
        raise UnsupportedMediaTypeError(
            "The request body must be JSON",
            field="Content-Type",
            reason=f"expected application/json, got {request.mimetype or 'none'}",
        )
    data = await request.get_data(cache=False)
    try:
        return parse_json(data)
    except ValueError as exc:
        raise BadRequestError(
            "The request body is not valid JSON", field="body", reason=str(exc)
        ) from exc


def privileged() -> bool:
    """The caller holds `admin` (the domain policy lets only such callers pass through)."""
    principal = getattr(g, "principal", None)
    return principal is not None and principal.allows("admin")


def require_accepting(intake: TransportIntake) -> None:
    if not intake.accepting:
        raise DrainingError


def submitted(submission: Submission) -> Submitted:
    job_id = submission.state.job_id
    return Submitted(
        job_id=job_id,
        message=f"Job {job_id} submitted successfully",
        created=submission.created,
        job=submission.state,
    )


_ERRORS_READ = (401, 403)
_ERRORS_JOB = (401, 403, 404)


# --- the job API ---


@route(
    "POST",
    f"{API}/jobs",
    scope="submit",
    summary="Submit a job (durable when answered)",
    status=201,
    body=JobDocument,
    answer=Submitted,
    errors=(400, 401, 403, 409, 413, 415, 503),
)
async def submit_job() -> Response:
    api = state()
    require_accepting(api.intake)
    raw = await json_body()
    submission = await api.intake.submit(raw, transport="http", privileged=privileged())
    return ok_model(submitted(submission), 201)


@route(
    "POST",
    f"{API}/jobs/batch",
    scope="submit",
    summary="Submit many jobs in one transaction; one answer per job",
    body=BatchRequest,
    answer=BatchAnswer,
    errors=(400, 401, 403, 413, 415, 503),
)
async def submit_batch() -> Response:
    api = state()
    require_accepting(api.intake)
    raw = await json_body()
    items = raw.get("jobs") if isinstance(raw, dict) else None
    if not isinstance(items, list) or not items:
        raise ValidationError(
            "Expected {'jobs': [job documents]}",
            field="jobs",
            reason="A non-empty list of job documents is required",
        )
    for index, item in enumerate(items):
        if not isinstance(item, dict):  # not a document at all: the request is malformed
            raise ValidationError(
                "Every item of jobs must be a job document (an object)",
                field=f"jobs.{index}",
                reason="Expected a JSON object",
            )
    if len(items) > api.config.max_batch_jobs:
        raise ValidationError(
            f"At most {api.config.max_batch_jobs} jobs per batch",
            field="jobs",
            reason=f"{len(items)} jobs sent, limit {api.config.max_batch_jobs}",
        )
    admin = privileged()
    answers: list[dict[str, Any] | None] = [None] * len(items)
    prepared: list[NewJob] = []
    positions: list[int] = []
    for index, item in enumerate(items):
        if index % 64 == 63:
            await trio.lowlevel.checkpoint()  # let other requests in during a big batch
        try:
            prepared.append(api.intake.prepare(item, transport="http", privileged=admin))
            positions.append(index)
        except AgentError as exc:  # one bad job is that job's answer, not the batch's
            answers[index] = _batch_failure(exc, index)
    outcomes = await api.intake.submit_many(prepared) if prepared else []
    for index, outcome in zip(positions, outcomes, strict=True):
        if isinstance(outcome, AgentError):
            answers[index] = _batch_failure(outcome, index)
        else:
            data = submitted(outcome).model_dump(mode="json")
            answers[index] = {"success": True, "data": data}
    failed = sum(1 for answer in answers if answer is not None and not answer["success"])
    return ok({"results": answers, "submitted": len(items) - failed, "failed": failed})


def _batch_failure(exc: AgentError, index: int) -> dict[str, Any]:
    envelope = exc.to_dict()
    envelope["details"] = {**envelope["details"], "index": index}
    return {"success": False, **envelope}


@route(
    "GET",
    f"{API}/jobs",
    scope="read",
    summary="List jobs (oldest first; order=newest for newest first), filters, cursor paging",
    query=JobListQuery,
    answer=JobList,
    errors=(400, *_ERRORS_READ),
)
async def list_jobs() -> Response:
    query = JobListQuery.from_args(request.args.to_dict())
    after = decode_cursor(query.cursor) if query.cursor else 0
    jobs, total, next_seq = await state().intake.list_jobs(
        status=None if query.status is None else query.status.value,
        operation=query.operation,
        limit=query.limit,
        after_seq=after,
        newest_first=query.order == "newest",
    )
    page = JobList(
        jobs=jobs,
        total=total,
        next_cursor=None if next_seq is None else encode_cursor(next_seq),
    )
    return ok_model(page)


@route(
    "GET",
    f"{API}/jobs/<jobid:job_id>",
    scope="read",
    summary="A job's status",
    answer=JobState,
    errors=_ERRORS_JOB,
)
async def job_status(job_id: str) -> Response:
    return ok_model(await state().intake.status(job_id))


@route(
    "GET",
    f"{API}/jobs/<jobid:job_id>/result",
    scope="read",
    summary="A job's result (404 until there is one)",
    answer=AnyResult,
    errors=_ERRORS_JOB,
)
async def job_result(job_id: str) -> Response:
    return ok(await state().intake.result(job_id))


@route(
    "POST",
    f"{API}/jobs/<jobid:job_id>/cancel",
    scope="cancel",
    summary="Cancel a pending or running job; answers its status",
    answer=JobState,
    errors=(*_ERRORS_JOB, 409),
)
async def cancel_job(job_id: str) -> Response:
    return ok_model(await state().intake.cancel(job_id))


@route(
    "GET",
    f"{API}/jobs/<jobid:job_id>/logs",
    scope="read",
    summary="A job's log lines and progress events",
    answer=JobLogs,
    errors=_ERRORS_JOB,
)
async def job_logs(job_id: str) -> Response:
    return ok({"job_id": job_id, "logs": await state().intake.logs(job_id)})


@route(
    "GET",
    f"{API}/capabilities",
    scope="read",
    summary="What this host offers",
    answer=CapabilitiesReport,
    errors=_ERRORS_READ,
)
async def capabilities() -> Response:
    return ok(await state().intake.capabilities())


@route(
    "GET",
    f"{API}/health",
    scope="read",
    open_if_configured=True,
    summary="Component health (open without a token unless http.open_health is false)",
    answer=HealthReport,
    errors=_ERRORS_READ,
)
async def health() -> Response:
    return ok(await state().intake.health())


@route(
    "GET",
    "/metrics",
    scope="read",
    summary="Prometheus metrics",
    raw="text/plain",
    errors=_ERRORS_READ,
)
async def prometheus_metrics() -> Response:
    body, content_type = metrics.render()
    return Response(body, content_type=content_type)


__all__ = ["ROUTES", "ApiState", "Route", "authorize", "error_response", "state"]
