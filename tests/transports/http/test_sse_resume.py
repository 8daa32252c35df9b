"""Resumable SSE: `id:` on every event, Last-Event-ID replays the durable log, and a
job-filtered stream ends by itself once its jobs have finished."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
import trio

from agent.config import Config
from tests.http_helpers import READ, http_of, serving, with_http
from tests.jobs import sleep_job, wait_done


async def read_stream(
    url: str, job_id: str, *, last_event_id: int | None = None, stop_after_progress: bool = False
) -> list[tuple[int, dict[str, Any]]]:
    """(id, message) of each event until the server ends the stream (or the first progress).

    A raw socket rather than httpx: leaving a stream early strands httpx's
    internal generators, which the warnings-as-errors setting turns into failures.
    """
    host, port = url.removeprefix("http://").rsplit(":", 1)
    extra = "" if last_event_id is None else f"Last-Event-ID: {last_event_id}\r\n"
    request = (
        f"GET /api/v1/events?job_id={job_id} HTTP/1.1\r\nHost: {host}\r\n"
        f"Authorization: Bearer {READ}\r\n{extra}\r\n"
    )
    frames: list[tuple[int, dict[str, Any]]] = []
    stream = await trio.open_tcp_stream(host, int(port))
    async with stream:
        await stream.send_all(request.encode())
        buffer = b""
        event_id: int | None = None
        while chunk := await stream.receive_some(65536):
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
                    event_id = None
                    if stop_after_progress and message["type"] == "progress":
                        return frames
                elif line == "0":  # the chunked encoding's last chunk: the stream ended
                    return frames
    return frames


@pytest.mark.slow
async def test_a_reconnecting_client_gets_what_it_missed_then_the_stream_ends(
    config: Config,
) -> None:
    async with serving(with_http(config)) as agent:
        await agent.intake.submit(sleep_job("resumed", 2.5), transport="test")
        with trio.fail_after(30):
            first = await read_stream(http_of(agent).url, "resumed", stop_after_progress=True)
            seen = first[-1][0]
            assert first[-1][1]["type"] == "progress"
            assert (await wait_done(agent, "resumed")).status.value == "Completed"
            # The job finished while nobody listened: the stream replays, then ends.
            rest = await read_stream(http_of(agent).url, "resumed", last_event_id=seen)
        everything = await agent.intake.logs("resumed")
    replayed = [message for _, message in rest if message["type"] == "progress"]
    # Every progress event logged after the one the client saw last, in order.
    progress = [event for event in everything if event["type"] == "progress"]
    last_seen = first[-1][1]["data"]
    position = next(n for n, event in enumerate(progress) if event["at"] == last_seen["at"])
    assert [m["data"]["percent"] for m in replayed] == [
        e["data"]["percent"] for e in progress[position + 1 :]
    ]
    assert replayed, "the progress the client missed"
    ids = [event_id for event_id, _ in rest]
    assert ids == sorted(ids)
    assert min(ids) > seen
    assert rest[-1][1]["type"] == "initial_status"
    assert rest[-1][1]["data"]["status"] == "Completed"


async def test_a_job_filtered_stream_ends_when_its_jobs_finish(config: Config) -> None:
    async with serving(with_http(config)) as agent:
        await agent.intake.submit(sleep_job("short", 0.2), transport="test")
        with trio.fail_after(20):
            frames = await read_stream(http_of(agent).url, "short")
    statuses = [m["data"]["status"] for _, m in frames if m["type"] in ("status", "initial_status")]
    assert statuses[-1] == "Completed"


async def test_a_bad_last_event_id_is_refused(config: Config) -> None:
    async with serving(with_http(config)) as agent:
        await agent.intake.submit(sleep_job("bad-id", 0), transport="test")
        headers = {"Authorization": f"Bearer {READ}", "Last-Event-ID": "yesterday"}
        async with httpx.AsyncClient(base_url=http_of(agent).url, headers=headers) as http:
            response = await http.get("/api/v1/events", params={"job_id": "bad-id"})
    assert response.status_code == 400
    assert response.json()["details"]["field"] == "Last-Event-ID"
