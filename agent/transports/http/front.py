"""The ASGI app in front of quart: the hot routes without the framework, a cap on job
work, 413 by Content-Length, and quart for the rest.

A submit or a status read through quart spent three to four times as long
in the framework (request and response objects, routing, context locals,
hooks) as in the agent. The routes the table marks `hot` (submit, batch
submit, a job's status, health, /metrics) are framework-neutral Handlers
(routes.py); this router runs them itself, in the order the quart app
checks a request, so the two paths answer the same bytes:

- a Content-Length over http.max_body_bytes: 413 before the body is read
  (for every route: hypercorn then closes the connection instead of
  receiving megabytes nobody will look at);
- for a job route (/api/v1/jobs...), one of the http.max_active_requests
  slots (routes.JobSlots), whichever path serves it, so the loop never holds
  more job work than it can turn around between two probes;
- the whole body (413 past the limit, 408 after http.body_timeout_seconds);
- the token (routes.authorize: 401, 403), then the Handler;
- every answer, refusals included, is an envelope.Answer, counted and
  audited by audit.record, as the quart app's hooks do.

Requests over the local socket (authorised by their peer in quart's hooks),
websockets and every other route go to quart.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import trio

from agent.jobs import RESERVED_JOB_IDS
from agent.transports.http import audit
from agent.transports.http.envelope import (
    JSON,
    Answer,
    failure_answer,
    no_store,
    request_timeout,
    too_large,
)
from agent.transports.http.local import PEER_KEY
from agent.transports.http.routes import ApiState, Call, Route, authorize

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
Found = tuple[Route, dict[str, str]]

# Requests that do job work (validation, store writes) take a slot; streams, docs,
# the resource view, health and metrics do not.
_LIMITED_PREFIX = "/api/v1/jobs"
_BODY_HEADERS = (b"content-length", b"transfer-encoding")


class HotRoutes:
    """The hot routes of a table, matched by method and path as quart's router would."""

    def __init__(self, routes: Sequence[Route]) -> None:
        self._exact: dict[tuple[str, str], Route] = {}
        # Rules whose one parameter is their last segment: (method, prefix) -> route.
        self._tail: dict[tuple[str, str], tuple[Route, str, bool]] = {}
        for spec in routes:
            if not spec.hot:
                continue
            prefix, bracket, rest = spec.rule.partition("<")
            if not bracket:
                self._exact[spec.method, spec.rule] = spec
                continue
            converter, _, name = rest.removesuffix(">").rpartition(":")
            if not prefix.endswith("/") or converter not in ("", "jobid") or "/" in rest:
                raise ValueError(f"{spec.rule}: the front cannot match this rule")
            self._tail[spec.method, prefix] = (spec, name, converter == "jobid")

    def match(self, method: str, path: str) -> Found | None:
        """The route and path parameters quart would find; None: leave it to quart."""
        spec = self._exact.get((method, path))
        if spec is not None:
            return spec, {}
        prefix, _, segment = path.rpartition("/")
        found = self._tail.get((method, prefix + "/"))
        if found is None or not segment:
            return None
        spec, name, job_id = found
        if job_id and segment in RESERVED_JOB_IDS:
            return None  # /jobs/batch is only the batch route (quart answers 405)
        return spec, {name: segment}


class Front:
    """ASGI app: the hot routes of `routes` answered here, everything else by `app`."""

    def __init__(self, app: Any, api: ApiState, routes: Sequence[Route]) -> None:
        self._app = app
        self.api = api
        self.routes = HotRoutes(routes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)  # websockets, the lifespan
            return
        config = self.api.config
        head = _Head(scope["headers"])
        if head.length_too_large(config.max_body_bytes):
            # Before any route or slot is looked at: neither counted nor audited.
            await send_answer(send, no_store(too_large(config.max_body_bytes)))
            return
        path: str = scope["path"]
        found = None if PEER_KEY in scope else self.routes.match(scope["method"].upper(), path)
        if not path.startswith(_LIMITED_PREFIX):
            await self._serve(found, head, scope, receive, send)
            return
        lease = await self.api.slots.take()
        try:
            await self._serve(found, head, scope, receive, send)
        finally:
            lease.release()

    async def _serve(
        self, found: Found | None, head: _Head, scope: Scope, receive: Receive, send: Send
    ) -> None:
        if found is None:
            await self._app(scope, receive, send)
            return
        config = self.api.config
        if not head.has_body:
            # No body is coming (a probe, a status read): nothing to wait for.
            await send_answer(send, await self.answer(found, scope, b"", head))
            return
        body = b""
        chunks: list[bytes] = []
        size = 0
        message: dict[str, Any] = {"more_body": True}  # none yet
        # A body of a declared length is whole once that many bytes are in: its closing
        # (empty) message is not waited for, a receive() and a scheduling round less.
        expected = head.length if head.length is not None and not head.chunked else -1
        # The body is due within http.body_timeout_seconds (of the slot, as quart's read).
        with trio.move_on_after(config.body_timeout_seconds):
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return  # the client went away: nothing to answer
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > config.max_body_bytes:  # a chunked body: its length was not known
                    await self._refuse(found, too_large(config.max_body_bytes), scope, send)
                    return
                chunks.append(chunk)
                if size == expected or not message.get("more_body", False):
                    body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
                    break
        if size <= config.max_body_bytes and size != expected and message.get("more_body", False):
            await self._refuse(found, request_timeout(config.max_body_bytes), scope, send)
            return
        await send_answer(send, await self.answer(found, scope, body, head))

    async def answer(
        self, found: Found, scope: Mapping[str, Any], body: bytes, head: _Head | None = None
    ) -> Answer:
        """Authorise and run a request whose whole body arrived; count and audit it."""
        spec, params = found
        if head is None:
            head = _Head(scope["headers"])
        call = Call(self.api, None, params, {}, head.content_type, body)
        try:
            call.principal = authorize(spec, self.api, head.authorization)
            assert spec.handler is not None
            answer = await spec.handler(call)
        except Exception as exc:  # noqa: BLE001 (every failure is answered with the envelope)
            answer = failure_answer(
                exc,
                retry_after=self.api.config.retry_after_seconds,
                method=spec.method,
                path=scope["path"],
            )
        _account(spec, answer, scope, call)
        return answer

    async def _refuse(self, found: Found, answer: Answer, scope: Scope, send: Send) -> None:
        """A refusal before the Handler ran (body too large or too slow), counted."""
        _account(found[0], answer, scope, None)
        await send_answer(send, answer)


class _Head:
    """What the front reads of a request's headers, in one pass over them: the first
    Content-Length, whether a body comes, the first Authorization and Content-Type."""

    __slots__ = ("_length", "authorization", "chunked", "content_type", "has_body", "length")

    def __init__(self, headers: Sequence[tuple[bytes, bytes]]) -> None:
        self.authorization: str | None = None
        self.content_type = ""
        self.has_body = self.chunked = False
        self._length: bytes | None = None  # as sent
        self.length: int | None = None  # when a number
        content_type = None
        for name, value in headers:
            if name == b"authorization":
                if self.authorization is None:
                    self.authorization = value.decode("latin-1")
            elif name == b"content-type":
                if content_type is None:
                    content_type = value.decode("latin-1")
            elif name in _BODY_HEADERS:
                self.has_body = True
                if name == b"transfer-encoding":
                    self.chunked = True
                elif self._length is None:
                    self._length = value
            elif self._length is None and name.lower() == b"content-length":
                self._length = value  # a name not in lower case (scopes not built by h11)
        self.content_type = content_type or ""
        if self._length is not None and self._length.isdigit():
            self.length = int(self._length)

    def length_too_large(self, limit: int) -> bool:
        """The (first) Content-Length is not a number or is over `limit`."""
        if self._length is None:
            return False
        return self.length is None or self.length > limit


def _account(spec: Route, answer: Answer, scope: Mapping[str, Any], call: Call | None) -> None:
    audit.record(
        method=spec.method,
        rule=spec.rule,
        path=scope["path"],
        endpoint=spec.endpoint,
        status=answer.status,
        body=answer.body,
        scope=scope,
        principal=None if call is None else call.principal,
        request_body=b"" if call is None else call.body,
    )


async def send_answer(send: Send, answer: Answer) -> None:
    content_type = _JSON if answer.content_type == JSON else answer.content_type.encode()
    headers = [(b"content-type", content_type), (b"content-length", b"%d" % len(answer.body))]
    for name, value in answer.headers:
        headers.append((name.lower().encode(), value.encode()))
    await send({"type": "http.response.start", "status": answer.status, "headers": headers})
    await send({"type": "http.response.body", "body": answer.body})


_JSON = JSON.encode()
