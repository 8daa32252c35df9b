"""Live job events over a websocket (/api/v1/ws) and Server-Sent Events (/api/v1/events).

Both read one subscription of the in-process event bus per client. The bus
never waits for a client: a client whose bounded buffer fills is cut off
(SSE: a final `error` event, then the stream ends; websocket: closed with
1013 "try again later"), so a slow reader cannot slow the dispatcher.

Websocket protocol (client -> server): `{"type": "ping"}`,
`{"type": "subscribe_job", "job_id": ...}`, and two additions,
`{"type": "unsubscribe_job", "job_id": ...}` and `{"type": "subscribe_all"}`.
Server -> client: `pong`, `initial_status` (the job's status when the
subscription starts), then `created`/`status`/`progress`/`log` events of the
subscribed jobs, and `error` for a message it could not act on.

SSE: `?job_id=...` (repeatable) limits the stream to those jobs (each gets
an `initial_status` first); without it every event is sent.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Hashable, Mapping
from typing import Any

import structlog
import trio
from quart import Response, websocket
from quart_trio import QuartTrio

from agent.core import metrics
from agent.core.events import Event, SharedEvent, Subscription, encode_json
from agent.core.intake import JobReads
from agent.errors import AgentError, BadRequestError, NotFoundError
from agent.jobs import JobStatus
from agent.transports.http import sse
from agent.transports.http.api import API, Route, authorize, error_response, state

log = structlog.get_logger("agent.http.events")

# SSE comment line sent when nothing else was, so proxies keep the stream open.
KEEPALIVE_SECONDS = 15.0
# A websocket client that does not take a message within this long is cut off.
SEND_TIMEOUT_SECONDS = 10.0
WS_TRY_AGAIN_LATER = 1013
WS_GOING_AWAY = 1001

_LAGGED = {
    "error": "RATE_LIMITED",
    "message": "Events were dropped because this client fell behind; reconnect",
    "details": {"reason": "Client buffer full"},
}


def _encode(message: Mapping[str, Any]) -> str:
    return encode_json(message).decode()


class _Filter:
    """Which jobs a client follows; a job already terminal gets no stale events."""

    def __init__(self, *, everything: bool) -> None:
        self.everything = everything
        self.jobs: set[str] = set()
        self._final: set[str] = set()

    def follow(self, job_id: str, status: dict[str, Any]) -> None:
        self.jobs.add(job_id)
        if JobStatus(status["status"]).terminal:
            self._final.add(job_id)
        else:
            self._final.discard(job_id)

    def wants(self, event: Event) -> bool:
        job_id = event.get("job_id")
        if not self.everything and job_id not in self.jobs:
            return False
        # Events queued before initial_status was read may be older than it.
        return job_id not in self._final


async def _initial_status(intake: JobReads, job_id: str) -> dict[str, Any]:
    state_ = await intake.status(job_id)
    return {"type": "initial_status", "job_id": job_id, "data": state_.model_dump(mode="json")}


# --- websocket ---


async def event_socket() -> None:
    api = state()
    sse.keep_heap_for_streams()
    await websocket.accept()
    chosen = _Filter(everything=False)
    send_lock = trio.Lock()

    async def send(message: Mapping[str, Any]) -> bool:
        """False if the client did not take it in time (then it is cut off)."""
        with trio.move_on_after(SEND_TIMEOUT_SECONDS):
            async with send_lock:
                await websocket.send(_encode(message))
            return True
        return False

    with api.intake.events(buffer=api.config.event_buffer) as subscription:
        async with trio.open_nursery() as nursery:

            async def forward() -> None:
                slow = await _forward(subscription, chosen, send_lock)
                # The stream ended: the client fell behind, or the agent is stopping.
                with trio.move_on_after(SEND_TIMEOUT_SECONDS):
                    if slow or subscription.lagged:
                        await websocket.close(WS_TRY_AGAIN_LATER, "client fell behind; reconnect")
                    else:
                        await websocket.close(WS_GOING_AWAY, "agent stopping")
                nursery.cancel_scope.cancel()

            nursery.start_soon(forward)
            while True:
                text = await websocket.receive()
                reply = await _answer(api.intake, chosen, text)
                if reply is not None and not await send(reply):
                    break
            nursery.cancel_scope.cancel()


async def _forward(subscription: Subscription, chosen: _Filter, send_lock: trio.Lock) -> bool:
    """Send the subscribed events until the feed ends; True if the client was
    too slow to take them. Events are taken as runs and sent under one lock
    and one deadline, then the next run gathers until the next tick shared by all
    streams (sse.COALESCE_SECONDS), so a busy stream costs a wake-up per interval
    rather than per event (a websocket still needs a message, and hypercorn a
    write, per event)."""
    feed = subscription.receive
    woken: Hashable | None = None  # as in sse._live: streams woken together take one run
    while True:
        if woken is None:
            woken = await feed.wait_woken()
        try:
            first, end = feed.take(feed.buffer, at=woken)
        except (trio.EndOfChannel, trio.ClosedResourceError):
            return False
        woken = None
        wants = chosen.wants
        # A client following given jobs looks them up in the run's index (feed.events_of).
        events = (
            feed.events_between(first, end)
            if chosen.everything
            else feed.events_of(chosen.jobs, first, end)
        )
        texts = [_text(event) for event in events if wants(event)]
        if not texts:
            continue
        with trio.move_on_after(SEND_TIMEOUT_SECONDS) as deadline:
            async with send_lock:
                for text in texts:
                    await websocket.send(text)
        if deadline.cancelled_caught:
            return True
        woken = await feed.gather(sse.COALESCE_SECONDS)


def _text(event: Event) -> str:
    return event.text if isinstance(event, SharedEvent) else _encode(event)


async def _answer(intake: JobReads, chosen: _Filter, text: str | bytes) -> dict[str, Any] | None:
    """The reply to one client message (None: nothing to say)."""
    try:
        try:
            message = json.loads(text)
        except ValueError as exc:
            raise BadRequestError(f"Not JSON: {exc}", field="message", reason=str(exc)) from exc
        if not isinstance(message, dict):
            raise BadRequestError("A message must be a JSON object", field="message")
        act = _ACTIONS.get(message.get("type"))  # type: ignore[arg-type]  # any JSON value
        if act is None:
            raise BadRequestError(
                "Unknown message type",
                field="type",
                reason="Expected ping, subscribe_job, unsubscribe_job or subscribe_all",
            )
        return await act(intake, chosen, message)
    except AgentError as exc:
        return _error(exc)


async def _ping(intake: JobReads, chosen: _Filter, message: dict[str, Any]) -> dict[str, Any]:
    return {"type": "pong"}


async def _subscribe_all(intake: JobReads, chosen: _Filter, message: dict[str, Any]) -> None:
    chosen.everything = True


async def _subscribe_job(
    intake: JobReads, chosen: _Filter, message: dict[str, Any]
) -> dict[str, Any]:
    job_id = _job_id(message)
    try:
        initial = await _initial_status(intake, job_id)
    except NotFoundError as exc:
        return {**_error(exc), "job_id": job_id}
    chosen.follow(job_id, initial["data"])
    return initial


async def _unsubscribe_job(intake: JobReads, chosen: _Filter, message: dict[str, Any]) -> None:
    chosen.jobs.discard(_job_id(message))


def _job_id(message: dict[str, Any]) -> str:
    job_id = message.get("job_id")
    if not isinstance(job_id, str):
        raise BadRequestError(
            f"{message['type']} needs a job_id", field="job_id", reason="Expected a string"
        )
    return job_id


_ACTIONS: dict[str, Callable[[JobReads, _Filter, dict[str, Any]], Awaitable[dict[str, Any] | None]]]
_ACTIONS = {
    "ping": _ping,
    "subscribe_all": _subscribe_all,
    "subscribe_job": _subscribe_job,
    "unsubscribe_job": _unsubscribe_job,
}


def _error(exc: AgentError) -> dict[str, Any]:
    return {"type": "error", "data": exc.to_dict()}


ROUTES = [
    Route(
        method="GET",
        rule=f"{API}/events",
        # Resumable (id:, Last-Event-ID) and ends when its jobs have: see sse.py.
        view=sse.event_stream,
        scope="read",
        summary="Live job events as Server-Sent Events (?job_id= to follow given jobs; "
        "resumable with Last-Event-ID; a job-filtered stream ends when its jobs have)",
        errors=(401, 403, 404),
        token_in_query=True,
        raw="text/event-stream",
    ),
    Route(
        method="GET",
        rule=f"{API}/ws",
        view=event_socket,  # type: ignore[arg-type]  # websocket views answer nothing
        scope="read",
        summary="Live job events over a websocket (ping, subscribe_job)",
        errors=(401, 403),
        token_in_query=True,
        websocket=True,
    ),
]


def install(app: QuartTrio, by_endpoint: Mapping[str, Route]) -> None:
    """Websocket auth and metrics (plain requests get theirs in build_app)."""

    @app.before_websocket
    async def check_token() -> Response | None:
        spec = by_endpoint.get(websocket.endpoint or "")
        if spec is None:
            return None
        try:
            authorize(spec, websocket.headers, websocket.args)
        except AgentError as exc:
            metrics.HTTP_REQUESTS.labels("GET", spec.rule, str(exc.http_status)).inc()
            return error_response(exc)
        metrics.HTTP_REQUESTS.labels("GET", spec.rule, "101").inc()
        return None
