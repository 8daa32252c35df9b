"""Live events: encoded once for all, a hundred subscribers keep up, a stuck one is cut off.

(Laggards cut off with the error over SSE: tests/transports/http/test_events.py.)"""

from __future__ import annotations

import json
from contextlib import ExitStack

import trio

from agent.events import EventBus, SharedEvent, Subscription, encode_json

SUBSCRIBERS = 100
EVENTS = 2000


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
