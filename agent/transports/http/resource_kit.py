"""What the resource view's routes share: reading the view, queries and bodies,
and turning a checked action into a job (202 + Location, Idempotency-Key = job_id).

Routes register here (`ROUTES`) from agent.transports.http.resources (VMs, the
host) and agent.transports.http.resources_storage (pools, volumes, networks).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pydantic
from pydantic import BaseModel
from quart import Response, g, request

from agent.errors import NotFoundError, UnavailableError
from agent.jobs import check_job_id, raise_validation_error
from agent.policy.allowlist import Caller
from agent.transports.http.api import API, Route, ok_model, require_accepting, state, submitted
from agent.transports.http.models import Submitted
from agent.transports.http.routes import json_body
from agent.view.actions import (
    Action,
    job_document,
)
from agent.view.reads import ResourceView

ModelT = TypeVar("ModelT", bound=BaseModel)
View = Callable[..., Awaitable[Response]]

READ_ERRORS = (401, 403, 404, 503)
ACT_ERRORS = (400, 401, 403, 404, 409, 413, 503)

ROUTES: list[Route] = []


def resource_view() -> ResourceView:
    found = state().services.find(ResourceView)
    if found is None:
        raise UnavailableError("This agent serves no resource view", reason="not_configured")
    return found


def parse_query(model: type[ModelT]) -> ModelT:
    try:
        return model.model_validate(request.args.to_dict())
    except pydantic.ValidationError as exc:
        raise_validation_error(exc)
    raise AssertionError("unreachable")


async def parse_body(model: type[ModelT]) -> ModelT:
    """The request body as `model`; no body at all means its defaults."""
    data = await request.get_data(cache=True, as_text=False, parse_form_data=False)
    # Depth, duplicates, NaN, the declared charset, unencodable text: 400/415 (json_body).
    raw = json_body(data, request.headers.get("Content-Type", "")) if data.strip() else {}
    try:
        return model.model_validate(raw)
    except pydantic.ValidationError as exc:
        raise_validation_error(exc, prefix="body")
    raise AssertionError("unreachable")


def idempotency_key() -> str | None:
    key = request.headers.get("Idempotency-Key")
    # It becomes the job_id: the one check every transport's ids pass.
    return None if key is None else check_job_id(key, field="Idempotency-Key")


async def act(
    action: Action,
    kind: str,
    name: str,
    current: Callable[[], Awaitable[str]] | None,
    data: dict[str, Any],
) -> Response:
    """Check `action` against the state `current()` reads, then submit its job: 202."""
    api = state()
    require_accepting(api.intake)
    key = idempotency_key()
    retried = False
    if key is not None:
        try:
            await api.intake.status(key)
            retried = True
        except NotFoundError:
            pass
    # A retry is answered by its job whatever the state is now (the job may have changed it).
    if current is not None and not retried:
        action.check(kind, name, await current())
    document = job_document(action.operation, {**data, **action.fixed}, key)
    principal = getattr(g, "principal", None)  # the job's caller (submitter, allowlist)
    caller = Caller("http") if principal is None else principal.caller
    answer = submitted(await api.intake.submit(document, caller=caller))
    response = ok_model(answer, 202)
    response.headers["Location"] = f"{API}/jobs/{answer.job_id}"
    return response


def add_route(method: str, rule: str, name: str, view: View, **spec: Any) -> None:
    view.__name__ = view.__qualname__ = name  # quart's endpoint name; unique per route
    ROUTES.append(Route(method=method, rule=f"{API}{rule}", view=view, **spec))


def add_read(rule: str, name: str, view: View, summary: str, **spec: Any) -> None:
    # Every read answers 401/403 to a caller without the scope: documented by default.
    spec.setdefault("errors", READ_ERRORS)
    add_route("GET", rule, name, view, scope="read", summary=summary, **spec)


def add_action(method: str, rule: str, name: str, view: View, action: Action, **spec: Any) -> None:
    spec.setdefault("body", action.body)
    spec.setdefault("summary", action.summary)
    add_route(
        method,
        rule,
        name,
        view,
        scope="submit",
        status=202,
        answer=Submitted,
        errors=ACT_ERRORS,
        idempotency_key=True,
        **spec,
    )
