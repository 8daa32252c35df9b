"""The front's hot routes (submit, batch, status, health, /metrics served in front of
quart) answer, count and audit every request exactly as the quart app does.

The agent's own listener serves the hot routes without quart; beside it the
test serves the very same routes through the quart app alone (the path
every other route takes), on the agent's intake and tokens. Each request is
sent raw to both and the two answers must be the same bytes (but for the
Date header), the request counters must move the same way and the audit
lines must say the same.
"""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial

import pytest
import trio
from structlog.testing import capture_logs

from agent.config import Config
from agent.core import metrics
from agent.service.daemon import Agent
from agent.transports.http.app import build_app
from agent.transports.http.auth import TokenTable
from agent.transports.http.front import Front
from agent.transports.http.models import Submitted
from agent.transports.http.routes import ApiState
from agent.transports.http.transport import hypercorn_settings, serve_asgi
from tests.http_helpers import ADMIN, READ, SUBMIT, http_of, serving, with_http
from tests.jobs import echo_job, wait_done

LIMIT = 4000
DONE = echo_job("done-1")


def _request(
    method: str, path: str, token: str | None, body: bytes | None = None, **headers: str
) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: test"]
    if token is not None:
        lines.append(f"Authorization: Bearer {token}")
    lines += [f"{name.replace('_', '-')}: {value}" for name, value in headers.items()]
    if body is not None and "Transfer_Encoding" not in headers:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b"")


def _json(value: object) -> bytes:
    return json.dumps(value).encode()


JSON = {"Content_Type": "application/json"}
CASES: list[tuple[str, bytes]] = [
    ("submit: no token", _request("POST", "/api/v1/jobs", None, _json(DONE), **JSON)),
    ("submit: unknown token", _request("POST", "/api/v1/jobs", "hat_no", _json(DONE), **JSON)),
    ("submit: read token", _request("POST", "/api/v1/jobs", READ, _json(DONE), **JSON)),
    ("submit: again", _request("POST", "/api/v1/jobs", SUBMIT, _json(DONE), **JSON)),
    (
        "submit: json with charset",
        _request(
            "POST", "/api/v1/jobs", ADMIN, _json(DONE), Content_Type="Application/JSON; charset=x"
        ),
    ),
    ("submit: lower-case method", _request("post", "/api/v1/jobs", SUBMIT, _json(DONE), **JSON)),
    ("submit: no content type", _request("POST", "/api/v1/jobs", SUBMIT, _json(DONE))),
    (
        "submit: text",
        _request("POST", "/api/v1/jobs", SUBMIT, _json(DONE), Content_Type="text/plain"),
    ),
    ("submit: not json", _request("POST", "/api/v1/jobs", SUBMIT, b"{]", **JSON)),
    ("submit: empty body", _request("POST", "/api/v1/jobs", SUBMIT, b"", **JSON)),
    ("submit: duplicate key", _request("POST", "/api/v1/jobs", SUBMIT, b'{"a":1,"a":2}', **JSON)),
    ("submit: invalid", _request("POST", "/api/v1/jobs", SUBMIT, _json({"version": 1}), **JSON)),
    (
        "submit: conflict",
        _request("POST", "/api/v1/jobs", SUBMIT, _json({**DONE, "priority": 9}), **JSON),
    ),
    (
        "submit: declared too large",
        _request(
            "POST", "/api/v1/jobs", SUBMIT, b"{}", Content_Length=str(LIMIT + 1), **JSON
        ).replace(b"Content-Length: 2\r\n", b""),
    ),
    (
        "submit: chunked",
        _request(
            "POST",
            "/api/v1/jobs",
            SUBMIT,
            b"7\r\n"
            + _json(DONE)[:7]
            + b"\r\n"
            + hex(len(_json(DONE)) - 7)[2:].encode()
            + b"\r\n"
            + _json(DONE)[7:]
            + b"\r\n0\r\n\r\n",
            Transfer_Encoding="chunked",
            **JSON,
        ),
    ),
    (
        "submit: chunked too large",
        _request(
            "POST",
            "/api/v1/jobs",
            SUBMIT,
            (b"800\r\n" + b" " * 0x800 + b"\r\n") * 3 + b"0\r\n\r\n",
            Transfer_Encoding="chunked",
            **JSON,
        ),
    ),
    ("batch: not a list", _request("POST", "/api/v1/jobs/batch", SUBMIT, b'{"jobs":3}', **JSON)),
    ("batch: not objects", _request("POST", "/api/v1/jobs/batch", SUBMIT, b'{"jobs":[1]}', **JSON)),
    (
        "batch: mixed",
        _request(
            "POST", "/api/v1/jobs/batch", ADMIN, _json({"jobs": [DONE, {"version": 2}]}), **JSON
        ),
    ),
    ("batch: read token", _request("POST", "/api/v1/jobs/batch", READ, b'{"jobs":[]}', **JSON)),
    ("status", _request("GET", "/api/v1/jobs/done-1", READ)),
    ("status: query string", _request("GET", "/api/v1/jobs/done-1?x=1", READ)),
    ("status: escaped id", _request("GET", "/api/v1/jobs/done%2D1", READ)),
    ("status: unknown", _request("GET", "/api/v1/jobs/ghost", READ)),
    ("status: no token", _request("GET", "/api/v1/jobs/done-1", None)),
    ("status: with a body", _request("GET", "/api/v1/jobs/done-1", READ, b"xyz")),
    ("status: batch is not an id", _request("GET", "/api/v1/jobs/batch", READ)),
    ("status: two slashes", _request("GET", "/api/v1/jobs//done-1", READ)),
    # Probes: one Handler (job_api.health, prometheus_metrics), whichever path.
    ("metrics: no token", _request("GET", "/metrics", None)),
    ("metrics: unknown token", _request("GET", "/metrics", "hat_no")),
    ("metrics: submit token", _request("GET", "/metrics?x=1", SUBMIT)),
]


async def _exchange(address: tuple[str, int], request: bytes, *, stop_after: float = 5) -> bytes:
    """The raw answer to `request` (until it is complete or the server closes)."""
    answer = b""
    async with await trio.open_tcp_stream(*address) as stream:
        await stream.send_all(request)
        with trio.move_on_after(stop_after):
            while True:
                head, found, body = answer.partition(b"\r\n\r\n")
                if found:
                    length = [
                        int(line.split(b":")[1])
                        for line in head.lower().split(b"\r\n")
                        if line.startswith(b"content-length:")
                    ]
                    if length and len(body) >= length[0]:
                        break
                chunk = await stream.receive_some()
                if not chunk:
                    break
                answer += chunk
    # The Date header is the only part that may differ between two answers.
    return b"\r\n".join(
        line for line in answer.split(b"\r\n") if not line.lower().startswith(b"date:")
    )


def _counts() -> dict[tuple[str, ...], float]:
    return {
        tuple(sample.labels.values()): sample.value
        for family in metrics.HTTP_REQUESTS.collect()
        for sample in family.samples
        if sample.name.endswith("_total")
    }


def _moved(before: dict[tuple[str, ...], float]) -> dict[tuple[str, ...], float]:
    after = _counts()
    return {key: after[key] - before.get(key, 0) for key in after if after[key] != before.get(key)}


def _refusals(logs: list[dict[str, object]]) -> list[dict[str, object]]:
    return [
        {key: value for key, value in entry.items() if key != "client"}
        for entry in logs
        if entry["event"] in ("http.refused", "http.agent_error", "http.unexpected_error")
    ]


@asynccontextmanager
async def _quart_alone(agent: Agent) -> AsyncIterator[tuple[str, int]]:
    """The agent's routes served through the ASGI front with no hot route (quart answers
    them all), on its intake and tokens."""
    config = http_of(agent).config
    api = ApiState(agent.intake, config, TokenTable(config.tokens))
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    listener.setblocking(False)
    address = listener.getsockname()
    front = Front(build_app(api), api, routes=())
    serve = partial(serve_asgi, front, listener, hypercorn_settings(config, None))
    async with trio.open_nursery() as nursery:
        await nursery.start(api.health.refresh)
        await nursery.start(serve)
        yield address
        nursery.cancel_scope.cancel()


@pytest.fixture
async def both(config: Config) -> AsyncIterator[tuple[tuple[str, int], tuple[str, int]]]:
    settings = with_http(config, max_body_bytes=LIMIT, body_timeout_seconds=0.5)
    async with serving(settings) as agent, _quart_alone(agent) as quart:
        await agent.intake.submit(DONE, transport="http")
        await wait_done(agent, "done-1")
        lean = http_of(agent).address
        assert lean is not None
        yield lean, quart


@pytest.mark.slow
@pytest.mark.parametrize(("case", "request_"), CASES, ids=[case for case, _ in CASES])
async def test_the_lean_path_answers_counts_and_audits_as_quart(
    both: tuple[tuple[str, int], tuple[str, int]], case: str, request_: bytes
) -> None:
    answers, moves, audits = [], [], []
    for address in both:
        before = _counts()
        with capture_logs() as logs:
            answers.append(await _exchange(address, request_))
        moves.append(_moved(before))
        audits.append(_refusals(logs))
    lean, quart = answers
    assert lean.startswith(b"HTTP/1.1 "), case
    assert lean == quart, case
    assert moves[0] == moves[1], case
    assert audits[0] == audits[1], case


@pytest.mark.slow
async def test_a_late_body_is_408_on_both_paths(
    both: tuple[tuple[str, int], tuple[str, int]],
) -> None:
    partial_body = _request("POST", "/api/v1/jobs", SUBMIT, b"{}" * 10, **JSON)[:-10]
    lean, quart = [await _exchange(address, partial_body) for address in both]
    assert lean.startswith(b"HTTP/1.1 408")
    assert lean == quart


async def test_lean_answers_keep_the_connection_alive(
    both: tuple[tuple[str, int], tuple[str, int]],
) -> None:
    status = _request("GET", "/api/v1/jobs/done-1", READ)
    async with await trio.open_tcp_stream(*both[0]) as stream:
        for _ in range(3):  # pipelined: each answered in turn on the one connection
            await stream.send_all(status * 2)
            answered = b""
            with trio.fail_after(10):
                while answered.count(b"HTTP/1.1 200") < 2 or not answered.endswith(b"}}"):
                    answered += await stream.receive_some()
            assert answered.count(b'"job_id":"done-1"') == 2


async def test_batch_items_are_the_documented_submitted_model(
    both: tuple[tuple[str, int], tuple[str, int]],
) -> None:
    body = _json({"jobs": [DONE]})
    answer = await _exchange(both[0], _request("POST", "/api/v1/jobs/batch", SUBMIT, body, **JSON))
    item = json.loads(answer.partition(b"\r\n\r\n")[2])["data"]["results"][0]["data"]
    assert item == Submitted.model_validate(item).model_dump(mode="json")
    assert list(item) == list(Submitted.model_fields)
