"""Subscribers following given jobs: their events found in one index per run, in order."""

from __future__ import annotations

from agent.core.events import EventBus, JobIndex


def event(kind: str, job_id: str, number: int) -> dict[str, object]:
    return {"type": kind, "job_id": job_id, "data": {"n": number}}


def test_a_followed_jobs_events_come_in_the_bus_order_as_a_scan_would_find_them() -> None:
    bus = EventBus()
    with bus.subscribe(buffer=64) as one:
        feed = one.receive
        for number in range(30):
            bus.publish(event("status", f"j{number % 4}", number))
        first, end = feed.take(64)
        scanned = [e for e in feed.events_between(first, end) if e["job_id"] in {"j1", "j3"}]
        found = feed.events_of({"j3", "j1"}, first, end)
        assert [e["data"]["n"] for e in found] == [e["data"]["n"] for e in scanned]
        assert [e["data"]["n"] for e in feed.events_of({"j2"}, first, end)] == list(range(2, 30, 4))
        assert feed.events_of({"nobody"}, first, end) == []
        assert feed.events_of(set(), first, end) == []
        assert feed.events_of({"j0"}, 4, 9) == feed.events_between(4, 5) + feed.events_between(8, 9)


def test_subscribers_taking_one_run_share_one_index_of_it() -> None:
    bus = EventBus()
    with bus.subscribe(buffer=64) as one, bus.subscribe(buffer=64) as two:
        for number in range(10):
            bus.publish(event("status", f"j{number % 2}", number))
        index = one.receive.kept(JobIndex, JobIndex)
        assert two.receive.kept(JobIndex, JobIndex) is index
        assert one.receive.events_of({"j0"}, 0, 10) == two.receive.events_of({"j0"}, 0, 10)
        assert list(index._runs) == [(0, 10)]  # indexed once for both
        for first in range(1, 8):
            one.receive.events_of({"j1"}, first, 10)
        assert len(index._runs) == 4  # the last few runs only
