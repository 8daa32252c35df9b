"""The Kafka intake's shortcuts refuse what the long ways refused: signatures checked by
libsodium, event values written by orjson, the lone-surrogate check skipped only for
text that cannot hold one."""

from __future__ import annotations

import json

from agent.transports.kafka.events import event_value

NOW = 1_800_000_000.0


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
