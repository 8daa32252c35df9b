"""Health and /metrics that answer while the job API is saturated.

An orchestrator that probes a busy agent must not see it as dead. Two
things made health slow under load: it queued with every other request
through quart, and computing it read the store (behind the job writes).
Here health is answered before quart from a report a background task keeps
fresh (every `REFRESH_SECONDS`), and the job API runs at most
`max_active_requests` requests at once, so the event loop never has more
work in hand than it can turn around between two probes.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
import trio

from agent import metrics
from agent.errors import AgentError, UnauthorizedError
from agent.jobs import utc_now
from agent.transports.http.api import ApiState
from agent.transports.http.auth import bearer_token

log = structlog.get_logger("agent.http")

REFRESH_SECONDS = 1.0
_HEALTH = "/api/v1/health"
_METRICS = "/metrics"
# Requests that do job work (validation, store writes) take a slot; streams and
# docs do not, and health and metrics never reach quart at all.
_LIMITED_PREFIX = "/api/v1/jobs"

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


class FastPaths:
    """ASGI app in front of quart: health and metrics from memory, a cap on job work."""

    def __init__(self, app: Any, api: ApiState, *, max_active: int) -> None:
        self._app = app
        self._api = api
        self._slots = trio.Semaphore(max_active)
        self._health = b""

    async def refresh_health(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Keep the health report fresh; a failing report is itself the answer."""
        started = False
        while True:
            try:
                report = await self._api.intake.health()
            except Exception as exc:  # health must answer even when a component breaks
                log.exception("http.health_report_failed")
                metrics.BACKGROUND_ERRORS.labels("health").inc()
                report = {
                    "status": "unhealthy",
                    "timestamp": utc_now(),
                    "components": {"agent": {"status": "unhealthy", "reason": repr(exc)}},
                }
            self._health = json.dumps({"success": True, "data": report}).encode()
            if not started:
                task_status.started()
                started = True
            await trio.sleep(REFRESH_SECONDS)

    def _too_large(self, scope: Scope) -> bool:
        for name, value in scope["headers"]:
            if name.lower() == b"content-length":
                return not value.isdigit() or int(value) > self._api.config.max_body_bytes
        return False

    async def _send(
        self,
        send: Send,
        status: int,
        payload: bytes,
        extra: list[tuple[bytes, bytes]],
        content_type: str = "application/json",
    ) -> None:
        headers = [
            (b"content-type", content_type.encode()),
            (b"content-length", str(len(payload)).encode()),
            (b"cache-control", b"no-store"),
            *extra,
        ]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": payload})

    def _health_body(self) -> tuple[bytes, str]:
        return self._health, "application/json"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "GET":
            path = scope["path"]
            if path == _HEALTH:
                await self._answer(scope, send, _HEALTH, open_ok=True, body=self._health_body)
                return
            if path == _METRICS:
                await self._answer(scope, send, _METRICS, open_ok=False, body=_metrics_body)
                return
        if scope["type"] == "http" and self._too_large(scope):
            # Answered before a byte of the body is read; hypercorn then closes the
            # connection instead of receiving megabytes nobody will look at.
            await self._send(send, 413, _too_large_body(self._api.config.max_body_bytes), [])
            return
        if scope["type"] == "http" and scope["path"].startswith(_LIMITED_PREFIX):
            async with self._slots:
                await self._app(scope, receive, send)
            return
        await self._app(scope, receive, send)

    async def _answer(
        self,
        scope: Scope,
        send: Send,
        route: str,
        *,
        open_ok: bool,
        body: Callable[[], tuple[bytes, str]],
    ) -> None:
        content_type = "application/json"
        extra: list[tuple[bytes, bytes]] = []
        try:
            if not (open_ok and self._api.config.open_health):
                headers = {k.decode("latin-1").lower(): v for k, v in scope["headers"]}
                raw = headers.get("authorization", b"").decode("latin-1")
                self._api.tokens.authorize(bearer_token(raw), "read")
            (payload, content_type), status = body(), 200
        except AgentError as exc:
            payload, status = json.dumps(exc.to_dict()).encode(), exc.http_status
            if isinstance(exc, UnauthorizedError):
                extra.append((b"www-authenticate", b'Bearer realm="hostagent"'))
        metrics.HTTP_REQUESTS.labels("GET", route, str(status)).inc()
        await self._send(send, status, payload, extra, content_type)


def _too_large_body(limit: int) -> bytes:
    return json.dumps(
        {
            "error": "PAYLOAD_TOO_LARGE",
            "message": "The request body is larger than the configured limit",
            "details": {"reason": "Request Entity Too Large", "max_body_bytes": limit},
        }
    ).encode()


def _metrics_body() -> tuple[bytes, str]:
    return metrics.render()
