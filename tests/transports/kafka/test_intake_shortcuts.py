"""The Kafka intake's shortcuts refuse what the long ways refused: event values written
by orjson, the lone-surrogate check skipped only for text that cannot hold one."""

from __future__ import annotations

import json

import pytest

from agent.service.daemon import Agent
from agent.transports.kafka.events import event_value
from agent.transports.kafka.intake import _may_hold_surrogates
from tests.transports.kafka.fleetkit import echo
from tests.transports.kafka.test_examiner import examiner, record


def test_an_event_value_is_the_same_json_and_what_orjson_refuses_is_still_sent() -> None:
    common = {"worker_id": "w1", "job_id": "j1", "status": "Completed", "event_id": "w1:1"}
    data = {"result": {"message": "héllo", "n": 3, "list": [1.5, None, True]}}
    value = event_value(type="completed", data=data, timestamp="2026-01-01T00:00:00Z", **common)
    assert json.loads(value) == {
        "type": "completed",
        **common,
        "timestamp": "2026-01-01T00:00:00Z",
        "data": data,
    }
    # Beyond 64 bits and a lone surrogate: json writes them (the surrogate escaped).
    odd = {"big": 2**70, "text": "\ud800"}
    assert json.loads(event_value(type="completed", data=odd, **common))["data"] == odd


@pytest.mark.slow
@pytest.mark.parametrize(
    "value",
    [
        json.dumps(echo("j", "\udfff")).encode(),  # the escape \udfff
        # Bytes of a surrogate (not UTF-8: parse_json reads them with surrogatepass).
        json.dumps(echo("j", "x"), ensure_ascii=False)
        .replace('"x"', '"\udfff"')
        .encode("utf-8", "surrogatepass"),
        # UTF-16 (parse_json reads it), the surrogate written as such.
        json.dumps(echo("j", "\udfff"), ensure_ascii=False).encode("utf-16", "surrogatepass"),
    ],
    ids=["escape", "utf-8-bytes", "utf-16"],
)
async def test_a_lone_surrogate_is_refused_naming_its_field_however_it_is_written(
    agent: Agent, value: bytes
) -> None:
    # The walk is not skipped (the fingerprint would refuse it too, later).
    assert _may_hold_surrogates(value)
    outcome = examiner().examine(agent.intake, record(b"j", value), "host")
    assert isinstance(outcome, tuple), outcome
    event = json.loads(outcome[2] or b"")
    assert event["type"] == "rejected"
    assert event["data"]["error"]["details"]["field"] == "payload.data.message"


def test_the_walk_is_skipped_only_for_strict_utf8_without_a_surrogate_escape() -> None:
    assert not _may_hold_surrogates(json.dumps(echo("j", "héllo \u00e9 \\ud7ff")).encode())
    assert not _may_hold_surrogates('{"m": "héllo"}'.encode())
    # An escaped backslash before "ud800" is no surrogate: a false alarm, walked.
    assert _may_hold_surrogates(b'{"m": "\\\\ud800"}')
    assert _may_hold_surrogates(b'{"m": "\\uDBFF"}')
    assert _may_hold_surrogates('{"m": "x"}'.encode("utf-32"))
