"""The Kafka intake's rejection line names the refused field and the value the record
gave it (issue 24, as http.refused does): `kafka.rejected field=payload.data.path
value=/etc/hostname`; a secret's value is redacted. The Examiner against a real
in-process agent, no broker."""

from __future__ import annotations

import json
from typing import Any

import pytest
from structlog.testing import capture_logs

from agent.core.targets import REDACTED
from agent.service.settings import Settings
from tests.transports.kafka.test_examiner import agent_of, examiner, record

pytestmark = pytest.mark.slow  # a real agent per test

SECRET = "hunter2-never-in-a-log-line"


def document(job_id: str, operation: str, data: dict[str, Any]) -> bytes:
    payload = {"type": f"{operation}.v1", "data": data}
    job = {"version": "1.0", "job_id": job_id, "kind": "Test", "operation": operation}
    return json.dumps({**job, "payload": payload}).encode()


async def rejected_lines(config: Settings, values: list[bytes]) -> list[dict[str, Any]]:
    """The kafka.rejected lines of records with these values (refused when examined
    or when submitted), in the records' order."""
    records = [record(f"r{n}".encode(), value) for n, value in enumerate(values)]
    async with agent_of(config) as agent:
        with capture_logs() as logs:
            await examiner().sort(agent.intake, records, "host")
    lines = [line for line in logs if line["event"] == "kafka.rejected"]
    return sorted(lines, key=lambda line: int(line["offset"]))


async def test_a_rejected_records_field_and_value_are_named(config: Settings) -> None:
    outside = document("outside", "image.info", {"path": "/etc/hostname"})
    secret = document("secret", "system.sleep", {"seconds": 1, "api_token": SECRET})
    path, token = await rejected_lines(config, [outside, secret])
    assert (path["log_level"], path["field"], path["value"]) == (
        "warning",
        "payload.data.path",
        "/etc/hostname",
    )
    assert (token["field"], token["value"]) == ("payload.data.api_token", REDACTED)
    assert SECRET not in repr([path, token])


async def test_a_field_the_record_does_not_hold_has_no_value(config: Settings) -> None:
    [line] = await rejected_lines(config, [b"not json"])
    assert line["field"] == "document"
    assert line["value"] is None
