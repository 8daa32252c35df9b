"""Reading GET /api/v1/stats/vms in tests, off a plain socket (httpx's streams leave
generators to the GC when a test stops reading early)."""

from __future__ import annotations

import json
from typing import Any

import trio

from agent.service.daemon import Agent
from tests.http_helpers import READ, http_of


async def samples(agent: Agent, count: int) -> list[dict[str, Any]]:
    """The first `count` samples of a stream, read off a plain socket (each sample is
    one chunk of the chunked answer), which is closed after them."""
    host, _, port = http_of(agent).url.removeprefix("http://").rpartition(":")
    found: list[dict[str, Any]] = []
    stream = await trio.open_tcp_stream(host, int(port))
    async with stream:
        request = (
            "GET /api/v1/stats/vms?interval_seconds=0.5 HTTP/1.1\r\n"
            f"Host: {host}\r\nAuthorization: Bearer {READ}\r\n\r\n"
        )
        await stream.send_all(request.encode())
        buffer = ""
        while len(found) < count:
            data = await stream.receive_some()
            assert data, "the stream ended"
            buffer += data.decode()
            *lines, buffer = buffer.split("\n")
            found += [json.loads(line[6:]) for line in lines if line.startswith("data: ")]
    return found[:count]
