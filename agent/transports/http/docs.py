"""OpenAPI 3.1 at /openapi.json, generated from the route table and its pydantic models,
and a self-contained docs page at /docs/reference (no JavaScript, nothing fetched from a
CDN); Swagger UI at /docs is in swagger.py."""

from __future__ import annotations

import html
import json
import re
from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema
from quart import Response
from quart_trio import QuartTrio

from agent import __version__
from agent.jobs import JOB_ID_PATTERN, RESERVED_JOB_IDS
from agent.transports.http import swagger
from agent.transports.http.api import Route, state
from agent.transports.http.models import ErrorBody

_REF = "#/components/schemas/{model}"
_ERROR_TEXT = {
    400: "VALIDATION_ERROR (details name the field and the reason) or BAD_REQUEST",
    401: "UNAUTHORIZED: no token, or an unknown one",
    403: "FORBIDDEN: the token lacks the scope, or the host policy refuses a path or "
    "definition in the payload (details name the field and the reason)",
    404: "NOT_FOUND",
    409: "CONFLICT",
    413: "PAYLOAD_TOO_LARGE",
    415: "UNSUPPORTED_MEDIA_TYPE: the body must be sent as application/json",
    503: "QUEUE_FULL (with Retry-After): the pending queue is full or the agent is draining; "
    "UNAVAILABLE: libvirt is not connected",
}
_DESCRIPTION = """\
The hostagent job API (the guestkit worker wire contract).

Every success is `{"success": true, "data": ...}`; every error is
`{"error": CODE, "message": ..., "details": {...}}`.
Authenticate with `Authorization: Bearer <token>`; each endpoint names the
scope it needs (`read`, `submit`, `cancel`; `admin` holds all).
"""


_TEXT: dict[str, Any] = {"type": "string"}
_PATH_SCHEMAS: dict[str, dict[str, Any]] = {
    "jobid": {
        "type": "string",
        "pattern": JOB_ID_PATTERN,
        "not": {"enum": sorted(RESERVED_JOB_IDS)},
    }
}


def _path(rule: str) -> str:
    return re.sub(r"<(?:[a-z]+:)?([a-z_]+)>", r"{\1}", rule)


def build_openapi(routes: Sequence[Route], *, open_health: bool) -> dict[str, Any]:
    modes: list[tuple[type[BaseModel], Literal["validation", "serialization"]]] = [
        (ErrorBody, "serialization")
    ]
    for spec in routes:
        for model, mode in (
            (spec.body, "validation"),
            (spec.query, "validation"),
            (spec.answer, "serialization"),
        ):
            if model is not None and (model, mode) not in modes:
                modes.append((model, mode))  # type: ignore[arg-type]  # mode is one of the two
    refs, definitions = models_json_schema(modes, ref_template=_REF)
    schemas: dict[str, Any] = definitions.get("$defs", {})
    paths: dict[str, dict[str, Any]] = {}
    for spec in routes:
        paths.setdefault(_path(spec.rule), {})[spec.method.lower()] = _operation(
            spec, refs, schemas, open_health=open_health
        )
    return {
        "openapi": "3.1.0",
        "info": {"title": "hostagent", "version": __version__, "description": _DESCRIPTION},
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer"}},
        },
    }


def _operation(
    spec: Route, refs: dict[Any, Any], schemas: dict[str, Any], *, open_health: bool
) -> dict[str, Any]:
    operation: dict[str, Any] = {"operationId": spec.endpoint, "summary": spec.summary}
    if spec.scope is not None:
        operation["x-scope"] = spec.scope
        operation["security"] = (
            [{}, {"bearerAuth": []}]
            if spec.open_if_configured and open_health
            else [{"bearerAuth": []}]
        )
    parameters = [
        {"name": name, "in": "path", "required": True, "schema": _PATH_SCHEMAS.get(kind, _TEXT)}
        for kind, name in re.findall(r"<(?:([a-z]+):)?([a-z_]+)>", spec.rule)
    ]
    if spec.query is not None:
        query = schemas[spec.query.__name__]
        for name, schema in query["properties"].items():
            parameters.append(
                {
                    "name": name,
                    "in": "query",
                    "required": name in query.get("required", []),
                    "schema": schema,
                }
            )
    if spec.token_in_query:
        parameters.append(
            {
                "name": "access_token",
                "in": "query",
                "required": False,
                "description": "The bearer token, for clients that cannot set headers",
                "schema": {"type": "string"},
            }
        )
    if spec.idempotency_key:
        parameters.append(
            {
                "name": "Idempotency-Key",
                "in": "header",
                "required": False,
                "description": "Becomes the job_id: the same key again answers the same job",
                "schema": {"type": "string", "pattern": JOB_ID_PATTERN},
            }
        )
    if parameters:
        operation["parameters"] = parameters
    if spec.body is not None:
        fields = spec.body.model_fields.values()
        operation["requestBody"] = {
            # Bodies whose every field has a default may be left out (resource actions).
            "required": any(field.is_required() for field in fields),
            "content": {"application/json": {"schema": refs[(spec.body, "validation")]}},
        }
    responses: dict[str, Any] = {}
    if spec.websocket:
        responses["101"] = {"description": "Switching Protocols (websocket); see /docs"}
    elif spec.raw is not None:
        responses[str(spec.status)] = {
            "description": spec.summary,
            "content": {spec.raw: {"schema": {"type": "string"}}},
        }
    else:
        data = refs[(spec.answer, "serialization")] if spec.answer else {}
        envelope = {
            "type": "object",
            "required": ["success", "data"],
            "properties": {"success": {"const": True}, "data": data},
        }
        responses[str(spec.status)] = {
            "description": spec.summary,
            "content": {"application/json": {"schema": envelope}},
        }
        if spec.idempotency_key:
            responses[str(spec.status)]["headers"] = {
                "Location": {"description": "the job", "schema": {"type": "string"}}
            }
    error = refs[(ErrorBody, "serialization")]
    for status in spec.errors:
        responses[str(status)] = {
            "description": _ERROR_TEXT.get(status, "error"),
            "content": {"application/json": {"schema": error}},
        }
    operation["responses"] = responses
    return operation


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>hostagent API</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 60rem; margin: 2rem auto; padding: 0 1rem; }}
table {{ border-collapse: collapse; width: 100%; }}
td, th {{ border-bottom: 1px solid #ddd; padding: .4rem; text-align: left; vertical-align: top; }}
code, pre {{ background: #f5f5f5; }} pre {{ padding: .5rem; overflow-x: auto; }}
</style></head><body>
<h1>hostagent API {version}</h1>
<p>Machine-readable: <a href="/openapi.json">/openapi.json</a> (OpenAPI 3.1).</p>
<pre>{description}</pre>
<table><tr><th>Method</th><th>Path</th><th>Scope</th><th>What</th></tr>
{rows}
</table>
<h2>Live events</h2>
<p><code>GET /api/v1/ws</code> (websocket): send <code>{{"type": "ping"}}</code> or
<code>{{"type": "subscribe_job", "job_id": "..."}}</code>; receive <code>pong</code>,
<code>initial_status</code>, then <code>created</code>, <code>status</code>,
<code>progress</code> and <code>log</code> events. <code>GET /api/v1/events</code> streams
the same events as Server-Sent Events (<code>?job_id=</code> to follow given jobs).</p>
<h2>Schemas</h2>
{schemas}
</body></html>
"""


def render_docs(document: dict[str, Any]) -> str:
    rows = []
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            rows.append(
                "<tr><td>{}</td><td><code>{}</code></td><td>{}</td><td>{}</td></tr>".format(
                    method.upper(),
                    html.escape(path),
                    html.escape(operation.get("x-scope", "none")),
                    html.escape(operation["summary"]),
                )
            )
    schemas = [
        f"<details><summary><code>{html.escape(name)}</code></summary>"
        f"<pre>{html.escape(json.dumps(schema, indent=2))}</pre></details>"
        for name, schema in document["components"]["schemas"].items()
    ]
    return _PAGE.format(
        version=html.escape(document["info"]["version"]),
        description=html.escape(document["info"]["description"]),
        rows="\n".join(rows),
        schemas="\n".join(schemas),
    )


def install(app: QuartTrio, routes: Sequence[Route]) -> None:
    cache: dict[str, bytes] = {}

    def document() -> dict[str, Any]:
        return swagger.decorate(build_openapi(routes, open_health=state().config.open_health))

    async def openapi_json() -> Response:
        if "json" not in cache:
            cache["json"] = json.dumps(document()).encode()
        return Response(cache["json"], content_type="application/json")

    async def docs_page() -> Response:
        if "html" not in cache:
            cache["html"] = render_docs(document()).encode()
        return Response(cache["html"], content_type="text/html; charset=utf-8")

    app.add_url_rule("/openapi.json", "openapi_json", openapi_json, methods=["GET"])
    # /docs itself is Swagger UI (swagger.py); this table needs no JavaScript.
    app.add_url_rule("/docs/reference", "docs_page", docs_page, methods=["GET"])
    swagger.install(app)
