"""The transport's clients on a real broker: an idle producer polls nothing, and a
busy agent takes its batches without the consumer pausing (a resume waits out a
fetch parked at the broker: jobs/s fell tenfold)."""

from __future__ import annotations

import pytest
import trio
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from agent.transports.kafka.consumer import ConsumerThread, Record
from agent.transports.kafka.producer import EventProducer
from tests.jobs import eventually


@pytest.mark.slow
async def test_idle_producer_polls_only_while_messages_are_in_flight(
    kafka_broker: str, kafka_prefix: str
) -> None:
    producer = EventProducer({"bootstrap.servers": kafka_broker})
    topic = f"{kafka_prefix}.events"

    async def idle() -> bool:
        return not producer.polling

    async with trio.open_nursery() as nursery:
        await nursery.start(producer.run)
        assert not producer.polling
        for round_ in range(2):
            await producer.send_many([(topic, "k", f"v{round_}".encode())])
            assert producer.delivered == round_ + 1
            # Nothing in flight: the poll thread has ended (an idle agent wakes for nothing).
            await eventually(idle, within=10, every=0.05)
        nursery.cancel_scope.cancel()


@pytest.mark.slow
async def test_a_busy_agent_takes_every_batch_without_a_pause(
    kafka_broker: str, kafka_prefix: str
) -> None:
    topic = f"{kafka_prefix}.jobs"
    config = {"bootstrap.servers": kafka_broker}
    admin = AdminClient(config)
    for future in admin.create_topics([NewTopic(topic, num_partitions=1)]).values():
        await trio.to_thread.run_sync(future.result)
    sender = Producer(config)
    for n in range(2000):
        sender.produce(topic, key=str(n), value=b"x" * 200)
    assert await trio.to_thread.run_sync(sender.flush, 30) == 0
    consumer = ConsumerThread(
        config, topics=[topic], group_id=f"{kafka_prefix}.g", instance_id="w", batch=100,
        assign=True,
    )  # fmt: skip
    send, receive = trio.open_memory_channel[list[Record]](1)
    seen = 0
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            await nursery.start(consumer.run, send)
            async for batch in receive:
                # An agent slower than the broker: the thread always has a batch waiting.
                await trio.sleep(0.02)
                consumer.store(batch)
                seen += len(batch)
                if seen >= 2000:
                    break
            nursery.cancel_scope.cancel()
    assert seen == 2000
    assert consumer.pauses == 0
