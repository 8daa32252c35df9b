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
from agent.transports.kafka.events import event_value
from agent.transports.kafka.signing import SIGNATURE, TrustedKey, Verifier, sign
from tests.transports.kafka.test_examiner import TOPIC

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
