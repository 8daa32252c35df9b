"""The quart-trio app: the routes of the job API, live events and docs, one auth hook,
one metrics hook, and every error answered with the contract's JSON envelope."""

from __future__ import annotations

from quart import Response, g, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException
from werkzeug.routing import BaseConverter

from agent.jobs import RESERVED_JOB_IDS
from agent.transports.http import (
    audit,
    console,
    docs,
    events,
    job_api,
    local_auth,
    policy_route,
    resources,
    ui,
)
from agent.transports.http.api import (
    ApiState,
    authorize,
    failure_response,
    http_error_response,
    view_of,
)
from agent.transports.http.local import EXTENSION, LocalAccess


class JobIdConverter(BaseConverter):
    """A job id in a path; never a reserved segment, so /jobs/batch is only the batch
    route (405 with Allow: POST for a GET), as the OpenAPI document says."""

    regex = r"(?!(?:" + "|".join(sorted(RESERVED_JOB_IDS)) + r")$)[^/]+"


def build_app(state: ApiState, *, local: LocalAccess | None = None) -> QuartTrio:
    """The app of every route; `local`: how the local socket's peers are authorised."""
    app = QuartTrio("hostagent")
    app.url_map.converters["jobid"] = JobIdConverter
    app.config["MAX_CONTENT_LENGTH"] = state.config.max_body_bytes
    app.config["BODY_TIMEOUT"] = state.config.body_timeout_seconds
    # Streams (SSE) lift this for themselves; no plain answer should take this long.
    app.config["RESPONSE_TIMEOUT"] = 60
    app.extensions["hostagent"] = state
    if local is not None:
        app.extensions[EXTENSION] = local
    routes = [*job_api.ROUTES, *policy_route.ROUTES, *resources.ROUTES, *events.ROUTES]
    routes += [*console.ROUTES, *ui.ROUTES]
    by_endpoint = {spec.endpoint: spec for spec in routes}
    for spec in routes:
        view = spec.view if spec.view is not None else view_of(spec)
        if spec.websocket:
            app.add_websocket(spec.rule, spec.endpoint, view)
        else:
            app.add_url_rule(spec.rule, spec.endpoint, view, methods=[spec.method])
    docs.install(app, routes)
    events.install(app, by_endpoint)

    @app.before_request
    async def check_token() -> None:
        if request.content_length or "Transfer-Encoding" in request.headers:
            # Take the whole body before any answer: hypercorn can leave a keep-alive
            # connection stalled when the answer (a 401, say) goes out first.
            await request.get_data(cache=True)
        spec = by_endpoint.get(request.endpoint or "")
        if spec is not None:
            # Over the local socket the peer's uid is the credential, not a token.
            g.principal = await local_auth.authorize_local(spec, request) or authorize(
                spec, request.headers, request.args
            )

    @app.after_request
    async def account(response: Response) -> Response:
        status = response.status_code
        audit.record(
            method=request.method,
            rule=None if request.url_rule is None else request.url_rule.rule,
            path=request.path,
            endpoint=request.endpoint,
            status=status,
            # Only a refusal's envelope is read (for the audit line's reason).
            body=await response.get_data(as_text=False) if status in audit.AUDITED else b"",
            scope=request.scope,
            principal=getattr(g, "principal", None),
            request_body=getattr(g, "request_body", b""),  # the view's (api.view_of)
        )
        return response

    @app.errorhandler(HTTPException)
    async def http_error(exc: HTTPException) -> Response:
        return http_error_response(exc)

    @app.errorhandler(Exception)
    async def failure(exc: Exception) -> Response:  # AgentError and anything unexpected
        return failure_response(exc)

    return app
