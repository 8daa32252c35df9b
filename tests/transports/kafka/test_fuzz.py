"""Issue 20's fuzz on the fleet door: whatever a Kafka record holds (keys that are paths or not
UTF-8, text that is not encodable, every field of the wrong type, bytes that are not JSON,
huge results, signed or not), a real agent process answers every record, stays up, and
runs the next normal job on the same partition."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.transports.kafka import KafkaConfig
from agent.transports.kafka.client import EventWatcher
from agent.transports.kafka.topics import Topics
from tests.transports.kafka.fleetkit import KEY_ENTRY, echo, kafka_agent, signed_headers

EXAMPLES = 60

# Text as a sender may put it in JSON: any code point, lone surrogates included
# (json.dumps writes them as \ud800 escapes: valid JSON, not encodable UTF-8).
ANY_TEXT = st.text(alphabet=st.characters(exclude_categories=()), max_size=40)
SURROGATES = st.text(
    alphabet=st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF, categories=["Cs"]),
    min_size=1,
)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | ANY_TEXT | SURROGATES,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(ANY_TEXT, inner, max_size=4),
    max_leaves=12,
)
FIELDS = ["version", "job_id", "kind", "operation", "payload", "priority", "timeout_seconds"]
KEYS = st.one_of(
    st.none(),
    st.binary(max_size=40),
    st.sampled_from([b"/some/dir", b"../../etc/passwd", b".hidden", b"a" * 300, b"batch"]),
    st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9._-]{0,20}\Z").map(str.encode),
)


@st.composite
def records(draw: st.DrawFn) -> tuple[bytes | None, bytes, bool]:
    """(key, value, signed): a document with some fields replaced, dropped or added."""
    kind = draw(st.sampled_from(["fields", "message", "huge", "bytes"]))
    document: Any = echo(draw(st.from_regex(r"\Afz-[a-z0-9]{1,12}\Z")))
    if kind == "fields":
        for field in draw(st.lists(st.sampled_from(FIELDS), max_size=3, unique=True)):
            if draw(st.booleans()):
                document.pop(field, None)
            else:
                document[field] = draw(JSON_VALUES)
    elif kind == "message":
        document["payload"]["data"]["message"] = draw(JSON_VALUES)
    elif kind == "huge":
        document["payload"]["data"]["message"] = "x" * 600_000  # a result over the event limit
    value = draw(st.binary(max_size=200)) if kind == "bytes" else json.dumps(document).encode()
    return draw(KEYS), value, draw(st.integers(0, 9)) > 0  # one in ten unsigned


def answered_offsets(settings_: KafkaConfig, topic: str, want: set[int]) -> dict[int, str]:
    """Offset -> the event that answered it: accepted (its origin string) or rejected,
    duplicate, expired (their origin object)."""
    seen: dict[int, str] = {}
    with EventWatcher(settings_, from_beginning=True) as watcher:
        for event in watcher.events(timeout=120):
            origin = event.get("data", {}).get("origin")
            if isinstance(origin, dict) and origin.get("topic") == topic:
                seen[origin["offset"]] = event["type"]
            elif isinstance(origin, str) and origin.startswith(f"{topic}/"):
                seen[int(origin.rsplit("/", 1)[1])] = event["type"]
            if want <= seen.keys():
                break
    return seen


@pytest.mark.slow
def test_no_kafka_record_kills_the_agent(
    kafka_broker: str, kafka_prefix: str, tmp_path: Path
) -> None:
    topic = Topics(kafka_prefix).host("w1")
    agent = kafka_agent(tmp_path, kafka_broker, kafka_prefix, "w1", extra="partitions = 1")
    producer = Producer({"bootstrap.servers": kafka_broker, "message.max.bytes": 2_000_000})
    offsets: list[int] = []

    def delivered(error: Any, message: Any) -> None:
        assert error is None, error
        offsets.append(message.offset())

    def send(key: bytes | None, value: bytes, signed: bool) -> None:
        headers = signed_headers(topic, key, value) if signed else None
        producer.produce(topic, value=value, key=key, headers=headers, partition=0,
                         on_delivery=delivered)  # fmt: skip
        assert producer.flush(30) == 0

    agent.start()
    try:

        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        )
        @given(record=records())
        def feed(record: tuple[bytes | None, bytes, bool]) -> None:
            send(*record)
            assert agent.process is not None
            assert agent.process.poll() is None, "".join(agent.lines[-30:])

        feed()
        # The next normal job on the same partition runs, and every record was answered.
        after = json.dumps(echo("after-fuzz")).encode()
        send(b"after-fuzz", after, True)
        settings_ = KafkaConfig(bootstrap_servers=kafka_broker, topic_prefix=kafka_prefix,
                                keys=[KEY_ENTRY])  # fmt: skip
        seen = answered_offsets(settings_, topic, set(offsets))
        assert set(offsets) <= seen.keys(), sorted(set(offsets) - seen.keys())[:10]
        # The fuzz reached both ends: records refused and records run.
        assert {"rejected", "accepted"} <= set(seen.values()), seen
        with EventWatcher(settings_, from_beginning=True) as watcher:
            done = list(watcher.until_done(["after-fuzz"], timeout=60))
        assert [e["type"] for e in done if e["job_id"] == "after-fuzz"][-1] == "completed"
        assert agent.process is not None
        assert agent.process.poll() is None, "".join(agent.lines[-30:])
    finally:
        producer.flush(10)
        code = agent.stop(timeout=60)
    assert code == 0, "".join(agent.lines[-30:])
    assert not any("Traceback" in line for line in agent.lines), "".join(agent.lines[-40:])
