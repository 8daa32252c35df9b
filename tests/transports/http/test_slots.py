"""The job API's slots: a submit waiting for its commit does not hold one.

max_active_requests bounds the requests being read, validated and answered;
a submit whose job waits for the store's commit does no work, so it gives its
slot back for the wait (and the next submits share that commit's fsync), and
takes one again to answer.
Here the store's commit is held up for real: the test holds SQLite's write
lock on the agent's database, as a slow disk or a checkpoint would.
"""

from __future__ import annotations

import sqlite3

import pytest
import trio

from agent.config import Config
from agent.transports.http.routes import COMMIT_WAITERS_PER_SLOT, JobSlots
from tests.http_helpers import client, http_of, serving, with_http
from tests.jobs import echo_job


async def test_a_submit_waiting_for_its_commit_leaves_its_slot_to_the_next_request(
    config: Config,
) -> None:
    settings = with_http(config, max_active_requests=1)
    async with serving(settings) as agent, client(agent) as http:
        api = http_of(agent)._api
        assert api is not None
        waiters = api.slots.waiters.value
        lock = sqlite3.connect(settings.store_path, isolation_level=None)
        lock.execute("BEGIN IMMEDIATE")  # the store's writer now waits (busy_timeout 5 s)
        try:
            answers: dict[str, int] = {}

            async def submit() -> None:
                answers["first"] = (
                    await http.post("/api/v1/jobs", json=echo_job("slow"))
                ).status_code

            async with trio.open_nursery() as nursery:
                nursery.start_soon(submit)
                # Both within the writer's busy_timeout (5 s): the first submit still waits.
                with trio.fail_after(4):
                    while api.slots.waiters.value == waiters:  # until it waits for its commit
                        await trio.sleep(0.01)
                    assert api.slots.working.value == 1  # its slot given back for the wait
                    refused = await http.post("/api/v1/jobs", json={"version": "1.0"})
                assert refused.status_code == 400
                assert "first" not in answers
                lock.execute("ROLLBACK")
        finally:
            lock.close()
        assert answers["first"] == 201
        assert (await http.get("/api/v1/jobs/slow")).status_code == 200
        with trio.fail_after(3):  # every slot given back once its answer is sent
            while api.slots.working.value == 0:
                await trio.sleep(0.01)


async def test_commit_waits_are_bounded_and_past_the_bound_a_request_keeps_its_slot() -> None:
    slots = JobSlots(1)
    waiting = COMMIT_WAITERS_PER_SLOT
    release = trio.Event()
    entered: list[int] = []

    async def request(number: int) -> None:
        lease = await slots.take()
        async with slots.committing():
            entered.append(number)
            await release.wait()
        assert lease.held  # taken again to answer
        lease.release()

    async with trio.open_nursery() as nursery:
        for number in range(waiting + 1):
            nursery.start_soon(request, number)
            await trio.testing.wait_all_tasks_blocked()
        # The first `waiting` gave their slot back; the last holds it, waiting for room.
        assert len(entered) == waiting
        assert slots.working.value == 0
        release.set()
    assert len(entered) == waiting + 1
    assert slots.working.value == 1


async def test_after_its_commit_a_request_answers_only_once_it_holds_a_slot_again() -> None:
    slots = JobSlots(1)
    committed = trio.Event()
    answered = trio.Event()

    async def submit() -> None:
        lease = await slots.take()
        async with slots.committing():
            await committed.wait()
        answered.set()
        lease.release()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(submit)
        await trio.testing.wait_all_tasks_blocked()
        other = await slots.take()  # the slot given back for the wait
        committed.set()
        await trio.testing.wait_all_tasks_blocked()
        assert not answered.is_set()
        other.release()
    assert answered.is_set()
    assert slots.working.value == 1


async def test_a_request_without_a_slot_just_waits() -> None:
    slots = JobSlots(1)
    async with slots.committing():
        assert slots.working.value == 1
    with pytest.raises(ValueError, match="released too many times"):
        slots.working.release()  # a release past the bound is refused
