"""Resumable Server-Sent Events (/api/v1/events).

Every event carries an `id:`: the id of the newest row of the durable event
log (job_events) the client has been sent. Progress and log events are read
from that log, not from the live bus, which only says when to look; so a
client that reconnects with `Last-Event-ID` gets every progress and log line
it missed, then each followed job's current status. A stream that follows
given jobs (`?job_id=`, repeatable) ends once all of them have finished.

What a hundred subscribers cost: each takes every event waiting for it at
once and sends them in one write, then lets the next run gather until the next
tick (a multiple of COALESCE_SECONDS on trio's clock, the same for every stream)
or until half its buffer waits, so under load a stream costs one write per
interval rather than one per event. Streams woken together (one tick, one
publish) take the same run (Feed.take(at=)), so unfiltered ones at the same
place send the same bytes object, copied once for all. Each event's JSON is
encoded once for all (the bus's SharedEvent), and so are the frames that
unfiltered streams send (_SharedFrames, kept by the bus): such a stream's
write is one slice of them, whatever the number of events it holds, where
each stream used to look at every event and join its frames itself.
"""

from __future__ import annotations

import functools
import json
from collections.abc import AsyncGenerator, AsyncIterator, Hashable, Mapping
from contextlib import ExitStack, aclosing
from typing import Any

import trio
from quart import Response, request

from agent.core.events import Event, Feed, SharedEvent, Subscription
from agent.core.heap import M_MMAP_THRESHOLD, M_TRIM_THRESHOLD, set_heap
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
# Id lines (durable log positions) whose frames are kept at once: unfiltered streams
# are almost always at the log's end together.
_SHARED_CURSORS = 4
_TERMINAL = {status.value for status in JobStatus if status.terminal}
_LAGGED = {
    "error": "RATE_LIMITED",
    "message": "Events were dropped because this client fell behind; reconnect",
    "details": {"reason": "Client buffer full"},
}


# What streams need of glibc's heap: writes of up to a few
# MB (a run of up to event_buffer events, as hypercorn frames it: one copy per
# stream) come from the heap, and freed ones stay there for the next tick's writes.
_STREAM_MMAP_THRESHOLD = 8 << 20
# What is in flight at once: with 100 busy streams, 16-64 MB (a stream's buffer is
# held while its send waits for the reader): 16 MB still trimmed and refaulted
# ~58,000 pages a round, 32 MB ~5,000-12,000, 64 MB ~150 but kept 64 MB after a burst.
_STREAM_TRIM_THRESHOLD = 32 << 20


@functools.cache
def keep_heap_for_streams() -> None:
    """Once streams are served, let freed write buffers stay in the heap.

    Every stream's write is a fresh buffer of up to a few MB (h11 joins a chunk's
    framing to it). Past the fixed 128 KiB mmap threshold, glibc handed each back to
    the kernel once freed (munmap, or a trim of the heap's top) and took it again for
    the next: 100 subscribers to a busy agent cost ~80,000 page faults per 5,000 jobs,
    5,000-12,000 with this once the heap has grown (bench/events.py). Only with
    streams: an agent that serves none keeps run's settings (and its idle RSS); one
    that did may keep up to 32 MB of freed heap (trimming it when the last stream
    closed made the next streams fault it all in again: +0.36 s CPU a bench round, not
    +0.1). Not glibc (musl): left as it is.
    """
    # As `hostagent run` (agent/cli/run.py, which fixes both at 128 KiB for the RSS's
    # sake), a setting the environment gives is left to it.
    set_heap({M_MMAP_THRESHOLD: _STREAM_MMAP_THRESHOLD, M_TRIM_THRESHOLD: _STREAM_TRIM_THRESHOLD})


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
        self._wanted = frozenset(job_ids)  # matched per event: a set, not the list
        self.cursor = cursor
        self.finished: set[str] = set()
        # A progress or log event came by that the log has not been read for
        # since. True at first: rows logged just before the subscription.
        self.unread = True

    @property
    def done(self) -> bool:
        return bool(self._wanted) and self.finished >= self._wanted

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

    async def frames(self, feed: Feed, first: int, end: int) -> bytes:
        """The frames of the bus events at positions first..end-1, as one write."""
        if not self.job_ids and not self.unread:
            # Every unfiltered stream at this place in the log sends the same bytes,
            # unless the run holds logged events to read.
            shared = feed.kept(_SharedFrames, _SharedFrames).between(feed, first, end, self.cursor)
            if shared is not None:
                return shared
        parts: list[bytes] = []
        wanted, finished = self._wanted, self.finished
        # A stream that follows jobs looks up theirs in the run's index by job (built
        # once for all such streams), not through every event of the run.
        events = feed.events_of(wanted, first, end) if wanted else feed.events_between(first, end)
        for event in events:
            job_id = event.get("job_id")
            if job_id in finished:
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

    async def _read_log(self, parts: list[bytes]) -> None:
        async with aclosing(self.durable()) as rows:
            async for chunk in rows:
                parts.append(chunk)


class _SharedFrames:
    """The frames of the bus's events as every unfiltered stream sends them, built
    once per event for all: per id line (the durable log's position, the same for
    every stream that has read it as far), a run of frames that streams slice."""

    def __init__(self) -> None:
        self._runs: dict[int, _FrameRun] = {}

    def between(self, feed: Feed, first: int, end: int, cursor: int) -> bytes | None:
        """The frames of events first..end-1 with `cursor`'s id line; None if they hold
        a logged event (progress, log: sent from the log, with its own id)."""
        run = self._runs.get(cursor)
        if run is None or not run.start <= first <= run.end:
            if run is None and len(self._runs) >= _SHARED_CURSORS:
                del self._runs[next(iter(self._runs))]  # the oldest id line
            run = self._runs[cursor] = _FrameRun(cursor, first)
        return run.between(feed, first, end)


class _FrameRun:
    """Frames of consecutive bus events with one id line: bytes, and per event where
    its frame ends and how many logged events came up to it (so a slice's bytes and
    whether it holds one are two lookups)."""

    def __init__(self, cursor: int, start: int) -> None:
        self.line = b"id: %d\n" % cursor
        self.start = start  # the bus position of the first event held
        self._base = 0  # bytes dropped off the front of _frames so far
        self._frames = bytearray()
        self._offsets = [0]  # where each held event's frame starts, then the end
        self._logged = [0]  # logged events before each held event, then in all
        self._last: tuple[tuple[int, int], bytes] = ((-1, -1), b"")  # the last slice made

    @property
    def end(self) -> int:
        return self.start + len(self._offsets) - 1

    def between(self, feed: Feed, first: int, end: int) -> bytes | None:
        if end > self.end:
            self._extend(feed.events_between(self.end, end))
        self._trim(feed.oldest)
        if self._last[0] == (first, end):
            return self._last[1]  # streams woken together take the same run: one copy
        low, high = first - self.start, end - self.start
        if self._logged[high] != self._logged[low]:
            return None
        base = self._base
        # One copy (a bytearray's slice would be a second): the view is gone before the
        # frames next grow.
        made = bytes(
            memoryview(self._frames)[self._offsets[low] - base : self._offsets[high] - base]
        )
        self._last = ((first, end), made)
        return made

    def _extend(self, events: list[Event]) -> None:
        frames, line = self._frames, self.line
        logged = self._logged[-1]
        for event in events:
            frames += line
            frames += _data(event)
            self._offsets.append(self._base + len(frames))
            logged += event.get("type") in _DURABLE
            self._logged.append(logged)

    def _trim(self, oldest: int) -> None:
        """Drop the frames of events the bus no longer holds (no stream can ask for
        them), once they are half of what is kept: each byte is moved about once."""
        gone = oldest - self.start
        if gone <= 0 or 2 * gone < len(self._offsets):
            return
        del self._frames[: self._offsets[gone] - self._base]
        self._base = self._offsets[gone]
        del self._offsets[:gone]
        del self._logged[:gone]
        self.start = oldest


async def event_stream() -> Response:
    api = state()
    keep_heap_for_streams()
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
    woken: Hashable | None = None  # the key of a gathering's tick: take what it holds
    while True:
        if woken is None:
            # Idle: no timer but the keepalive's until an event comes.
            with trio.move_on_after(KEEPALIVE_SECONDS) as idle:
                woken = await feed.wait_woken()
            if idle.cancelled_caught:
                yield b": keepalive\n\n"
                continue
        try:
            first, end = feed.take(feed.buffer, at=woken)
        except (trio.EndOfChannel, trio.ClosedResourceError):
            if subscription.lagged:
                yield _frame({"type": "error", "data": _LAGGED}, stream.cursor)
            return
        chunk = await stream.frames(feed, first, end)
        woken = None
        if chunk:
            yield chunk
            # Every busy stream writes at the same ticks, the same bytes when unfiltered.
            woken = await feed.gather(COALESCE_SECONDS)
