"""Live events: encoded once for all, a hundred subscribers keep up, a stuck one is cut off.

(Laggards cut off with the error over SSE: tests/transports/http/test_events.py.)"""

from __future__ import annotations

import json
from contextlib import ExitStack

import pytest
import trio

from agent.core.events import EventBus, SharedEvent, Subscription, encode_json

SUBSCRIBERS = 100
EVENTS = 2000


@pytest.mark.slow
async def test_a_hundred_readers_keep_up_and_a_stuck_one_is_cut_off() -> None:
    bus = EventBus()
    received = [0] * SUBSCRIBERS
    ended_early: list[int] = []

    async def reader(index: int, subscription: Subscription) -> None:
        async for _ in subscription.receive:
            received[index] += 1
        if subscription.lagged:
            ended_early.append(index)

    with bus.subscribe(buffer=64) as stuck, ExitStack() as stack:
        async with trio.open_nursery() as nursery:
            for index in range(SUBSCRIBERS):
                subscription = stack.enter_context(bus.subscribe(buffer=1024))
                nursery.start_soon(reader, index, subscription)
            # Moderate load: bursts of 100 events, the loop running in between.
            for number in range(EVENTS):
                bus.publish({"type": "status", "job_id": f"j{number}", "data": {}})
                if number % 100 == 99:
                    await trio.testing.wait_all_tasks_blocked()
            await trio.testing.wait_all_tasks_blocked()
            bus.close()
    assert ended_early == []
    assert received == [EVENTS] * SUBSCRIBERS
    assert stuck.lagged


def test_an_event_is_encoded_once_for_all_subscribers() -> None:
    event = SharedEvent({"type": "created", "job_id": "j", "data": {"n": 1}})
    assert encode_json(event) is encode_json(event)
    assert json.loads(encode_json(event)) == event


def test_an_integer_orjson_refuses_is_still_encoded() -> None:
    event = SharedEvent({"type": "status", "job_id": "j", "data": {"result": 2**70}})
    assert json.loads(event.json)["data"]["result"] == 2**70
    assert event.text == event.json.decode()


async def test_gathering_ends_when_half_the_buffer_waits_not_at_the_deadline() -> None:
    bus = EventBus()
    with bus.subscribe(buffer=8) as subscription:
        feed = subscription.receive
        gathered_at: list[float] = []

        async def gather() -> None:
            await feed.gather(100.0)
            gathered_at.append(trio.current_time())

        began = trio.current_time()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(gather)
            await trio.testing.wait_all_tasks_blocked()
            for number in range(3):
                bus.publish({"type": "status", "job_id": f"j{number}", "data": {}})
            await trio.testing.wait_all_tasks_blocked()
            assert gathered_at == []  # 3 waiting: below half of 8, still gathering
            bus.publish({"type": "status", "job_id": "j3", "data": {}})
        # Woken by the fourth event, long before its 100 s, and not cut off.
        assert gathered_at[0] - began < 1.0
        assert [event["job_id"] for event in feed.receive_many(8)] == ["j0", "j1", "j2", "j3"]


async def test_a_gathering_subscriber_is_released_when_the_bus_closes() -> None:
    bus = EventBus()
    with bus.subscribe(buffer=1024) as subscription:
        bus.publish({"type": "status", "job_id": "j", "data": {}})
        with trio.fail_after(1):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(subscription.receive.gather, 3600.0)
                await trio.testing.wait_all_tasks_blocked()
                bus.close()


def test_streams_in_the_same_place_share_one_build_of_their_bytes() -> None:
    bus = EventBus()
    built: list[int] = []

    def make() -> bytes:
        built.append(1)
        return b"frames"

    first = bus.shared(("sse", 0, 10, 0), make)
    assert bus.shared(("sse", 0, 10, 0), make) is first
    bus.shared(("sse", 0, 10, 7), make)  # another log position: its own bytes
    assert len(built) == 2


def test_feeds_take_positions_and_share_what_the_bus_keeps() -> None:
    bus = EventBus()
    with bus.subscribe(buffer=8) as one, bus.subscribe(buffer=8) as two:
        for number in range(5):
            bus.publish({"type": "status", "job_id": f"j{number}", "data": {}})
        assert one.receive.take(3) == (0, 3)
        assert one.receive.take(10) == (3, 5)
        assert two.receive.take(10) == (0, 5)
        assert [e["job_id"] for e in two.receive.events_between(1, 3)] == ["j1", "j2"]
        made = one.receive.kept("encoding", list)
        assert two.receive.kept("encoding", list) is made  # one for every subscriber
        for number in range(5, 20):
            bus.publish({"type": "status", "job_id": f"j{number}", "data": {}})
        assert one.receive.oldest == 12  # the bus holds the last 8
        with pytest.raises(trio.EndOfChannel):
            one.receive.take(1)  # 15 behind, past its buffer: cut off
        assert one.lagged


def _status(number: int) -> dict[str, object]:
    return {"type": "status", "job_id": f"j{number}", "data": {}}


async def test_subscribers_woken_by_one_publish_take_the_same_run() -> None:
    bus = EventBus()
    keys: list[object] = []
    runs: list[tuple[int, int]] = []
    with bus.subscribe(buffer=64) as one, bus.subscribe(buffer=64) as two:

        async def stream(subscription: Subscription) -> None:
            key = await subscription.receive.wait_woken()
            keys.append(key)
            runs.append(subscription.receive.take(64, at=key))
            bus.publish(_status(len(runs) + 10))  # published while the other takes its turn

        async with trio.open_nursery() as nursery:
            nursery.start_soon(stream, one)
            nursery.start_soon(stream, two)
            await trio.testing.wait_all_tasks_blocked()
            bus.publish(_status(0))
            bus.publish(_status(1))
        assert keys[0] == keys[1]
        assert runs == [(0, 2), (0, 2)]  # not (0, 3) for the second: the same run
        # Taken without a key (or past the mark), everything waiting is taken.
        assert one.receive.take(64) == (2, 4)
        assert two.receive.take(64, at=keys[0]) == (2, 4)


async def test_gathering_subscribers_wake_at_the_same_tick_and_take_the_same_run(
    autojump_clock: trio.testing.MockClock,
) -> None:
    bus = EventBus()
    woken: list[tuple[float, object, tuple[int, int]]] = []
    with bus.subscribe(buffer=64) as one, bus.subscribe(buffer=64) as two:

        async def stream(subscription: Subscription, delay: float) -> None:
            await trio.sleep(delay)  # their last writes at different moments
            key = await subscription.receive.gather(0.2)
            woken.append((trio.current_time(), key, subscription.receive.take(64, at=key)))
            bus.publish(_status(99))

        began = trio.current_time()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(stream, one, 0.01)
            nursery.start_soon(stream, two, 0.13)
            await trio.sleep(0.15)
            bus.publish(_status(0))
        assert woken[0][:2] == woken[1][:2]  # one moment, one key
        assert woken[0][0] - began <= 0.2 + 1e-9
        assert woken[0][2] == woken[1][2] == (0, 1)
