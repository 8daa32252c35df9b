"""The quart side of the routes: quart's request in, quart's Response out.

The answers, the error mapping and the authorisation are framework-neutral
(envelope.py, routes.py); here they are adapted to quart for the app, for
the Handlers of the route table (`view_of`) and for the quart views that
remain (streams, docs, the resource view).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, cast

from pydantic import BaseModel
from quart import Response, current_app, g, request
from werkzeug.exceptions import HTTPException

from agent.errors import AgentError
from agent.transports.http import envelope
from agent.transports.http.auth import Principal
from agent.transports.http.envelope import Answer
from agent.transports.http.job_api import submitted
from agent.transports.http.routes import API, ApiState, Call, Route, require_accepting
from agent.transports.http.routes import authorize as authorize_spec


def state() -> ApiState:
    return cast(ApiState, current_app.extensions["hostagent"])


def respond(answer: Answer) -> Response:
    response = Response(answer.body, status=answer.status, content_type=answer.content_type)
    for name, value in answer.headers:
        response.headers[name] = value
    return response


def ok(data: Any, status: int = 200) -> Response:
    return respond(envelope.ok(data, status))


def ok_model(model: BaseModel, status: int = 200) -> Response:
    return respond(envelope.ok_model(model, status))


def error_response(exc: AgentError) -> Response:
    return respond(envelope.error_answer(exc, retry_after=state().config.retry_after_seconds))


def failure_response(exc: Exception) -> Response:
    """The answer to a view that raised `exc` (logged where it is the agent's fault)."""
    retry_after = state().config.retry_after_seconds
    answer = envelope.failure_answer(
        exc, retry_after=retry_after, method=request.method, path=request.path
    )
    return respond(answer)


def http_error_response(exc: HTTPException) -> Response:
    allow = next((value for name, value in exc.get_headers() if name.lower() == "allow"), None)
    answer = envelope.http_error_answer(
        exc.code or 500,
        exc.name,
        description=exc.description,
        max_body_bytes=state().config.max_body_bytes,
        allow=allow,
    )
    return respond(answer)


def authorize(spec: Route, headers: Any, args: Any) -> Principal | None:
    """The caller's principal from quart's headers and query (see routes.authorize)."""
    return authorize_spec(
        spec, state(), headers.get("Authorization"), lambda: args.get("access_token")
    )


def view_of(spec: Route) -> Callable[..., Awaitable[Response]]:
    """The quart view that runs a route's Handler."""
    handler = spec.handler
    assert handler is not None

    async def view(**params: str) -> Response:
        call = Call(
            api=state(),
            principal=getattr(g, "principal", None),
            params=params,
            args=request.args.to_dict(),
            content_type=request.headers.get("Content-Type", ""),
            # Already read by the before_request hook whenever there is a body.
            body=await request.get_data(cache=False, as_text=False, parse_form_data=False),
        )
        g.request_body = call.body  # a refusal's audit line names the value of its field
        return respond(await handler(call))

    view.__name__ = view.__qualname__ = spec.endpoint
    return view


__all__ = [
    "API",
    "ApiState",
    "Route",
    "authorize",
    "error_response",
    "ok_model",
    "require_accepting",
    "state",
    "submitted",
]
