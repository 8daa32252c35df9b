"""The producer wrapper, the consumer thread and the fleet reader against a real broker."""

from __future__ import annotations

import json
import math

import pytest
import trio

from agent.transports.kafka.consumer import ConsumerThread, Record
from agent.transports.kafka.fleet import read_fleet, render_table
from agent.transports.kafka.producer import EventProducer
from agent.transports.kafka.settings import KafkaConfig
from agent.transports.kafka.topics import Topics


def consumer(bootstrap: str, topic: str, group: str, **extra: str) -> ConsumerThread:
    return ConsumerThread(
        {**KafkaConfig(bootstrap_servers=bootstrap).client_config(), **extra},
        topics=[topic],
        group_id=group,
        instance_id="w1",
        batch=100,
    )


async def collect(thread: ConsumerThread, count: int, *, store: int | None = None) -> list[Record]:
    """Run `thread` until `count` records came; store the first `store` of them."""
    got: list[Record] = []
    send, receive = trio.open_memory_channel[list[Record]](1)
    async with trio.open_nursery() as nursery:
        await nursery.start(thread.run, send)
        with trio.fail_after(30):
            async for batch in receive:
                got += batch
                if len(got) >= count:
                    break
        thread.store(got[: len(got) if store is None else store])
        nursery.cancel_scope.cancel()
    return got


@pytest.mark.slow
async def test_offsets_commit_only_once_stored(kafka_broker: str, kafka_prefix: str) -> None:
    topic = f"{kafka_prefix}.jobs"
    producer = EventProducer(KafkaConfig(bootstrap_servers=kafka_broker).client_config())
    async with trio.open_nursery() as nursery:
        await nursery.start(producer.run)
        await producer.send_many([(topic, f"k{i}", f"v{i}".encode()) for i in range(20)])
        nursery.cancel_scope.cancel()
    assert producer.delivered == 20

    first = await collect(consumer(kafka_broker, topic, f"{kafka_prefix}.g"), 20, store=5)
    assert [r.value for r in first] == [f"v{i}".encode() for i in range(20)]
    # Only the first five were stored: a restarted member reads again from the sixth.
    second = await collect(consumer(kafka_broker, topic, f"{kafka_prefix}.g"), 15)
    assert [r.offset for r in second] == list(range(5, 20))


@pytest.mark.slow
async def test_consumer_pauses_when_full_and_stays_in_its_group(
    kafka_broker: str, kafka_prefix: str
) -> None:
    topic = f"{kafka_prefix}.jobs"
    producer = EventProducer(KafkaConfig(bootstrap_servers=kafka_broker).client_config())
    # A poll interval shorter than the stall: a thread that stopped polling would be evicted.
    thread = consumer(
        kafka_broker,
        topic,
        f"{kafka_prefix}.g",
        **{"max.poll.interval.ms": "6000", "session.timeout.ms": "6000"},
    )
    send, receive = trio.open_memory_channel[list[Record]](0)
    got: list[Record] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(producer.run)
        await nursery.start(thread.run, send)
        await producer.send_many([(topic, None, b"first")])
        with trio.fail_after(20):
            got += await receive.receive()
        await producer.send_many([(topic, None, f"m{i}".encode()) for i in range(10)])
        # Nobody receives for longer than max.poll.interval.ms: the thread must pause.
        with trio.fail_after(10):
            while not thread.paused:
                await trio.sleep(0.05)
        await trio.sleep(8)
        assignment = list(thread.assigned)
        with trio.fail_after(10):
            while len(got) < 11:
                got += await receive.receive()
        assert not any(r.value == b"first" for r in got[1:])
        thread.store(got)
        assert assignment == [(topic, 0)]
        assert thread.assigned == assignment
        nursery.cancel_scope.cancel()
    assert [r.value for r in got] == [b"first", *(f"m{i}".encode() for i in range(10))]


@pytest.mark.slow
async def test_fleet_map_keeps_latest_record_and_drops_tombstones(
    kafka_broker: str, kafka_prefix: str
) -> None:
    topics = Topics(kafka_prefix)
    producer = EventProducer(KafkaConfig(bootstrap_servers=kafka_broker).client_config())

    def caps(worker: str, seq: int, rack: str) -> bytes:
        return json.dumps(
            {"worker_id": worker, "labels": {"rack": rack}, "operations": ["system.echo"],
             "pools": ["p1"], "seq": seq}
        ).encode()  # fmt: skip

    beat = json.dumps({"at": "2020-01-01T00:00:00Z", "interval_seconds": 10}).encode()
    async with trio.open_nursery() as nursery:
        await nursery.start(producer.run)
        fresh = json.dumps({"at": _now(), "interval_seconds": 10}).encode()
        await producer.send_many(
            [
                (topics.capabilities, "a", caps("a", 1, "r1")),
                (topics.capabilities, "b", caps("b", 1, "r1")),
                (topics.capabilities, "a", caps("a", 2, "r12")),
                (topics.capabilities, "c", caps("c", 1, "r1")),
                (topics.capabilities, "c", None),
                (topics.heartbeats, "a", fresh),
                (topics.heartbeats, "b", beat),
            ]
        )
        nursery.cancel_scope.cancel()
    hosts = await trio.to_thread.run_sync(
        lambda: read_fleet(KafkaConfig(bootstrap_servers=kafka_broker, topic_prefix=kafka_prefix))
    )
    assert [(h.worker_id, h.seq, h.labels["rack"], h.stale) for h in hosts] == [
        ("a", 2, "r12", False),
        ("b", 1, "r1", True),
    ]
    assert hosts[0].matches(labels={"rack": "r12"}, operations=["system.echo"])
    assert not hosts[1].matches(labels={"rack": "r12"})
    assert "stale" in render_table(hosts).splitlines()[2]


def _now() -> str:
    from agent.jobs import utc_now

    assert not math.isnan(0.0)
    return utc_now()
