"""The /api/v1 job API: its routes as framework-neutral Handlers.

Served by the quart app (through one adapter, app.py) and, for the routes
marked `hot` (submit, batch submit, a job's status, health, /metrics), also
in front of quart by front.py; both run this code.
"""

from __future__ import annotations

from typing import Any

import trio

from agent.core import metrics
from agent.core.intake import Submission
from agent.errors import AgentError, ValidationError
from agent.jobs import JobDocument, JobState, NewJob
from agent.policy.allowlist import Caller
from agent.transports.http.envelope import Answer, no_store, ok, ok_model
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
from agent.transports.http.routes import API, Call, Route, route

ROUTES: list[Route] = []

_ERRORS_READ = (401, 403)
_ERRORS_JOB = (401, 403, 404)


def submitted(submission: Submission) -> Submitted:
    job_id = submission.state.job_id
    return Submitted(
        job_id=job_id,
        message=f"Job {job_id} submitted successfully",
        created=submission.created,
        job=submission.state,
    )


def _caller(call: Call) -> Caller:
    """Who submits: the token, or the socket peer (its uid and groups)."""
    return Caller("http") if call.principal is None else call.principal.caller


@route(
    ROUTES,
    "POST",
    f"{API}/jobs",
    scope="submit",
    summary="Submit a job (durable when answered)",
    status=201,
    body=JobDocument,
    answer=Submitted,
    errors=(400, 401, 403, 409, 413, 415, 503),
    hot=True,
)
async def submit_job(call: Call) -> Answer:
    call.require_accepting()
    raw = call.json()
    intake = call.api.intake
    prepared = intake.prepare(raw, caller=_caller(call))
    async with call.api.slots.committing():
        outcome = (await intake.submit_many([prepared]))[0]
    if isinstance(outcome, AgentError):
        raise outcome
    return ok_model(submitted(outcome), 201)


@route(
    ROUTES,
    "POST",
    f"{API}/jobs/batch",
    scope="submit",
    summary="Submit many jobs in one transaction; one answer per job",
    body=BatchRequest,
    answer=BatchAnswer,
    errors=(400, 401, 403, 413, 415, 503),
    hot=True,
)
async def submit_batch(call: Call) -> Answer:
    call.require_accepting()
    raw = call.json()
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
    limit = call.api.config.max_batch_jobs
    if len(items) > limit:
        raise ValidationError(
            f"At most {limit} jobs per batch",
            field="jobs",
            reason=f"{len(items)} jobs sent, limit {limit}",
        )
    intake, caller = call.api.intake, _caller(call)
    answers: list[dict[str, Any] | None] = [None] * len(items)
    prepared: list[NewJob] = []
    positions: list[int] = []
    for index, item in enumerate(items):
        if index % 64 == 63:
            await trio.lowlevel.checkpoint()  # let other requests in during a big batch
        try:
            prepared.append(intake.prepare(item, caller=caller))
            positions.append(index)
        except AgentError as exc:  # one bad job is that job's answer, not the batch's
            answers[index] = _batch_failure(exc, index)
    outcomes = await intake.submit_many(prepared) if prepared else []
    for index, outcome in zip(positions, outcomes, strict=True):
        if isinstance(outcome, AgentError):
            answers[index] = _batch_failure(outcome, index)
        else:
            answers[index] = {"success": True, "data": _submitted_json(outcome)}
    failed = sum(1 for answer in answers if answer is not None and not answer["success"])
    return ok({"results": answers, "submitted": len(items) - failed, "failed": failed})


def _submitted_json(submission: Submission) -> dict[str, Any]:
    """`submitted(submission).model_dump(mode="json")`, without building the model
    (a batch answers hundreds of these)."""
    job_id = submission.state.job_id
    return {
        "job_id": job_id,
        "status": "submitted",
        "message": f"Job {job_id} submitted successfully",
        "created": submission.created,
        "job": submission.state.model_dump(mode="json"),
    }


def _batch_failure(exc: AgentError, index: int) -> dict[str, Any]:
    envelope = exc.to_dict()
    envelope["details"] = {**envelope["details"], "index": index}
    return {"success": False, **envelope}


@route(
    ROUTES,
    "GET",
    f"{API}/jobs",
    scope="read",
    summary="List jobs (oldest first; order=newest for newest first), filters, cursor paging",
    query=JobListQuery,
    answer=JobList,
    errors=(400, *_ERRORS_READ),
)
async def list_jobs(call: Call) -> Answer:
    query = JobListQuery.from_args(dict(call.args))
    after = decode_cursor(query.cursor) if query.cursor else 0
    jobs, total, next_seq = await call.api.intake.list_jobs(
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
    ROUTES,
    "GET",
    f"{API}/jobs/<jobid:job_id>",
    scope="read",
    summary="A job's status",
    answer=JobState,
    errors=_ERRORS_JOB,
    hot=True,
)
async def job_status(call: Call) -> Answer:
    return ok_model(await call.api.intake.status(call.params["job_id"]))


@route(
    ROUTES,
    "GET",
    f"{API}/jobs/<jobid:job_id>/result",
    scope="read",
    summary="A job's result (404 until there is one)",
    answer=AnyResult,
    errors=_ERRORS_JOB,
)
async def job_result(call: Call) -> Answer:
    return ok(await call.api.intake.result(call.params["job_id"]))


@route(
    ROUTES,
    "POST",
    f"{API}/jobs/<jobid:job_id>/cancel",
    scope="cancel",
    summary="Cancel a pending or running job; answers its status",
    answer=JobState,
    errors=(*_ERRORS_JOB, 409),
)
async def cancel_job(call: Call) -> Answer:
    return ok_model(await call.api.intake.cancel(call.params["job_id"]))


@route(
    ROUTES,
    "GET",
    f"{API}/jobs/<jobid:job_id>/logs",
    scope="read",
    summary="A job's log lines and progress events",
    answer=JobLogs,
    errors=_ERRORS_JOB,
)
async def job_logs(call: Call) -> Answer:
    job_id = call.params["job_id"]
    return ok({"job_id": job_id, "logs": await call.api.intake.logs(job_id)})


@route(
    ROUTES,
    "GET",
    f"{API}/capabilities",
    scope="read",
    summary="What this host offers",
    answer=CapabilitiesReport,
    errors=_ERRORS_READ,
)
async def capabilities(call: Call) -> Answer:
    return ok(await call.api.intake.capabilities())


@route(
    ROUTES,
    "GET",
    f"{API}/health",
    scope="read",
    open_if_configured=True,
    summary="Component health (open without a token unless http.open_health is false)",
    answer=HealthReport,
    errors=_ERRORS_READ,
    hot=True,
)
async def health(call: Call) -> Answer:
    # The one answerer of probes: the report kept fresh in the background (probes.py),
    # so a busy agent answers at once.
    return no_store(Answer(200, await call.api.health.fresh()))


@route(
    ROUTES,
    "GET",
    "/metrics",
    scope="read",
    summary="Prometheus metrics",
    raw="text/plain",
    errors=_ERRORS_READ,
    hot=True,
)
async def prometheus_metrics(call: Call) -> Answer:
    body, content_type = metrics.render()
    return no_store(Answer(200, body, content_type))
