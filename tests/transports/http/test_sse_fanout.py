"""Unfiltered SSE streams woken together send the same run of frames: every stream
gets every event once, in publishing order, with ids that never go back."""

from __future__ import annotations

import json
from typing import Any

import pytest
import trio

from agent.config import Config
from tests.http_helpers import READ, http_of, serving, with_http
from tests.jobs import sleep_job

STREAMS = 3
JOBS = 40


async def open_stream(url: str) -> trio.SocketStream:
    """An unfiltered /api/v1/events stream, subscribed once its first bytes came."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    stream = await trio.open_tcp_stream(host, int(port))
    request = f"GET /api/v1/events HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {READ}\r\n\r\n"
    await stream.send_all(request.encode())
    assert await stream.receive_some(65536)  # headers (and retry:): subscribed
    return stream


async def read_until_done(stream: trio.SocketStream) -> list[tuple[int, dict[str, Any]]]:
    """(id, message) of each event until every job's terminal status came."""
    frames: list[tuple[int, dict[str, Any]]] = []
    finished: set[str] = set()
    buffer = b""
    event_id: int | None = None
    while len(finished) < JOBS:
        chunk = await stream.receive_some(65536)
        assert chunk, "the stream ended early"
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        for raw in lines:
            line = raw.decode().rstrip("\r")
            if line.startswith("id: "):
                event_id = int(line[4:])
            elif line.startswith("data: "):
                assert event_id is not None, "an event without an id"
                message = json.loads(line[6:])
                frames.append((event_id, message))
                if message["type"] == "status" and message["data"]["status"] == "Completed":
                    finished.add(message["job_id"])
                    if len(finished) == JOBS:
                        # Up to the last completion only: what a chunk holds after it
                        # depends on where the stream's writes fell, not on the order.
                        return frames
    return frames


@pytest.mark.slow
async def test_streams_woken_together_all_get_every_event_once_in_order(config: Config) -> None:
    async with serving(with_http(config)) as agent:
        url = http_of(agent).url
        streams = [await open_stream(url) for _ in range(STREAMS)]
        got: list[list[tuple[int, dict[str, Any]]]] = [[] for _ in streams]

        async def read(index: int) -> None:
            async with streams[index]:
                got[index] = await read_until_done(streams[index])

        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                for index in range(STREAMS):
                    nursery.start_soon(read, index)
                for number in range(JOBS):
                    await agent.intake.submit(sleep_job(f"fan{number}", 0), transport="test")
    seen = [
        [(m["type"], m["job_id"], m["data"].get("status")) for _, m in frames] for frames in got
    ]
    # The bus's events in one order for all; progress comes from the durable log, read
    # when a stream next looks (its place among other jobs' events, and how much of it a
    # stream has read by the last completion, is per stream): held to its job's order.
    live = [[frame for frame in frames if frame[0] not in ("progress", "log")] for frames in seen]
    assert live[0] == live[1] == live[2]
    for frames in seen:  # a job's progress before its completion, in every stream
        done_at = {f[1]: i for i, f in enumerate(frames) if f[2] == "Completed"}
        assert all(i < done_at[f[1]] for i, f in enumerate(frames) if f[0] == "progress")
    created = [job_id for kind, job_id, _ in seen[0] if kind == "created"]
    assert created == [f"fan{number}" for number in range(JOBS)]  # each once, in order
    for frames in got:
        ids = [event_id for event_id, _ in frames]
        assert ids == sorted(ids)
