"""HTTP/1.1 connections that answer the lean routes themselves (see lean.py).

hypercorn's H11Protocol, with one change: a request for a lean route gets a
`_LeanStream` instead of hypercorn's ASGI stream. The stream gathers the
body as h11 parses it, runs the route when the body is complete (in the
connection's own task: no task, channel or ASGI messages per request) and
writes the whole answer, head and body, in one send. Connection handling
stays hypercorn's: keep-alive and its limits, the idle and header timers
(server.py), the Date and Server headers, closing after an answer sent
before the body was all read. A GET of health or /metrics without a body
gets a `_ProbeStream`, answered the same way by the ASGI front's code
(FastPaths.probe).
"""

from __future__ import annotations

from math import inf
from typing import Any, cast
from urllib.parse import unquote

import h11
import trio
from hypercorn.events import RawData
from hypercorn.protocol.events import Body, EndBody, Event, StreamClosed
from hypercorn.protocol.h11 import STREAM_ID, H11Protocol

from agent.transports.http.envelope import (
    Answer,
    declared_length_too_large,
    no_store,
    request_timeout,
    too_large,
)
from agent.transports.http.lean import Found, LeanPath
from agent.transports.http.routes import Lease


class LeanH11Protocol(H11Protocol):
    """hypercorn's HTTP/1.1 protocol, serving the lean routes without the ASGI app."""

    def __init__(self, *args: Any, lean: LeanPath) -> None:
        super().__init__(*args)
        self.lean = lean

    async def _create_stream(self, request: h11.Request) -> None:
        path = self._lean_path(request)
        method = request.method.decode("ascii").upper()
        probes = self.lean.probes
        if (
            probes is not None
            and method == "GET"
            and path in probes.probe_paths
            and not any(name in _BODY_HEADERS for name, _ in request.headers)
        ):
            self.stream = _ProbeStream(self, request, path)  # type: ignore[assignment]
            self.keep_alive_requests += 1
            await self.context.mark_request()
            return
        found = None if path is None else self.lean.routes.match(method, path)
        if found is None or path is None:
            await super()._create_stream(request)
            return
        stream = _LeanStream(self, found, request, path)
        self.stream = stream  # type: ignore[assignment]  # handles the same events
        self.keep_alive_requests += 1
        await self.context.mark_request()
        if declared_length_too_large(request.headers, stream.limit):
            # As the ASGI front: answered before the body (then the connection closes)
            # and before any route or slot is looked at, so neither counted nor audited.
            stream.done = True
            await self.write_answer(no_store(too_large(stream.limit)))
            return
        # As the ASGI front: a job request is read and answered within one of the
        # slots, so the loop never holds more job work than max_active_requests.
        stream.lease = await self.lean.api.slots.take()
        # The body is due within http.body_timeout_seconds of the slot (as quart's read).
        stream.deadline = trio.current_time() + self.lean.api.config.body_timeout_seconds

    def release(self) -> None:
        """Give back the slot of the lean request in progress, if it holds one."""
        stream = self.stream
        if isinstance(stream, _LeanStream):
            stream.release()

    def _lean_path(self, request: h11.Request) -> str | None:
        """The request's path as hypercorn gives it to the app; None: not for the lean path."""
        if self.config.server_names:
            return None  # hypercorn's Host check is the ASGI stream's
        if any(name == b"upgrade" for name, _ in request.headers):
            return None  # websocket and h2c
        raw_path = request.target.partition(b"?")[0]
        try:
            return unquote(raw_path.decode("ascii"))
        except UnicodeDecodeError:
            return None

    @property
    def body_deadline(self) -> float:
        """When the body of the lean request in progress is due (inf: none is awaited)."""
        stream = self.stream
        if isinstance(stream, _LeanStream) and not stream.done:
            return stream.deadline
        return inf

    async def body_timed_out(self) -> None:
        stream = self.stream
        if isinstance(stream, _LeanStream) and not stream.done:
            await stream.refuse(request_timeout(self.lean.api.config.max_body_bytes))

    async def write_answer(self, answer: Answer) -> None:
        """The whole answer in one send, then hypercorn's end of the exchange."""
        headers = [
            (b"content-type", answer.content_type.encode()),
            (b"content-length", str(len(answer.body)).encode()),
            *((name.lower().encode(), value.encode()) for name, value in answer.headers),
            *self.config.response_headers("h11"),
        ]
        if self.keep_alive_requests >= self.config.keep_alive_max_requests:
            headers.append((b"connection", b"close"))
        connection = cast(h11.Connection, self.connection)
        try:
            data = b"".join(
                connection.send(event) or b""
                for event in (
                    h11.Response(status_code=answer.status, headers=headers),
                    h11.Data(data=answer.body),
                    h11.EndOfMessage(),
                )
            )
        except h11.LocalProtocolError:
            if connection.their_state != h11.ERROR:
                raise
        else:
            await self.send(RawData(data=data))
        await self.stream_send(StreamClosed(stream_id=STREAM_ID))


_BODY_HEADERS = (b"content-length", b"transfer-encoding")


def _authorization(request: h11.Request) -> str | None:
    for name, value in request.headers:  # h11 gives names in lower case
        if name == b"authorization":
            return value.decode("latin-1")
    return None


class _ProbeStream:
    """A GET of health or /metrics (no body): answered from memory, without a slot."""

    def __init__(self, protocol: LeanH11Protocol, request: h11.Request, path: str) -> None:
        self.protocol = protocol
        self.path = path
        self.authorization = _authorization(request)
        self.done = False

    @property
    def idle(self) -> bool:
        return False

    async def handle(self, event: Event) -> None:
        if isinstance(event, EndBody) and not self.done:
            self.done = True
            probes = self.protocol.lean.probes
            assert probes is not None
            scope = {"path": self.path, "client": self.protocol.client}
            answer = await probes.probe(self.path, self.authorization, scope)
            await self.protocol.write_answer(answer)
        elif isinstance(event, StreamClosed):
            self.done = True


class _LeanStream:
    """One request of a lean route on an HTTP/1.1 connection."""

    def __init__(
        self, protocol: LeanH11Protocol, found: Found, request: h11.Request, path: str
    ) -> None:
        self.protocol = protocol
        self.found = found
        config = protocol.lean.api.config
        self.limit = config.max_body_bytes
        self.deadline = inf  # set once the request holds a slot
        self.scope = {"path": path, "client": protocol.client}  # what the audit line reads
        self.authorization: str | None = None
        content_type: str | None = None
        for name, value in request.headers:  # the first of each; h11 gives names in lower case
            if name == b"authorization" and self.authorization is None:
                self.authorization = value.decode("latin-1")
            elif name == b"content-type" and content_type is None:
                content_type = value.decode("latin-1")
        self.content_type = content_type or ""
        self.chunks: list[bytes] = []
        self.size = 0
        self.done = False
        self.lease: Lease | None = None  # one of the job API's slots

    @property
    def idle(self) -> bool:
        return False

    def release(self) -> None:
        if self.lease is not None:
            self.lease.release()

    async def handle(self, event: Event) -> None:
        if self.done:
            return
        if isinstance(event, Body):
            self.chunks.append(event.data)
            self.size += len(event.data)
            if self.size > self.limit:  # a chunked body: its length was not known
                await self.refuse(too_large(self.limit))
        elif isinstance(event, EndBody):
            self.done = True
            try:
                answer = await self.protocol.lean.answer(
                    self.found,
                    authorization=self.authorization,
                    content_type=self.content_type,
                    body=b"".join(self.chunks),
                    scope=self.scope,
                )
                await self.protocol.write_answer(answer)
            finally:
                self.release()
        elif isinstance(event, StreamClosed):
            self.done = True  # the client went away: nothing to answer
            self.release()

    async def refuse(self, answer: Answer) -> None:
        self.done = True
        try:
            answer = self.protocol.lean.refuse(self.found, answer, self.scope)
            await self.protocol.write_answer(answer)
        finally:
            self.release()
