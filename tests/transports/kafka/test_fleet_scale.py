"""The fleet at scale: records that name their schemas by digest, a 1,000-host map
rebuilt by a fresh process, stale and decommissioned-but-alive hosts, the heartbeat
rule, and an agent that sees its own decommission."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import trio
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient

from agent.config import Config, PolicyConfig, RunbooksConfig
from agent.errors import NotFoundError, UnavailableError
from agent.jobs import utc_now
from agent.policy.allowlist import AllowRule
from agent.service.daemon import Agent
from agent.service.settings import Settings
from agent.transports.kafka import KafkaConfig
from agent.transports.kafka.announce import canonical, schemas_digest
from agent.transports.kafka.client import decommission
from agent.transports.kafka.fleet import read_fleet
from agent.transports.kafka.heartbeat import (
    SIZE_KEY,
    fleet_interval,
    jittered,
    stale_after,
)
from agent.transports.kafka.topics import Topics
from agent.transports.kafka.transport import fleet_topics
from tests.jobs import eventually
from tests.transports.kafka.fleetkit import (
    KEY_ENTRY,
    Events,
    echo,
    kafka_agent,
    send_signed,
    signed_headers,
)

SCHEMAS = {
    "system.echo": {"type": "object", "properties": {"message": {"type": "string"}}},
    "vm.start": {"type": "object", "properties": {"name": {"type": "string"}}},
}


def test_heartbeat_interval_grows_with_the_fleet_to_hold_the_rate() -> None:
    settings = KafkaConfig(heartbeat_interval_seconds=10, max_heartbeats_per_second=200)
    assert fleet_interval(settings, 1) == 10
    assert fleet_interval(settings, 2_000) == 10
    assert fleet_interval(settings, 10_000) == 50
    assert fleet_interval(settings, 100_000) == 500
    # The whole fleet never sends more than the rate, whatever its size.
    for hosts in (1, 500, 2_001, 10_000, 123_456):
        assert hosts / fleet_interval(settings, hosts) <= 200
    waits = [jittered(50) for _ in range(200)]
    assert all(45 <= wait <= 55 for wait in waits)
    assert len(set(waits)) > 100  # a fleet started at once spreads out
    assert stale_after(50) == 152


def test_schema_digest_is_of_the_canonical_json() -> None:
    reordered = dict(reversed(list(SCHEMAS.items())))
    assert schemas_digest(reordered) == schemas_digest(SCHEMAS)
    assert canonical(SCHEMAS) == canonical(reordered)
    assert schemas_digest({**SCHEMAS, "x": {}}) != schemas_digest(SCHEMAS)


def create_topics(bootstrap: str, prefix: str) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    settings = KafkaConfig(bootstrap_servers=bootstrap, topic_prefix=prefix)
    for future in admin.create_topics(fleet_topics(settings), operation_timeout=30).values():
        future.result(timeout=60)


def record(worker_id: str, **extra: Any) -> bytes:
    document = {
        "worker_id": worker_id,
        "labels": {"rack": f"r{int(worker_id[-1], 36) % 4}"},
        "pools": [],
        "operations": sorted(SCHEMAS),
        "features": ["kafka"],
        "schemas_digest": schemas_digest(SCHEMAS),
        "seq": 1,
        **extra,
    }
    return json.dumps(document).encode()


def beat(worker_id: str, at: str | None = None, **extra: Any) -> bytes:
    value = {"worker_id": worker_id, "at": at or utc_now(), "interval_seconds": 10.0, **extra}
    return json.dumps(value).encode()


def ago(seconds: float) -> str:
    return (datetime.now(UTC) - timedelta(seconds=seconds)).isoformat()


def produce(bootstrap: str, messages: list[tuple[str, str, bytes | None]]) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20, "acks": "all"})
    for topic, key, value in messages:
        producer.produce(topic, key=key, value=value)
    assert producer.flush(60) == 0


@pytest.mark.slow
def test_a_1000_host_map_is_rebuilt_by_a_fresh_process_with_schemas_by_digest(
    kafka_broker: str, kafka_prefix: str
) -> None:
    topics = Topics(kafka_prefix)
    create_topics(kafka_broker, kafka_prefix)
    digest = schemas_digest(SCHEMAS)
    hosts = [f"hv{i:04d}" for i in range(1000)]
    old_schemas = {"system.echo": SCHEMAS["system.echo"]}
    produce(
        kafka_broker,
        [
            (topics.schemas, digest, canonical(SCHEMAS)),
            *((topics.capabilities, host, record(host)) for host in hosts),
            # A record from before digests: its schemas inline, no digest.
            (topics.capabilities, "old-host", json.dumps(
                {"worker_id": "old-host", "operations": ["system.echo"],
                 "operation_schemas": old_schemas, "labels": {}}).encode()),
            *((topics.heartbeats, host, beat(host)) for host in [*hosts, "old-host"]),
        ],
    )  # fmt: skip
    program = (
        "import json, sys\n"
        "from agent.transports.kafka import KafkaConfig, read_fleet\n"
        f"hosts = read_fleet(KafkaConfig(bootstrap_servers={kafka_broker!r}, "
        f"topic_prefix={kafka_prefix!r}), schemas=True)\n"
        "json.dump([h.to_dict(full=True) for h in hosts], sys.stdout)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    found = {host["worker_id"]: host for host in json.loads(done.stdout)}
    assert set(found) == {*hosts, "old-host"}
    assert all(found[h]["status"] == "live" for h in found)
    assert all(found[h]["schemas"] == SCHEMAS for h in hosts)
    assert {found[h]["schemas_digest"] for h in hosts} == {digest}
    # The record itself stays small: the schemas are not in it.
    assert "operation_schemas" not in found["hv0001"]["capabilities"]
    assert found["old-host"]["schemas"] == old_schemas
    assert found["old-host"]["schemas_digest"] is None
    # The reader recorded the fleet's size for the agents' heartbeat rule.
    assert read_fleet(KafkaConfig(bootstrap_servers=kafka_broker, topic_prefix=kafka_prefix))


@pytest.mark.slow
def test_stale_and_decommissioned_but_alive_hosts_are_shown_with_their_reason(
    kafka_broker: str, kafka_prefix: str
) -> None:
    topics = Topics(kafka_prefix)
    create_topics(kafka_broker, kafka_prefix)
    produce(
        kafka_broker,
        [
            *((topics.capabilities, h, record(h)) for h in ("live1", "stale1", "ghost1", "gone1")),
            (topics.heartbeats, "live1", beat("live1")),
            (topics.heartbeats, "stale1", beat("stale1", ago(60))),
            (topics.heartbeats, "gone1", beat("gone1", ago(120))),
            (topics.heartbeats, "ghost1", beat("ghost1", ago(5))),
            # Decommissioned: ghost1 goes on heartbeating, gone1 is silent.
            (topics.capabilities, "ghost1", None),
            (topics.capabilities, "gone1", None),
            (topics.heartbeats, "gone1", None),
            (topics.heartbeats, "ghost1", beat("ghost1")),
        ],
    )
    hosts = {
        h.worker_id: h
        for h in read_fleet(KafkaConfig(bootstrap_servers=kafka_broker, topic_prefix=kafka_prefix))
    }
    assert {w: h.status for w, h in hosts.items()} == {
        "live1": "live",
        "stale1": "stale",
        "ghost1": "decommissioned-but-alive",
    }
    assert hosts["stale1"].stale
    assert re.fullmatch(r"last heartbeat 6\d s ago; stale after 3 intervals of 10 s plus grace",
                        hosts["stale1"].reason)  # fmt: skip
    assert hosts["stale1"].last_heartbeat is not None
    assert "still heartbeats" in hosts["ghost1"].reason
    assert hosts["ghost1"].stale  # a broadcast does not wait for it
    assert hosts["ghost1"].decommissioned_at is not None
    assert not hosts["live1"].stale


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


async def kafka_component(agent: Agent) -> dict[str, Any]:
    return dict((await agent.health.report())["components"]["kafka"])


def latest_heartbeat(settings: KafkaConfig, worker_id: str) -> dict[str, Any] | None:
    hosts = read_fleet(settings, record_size=False)
    return next((h.heartbeat for h in hosts if h.worker_id == worker_id), None)


@pytest.mark.slow
async def test_heartbeat_interval_follows_the_fleet_size_record(
    config: Config, kafka_broker: str, kafka_prefix: str
) -> None:
    config = with_kafka(config, kafka_broker, kafka_prefix, max_heartbeats_per_second=1000.0)
    await trio.to_thread.run_sync(create_topics, kafka_broker, kafka_prefix)
    size = json.dumps({"hosts": 3000, "at": utc_now()}).encode()
    fleet = Topics(kafka_prefix).fleet
    await trio.to_thread.run_sync(produce, kafka_broker, [(fleet, SIZE_KEY, size)])
    async with running(config) as agent:

        async def stretched() -> bool:
            beat = await trio.to_thread.run_sync(latest_heartbeat, config.kafka, "w1")
            return bool(beat) and beat["interval_seconds"] == 3.0  # type: ignore[index]

        # 3,000 hosts at most 1,000 heartbeats/s: every 3 s, not the configured 1 s.
        await eventually(stretched, within=60, every=1)
        assert (await kafka_component(agent))["heartbeat_interval_seconds"] == 3.0


def send_to_every_partition(bootstrap: str, topic: str, job_ids: list[str]) -> None:
    """Job i to partition i of `topic`, signed: one job on each partition whoever holds it."""
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all"})
    for partition, job_id in enumerate(job_ids):
        key, value = job_id.encode(), json.dumps(echo(job_id)).encode()
        headers = signed_headers(topic, key, value)
        producer.produce(topic, key=key, value=value, partition=partition, headers=headers)
    assert producer.flush(30) == 0


def ran_on(events: Events, job_ids: list[str]) -> dict[str, str]:
    """job_id -> the worker that completed it (each exactly once, by one agent only)."""
    workers = {}
    for job_id in job_ids:
        assert len({e["worker_id"] for e in events.by_job[job_id]}) == 1, events.by_job[job_id]
        (completed,) = [e for e in events.by_job[job_id] if e["type"] == "completed"]
        workers[job_id] = str(completed["worker_id"])
    return workers


@pytest.mark.slow
async def test_a_running_agent_that_is_decommissioned_takes_no_fleet_jobs(
    config: Config, kafka_broker: str, kafka_prefix: str, tmp_path: Path
) -> None:
    """Its host jobs wait, its pools' jobs go to the other member; restarted, it rejoins
    (its pools too) and runs the jobs that waited."""
    config = with_kafka(config, kafka_broker, kafka_prefix, pools=["p1"])
    topics = Topics(kafka_prefix)
    pool = topics.pool("p1")
    partitions = config.kafka.partitions
    # The pool's other member: an agent process of its own.
    other = kafka_agent(tmp_path, kafka_broker, kafka_prefix, "w2", pools=["p1"])
    events = Events(config.kafka)
    try:
        async with running(config) as agent:

            async def healthy() -> bool:
                return (await kafka_component(agent))["status"] == "healthy"

            await eventually(healthy)
            await trio.to_thread.run_sync(other.start)

            async def pool_shared() -> bool:
                # w2 joined: the group moved some of the pool's partitions to it.
                return any(e.get("group") == topics.pool_group("p1")
                           for e in other.events("kafka.assigned"))  # fmt: skip

            await eventually(pool_shared, within=60, every=0.5)
            before = [f"pool-before-{i}" for i in range(partitions)]
            await trio.to_thread.run_sync(send_to_every_partition, kafka_broker, pool, before)
            await trio.to_thread.run_sync(
                lambda: send_signed(config.kafka, topics.host("w1"), [echo("before")])
            )
            await trio.to_thread.run_sync(lambda: events.read([*before, "before"], timeout=60))
            # Both are members: each took the jobs of the partitions it holds.
            assert set(ran_on(events, before).values()) == {"w1", "w2"}
            await trio.to_thread.run_sync(decommission, config.kafka, "w1")

            async def decommissioned() -> bool:
                return "decommissioned" in (await kafka_component(agent))["reason"]

            await eventually(decommissioned)
            component = await kafka_component(agent)
            assert component["status"] == "degraded"
            assert "takes no fleet jobs" in component["reason"]
            after = [f"pool-after-{i}" for i in range(partitions)]
            await trio.to_thread.run_sync(send_to_every_partition, kafka_broker, pool, after)
            await trio.to_thread.run_sync(
                lambda: send_signed(config.kafka, topics.host("w1"), [echo("after")])
            )
            # It left the pool: every partition's job is taken by w2, none by w1. (A static
            # member sends no LeaveGroup: its partitions move once its session times out.)
            await trio.to_thread.run_sync(lambda: events.read(after, timeout=120))
            assert set(ran_on(events, after).values()) == {"w2"}
            for job_id in after:
                with pytest.raises(NotFoundError):
                    await agent.intake.status(job_id)

            async def shown_alive() -> bool:
                hosts = await trio.to_thread.run_sync(
                    lambda: read_fleet(config.kafka, record_size=False)
                )
                shown = {h.worker_id: h.status for h in hosts}
                return shown == {"w1": "decommissioned-but-alive", "w2": "live"}

            # Its heartbeats go on (the map shows it), and the host job is not taken.
            await eventually(shown_alive, within=30, every=0.5)
            await trio.sleep(3)
            with pytest.raises(NotFoundError):
                await agent.intake.status("after")
        # Restarted, it rejoins: the held host job runs, the map shows it live again,
        # and it is a pool member again (it takes the jobs of the partitions it gets).
        async with running(config) as agent:
            await eventually(healthy_again(agent))
            await trio.to_thread.run_sync(lambda: events.read(["after"], timeout=60))
            assert ran_on(events, ["after"]) == {"after": "w1"}
            hosts = await trio.to_thread.run_sync(
                lambda: read_fleet(config.kafka, record_size=False)
            )
            assert {h.worker_id: h.status for h in hosts} == {"w1": "live", "w2": "live"}
            # Its own consumer holds the host topic, the broadcast's partitions and the
            # fleet records; more means the pool gave it some of its partitions back.
            own = 1 + partitions + 1

            async def in_the_pool() -> bool:
                return int((await kafka_component(agent))["assigned_partitions"]) > own

            await eventually(in_the_pool, within=90, every=0.5)
            rejoined = [f"pool-rejoined-{i}" for i in range(partitions)]
            await trio.to_thread.run_sync(send_to_every_partition, kafka_broker, pool, rejoined)
            await trio.to_thread.run_sync(lambda: events.read(rejoined, timeout=60))
            assert set(ran_on(events, rejoined).values()) == {"w1", "w2"}
    finally:
        other.kill()


def healthy_again(agent: Agent) -> Any:
    async def check() -> bool:
        return (await kafka_component(agent))["status"] == "healthy"

    return check


@pytest.mark.slow
async def test_a_real_agents_record_names_its_allowlist_by_digest_and_stays_under_2_kb(
    config: Config, kafka_broker: str, kafka_prefix: str
) -> None:
    config = with_kafka(config, kafka_broker, kafka_prefix)
    only_echo = AllowRule.model_validate({"transports": ["kafka"], "operations": ["system.echo"]})
    # A host as installed: the default image roots (a test's are long temporary
    # paths, and they are in the record) and the example runbooks.
    policy = config.policy.model_copy(
        update={"allow": [only_echo], "image_roots": PolicyConfig().image_roots}
    )
    runbooks = RunbooksConfig(dirs=[Path(__file__).parents[3] / "etc/hostagent/runbooks"])
    config = config.model_copy(update={"policy": policy, "runbooks": runbooks})

    def host(schemas: bool) -> Any:
        try:
            hosts = read_fleet(config.kafka, record_size=False, schemas=schemas)
        except UnavailableError:  # the agent's topics are new: no leader elected yet
            return None
        return next((h for h in hosts if h.worker_id == "w1"), None)

    async with running(config) as agent:
        await eventually(lambda: trio.to_thread.run_sync(host, False), within=60, every=0.5)
        operations = agent.registry.operations
    record = (await trio.to_thread.run_sync(host, False)).capabilities
    assert "allowed_operations" not in record
    assert "runbooks" not in record
    assert "image_roots" not in record
    assert len(canonical(record)) <= 2048  # the bound for a host record
    resolved = (await trio.to_thread.run_sync(host, True)).capabilities
    assert resolved["policy_digest"] == record["policy_digest"]
    assert resolved["allowed_operations"]["kafka"] == ["system.echo"]
    assert resolved["allowed_operations"]["spool"] == operations
    # The configured roots, and the directories of libvirt's pools.
    assert {str(root) for root in PolicyConfig().image_roots} <= set(resolved["image_roots"])
    assert {runbook["name"] for runbook in resolved["runbooks"]} == {
        "inspect-volume",
        "retire-vm",
        "snapshot-resize",
    }
    # The same from the command line.
    connect = ["--bootstrap", kafka_broker, "--topic-prefix", kafka_prefix]
    shown = subprocess.run(
        [sys.executable, "-m", "agent", "fleet", "--schemas", *connect],
        capture_output=True,
        check=True,
        timeout=60,
    )
    (listed,) = [h for h in json.loads(shown.stdout) if h["worker_id"] == "w1"]
    assert listed["capabilities"]["allowed_operations"]["kafka"] == ["system.echo"]
    assert set(listed["schemas"]) == set(operations)


@pytest.mark.slow
async def test_a_capabilities_change_is_republished_without_following_the_event_bus(
    config: Config, kafka_broker: str, kafka_prefix: str
) -> None:
    config = with_kafka(config, kafka_broker, kafka_prefix, capabilities_debounce_seconds=0.1)

    def digest() -> str | None:
        try:
            hosts = read_fleet(config.kafka, record_size=False)
        except UnavailableError:  # the agent's topics are new: no leader elected yet
            return None
        host = next((h for h in hosts if h.worker_id == "w1"), None)
        return host.capabilities.get("policy_digest") if host else None

    async with running(config) as agent:
        await eventually(lambda: trio.to_thread.run_sync(digest), within=60, every=0.5)
        first = await trio.to_thread.run_sync(digest)
        # The announcer waits on the fingerprint: with no stream open, nothing
        # subscribes to the bus, so no job's events are built.
        assert not agent.bus.listening
        only_echo = AllowRule.model_validate({"transports": ["kafka"], "operations": ["system.*"]})
        policy = config.policy.model_copy(update={"allow": [only_echo]})
        agent.capabilities.reload(config.model_copy(update={"policy": policy}))

        async def republished() -> bool:
            return await trio.to_thread.run_sync(digest) not in {first, None}

        await eventually(republished, within=60, every=0.5)
