"""SSE frames of unfiltered streams: built once for all, the same bytes as built alone."""

from __future__ import annotations

from agent.core.events import EventBus, Feed
from agent.transports.http.sse import _data, _SharedFrames


def alone(feed: Feed, first: int, end: int, cursor: int) -> bytes:
    """What one stream would send building its frames itself."""
    events = feed.events_between(first, end)
    return b"".join(b"id: %d\n" % cursor + _data(event) for event in events)


def status(number: int) -> dict[str, object]:
    return {"type": "status", "job_id": f"j{number}", "data": {"status": "Running", "n": number}}


def test_streams_slice_one_encoding_with_their_own_id_lines() -> None:
    bus = EventBus()
    with bus.subscribe(buffer=16) as one, bus.subscribe(buffer=16) as two:
        frames = one.receive.kept(_SharedFrames, _SharedFrames)
        assert two.receive.kept(_SharedFrames, _SharedFrames) is frames
        for number in range(10):
            bus.publish(status(number))
        feed = one.receive
        assert frames.between(feed, 0, 4, 7) == alone(feed, 0, 4, 7)
        assert frames.between(two.receive, 2, 10, 7) == alone(feed, 2, 10, 7)
        assert frames.between(feed, 4, 10, 9) == alone(feed, 4, 10, 9)  # another id line
        assert frames.between(feed, 4, 4, 7) == b""


def test_a_run_holding_a_logged_event_is_left_to_the_stream() -> None:
    bus = EventBus()
    with bus.subscribe(buffer=16) as one:
        frames = one.receive.kept(_SharedFrames, _SharedFrames)
        bus.publish(status(0))
        bus.publish({"type": "progress", "job_id": "j0", "data": {"percent": 5}})
        bus.publish(status(1))
        feed = one.receive
        assert frames.between(feed, 0, 3, 1) is None  # sent from the durable log, with its id
        assert frames.between(feed, 2, 3, 1) == alone(feed, 2, 3, 1)
        assert frames.between(feed, 0, 1, 1) == alone(feed, 0, 1, 1)


def test_frames_of_events_the_bus_let_go_are_dropped_and_the_rest_stay_right() -> None:
    bus = EventBus()
    with bus.subscribe(buffer=8) as one:
        feed = one.receive
        frames = feed.kept(_SharedFrames, _SharedFrames)
        for number in range(200):
            bus.publish(status(number))
            feed.take(100)
            if number % 3 == 2:
                assert frames.between(feed, number - 2, number + 1, 0) == alone(
                    feed, number - 2, number + 1, 0
                )
        [run] = frames._runs.values()
        assert run.start >= 200 - 2 * 8  # no more than about twice the bus's window kept


def test_streams_taking_the_same_run_send_one_bytes_object() -> None:
    bus = EventBus()
    with bus.subscribe(buffer=16) as one, bus.subscribe(buffer=16) as two:
        frames = one.receive.kept(_SharedFrames, _SharedFrames)
        for number in range(6):
            bus.publish(status(number))
        sent = frames.between(one.receive, 0, 6, 3)
        assert frames.between(two.receive, 0, 6, 3) is sent  # no copy per stream
        assert sent == alone(one.receive, 0, 6, 3)
        other = frames.between(two.receive, 0, 6, 4)  # another id line: its own bytes
        assert other == alone(one.receive, 0, 6, 4)
