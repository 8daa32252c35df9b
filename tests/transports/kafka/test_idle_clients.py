"""How many librdkafka clients an idle agent holds: its producer and its consumer,
also after a restart, when every topic it would create exists already."""

from __future__ import annotations

import contextlib
import gc
import os
from pathlib import Path

import pytest
import trio

from agent.transports.kafka import KafkaConfig
from agent.transports.kafka.transport import KafkaTransport
from tests.agentproc import AgentProcess
from tests.jobs import eventually
from tests.transports.kafka.fleetkit import kafka_agent


def librdkafka_clients(pid: int) -> int:
    """librdkafka runs one `rdk:main` thread per client (Producer, Consumer, AdminClient)."""
    count = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            count += (task / "comm").read_text().strip() == "rdk:main"
        except OSError:
            continue  # a thread that ended meanwhile
    return count


async def clients_once_assigned(agent: AgentProcess) -> int:
    """Start `agent`, wait until its consumer is assigned, answer its clients then."""
    agent.lines.clear()
    agent.start()
    assert agent.process is not None
    pid = agent.process.pid

    async def assigned() -> bool:
        return bool(agent.events("kafka.assigned"))

    await eventually(assigned, within=60)

    async def settled() -> bool:
        # The topic creation's AdminClient is closed before the consumer starts.
        return librdkafka_clients(pid) <= 2

    # The count below says how many when it does not settle.
    with contextlib.suppress(trio.TooSlowError):
        await eventually(settled, within=10)
    return librdkafka_clients(pid)


@pytest.mark.slow
async def test_a_restarted_idle_agent_holds_a_producer_and_a_consumer_only(
    tmp_path: Path, kafka_broker: str, kafka_prefix: str
) -> None:
    agent = kafka_agent(tmp_path, kafka_broker, kafka_prefix, "idle", heartbeat=10)
    try:
        assert await clients_once_assigned(agent) == 2
        agent.stop()
        # Every topic it would create exists now: the creation is refused for each.
        assert await clients_once_assigned(agent) == 2
    finally:
        agent.kill()


@pytest.mark.slow
async def test_topic_creation_closes_its_admin_client_when_the_topics_exist(
    kafka_broker: str, kafka_prefix: str
) -> None:
    """Refused creations (every restart) left a reference cycle that kept the
    AdminClient, four threads waking each second, until the cyclic GC ran."""
    settings = KafkaConfig(bootstrap_servers=kafka_broker, topic_prefix=kafka_prefix)
    transport = KafkaTransport(settings, worker_id="w", labels={}, max_result_bytes=1 << 20)
    before = librdkafka_clients(os.getpid())
    gc.disable()  # an idle agent's collector may not run for minutes
    try:
        for _start in range(2):  # the second finds every topic there
            await transport._ensure_topics(settings.client_config())
            assert librdkafka_clients(os.getpid()) == before
    finally:
        gc.enable()
