"""Records to jobs or events without a broker: the Examiner against a real in-process agent."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio

from agent.errors import NotFoundError, ValidationError
from agent.service.daemon import Agent
from agent.service.settings import Settings
from agent.transports.kafka.consumer import Record
from agent.transports.kafka.intake import Examiner
from agent.transports.kafka.signing import TrustedKey, Verifier
from tests.transports.kafka.fleetkit import FLEET_KEY, FLEET_KEY_ID, echo, signed_headers

TOPIC = "hostagent.host.w1.jobs"
offsets = iter(range(1_000_000))


@asynccontextmanager
async def agent_of(config: Settings) -> AsyncIterator[Agent]:
    async with trio.open_nursery() as nursery:
        agent: Agent = await nursery.start(Agent(config).run)
        yield agent
        nursery.cancel_scope.cancel()


def examiner(*, require: bool = True) -> Examiner:
    trusted = TrustedKey(FLEET_KEY_ID, FLEET_KEY.public_key(), frozenset({"submit"}))
    return Examiner(
        worker_id="w1",
        events_topic="hostagent.job-events",
        labels={},
        operations=frozenset({"system.echo"}),
        verifier=Verifier([trusted], max_age_seconds=300),
        require_signatures=require,
    )


def record(key: bytes | None, value: bytes, *, signed: bool = True) -> Record:
    headers = tuple(signed_headers(TOPIC, key, value)) if signed else ()
    return Record(TOPIC, 0, next(offsets), key, value, 0, headers)


def rejection(event: tuple[str, Any, bytes | None]) -> dict[str, Any]:
    value = json.loads(event[2] or b"")
    assert value["type"] == "rejected", value
    return dict(value["data"]["error"]["details"])


@pytest.mark.slow
async def test_each_poison_record_is_its_own_rejection_and_the_good_ones_go_in(
    config: Settings,
) -> None:
    no_id = json.dumps({k: v for k, v in echo("x").items() if k != "job_id"}).encode()
    records = [
        record(b"s", json.dumps(echo("s")).replace('"hi"', '"\\udfff"').encode()),
        record(b"/var/lib/x", no_id),
        record(b"batch", no_id),  # reserved: it would shadow /api/v1/jobs/batch
        record(b"k" * 129, no_id),
        record(b"unsigned", json.dumps(echo("unsigned")).encode(), signed=False),
        record(b"by-key", no_id),
        record(None, json.dumps(echo("good")).encode()),
    ]
    async with agent_of(config) as agent:
        sorted_ = await examiner().sort(agent.intake, records, "host")
        assert (await agent.intake.status("by-key")).operation == "system.echo"
        assert (await agent.intake.status("good")).operation == "system.echo"
        for refused in ("s", "/var/lib/x", "batch", "unsigned"):
            try:
                await agent.intake.status(refused)
            except NotFoundError:
                continue
            raise AssertionError(f"{refused} was taken")
    assert [job.job_id for job in sorted_.jobs] == ["by-key", "good"]
    details = [rejection(event) for event in sorted_.events]
    assert [d["field"] for d in details] == [
        "payload.data.message",
        "key",
        "key",
        "key",
        "hostagent-signature",
    ]
    # An event is keyed by a valid job_id, else by the record's own bytes (never a path).
    assert [event[1] for event in sorted_.events[:2]] == ["s", b"/var/lib/x"]


@pytest.mark.slow
async def test_with_signatures_off_an_unsigned_job_goes_in(config: Settings) -> None:
    async with agent_of(config) as agent:
        sorted_ = await examiner(require=False).sort(
            agent.intake,
            [record(b"plain", json.dumps(echo("plain")).encode(), signed=False)],
            "host",
        )
    assert [job.job_id for job in sorted_.jobs] == ["plain"]
    assert sorted_.events == []


def test_a_rejection_whose_details_reuse_log_field_names_is_still_an_event() -> None:
    error = ValidationError("odd", field="f", details={"error": "x", "offset": 5, "event": "e"})
    event = examiner().rejected(record(b"k", b"{}"), error, "k")
    assert rejection(event) == {"error": "x", "offset": 5, "event": "e", "field": "f"}
