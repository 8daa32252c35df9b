"""The Kafka intake's shortcuts refuse what the long ways refused: signatures checked by
libsodium, event values written by orjson, the lone-surrogate check skipped only for
text that cannot hold one."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.errors import UnauthorizedError
from agent.service.daemon import Agent
from agent.transports.kafka.events import event_value
from agent.transports.kafka.intake import _may_hold_surrogates
from agent.transports.kafka.signing import SIGNATURE, TrustedKey, Verifier, sign
from tests.transports.kafka.fleetkit import echo
from tests.transports.kafka.test_examiner import TOPIC, examiner, record

NOW = 1_800_000_000.0


def with_signature(headers: list[Any], signature: bytes) -> list[Any]:
    return [(n, base64.b64encode(signature) if n == SIGNATURE else v) for n, v in headers]


def test_a_signature_of_another_length_is_refused_even_when_its_bytes_would_verify() -> None:
    key = Ed25519PrivateKey.generate()
    check = Verifier([TrustedKey("ops", key.public_key(), frozenset({"submit"}))],
                     max_age_seconds=300)  # fmt: skip
    value = b'{"job_id":"j1"}'
    headers = sign(key, "ops", topic=TOPIC, key=b"j1", value=value, now=NOW)
    assert check.verify(topic=TOPIC, key=b"j1", value=value, headers=headers, now=NOW)
    signature = base64.b64decode(dict(headers)[SIGNATURE])
    # libsodium reads a signature and its message as one string: a signature one byte
    # short (or long) must not shift into the message and be read some other way.
    for wrong in (signature[:63], signature + b"{", b""):
        with pytest.raises(UnauthorizedError, match="does not verify") as caught:
            check.verify(
                topic=TOPIC, key=b"j1", value=value, headers=with_signature(headers, wrong), now=NOW
            )
        assert caught.value.details["field"] == SIGNATURE


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
