"""Live events: the websocket and the SSE stream, fed by the in-process event bus."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

import httpx
import pytest
import trio
from trio_websocket import (
    ConnectionClosed,
    WebSocketConnection,
    open_websocket_url,
)

from agent.config import Config
from agent.jobs import JobStatus
from agent.service.daemon import Agent
from tests.http_helpers import READ, http_of, serving, with_http
from tests.jobs import echo_job, sleep_job, wait_done
from tests.spoolkit import spool_of


def _ws_url(agent: Agent) -> str:
    assert http_of(agent) is not None
    return http_of(agent).url.replace("http://", "ws://") + "/api/v1/ws"


def _auth(token: str = READ) -> list[tuple[bytes, bytes]]:
    return [(b"Authorization", f"Bearer {token}".encode())]


async def _ask(ws: WebSocketConnection, message: dict[str, Any]) -> dict[str, Any]:
    await ws.send_message(json.dumps(message))
    answer: dict[str, Any] = json.loads(await ws.get_message())
    return answer


@pytest.fixture
async def served(config: Config) -> AsyncIterator[Agent]:
    async with serving(with_http(config)) as agent:
        yield agent


@pytest.mark.slow
async def test_websocket_follows_a_spool_job_through_to_completed(config: Config) -> None:
    async with serving(with_http(config, spool=True)) as agent:
        assert spool_of(agent) is not None
        async with open_websocket_url(_ws_url(agent), extra_headers=_auth()) as ws:
            assert await _ask(ws, {"type": "ping"}) == {"type": "pong"}
            # Everything first, so the job's creation is seen; then the job itself.
            await ws.send_message(json.dumps({"type": "subscribe_all"}))
            staged = spool_of(agent).root / "tmp" / "spooled.json"
            staged.write_text(json.dumps(sleep_job("spooled", 0.05)))
            staged.rename(spool_of(agent).root / "incoming" / "spooled.json")
            statuses: list[str] = []
            initial = None
            with trio.fail_after(20):
                while "Completed" not in statuses:
                    message = json.loads(await ws.get_message())
                    if message.get("job_id") != "spooled":
                        continue
                    if message["type"] == "created":
                        await ws.send_message(
                            json.dumps({"type": "subscribe_job", "job_id": "spooled"})
                        )
                    elif message["type"] == "initial_status":
                        initial = message["data"]
                    elif message["type"] == "status":
                        statuses.append(message["data"]["status"])
    assert initial is not None
    assert initial["transport"] == "spool"
    assert statuses[-1] == "Completed"
    assert "Running" in statuses


@pytest.mark.slow
async def test_subscribe_job_answers_initial_status_then_its_events(served: Agent) -> None:
    async with open_websocket_url(_ws_url(served), extra_headers=_auth()) as ws:
        # Submitted once the socket is up (the first websocket builds the app), and
        # long enough to be still running when subscribed on a loaded machine: the
        # events of a job already finished at initial_status are not sent.
        await served.intake.submit(sleep_job("watched", 1.5), transport="test")
        initial = await _ask(ws, {"type": "subscribe_job", "job_id": "watched"})
        assert initial["type"] == "initial_status"
        assert initial["data"]["job_id"] == "watched"
        kinds = []
        with trio.fail_after(20):
            while True:
                message = json.loads(await ws.get_message())
                assert message["job_id"] == "watched"
                kinds.append(message["type"])
                if message["type"] == "status" and message["data"]["status"] == "Completed":
                    break
    if initial["data"]["status"] == "Pending":
        assert "progress" in kinds


async def test_websocket_reports_bad_messages_and_unknown_jobs(served: Agent) -> None:
    async with open_websocket_url(_ws_url(served), extra_headers=_auth()) as ws:
        for message, field in [
            ("not json", "message"),
            ("[1]", "message"),
            ('{"type": "dance"}', "type"),
            ('{"type": "subscribe_job"}', "job_id"),
        ]:
            await ws.send_message(message)
            answer = json.loads(await ws.get_message())
            assert answer["type"] == "error"
            assert answer["data"]["details"]["field"] == field
        missing = await _ask(ws, {"type": "subscribe_job", "job_id": "ghost"})
        assert missing["type"] == "error"
        assert missing["data"]["error"] == "NOT_FOUND"
        await ws.send_message(json.dumps({"type": "unsubscribe_job", "job_id": "ghost"}))
        assert await _ask(ws, {"type": "ping"}) == {"type": "pong"}


async def test_a_finished_job_gets_no_stale_events(served: Agent) -> None:
    await served.intake.submit(echo_job("done-before"), transport="test")
    await wait_done(served, "done-before")
    async with open_websocket_url(_ws_url(served), extra_headers=_auth()) as ws:
        initial = await _ask(ws, {"type": "subscribe_job", "job_id": "done-before"})
        assert initial["data"]["status"] == "Completed"
        # The next message is the pong: nothing about the finished job came in between.
        assert await _ask(ws, {"type": "ping"}) == {"type": "pong"}


@pytest.mark.parametrize("token", [None, "hat_wrong"])
async def test_websocket_upgrade_needs_a_read_token(served: Agent, token: str | None) -> None:
    assert http_of(served) is not None
    headers = {
        "Connection": "Upgrade",
        "Upgrade": "websocket",
        "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
    }
    if token:
        headers["Authorization"] = f"Bearer {token}"
    async with httpx.AsyncClient(base_url=http_of(served).url) as http:
        response = await http.get("/api/v1/ws", headers=headers)
    assert response.status_code == 401
    assert response.json()["error"] == "UNAUTHORIZED"


async def test_a_lagging_websocket_client_is_cut_off_without_slowing_jobs(
    config: Config,
) -> None:
    async with serving(with_http(config, event_buffer=4)) as agent:
        async with open_websocket_url(_ws_url(agent), extra_headers=_auth()) as ws:
            await ws.send_message(json.dumps({"type": "subscribe_all"}))
            assert await _ask(ws, {"type": "ping"}) == {"type": "pong"}
            # 50 created events at once: far more than the client's buffer of 4.
            jobs = [
                agent.intake.prepare(echo_job(f"burst-{n}"), transport="test") for n in range(50)
            ]
            await agent.intake.submit_many(jobs)
            with pytest.raises(ConnectionClosed) as closed:  # noqa: PT012 (drain, then closed)
                with trio.fail_after(20):
                    while True:
                        await ws.get_message()
            assert closed.value.reason.code == 1013
            # trio-websocket (the client) leaves its socket open when the server closes first.
            await ws._stream.aclose()
        assert (await wait_done(agent, "burst-49")).status is JobStatus.COMPLETED


class _RawSSE:
    """An SSE stream read off a plain socket (httpx's async line iterators leave
    generators for the GC to finalise when a test stops reading early)."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buffer = ""
        self.head = ""

    @classmethod
    async def open(cls, agent: Agent, query: str = "") -> _RawSSE:
        assert http_of(agent) is not None
        assert http_of(agent).address is not None
        stream = await trio.open_tcp_stream(*http_of(agent).address)
        await stream.send_all(
            f"GET /api/v1/events{query} HTTP/1.1\r\nHost: test\r\n"
            f"Authorization: Bearer {READ}\r\n\r\n".encode()
        )
        sse = cls(stream)
        while "\r\n\r\n" not in sse.buffer:
            sse.buffer += (await stream.receive_some()).decode()
        sse.head, _, sse.buffer = sse.buffer.partition("\r\n\r\n")
        return sse

    async def messages(self) -> AsyncIterator[dict[str, Any]]:
        """Each `data:` message until the server ends the stream."""
        while True:
            while "\n" in self.buffer:
                line, _, self.buffer = self.buffer.partition("\n")
                if line.startswith("data: "):
                    yield json.loads(line[6:])
                elif line.startswith("0\r") and not self.buffer.strip():
                    return  # the last chunk
            data = await self.stream.receive_some()
            if not data:
                return
            self.buffer += data.decode()


async def test_sse_streams_a_jobs_initial_status_and_events(served: Agent) -> None:
    await served.intake.submit(sleep_job("sse-job", 0.05), transport="test")
    sse = await _RawSSE.open(served, "?job_id=sse-job")
    async with sse.stream:
        assert "text/event-stream" in sse.head
        messages = []
        with trio.fail_after(20):
            async with aclosing(sse.messages()) as events:
                async for message in events:
                    messages.append(message)
                    if message.get("data", {}).get("status") == "Completed":
                        break
    assert messages[0]["type"] == "initial_status"
    assert all(message["job_id"] == "sse-job" for message in messages)


async def test_sse_for_an_unknown_job_is_404(served: Agent) -> None:
    assert http_of(served) is not None
    headers = {"Authorization": f"Bearer {READ}"}
    async with httpx.AsyncClient(base_url=http_of(served).url, headers=headers) as http:
        response = await http.get("/api/v1/events", params={"job_id": "ghost"})
    assert response.status_code == 404


async def test_a_lagging_sse_client_gets_an_error_event_and_the_end(config: Config) -> None:
    async with serving(with_http(config, event_buffer=4)) as agent:
        sse = await _RawSSE.open(agent)
        async with sse.stream:
            jobs = [agent.intake.prepare(echo_job(f"sse-{n}"), transport="test") for n in range(50)]
            await agent.intake.submit_many(jobs)
            with trio.fail_after(20):
                messages = [message async for message in sse.messages()]
    assert messages[-1]["type"] == "error"
    assert messages[-1]["data"]["error"] == "RATE_LIMITED"
    assert len(messages) <= 4 + 2  # the buffer, one already taken, and the error


async def test_shutdown_ends_open_streams_promptly(config: Config) -> None:
    with trio.fail_after(10):
        async with serving(with_http(config)) as agent:
            sse = await _RawSSE.open(agent)
            async with (
                sse.stream,
                open_websocket_url(_ws_url(agent), extra_headers=_auth()) as ws,
            ):
                assert await _ask(ws, {"type": "ping"}) == {"type": "pong"}
                # leaving `serving` with both streams open cancels the agent
