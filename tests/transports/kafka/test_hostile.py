"""Issue 20 on a real broker: jobs need a trusted signature, no record stops the agent,
an event the brokers refuse is parked instead of ending the daemon."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import trio
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.errors import NotFoundError
from agent.service.settings import Settings
from agent.transports.kafka import KafkaConfig
from agent.transports.kafka.signing import sign
from agent.transports.kafka.topics import Topics
from tests.transports.kafka.fleetkit import (
    FLEET_KEY_ID,
    Events,
    echo,
    kafka_agent,
    send_signed,
    signed_headers,
)
from tests.transports.kafka.test_transport import read_events, running, with_kafka

# One message as it goes on the wire: topic, key, value, headers.
Raw = tuple[str, bytes | None, bytes, Any]


async def produce(bootstrap: str, messages: list[Raw]) -> None:
    def send() -> None:
        producer = Producer({"bootstrap.servers": bootstrap, "message.max.bytes": 2_000_000})
        for topic, key, value, headers in messages:
            # One partition: a later good job queues behind everything before it.
            producer.produce(topic, value=value, key=key, headers=headers, partition=0)
        assert producer.flush(30) == 0
        producer.close()

    await trio.to_thread.run_sync(send)


def raw(document: dict[str, Any]) -> bytes:
    return json.dumps(document).encode()


@pytest.mark.slow
async def test_only_jobs_signed_by_a_trusted_key_for_this_topic_run(
    config: Settings, kafka_broker: str, kafka_prefix: str
) -> None:
    config = with_kafka(config, kafka_broker, kafka_prefix, partitions=1)
    topics = Topics(kafka_prefix)
    mine, other = topics.host("w1"), topics.host("w2")
    stranger = Ed25519PrivateKey.generate()

    def signed(job_id: str, **kwargs: Any) -> Raw:
        value = raw(echo(job_id))
        return (
            mine,
            job_id.encode(),
            value,
            signed_headers(mine, job_id.encode(), value, **kwargs),
        )

    good = signed("good")
    forged_value = raw(echo("forged"))
    stale = signed("stale", now=time.time() - 3600)
    misdirected_value = raw(echo("misdirected"))
    messages: list[Raw] = [
        (mine, b"unsigned", raw(echo("unsigned")), None),
        # Signed with another key under the trusted key's id.
        (mine, b"forged", forged_value,
         sign(stranger, FLEET_KEY_ID, topic=mine, key=b"forged", value=forged_value)),
        # Signed for host w2, replayed to w1.
        (mine, b"misdirected", misdirected_value,
         signed_headers(other, b"misdirected", misdirected_value)),
        stale,
        good,
        good,  # the same signed message again, within the window: the same job
    ]  # fmt: skip
    async with running(config) as agent:
        await produce(kafka_broker, messages)
        ids = ["unsigned", "forged", "misdirected", "stale", "good"]
        events = await read_events(config.kafka, ids)
        assert (await agent.intake.status("good")).status == "Completed"
        for refused in ("unsigned", "forged", "misdirected", "stale"):
            with pytest.raises(NotFoundError):
                await agent.intake.status(refused)
    errors = {job: events.by_job[job][0]["data"]["error"] for job in ids[:4]}
    assert {job: e["details"]["field"] for job, e in errors.items()} == {
        "unsigned": "hostagent-signature",
        "forged": "hostagent-signature",
        "misdirected": "hostagent-signature",
        "stale": "hostagent-signed-at",
    }
    assert all(events.types(job) == ["rejected"] for job in ids[:4])
    assert errors["unsigned"]["error"] == "UNAUTHORIZED"
    await trio.to_thread.run_sync(lambda: events.read(["good"], timeout=10))
    kinds = events.types("good")
    assert [kind for kind in kinds if kind != "duplicate"] == ["accepted", "running", "completed"]
    assert kinds.count("duplicate") == 1


@pytest.mark.slow
async def test_signatures_off_lets_unsigned_jobs_in_but_still_checks_signed_ones(
    config: Settings, kafka_broker: str, kafka_prefix: str
) -> None:
    config = with_kafka(config, kafka_broker, kafka_prefix, partitions=1, require_signatures=False)
    topic = Topics(kafka_prefix).host("w1")
    forged = raw(echo("forged"))
    messages: list[Raw] = [
        (topic, b"plain", raw(echo("plain")), None),
        (topic, b"forged", forged, signed_headers(topic, b"other-key", forged)),
    ]
    async with running(config):
        await produce(kafka_broker, messages)
        events = await read_events(config.kafka, ["plain", "forged"])
    assert events.types("plain") == ["accepted", "running", "completed"]
    assert events.types("forged") == ["rejected"]


@pytest.mark.slow
async def test_poison_is_rejected_one_by_one_and_the_next_job_runs(
    config: Settings, kafka_broker: str, kafka_prefix: str
) -> None:
    config = with_kafka(config, kafka_broker, kafka_prefix, partitions=1)
    topic = Topics(kafka_prefix).host("w1")

    def signed(key: bytes | None, value: bytes) -> Raw:
        return (topic, key, value, signed_headers(topic, key, value))

    no_id = {k: v for k, v in echo("x").items() if k != "job_id"}
    poison = [
        # A lone surrogate: valid JSON, not encodable as UTF-8.
        signed(b"surrogate", raw(echo("surrogate")).replace(b'"hi"', b'"\\ud800"')),
        signed(b"surrogate-kind", raw({**echo("surrogate-kind"), "kind": "\ud800"})),
        # A key that stands in for the job_id and is a path.
        signed(b"/some/dir", raw(no_id)),
        signed(b"../../etc", raw(no_id)),
        signed(b"\xff\xfe", raw(no_id)),
        # Every field of the wrong type.
        signed(b"types", raw({"version": 1, "job_id": "types", "kind": [], "operation": 5,
                              "payload": "x"})),
        signed(b"job-id-type", raw({**echo("y"), "job_id": {"a": 1}})),
        signed(b"deep", b"[" * 100_000 + b"]" * 100_000),
    ]  # fmt: skip
    after = signed(b"after", raw(echo("after")))
    async with running(config) as agent:
        await produce(kafka_broker, [*poison, after])
        events = await read_events(config.kafka, ["after"])
        assert (await agent.intake.status("after")).status == "Completed"
        with pytest.raises(NotFoundError):
            await agent.intake.status("/some/dir")
    assert events.types("after") == ["accepted", "running", "completed"]
    # Every poison record answered with its own rejection, naming the field.
    rejected: dict[int, dict[str, Any]] = {}
    for job in events.by_job.values():
        for event in job:
            if event["type"] == "rejected":
                rejected[event["data"]["origin"]["offset"]] = event["data"]["error"]["details"]
    await trio.to_thread.run_sync(lambda: _all_rejected(config, rejected, len(poison)))
    fields = [rejected[offset]["field"] for offset in sorted(rejected)]
    assert fields == [
        "payload.data.message",
        "kind",
        "key",
        "key",
        "key",
        "version",
        "job_id",
        "document",
    ]


def _all_rejected(config: Settings, rejected: dict[int, dict[str, Any]], count: int) -> None:
    """Every rejection on the events topic (their job_ids differ: read them all)."""
    from agent.transports.kafka.client import EventWatcher

    with EventWatcher(config.kafka, from_beginning=True) as watcher:
        for event in watcher.events(timeout=20):
            if event["type"] == "rejected":
                rejected[event["data"]["origin"]["offset"]] = event["data"]["error"]["details"]
            if len(rejected) >= count:
                return


@pytest.mark.slow
async def test_an_event_the_broker_refuses_is_parked_and_the_next_job_runs(
    config: Settings, kafka_broker: str, kafka_prefix: str
) -> None:
    topics = Topics(kafka_prefix)
    # The events topic takes at most 4 KB a message (as a broker's message.max.bytes would).
    admin = AdminClient({"bootstrap.servers": kafka_broker})
    created = admin.create_topics(
        [NewTopic(topics.events, num_partitions=1, config={"max.message.bytes": "4000"})]
    )
    await trio.to_thread.run_sync(lambda: created[topics.events].result(30))
    config = with_kafka(config, kafka_broker, kafka_prefix, partitions=1, event_attempts=2)
    settings = config.kafka
    async with running(config) as agent:
        # Its completed event (an 8 KB result) is over the topic's limit; the next job's is not.
        await trio.to_thread.run_sync(
            lambda: send_signed(
                settings, topics.host("w1"), [echo("big", "x" * 8000), echo("after")]
            )
        )
        events = await read_events(settings, ["after"], timeout=90)
        report = await agent.health.report()
        assert (await agent.intake.status("big")).status == "Completed"
    kafka = report["components"]["kafka"]
    assert kafka["parked_events"] == 1
    assert kafka["last_parked"]["job_id"] == "big"
    assert kafka["last_parked"]["event_type"] == "completed"
    assert "MSG_SIZE_TOO_LARGE" in kafka["last_parked"]["reason"]
    assert events.types("after") == ["accepted", "running", "completed"]


@pytest.mark.slow
def test_a_broadcast_of_poison_leaves_three_agents_alive_and_serving(
    tmp_path: Path, kafka_broker: str, kafka_prefix: str
) -> None:
    settings = KafkaConfig(bootstrap_servers=kafka_broker, topic_prefix=kafka_prefix)
    topic = Topics(kafka_prefix).broadcast
    agents = [kafka_agent(tmp_path, kafka_broker, kafka_prefix, name) for name in ("a", "b", "c")]

    def signed(key: bytes | None, value: bytes) -> Raw:
        return (topic, key, value, signed_headers(topic, key, value))

    no_id = {k: v for k, v in echo("x").items() if k != "job_id"}
    poison = [
        signed(b"surrogate", raw(echo("surrogate")).replace(b'"hi"', b'"\\ud800"')),
        signed(b"/some/dir", raw(no_id)),
        # (A broadcast for an operation an agent lacks is not for it: no event.)
        signed(b"types", raw({"version": 1, "job_id": "types", "kind": [],
                              "operation": "system.echo", "payload": "x"})),
        signed(b"selector-type", raw({**echo("selector-type"), "selector": "all"})),
        (topic, b"unsigned", raw(echo("unsigned")), None),
        # Its completed event would be over every limit (1 MB of result).
        signed(b"huge", raw(echo("huge", "x" * 1_000_000))),
    ]  # fmt: skip
    try:
        for agent in agents:
            agent.start()
        trio.run(produce, kafka_broker, poison)
        send_signed(settings, topic, [echo("after")])
        events = Events(settings)
        events.read(["after", "huge"], per_job=3, timeout=120)
        assert all(agent.process is not None and agent.process.poll() is None for agent in agents)
        assert sorted(e["worker_id"] for e in events.terminal("after")) == ["a", "b", "c"]
        huge = events.terminal("huge")
        assert [e["type"] for e in huge] == ["completed"] * 3
        assert all(e["data"]["result"] is None for e in huge)
        assert all(e["data"]["result_truncated"] for e in huge)
        assert all(e["data"]["result_bytes"] > 1_000_000 for e in huge)
        assert {e["data"]["result_url"] for e in huge} == {"/api/v1/jobs/huge/result"}
        # The next normal job still runs everywhere: serving, not just alive.
        send_signed(settings, topic, [echo("later")])
        events.read(["later"], per_job=3, timeout=60)
        assert sorted(e["worker_id"] for e in events.terminal("later")) == ["a", "b", "c"]
    finally:
        for agent in agents:
            agent.kill()
    for name, agent in zip("abc", agents, strict=True):
        fields = sorted(str(e.get("field")) for e in agent.events("kafka.rejected"))
        assert fields == sorted(
            ["payload.data.message", "key", "version", "selector", "hostagent-signature"]
        ), name
