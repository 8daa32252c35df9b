"""An idle consumer thread sleeps on librdkafka's wake-up pipe (wakeup.py) instead of
poll()'s 200 ms slices, and still sees a record, a store and a cancel at once."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from agent.transports.kafka.consumer import _IDLE_WAIT_SECONDS, ConsumerThread, Record
from agent.transports.kafka.wakeup import Wakeup


def switches(native_id: int) -> int:
    """Context switches of one thread of this process: each is a wake-up."""
    status = Path(f"/proc/self/task/{native_id}/status").read_text().splitlines()
    return sum(int(line.split()[1]) for line in status if "ctxt_switches" in line)


@pytest.mark.slow
async def test_an_idle_consumer_sleeps_until_a_record_store_or_cancel_wakes_it(
    kafka_broker: str, kafka_prefix: str
) -> None:
    topic = f"{kafka_prefix}.jobs"
    group = f"{kafka_prefix}.g"
    config = {"bootstrap.servers": kafka_broker}
    admin = AdminClient(config)
    for future in admin.create_topics([NewTopic(topic, num_partitions=1)]).values():
        await trio.to_thread.run_sync(future.result)
    consumer = ConsumerThread(
        config, topics=[topic], group_id=group, instance_id="w", batch=10, assign=True
    )
    send, receive = trio.open_memory_channel[list[Record]](1)
    # Each wait below is well under the idle thread's own timeout: only a wake-up
    # (librdkafka's, or the agent's) can end it in time.
    assert _IDLE_WAIT_SECONDS >= 30
    async with trio.open_nursery() as nursery:
        await nursery.start(consumer.run, send)
        with trio.fail_after(20):
            while consumer.wakeup is None or not consumer.assigned:
                await trio.sleep(0.05)
        assert consumer.native_id is not None
        await trio.sleep(1)  # the first empty fetches settle
        before = switches(consumer.native_id)
        await trio.sleep(3)
        # poll() would have woken it 15 times (200 ms slices).
        assert switches(consumer.native_id) - before < 8

        sender = Producer(config)
        sender.produce(topic, key=b"k", value=b"v")
        assert await trio.to_thread.run_sync(sender.flush, 10) == 0
        with trio.fail_after(10):
            batch = await receive.receive()
        assert [r.value for r in batch] == [b"v"]

        consumer.store(batch)
        reader = Consumer({**config, "group.id": group})

        async def committed() -> int:
            found = await trio.to_thread.run_sync(
                lambda: reader.committed([TopicPartition(topic, 0)], timeout=10)
            )
            return int(found[0].offset)

        # Stored at once (the store wakes the thread), committed within the auto-commit interval.
        with trio.fail_after(10):
            while await committed() != 1:
                await trio.sleep(0.2)
        reader.close()

        cancelled_at = trio.current_time()
        nursery.cancel_scope.cancel()
    # The cancel woke the sleeping thread (else it ends after _IDLE_WAIT_SECONDS).
    assert trio.current_time() - cancelled_at < _IDLE_WAIT_SECONDS / 2
    assert consumer.wakeup is None  # closed with the consumer


def test_a_handle_that_does_not_answer_to_its_name_is_not_used() -> None:
    """The client handle is read from the Python object and checked by its name: a
    mismatch leaves the thread polling as before, never a pipe on the wrong client."""
    consumer = Consumer({"bootstrap.servers": "127.0.0.1:1", "group.id": "g", "client.id": "me"})
    try:
        assert Wakeup.open(consumer, "someone-else") is None
        wakeup = Wakeup.open(consumer, "me")
        assert wakeup is not None
        wakeup.close()
        wakeup.wake()  # after close: a no-op, not a write to a reused descriptor
    finally:
        consumer.close()
