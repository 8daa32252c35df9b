"""Interactive API docs: Swagger UI at /docs, from the assets of the swagger-ui-bundle-v2
package (served by the agent itself: no CDN, works on a host with no internet), over
the OpenAPI document with tags and request examples added here.

The plain table that needs no JavaScript stays at /docs/reference.
"""

from __future__ import annotations

import copy
import mimetypes
from typing import Any

from quart import Response
from quart_trio import QuartTrio
from swagger_ui_bundle import swagger_ui_path  # type: ignore[import-untyped]  # no types

from agent.errors import NotFoundError

ASSETS = ("swagger-ui.css", "swagger-ui-bundle.js", "swagger-ui-standalone-preset.js")
TAGS = [
    {"name": "jobs", "description": "Submit, list, watch and cancel jobs"},
    {"name": "events", "description": "Live job events (SSE, resumable; websocket)"},
    {"name": "agent", "description": "What this host offers, and how it is"},
    {"name": "metrics", "description": "Prometheus exposition"},
]
_EXAMPLE_JOB = {
    "version": "1.0",
    "job_id": "hello-1",
    "kind": "VMOperation",
    "operation": "system.echo",
    "payload": {"type": "system.echo.v1", "data": {"message": "hello"}},
    "priority": 5,
    "timeout_seconds": 60,
}
_EXAMPLE_SLEEP = {
    "version": "1.0",
    "kind": "VMOperation",
    "operation": "system.sleep",
    "payload": {"type": "system.sleep.v1", "data": {"seconds": 5}},
}
_EXAMPLES: dict[tuple[str, str], dict[str, Any]] = {
    ("/api/v1/jobs", "post"): {
        "echo": {"summary": "Echo a payload", "value": _EXAMPLE_JOB},
        "sleep": {"summary": "Sleep 5 s with progress", "value": _EXAMPLE_SLEEP},
    },
    ("/api/v1/jobs/batch", "post"): {
        "two": {"summary": "Two jobs at once", "value": {"jobs": [_EXAMPLE_JOB, _EXAMPLE_SLEEP]}},
    },
}

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>hostagent API</title>
<link rel="stylesheet" href="/docs/assets/swagger-ui.css">
</head><body>
<div id="swagger-ui"></div>
<script src="/docs/assets/swagger-ui-bundle.js"></script>
<script src="/docs/assets/swagger-ui-standalone-preset.js"></script>
<script>
window.ui = SwaggerUIBundle({
  url: "/openapi.json",
  dom_id: "#swagger-ui",
  deepLinking: true,
  presets: [SwaggerUIBundle.presets.apis, SwaggerUIStandalonePreset],
  layout: "BaseLayout",
  persistAuthorization: true
});
</script>
</body></html>
"""


def _tag(path: str) -> str:
    if path.startswith("/api/v1/jobs"):
        return "jobs"
    if path in ("/api/v1/events", "/api/v1/ws"):
        return "events"
    if path == "/metrics":
        return "metrics"
    return "agent"


def decorate(document: dict[str, Any]) -> dict[str, Any]:
    """The OpenAPI document with tags on every operation and examples of request bodies."""
    document = copy.deepcopy(document)
    document["tags"] = TAGS
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            operation.setdefault("tags", [_tag(path)])
            examples = _EXAMPLES.get((path, method))
            if examples and "requestBody" in operation:
                operation["requestBody"]["content"]["application/json"]["examples"] = examples
    return document


def install(app: QuartTrio) -> None:
    """Swagger UI at /docs, its assets under /docs/assets/ (read once, kept in memory)."""
    cache: dict[str, bytes] = {}

    async def swagger_page() -> Response:
        return Response(_PAGE, content_type="text/html; charset=utf-8")

    async def swagger_asset(name: str) -> Response:
        if name not in ASSETS:
            raise NotFoundError(f"No docs asset {name}", field="name")
        if name not in cache:
            cache[name] = (swagger_ui_path / name).read_bytes()
        kind = mimetypes.guess_type(name)[0] or "application/octet-stream"
        response = Response(cache[name], content_type=kind)
        response.headers["Cache-Control"] = "public, max-age=86400"
        return response

    app.add_url_rule("/docs", "swagger_page", swagger_page, methods=["GET"])
    app.add_url_rule("/docs/assets/<name>", "swagger_asset", swagger_asset, methods=["GET"])
