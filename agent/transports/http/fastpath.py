"""The ASGI front of the HTTP API: health and /metrics from memory, a cap on job
work, 413 by Content-Length, and quart for the rest.

Health and /metrics must answer while the job API is saturated: an
orchestrator that probes a busy agent must not see it as dead. Two things
made health slow under load: it queued with every other request through
quart, and computing it read the store (behind the job writes).
Here health is answered before quart from a report a background task keeps
fresh (every `REFRESH_SECONDS` while probes come), and the job API runs at most
`max_active_requests` requests at once, so the event loop never has more
work in hand than it can turn around between two probes. The routes the
table marks `lean` never get here over HTTP/1.1 (lean.py, lean_h11.py); they
take the same slots. Over HTTP/1.1 health and /metrics are answered there too,
by this front's `probe`.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from math import inf
from typing import Any

import structlog
import trio

from agent.core import metrics
from agent.errors import AgentError
from agent.jobs import utc_now
from agent.transports.http import audit, job_api
from agent.transports.http.envelope import (
    Answer,
    declared_length_too_large,
    error_answer,
    no_store,
    too_large,
)
from agent.transports.http.routes import ApiState, Route, authorize

log = structlog.get_logger("agent.http")

REFRESH_SECONDS = 1.0
# With no probe for this long the report is no longer refreshed, so an idle agent
# sleeps (each report pings libvirt and reads the store and the disks in threads);
# the next probe wakes the refresher and waits for a report taken after it came.
# Probes closer together than this (an overloaded agent's) are answered at once.
IDLE_AFTER_SECONDS = 3.0
_HEALTH = next(spec for spec in job_api.ROUTES if spec.endpoint == "health")
_METRICS = next(spec for spec in job_api.ROUTES if spec.endpoint == "prometheus_metrics")
# Requests that do job work (validation, store writes) take a slot; streams and
# docs do not, and health and metrics never reach quart at all.
_LIMITED_PREFIX = "/api/v1/jobs"

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


class FastPaths:
    """ASGI app in front of quart: health and metrics from memory, a cap on job work."""

    def __init__(self, app: Any, api: ApiState) -> None:
        self._app = app
        self._api = api
        self._health = b""
        self._reported_at = -inf
        self._probed_at = -inf
        self._reported = trio.Event()  # set by the next report
        self._probed = trio.Event()  # set by a probe while the refresher sleeps

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
            self._reported_at = trio.current_time()
            self._reported.set()
            self._reported = trio.Event()
            if not started:
                task_status.started()
                started = True
            if trio.current_time() - self._probed_at > IDLE_AFTER_SECONDS:
                self._probed = trio.Event()
                await self._probed.wait()
            else:
                await trio.sleep(REFRESH_SECONDS)

    async def _fresh_health(self) -> None:
        """Note a probe; if the refresher slept, wake it and wait for its report."""
        now = self._probed_at = trio.current_time()
        self._probed.set()
        if now - self._reported_at > 2 * REFRESH_SECONDS:
            reported = self._reported
            # A report that cannot be made in time is answered by the last one.
            with trio.move_on_after(REFRESH_SECONDS):
                await reported.wait()

    def _health_body(self) -> tuple[bytes, str]:
        return self._health, "application/json"

    # Answered by `probe` (over HTTP/1.1 the lean path asks it directly: lean_h11.py).
    probe_paths = frozenset((_HEALTH.rule, _METRICS.rule))

    async def probe(self, path: str, authorization: str | None, scope: Mapping[str, Any]) -> Answer:
        """The answer to a GET of one of `probe_paths`, audited."""
        if path == _HEALTH.rule:
            await self._fresh_health()
            return self._answer(scope, authorization, _HEALTH, self._health_body)
        return self._answer(scope, authorization, _METRICS, _metrics_body)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "GET":
            path = scope["path"]
            if path in self.probe_paths:
                authorization = None
                for name, value in scope["headers"]:
                    if name.lower() == b"authorization":
                        authorization = value.decode("latin-1")
                        break
                await send_answer(send, await self.probe(path, authorization, scope))
                return
        limit = self._api.config.max_body_bytes
        if scope["type"] == "http" and declared_length_too_large(scope["headers"], limit):
            # Answered before a byte of the body is read; hypercorn then closes the
            # connection instead of receiving megabytes nobody will look at.
            await send_answer(send, no_store(too_large(limit)))
            return
        if scope["type"] == "http" and scope["path"].startswith(_LIMITED_PREFIX):
            # Shared with the lean path (lean.py): one bound on job work, whichever path.
            async with self._api.slots.held():
                await self._app(scope, receive, send)
            return
        await self._app(scope, receive, send)

    def _answer(
        self,
        scope: Mapping[str, Any],
        authorization: str | None,
        spec: Route,
        body: Callable[[], tuple[bytes, str]],
    ) -> Answer:
        api = self._api
        try:
            principal = authorize(spec, api, authorization)
            answer = Answer(200, *body())
        except AgentError as exc:
            principal = None
            answer = error_answer(exc, retry_after=api.config.retry_after_seconds)
        audit.record(
            method="GET",
            rule=spec.rule,
            path=spec.rule,
            endpoint=spec.endpoint,
            status=answer.status,
            body=answer.body,
            scope=scope,
            principal=principal,
        )
        return no_store(answer)


def _metrics_body() -> tuple[bytes, str]:
    return metrics.render()


async def send_answer(send: Send, answer: Answer) -> None:
    headers = [
        (b"content-type", answer.content_type.encode()),
        (b"content-length", str(len(answer.body)).encode()),
        *((name.lower().encode(), value.encode()) for name, value in answer.headers),
    ]
    await send({"type": "http.response.start", "status": answer.status, "headers": headers})
    await send({"type": "http.response.body", "body": answer.body})
