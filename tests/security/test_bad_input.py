"""Finding 5: the input the contract refuses, over HTTP and over the spool alike."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agent.config import Config
from agent.service.daemon import Agent
from tests.http_helpers import SUBMIT, client, serving, with_http
from tests.spoolkit import drop, read_json, wait_for_files

VALID = (
    '{"version": "1.0", "kind": "T", "operation": "system.echo",'
    ' "payload": {"type": "system.echo.v1", "data": {}}%s}'
)

# (case, body, the field the refusal names)
CASES: list[tuple[str, bytes, str]] = [
    ("deep-nesting", b"[" * 10_000 + b"]" * 10_000, "document"),
    ("deep-in-payload", (VALID % (', "labels": ' + "[" * 200 + "]" * 200)).encode(), "document"),
    ("duplicate-key", (VALID % ', "priority": 1, "priority": 9').encode(), "document"),
    ("nan", (VALID % ', "timeout_seconds": NaN').encode(), "document"),
    ("infinity", (VALID % ', "timeout_seconds": Infinity').encode(), "document"),
    ("overflow", (VALID % ', "timeout_seconds": 1e400').encode(), "document"),
    ("tiny-timeout", (VALID % ', "timeout_seconds": 1e-9').encode(), "timeout_seconds"),
    ("timeout-string", (VALID % ', "timeout_seconds": "60"').encode(), "timeout_seconds"),
    ("timeout-bool", (VALID % ', "timeout_seconds": true').encode(), "timeout_seconds"),
    ("priority-string", (VALID % ', "priority": "5"').encode(), "priority"),
    ("priority-bool", (VALID % ', "priority": true').encode(), "priority"),
    ("priority-float", (VALID % ', "priority": 5.5').encode(), "priority"),
    ("priority-range", (VALID % ', "priority": 10').encode(), "priority"),
    ("job-id-newline", (VALID % ', "job_id": "abcd\\n"').encode(), "job_id"),
    ("job-id-dot", (VALID % ', "job_id": ".hidden"').encode(), "job_id"),
]


@pytest.fixture
async def agent(config: Config) -> AsyncIterator[Agent]:
    async with serving(with_http(config, spool=True)) as running:
        yield running


@pytest.mark.slow
@pytest.mark.parametrize(("case", "body", "field"), CASES, ids=[c[0] for c in CASES])
async def test_http_refuses_with_400_and_the_field(
    agent: Agent, case: str, body: bytes, field: str
) -> None:
    async with client(agent, SUBMIT) as http:
        response = await http.post(
            "/api/v1/jobs", content=body, headers={"Content-Type": "application/json"}
        )
        assert response.status_code == 400, (case, response.text)
        assert response.json()["error"] == "VALIDATION_ERROR"
        assert response.json()["details"]["field"] == field
        # The same document in a batch: refused there too, as that item's answer.
        if body.startswith(b"{"):
            batch = b'{"jobs": [' + body + b"]}"
            answer = await http.post(
                "/api/v1/jobs/batch", content=batch, headers={"Content-Type": "application/json"}
            )
            assert answer.status_code == 400 or answer.json()["data"]["failed"] == 1, case
    assert await agent.intake.list_jobs() == ([], 0, None)


async def test_the_spool_runs_the_very_same_validation(agent: Agent, config: Config) -> None:
    spool = config.spool_dir
    for case, body, _ in CASES:
        drop(spool, f"{case}.json", body)
    reports = await wait_for_files(spool / "failed", "*.error.json", len(CASES))
    found = {read_json(p)["file"]: read_json(p) for p in reports}
    for case, _, field in CASES:
        report = found[f"{case}.json"]
        assert (report["error"], report["details"]["field"]) == ("VALIDATION_ERROR", field), case
    assert await agent.intake.list_jobs() == ([], 0, None)
    assert not list(Path(spool / "done").iterdir())


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded"])
async def test_json_is_required_415(agent: Agent, content_type: str | None) -> None:
    headers = {} if content_type is None else {"Content-Type": content_type}
    async with client(agent, SUBMIT) as http:
        response = await http.post("/api/v1/jobs", content=VALID % "", headers=headers)
    assert response.status_code == 415
    assert response.json()["details"]["field"] == "Content-Type"
