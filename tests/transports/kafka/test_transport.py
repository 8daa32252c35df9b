"""One in-process agent on real brokers: poison messages, not_after, a broker outage,
three brokers with one killed."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from typing import Any

import pytest
import trio
from confluent_kafka import Producer

from agent.config import Config
from agent.errors import NotFoundError
from agent.service.daemon import Agent
from agent.service.settings import Settings
from agent.transports.kafka import KafkaConfig
from agent.transports.kafka.topics import Topics
from tests.transports.kafka.fleetkit import (
    KEY_ENTRY,
    Events,
    echo,
    send_signed,
    signed_headers,
    sleep,
)


def with_kafka(config: Config, bootstrap: str, prefix: str, **extra: Any) -> Config:
    settings = KafkaConfig(
        bootstrap_servers=bootstrap,
        topic_prefix=prefix,
        heartbeat_interval_seconds=1.0,
        **{"keys": [KEY_ENTRY], **extra},
    )
    data = config.model_dump()
    data.update(worker_id="w1", kafka=settings.model_dump())
    return Settings.model_validate(data)


@asynccontextmanager
async def running(config: Config) -> AsyncIterator[Agent]:
    async with trio.open_nursery() as nursery:
        agent: Agent = await nursery.start(Agent(config).run)
        yield agent
        nursery.cancel_scope.cancel()


async def read_events(settings: KafkaConfig, ids: list[str], timeout: float = 60) -> Events:
    events = Events(settings)
    await trio.to_thread.run_sync(lambda: events.read(ids, timeout=timeout))
    return events


@pytest.mark.slow
async def test_poison_messages_are_rejected_and_the_partition_moves_on(
    config: Config, kafka_broker: str, kafka_prefix: str
) -> None:
    config = with_kafka(config, kafka_broker, kafka_prefix, partitions=1)
    topic = Topics(kafka_prefix).host("w1")
    long_id = "x" * 200
    poison: list[tuple[str, bytes]] = [
        ("not-json", b"{not json"),
        ("unknown-op", json.dumps({**echo("unknown-op"), "operation": "system.nothing",
                                   "payload": {"type": "system.nothing.v1", "data": {}}}).encode()),
        ("bad-payload", json.dumps(
            {**sleep("bad-payload", 1), "payload": {"type": "system.sleep.v1",
                                                    "data": {"seconds": "soon"}}}).encode()),
        (long_id, json.dumps(echo(long_id)).encode()),
        ("good", json.dumps(echo("good")).encode()),
        ("good", json.dumps(echo("good")).encode()),
    ]  # fmt: skip
    async with running(config) as agent:
        producer = Producer({"bootstrap.servers": kafka_broker})
        for key, value in poison:
            # One partition: the good job queues behind every poison message.
            producer.produce(
                topic,
                value=value,
                key=key,
                partition=0,
                headers=signed_headers(topic, key.encode(), value),
            )
        assert await trio.to_thread.run_sync(producer.flush, 30) == 0
        producer.close()
        ids = ["not-json", "unknown-op", "bad-payload", long_id, "good"]
        events = await read_events(config.kafka, ids)
        assert (await agent.intake.status("good")).status == "Completed"
    rejected = {job: events.by_job[job][0]["data"]["error"] for job in poison_ids(poison)}
    assert rejected["not-json"]["details"]["field"] == "document"
    assert rejected["unknown-op"]["details"]["field"] == "operation"
    assert rejected["bad-payload"]["details"]["field"] == "payload.data.seconds"
    assert rejected[long_id]["details"]["field"] == "job_id"
    # The same job sent twice is one job: the second copy is answered as a duplicate
    # (at intake, so it may come before the job's own events).
    await trio.to_thread.run_sync(lambda: events.read(["good"], timeout=10))
    kinds = events.types("good")
    assert [kind for kind in kinds if kind != "duplicate"] == ["accepted", "running", "completed"]
    assert "duplicate" in kinds


def poison_ids(poison: list[tuple[str, bytes]]) -> list[str]:
    return [key for key, _value in poison if key != "good"]


@pytest.mark.slow
async def test_not_after_in_the_past_expires_and_never_runs(
    config: Config, kafka_broker: str, kafka_prefix: str
) -> None:
    config = with_kafka(config, kafka_broker, kafka_prefix)
    topics = Topics(kafka_prefix)
    async with running(config) as agent:
        late = {**echo("late"), "not_after": "2020-01-01T00:00:00Z"}
        timely = {**echo("timely"), "not_after": "2999-01-01T00:00:00Z"}
        await trio.to_thread.run_sync(
            lambda: send_signed(config.kafka, topics.host("w1"), [late, timely])
        )
        events = await read_events(config.kafka, ["late", "timely"])
        with pytest.raises(NotFoundError):
            await agent.intake.status("late")
    assert events.types("late") == ["expired"]
    assert events.types("timely") == ["accepted", "running", "completed"]


async def wait_for(check: Callable[[], Any], timeout: float = 60) -> None:
    with trio.fail_after(timeout):
        while not await check():
            await trio.sleep(0.2)


@pytest.mark.slow
async def test_broker_outage_degrades_and_loses_no_event(
    config: Config, kafka_cluster: Callable[[int], Any], kafka_prefix: str
) -> None:
    cluster = kafka_cluster(1)
    config = with_kafka(config, cluster.bootstrap, kafka_prefix)
    topics = Topics(kafka_prefix)
    ids = [f"slow-{i}" for i in range(12)]
    async with running(config) as agent:

        async def kafka_status() -> str:
            return str((await agent.health.report())["components"]["kafka"]["status"])

        await wait_for(lambda: _is(kafka_status, "healthy"))
        await trio.to_thread.run_sync(
            lambda: send_signed(config.kafka, topics.host("w1"), [sleep(i, 2) for i in ids])
        )
        # Wait until the jobs are durable here, then take the broker away.
        await wait_for(lambda: _all_known(agent, ids))
        await trio.to_thread.run_sync(cluster.stop)
        stopped = time.monotonic()
        await wait_for(lambda: _is(kafka_status, "degraded"))
        report = await agent.health.report()
        assert report["status"] == "degraded"
        assert "broker" in report["components"]["kafka"]["reason"]
        # Local jobs keep running (two at a time, 2 s each) while Kafka is away.
        await wait_for(lambda: _count_done(agent, ids, 4))
        await trio.sleep(max(0.0, 30 - (time.monotonic() - stopped)))
        await trio.to_thread.run_sync(cluster.start)
        events = await read_events(config.kafka, ids, timeout=90)
        await wait_for(lambda: _is(kafka_status, "healthy"))
    for job_id in ids:
        assert events.types(job_id)[-1] == "completed", (job_id, events.types(job_id))


async def _is(check: Callable[[], Any], wanted: str) -> bool:
    return bool(await check() == wanted)


async def _all_known(agent: Agent, ids: list[str]) -> bool:
    try:
        for job_id in ids:
            await agent.intake.status(job_id)
    except NotFoundError:
        return False
    return True


async def _count_done(agent: Agent, ids: list[str], count: int) -> bool:
    done = 0
    for job_id in ids:
        with suppress(NotFoundError):
            done += (await agent.intake.status(job_id)).status == "Completed"
    return done >= count


@pytest.mark.slow
async def test_three_brokers_lose_nothing_when_one_dies(
    config: Config, kafka_cluster: Callable[[int], Any], kafka_prefix: str
) -> None:
    cluster = kafka_cluster(3)
    config = with_kafka(config, cluster.bootstrap, kafka_prefix, replication_factor=3)
    topics = Topics(kafka_prefix)
    ids = [f"rf3-{i}" for i in range(400)]
    async with running(config):
        first, second = ids[:200], ids[200:]
        await trio.to_thread.run_sync(
            lambda: send_signed(config.kafka, topics.host("w1"), [echo(i) for i in first])
        )
        # kill -9 one of the three while its partitions are busy.
        await trio.to_thread.run_sync(cluster.kill, cluster.nodes[0])
        await trio.to_thread.run_sync(
            lambda: send_signed(
                config.kafka,
                topics.host("w1"),
                [echo(i) for i in second],
                timeout=60,
            )
        )
        events = await read_events(config.kafka, ids, timeout=120)
    assert all(events.types(job_id)[-1] == "completed" for job_id in ids)
