"""Resumable Server-Sent Events (/api/v1/events).

Every event carries an `id:`: the id of the newest row of the durable event
log (job_events) the client has been sent. Progress and log events are read
from that log, not from the live bus, which only says when to look; so a
client that reconnects with `Last-Event-ID` gets every progress and log line
it missed, then each followed job's current status. A stream that follows
given jobs (`?job_id=`, repeatable) ends once all of them have finished.

What a hundred subscribers cost: each takes every event waiting for it at
once and sends them in one write, then lets the next run gather for
COALESCE_SECONDS or until half its buffer waits, so under load a stream costs
one write per interval rather than one per event. Each event's JSON is
encoded once for all (the bus's SharedEvent), and the run of frames that
unfiltered streams at the same place would each build is built once and
shared (EventBus.shared).
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from contextlib import ExitStack, aclosing
from typing import Any

import trio
from quart import Response, request

from agent.core.events import Event, Feed, SharedEvent, Subscription
from agent.core.intake import JobReads
from agent.errors import BadRequestError
from agent.jobs import JobStatus
from agent.transports.http.api import state

KEEPALIVE_SECONDS = 15.0
# After a write, what arrives within this long (or until half the client's
# buffer is waiting) goes in the next one; an event after a quiet spell still
# goes at once. 0.2 s, not 0.05: with 100 subscribers during a burst, the writes
# (each through quart and hypercorn) took the loop from the submits (bench/events.py:
# submits watched/alone 42-56% -> 67-72%, event p99 200 -> 520-590 ms, target 1 s).
COALESCE_SECONDS = 0.2
_DURABLE = ("progress", "log")
_TERMINAL = {status.value for status in JobStatus if status.terminal}
_LAGGED = {
    "error": "RATE_LIMITED",
    "message": "Events were dropped because this client fell behind; reconnect",
    "details": {"reason": "Client buffer full"},
}


def _frame(message: Mapping[str, Any], cursor: int) -> bytes:
    return f"id: {cursor}\ndata: {json.dumps(message, separators=(',', ':'))}\n\n".encode()


def _data(event: Event) -> bytes:
    """The `data:` lines of a bus event, made once for every subscriber."""
    if isinstance(event, SharedEvent):
        return event.form("sse", _data_of)
    return _data_of(json.dumps(event, separators=(",", ":")).encode())


def _data_of(encoded: bytes) -> bytes:
    return b"data: " + encoded + b"\n\n"


def _last_event_id() -> int:
    raw = request.headers.get("Last-Event-ID") or request.args.get("last_event_id") or "0"
    if not raw.isdigit():
        raise BadRequestError(
            "Last-Event-ID must be an id this stream sent", field="Last-Event-ID", reason=raw
        )
    return int(raw)


class _Stream:
    """One client's position: which jobs, what it was sent, which have finished."""

    def __init__(self, intake: JobReads, job_ids: list[str], cursor: int) -> None:
        self.intake = intake
        self.job_ids = job_ids
        self.cursor = cursor
        self.finished: set[str] = set()
        # A progress or log event came by that the log has not been read for
        # since. True at first: rows logged just before the subscription.
        self.unread = True

    @property
    def done(self) -> bool:
        return bool(self.job_ids) and self.finished >= set(self.job_ids)

    def wants(self, job_id: object) -> bool:
        return not self.job_ids or job_id in self.job_ids

    async def durable(self) -> AsyncGenerator[bytes, None]:
        """Every logged event after the cursor, oldest first."""
        self.unread = False
        while True:
            rows = await self.intake.events_after(self.cursor, self.job_ids or None)
            for row in rows:
                self.cursor = int(row.pop("id"))
                yield _frame(row, self.cursor)
            if len(rows) < 500:
                return

    async def status(self, job_id: str, kind: str, data: dict[str, Any]) -> bytes:
        if data.get("status") in _TERMINAL:
            self.finished.add(job_id)
        return _frame({"type": kind, "job_id": job_id, "data": data}, self.cursor)

    async def frames(self, feed: Feed, first: int, events: list[Event]) -> bytes:
        """The frames of a run of bus events taken at once, as one write."""
        if not self.job_ids and not self.unread:
            # Every unfiltered stream at this place in the bus and the log sends
            # the same bytes, unless the run holds logged events to read.
            key = ("sse", first, len(events), self.cursor)
            if not any(event.get("type") in _DURABLE for event in events):
                return feed.shared(key, lambda: self._plain(events))
        parts: list[bytes] = []
        for event in events:
            job_id = event.get("job_id")
            if not self.wants(job_id) or job_id in self.finished:
                continue
            kind = event.get("type")
            if kind in _DURABLE:
                self.unread = True  # read from the log below, with its id
                continue
            if kind == "status":
                if self.unread:
                    # Logged events written before a status go out before it.
                    await self._read_log(parts)
                data = event.get("data") or {}
                if self.job_ids and data.get("status") in _TERMINAL:
                    self.finished.add(str(job_id))
            parts += (b"id: %d\n" % self.cursor, _data(event))
        if self.unread:
            await self._read_log(parts)
        return b"".join(parts)

    def _plain(self, events: list[Event]) -> bytes:
        line = b"id: %d\n" % self.cursor
        return b"".join([part for event in events for part in (line, _data(event))])

    async def _read_log(self, parts: list[bytes]) -> None:
        async with aclosing(self.durable()) as rows:
            async for chunk in rows:
                parts.append(chunk)


async def event_stream() -> Response:
    api = state()
    job_ids = request.args.getlist("job_id")
    stream = _Stream(api.intake, job_ids, _last_event_id())
    resuming = stream.cursor > 0
    if not resuming:
        # A new stream starts at the log's end (the past is in /logs). Found before
        # subscribing, so what is logged from here on is sent.
        await _skip_to_end(stream)
    stack = ExitStack()
    # Subscribe before reading statuses, so nothing between the two is missed.
    subscription = stack.enter_context(api.intake.events(buffer=api.config.event_buffer))
    try:
        initial = [(job_id, await api.intake.status(job_id)) for job_id in job_ids]
    except BaseException:
        stack.close()
        raise

    async def generate() -> AsyncIterator[bytes]:
        with stack:
            yield b"retry: 2000\n\n"
            if resuming:
                async with aclosing(stream.durable()) as replay:
                    async for chunk in replay:
                        yield chunk
            for job_id, status in initial:
                yield await stream.status(job_id, "initial_status", status.model_dump(mode="json"))
            if stream.done:
                return
            # aclosing: the inner generators are closed with the stream, not left to the GC.
            async with aclosing(_live(subscription, stream)) as live:
                async for chunk in live:
                    yield chunk
                    if stream.done:
                        return

    response = Response(
        generate(),
        content_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )
    response.timeout = None  # a stream lasts as long as the client wants
    return response


async def _skip_to_end(stream: _Stream) -> None:
    async with aclosing(stream.durable()) as rows:
        async for _ in rows:
            pass


async def _live(subscription: Subscription, stream: _Stream) -> AsyncGenerator[bytes, None]:
    feed = subscription.receive
    while True:
        with trio.move_on_after(KEEPALIVE_SECONDS) as idle:
            await feed.wait()
        if idle.cancelled_caught:
            yield b": keepalive\n\n"
            continue
        first = feed.cursor
        try:
            events = feed.receive_many(feed.buffer)
        except (trio.EndOfChannel, trio.ClosedResourceError):
            if subscription.lagged:
                yield _frame({"type": "error", "data": _LAGGED}, stream.cursor)
            return
        chunk = await stream.frames(feed, first, events)
        if chunk:
            yield chunk
            await feed.gather(COALESCE_SECONDS)
