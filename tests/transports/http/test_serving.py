"""Stock hypercorn over the capped listener (serving.py, listener.py): the request-header
deadline, room made for a probe when every connection is taken, refusals, the envelope
on hypercorn's empty refusals, and the hypercorn release serving.py was written against.

A tiny ASGI app stands in for the agent's front; the sockets, hypercorn and trio are real.
"""

from __future__ import annotations

import importlib.metadata
import json
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio

from agent.core import metrics
from agent.transports.http.listener import ConnectionLimits
from agent.transports.http.serving import HYPERCORN_VERSION
from agent.transports.http.settings import HttpConfig
from agent.transports.http.transport import hypercorn_settings, serve_asgi

ROOT = Path(__file__).resolve().parents[3]


def test_serving_is_pinned_to_the_hypercorn_it_was_written_against() -> None:
    # serving.py builds hypercorn's connection server and worker context by their module
    # names (hypercorn documents only `serve`): a new release must be read first.
    pins = dict(
        line.split("==")
        for line in (ROOT / "constraints.txt").read_text().splitlines()
        if "==" in line
    )
    assert pins["Hypercorn"] == HYPERCORN_VERSION
    assert importlib.metadata.version("hypercorn") == HYPERCORN_VERSION


async def _app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            await send({"type": message["type"] + ".complete"})
            if message["type"] == "lifespan.shutdown":
                return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


@asynccontextmanager
async def _server(limits: ConnectionLimits) -> AsyncIterator[tuple[str, int]]:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    listener.setblocking(False)
    address = listener.getsockname()
    settings = hypercorn_settings(HttpConfig(), None)
    async with trio.open_nursery() as nursery:
        await nursery.start(partial(serve_asgi, _app, listener, settings, limits=limits))
        yield address
        nursery.cancel_scope.cancel()


async def _connect(address: tuple[str, int], source: str) -> trio.SocketStream:
    sock = trio.socket.socket()
    await sock.bind((source, 0))
    await sock.connect(address)
    return trio.SocketStream(sock)


async def _answer(stream: trio.SocketStream) -> bytes:
    """Everything until the server closes (an empty answer: closed without one)."""
    answer = b""
    async with stream:
        with trio.fail_after(5):
            while True:
                try:
                    chunk = await stream.receive_some()
                except trio.BrokenResourceError:  # reset: closed with our request unread
                    return answer
                if not chunk:
                    return answer
                answer += chunk


GET = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
PARTIAL = b"GET / HTTP/1.1\r\nHost: x\r\n"


def _value(counter: Any) -> float:
    return float(counter._value.get())


async def test_a_request_whose_headers_are_late_is_closed_and_counted() -> None:
    before = _value(metrics.HTTP_CONNECTIONS_TIMED_OUT)
    async with _server(ConnectionLimits(header_timeout=0.05)) as address:
        stream = await _connect(address, "127.0.0.1")
        await stream.send_all(PARTIAL)
        assert await _answer(stream) == b""  # closed without an answer
        # A complete request on a new connection is served.
        stream = await _connect(address, "127.0.0.1")
        await stream.send_all(GET)
        assert (await _answer(stream)).startswith(b"HTTP/1.1 200")
    assert _value(metrics.HTTP_CONNECTIONS_TIMED_OUT) == before + 1


async def test_when_all_are_taken_a_probe_evicts_the_heaviest_clients_oldest() -> None:
    evicted = _value(metrics.HTTP_CONNECTIONS_EVICTED)
    refused = _value(metrics.HTTP_CONNECTIONS_REFUSED)
    async with _server(ConnectionLimits(max_connections=3, per_client=10)) as address:
        held = []
        for _ in range(3):
            stream = await _connect(address, "127.0.0.2")
            await stream.send_all(PARTIAL)
            held.append(stream)
        await trio.sleep(0.01)  # the three are accepted (the probe must find them held)
        # The slow client cannot take room from itself: refused at once.
        extra = await _connect(address, "127.0.0.2")
        await extra.send_all(PARTIAL)
        assert await _answer(extra) == b""
        assert _value(metrics.HTTP_CONNECTIONS_REFUSED) == refused + 1
        # A probe from another address gets the oldest one's place, and its answer.
        probe = await _connect(address, "127.0.0.1")
        await probe.send_all(GET)
        assert (await _answer(probe)).startswith(b"HTTP/1.1 200")
        assert _value(metrics.HTTP_CONNECTIONS_EVICTED) == evicted + 1
        assert await _answer(held[0]) == b""  # the oldest was closed
        for stream in held[1:]:  # the others are still held
            with trio.move_on_after(0.01) as still_open:
                await stream.receive_some()
            assert still_open.cancelled_caught
            await stream.aclose()


async def test_hypercorns_empty_431_gets_the_json_envelope() -> None:
    async with _server(ConnectionLimits()) as address:
        stream = await _connect(address, "127.0.0.1")
        # Past h11_max_incomplete_size (16 KiB) before the head ends.
        await stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20_000)
        head, _, body = (await _answer(stream)).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n")
    assert b"content-type: application/json" in head
    assert f"content-length: {len(body)}".encode() in head
    assert json.loads(body)["error"] == "BAD_REQUEST"


async def test_a_connection_the_client_closed_gives_its_place_back_at_once() -> None:
    async with _server(ConnectionLimits(max_connections=1, per_client=1)) as address:
        for _ in range(3):  # each needs the one place the previous one held
            stream = await _connect(address, "127.0.0.1")
            await stream.send_all(GET)
            assert (await _answer(stream)).startswith(b"HTTP/1.1 200")
            with trio.fail_after(5):
                while metrics.HTTP_CONNECTIONS_OPEN._value.get():
                    await trio.sleep(0.001)


@pytest.mark.parametrize("status", [400, 431])
def test_only_an_empty_refusal_is_given_the_envelope(status: int) -> None:
    from agent.transports.http.listener import _with_envelope

    answer = b"HTTP/1.1 %d \r\ncontent-length: 0\r\nconnection: close\r\n\r\n" % status
    assert b'"error"' in _with_envelope(answer)
    with_body = b"HTTP/1.1 %d \r\ncontent-length: 2\r\n\r\n{}" % status
    assert _with_envelope(with_body) == with_body
