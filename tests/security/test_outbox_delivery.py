"""Issue 20: an outbox entry that cannot be delivered is retried with backoff, then
parked with the reason in health and the log; never the end of the delivery loop."""

from __future__ import annotations

import errno
import itertools
from typing import Any

import trio

from agent.core.outbox import Outbox, OutboxDelivery, RetryPolicy, event_data
from agent.jobs import JobState, JobStatus, OutboxEntry


def _entry(entry_id: int, job_id: str, event: str = "completed", **data: Any) -> OutboxEntry:
    status = JobStatus.COMPLETED if event == "completed" else JobStatus.PENDING
    state = JobState(
        job_id=job_id,
        operation="system.echo",
        status=status,
        submitted_at="2026-01-01T00:00:00Z",
        transport="spool",
    )
    return OutboxEntry(id=entry_id, event=event, state=state, data=data)


class ListSource:
    """An outbox source holding a fixed list of entries."""

    def __init__(self, entries: list[OutboxEntry]) -> None:
        self.entries = entries
        self.acked = 0
        self.all_acked = trio.Event()

    async def outbox_entries(self, consumer: str, after_id: int, limit: int) -> list[OutboxEntry]:
        return [entry for entry in self.entries if entry.id > after_id][:limit]

    async def ack_outbox(self, consumer: str, up_to_id: int) -> None:
        self.acked = up_to_id
        if up_to_id == self.entries[-1].id:
            self.all_acked.set()

    def outbox_changed(self, consumer: str) -> trio.Event:
        return trio.Event()  # never set: the list does not grow


async def _deliver_all(delivery: OutboxDelivery, source: ListSource) -> None:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(delivery.run)
        await source.all_acked.wait()
        nursery.cancel_scope.cancel()


async def test_a_poisoned_entry_is_parked_and_the_others_delivered(
    autojump_clock: trio.abc.Clock,
) -> None:
    source = ListSource([_entry(n, "poison" if n == 2 else f"job-{n}") for n in range(1, 5)])
    delivered: list[str] = []
    tries: list[float] = []

    async def deliver(entries: list[OutboxEntry]) -> None:
        if any(entry.job_id == "poison" for entry in entries):
            tries.append(trio.current_time())
            raise OSError(errno.EISDIR, "Is a directory", "done/poison.result.json")
        delivered.extend(entry.job_id for entry in entries)

    delivery = OutboxDelivery(Outbox(source, "spool"), deliver, policy=RetryPolicy(attempts=4))
    await _deliver_all(delivery, source)
    assert delivered == ["job-1", "job-3", "job-4"]
    assert source.acked == 4
    # The batch, then the entry alone four times, with doubling pauses between.
    gaps = [round(later - earlier, 3) for earlier, later in itertools.pairwise(tries[1:])]
    assert (len(tries), gaps) == (5, [0.5, 1.0, 2.0])
    (parked,) = delivery.parked
    assert (parked.job_id, parked.event, parked.entry_id) == ("poison", "completed", 2)
    assert "Is a directory" in parked.reason
    status, reason, figures = delivery.health()
    assert status == "degraded"
    assert "poison" in reason
    assert "Is a directory" in reason
    assert figures["parked_total"] == 1


async def test_a_host_condition_is_waited_out_never_parked(
    autojump_clock: trio.abc.Clock,
) -> None:
    source = ListSource([_entry(1, "job-1"), _entry(2, "job-2")])
    failures = 20  # far beyond the attempts: a full disk for minutes
    seen: list[tuple[str, str | None]] = []
    delivered: list[str] = []
    delivery: OutboxDelivery

    async def deliver(entries: list[OutboxEntry]) -> None:
        nonlocal failures
        seen.append(delivery.health()[:2])
        if failures:
            failures -= 1
            raise OSError(errno.ENOSPC, "No space left on device")
        delivered.extend(entry.job_id for entry in entries)

    delivery = OutboxDelivery(
        Outbox(source, "spool"),
        deliver,
        policy=RetryPolicy(attempts=3, max_delay=4.0),
        waits=lambda exc: isinstance(exc, OSError) and exc.errno == errno.ENOSPC,
    )
    start = trio.current_time()
    await _deliver_all(delivery, source)
    assert delivered == ["job-1", "job-2"]
    assert delivery.parked_total == 0
    assert trio.current_time() - start > 60  # backed off, capped at 4 s a try
    assert (
        "degraded",
        "delivery failing, retrying: OSError: [Errno 28] No space left on device",
    ) in seen
    assert delivery.health()[0] == "healthy"


async def test_cancellation_is_never_swallowed() -> None:
    source = ListSource([_entry(1, "job-1")])

    async def deliver(entries: list[OutboxEntry]) -> None:
        await trio.sleep_forever()

    delivery = OutboxDelivery(Outbox(source, "spool"), deliver)
    with trio.move_on_after(0.01) as scope:
        await delivery.run()
    assert scope.cancelled_caught
    assert (source.acked, delivery.parked_total) == (0, 0)


def test_an_event_carries_a_result_up_to_the_limit_and_a_reference_beyond() -> None:
    small = _entry(1, "small", result={"message": "x" * 10})
    assert event_data(small, max_result_bytes=100) is small.data
    big = _entry(2, "big", result={"message": "x" * 200})
    data = event_data(big, max_result_bytes=100)
    assert data["result"] is None
    assert data["result_truncated"] is True
    assert data["result_bytes"] == len('{"message":""}') + 200
    assert data["result_url"] == "/api/v1/jobs/big/result"
    # Beyond orjson (a lone surrogate, a huge integer): still measured, never raised.
    odd = _entry(3, "odd", result={"text": "\ud800" * 50, "n": 1 << 70})
    assert event_data(odd, max_result_bytes=100)["result_truncated"] is True
    running = _entry(4, "running", event="accepted", origin="x" * 500)
    assert event_data(running, max_result_bytes=10) is running.data
