"""The quart-trio app: the routes of the job API, live events and docs, one auth hook,
one metrics hook, and every error answered with the contract's JSON envelope."""

from __future__ import annotations

import re

import structlog
from quart import Response, g, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException
from werkzeug.routing import BaseConverter

from agent import metrics
from agent.errors import AgentError, QueueFullError
from agent.jobs import RESERVED_JOB_IDS
from agent.transports.http import api, audit, docs, events, local_auth, resources
from agent.transports.http.api import (
    ApiState,
    authorize,
    error_response,
    http_error_response,
)

log = structlog.get_logger("agent.http")


_CONVERTER = re.compile(r"<[a-z]+:")


class JobIdConverter(BaseConverter):
    """A job id in a path; never a reserved segment, so /jobs/batch is only the batch
    route (405 with Allow: POST for a GET), as the OpenAPI document says."""

    regex = r"(?!(?:" + "|".join(sorted(RESERVED_JOB_IDS)) + r")$)[^/]+"


def build_app(state: ApiState) -> QuartTrio:
    app = QuartTrio("hostagent")
    app.url_map.converters["jobid"] = JobIdConverter
    app.config["MAX_CONTENT_LENGTH"] = state.config.max_body_bytes
    app.config["BODY_TIMEOUT"] = state.config.body_timeout_seconds
    # Streams (SSE) lift this for themselves; no plain answer should take this long.
    app.config["RESPONSE_TIMEOUT"] = 60
    app.extensions["hostagent"] = state
    routes = [*api.ROUTES, *resources.ROUTES, *events.ROUTES]
    by_endpoint = {spec.endpoint: spec for spec in routes}
    for spec in routes:
        if spec.websocket:
            app.add_websocket(spec.rule, spec.endpoint, spec.view)
        else:
            app.add_url_rule(spec.rule, spec.endpoint, spec.view, methods=[spec.method])
    docs.install(app, routes)
    events.install(app, by_endpoint)
    audit.install(app)
    local_auth.install(app)

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
    async def count_request(response: Response) -> Response:
        rule = request.url_rule.rule if request.url_rule is not None else "<unmatched>"
        rule = _CONVERTER.sub("<", rule)  # the template as documented: <job_id>
        metrics.HTTP_REQUESTS.labels(request.method, rule, str(response.status_code)).inc()
        return response

    @app.errorhandler(AgentError)
    async def agent_error(exc: AgentError) -> Response:
        if exc.http_status >= 500 and not isinstance(exc, QueueFullError):
            log.error("http.agent_error", code=exc.code, message=exc.message, path=request.path)
        return error_response(exc)

    @app.errorhandler(HTTPException)
    async def http_error(exc: HTTPException) -> Response:
        return http_error_response(exc)

    @app.errorhandler(Exception)
    async def unexpected_error(exc: Exception) -> Response:
        log.exception("http.unexpected_error", path=request.path, method=request.method)
        return error_response(AgentError("Internal error", reason=type(exc).__name__))

    return app
