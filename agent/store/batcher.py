"""Group commit: queued operations run in batches, one thread hop per batch."""

from __future__ import annotations

import contextlib
import queue
import sqlite3
import threading
from collections.abc import Callable
from typing import Any

import trio

from agent.core.jobstore import Queued

_Batch = list[Queued]


class _OwnThread:
    """One thread that runs every batch of a Batcher: a batch is handed over with one
    queue put and comes back with one wake-up of the waiting task. trio.to_thread
    also takes a capacity limiter, copies the context and goes through its thread
    cache on each call, so a lone submit's batch cost two full thread hops."""

    def __init__(self, run_batch: Callable[[_Batch], _Batch], name: str) -> None:
        self._run_batch = run_batch
        self._name = name
        self._work: queue.SimpleQueue[tuple[_Batch, list[Any], Any, Any] | None] = (
            queue.SimpleQueue()
        )
        self._thread: threading.Thread | None = None

    async def run(self, batch: _Batch) -> _Batch:
        """Run `batch` in the thread; what it answers (or raises)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._serve, name=self._name, daemon=True)
            self._thread.start()
        answer: list[Any] = []
        task = trio.lowlevel.current_task()
        self._work.put((batch, answer, trio.lowlevel.current_trio_token(), task))
        # Not abortable: the batch holds others' writes too (the caller shields it).
        await trio.lowlevel.wait_task_rescheduled(lambda _: trio.lowlevel.Abort.FAILED)
        ok, value = answer[0]
        if not ok:
            raise value
        again: _Batch = value
        return again

    def close(self) -> None:
        """The thread ends once the batch it runs (if any) is done."""
        if self._thread is not None:
            self._work.put(None)
            self._thread = None

    def _serve(self) -> None:
        while (work := self._work.get()) is not None:
            batch, answer, token, task = work
            try:
                answer.append((True, self._run_batch(batch)))
            except BaseException as exc:  # noqa: BLE001 (raised in the waiting task)
                answer.append((False, exc))
            with contextlib.suppress(trio.RunFinishedError):  # nobody is left to tell
                token.run_sync_soon(trio.lowlevel.reschedule, task)


class Batcher:
    """Runs queued operations in batches, one thread hop per batch. A hop costs
    far more than a point query, and a commit's fsync the same for one row or
    many, so everything queued while one batch runs goes in the next.

    There is no batch task: one of the waiting callers runs each batch, then
    steps down, so no caller is kept longer than the batch holding its own
    operation (plus the one already running when it queued). `after_batch`
    runs on the trio thread once a batch has finished.

    `run_batch` returns the operations of the batch to run again: they go back
    to the head of the queue in their order (so a job's start still commits
    before its outcome), and their waiters try again after a backoff that grows
    while batches keep failing, unless someone else's batch takes them first."""

    def __init__(
        self,
        run_batch: Callable[[list[Queued]], list[Queued]],
        after_batch: Callable[[], None],
        *,
        own_thread: str | None = None,
    ) -> None:
        """`own_thread`: run the batches in one thread of that name (the store's
        writer), not in trio's worker threads."""
        self._run_batch = run_batch
        self._thread = None if own_thread is None else _OwnThread(self._call_run_batch, own_thread)
        self._after_batch = after_batch
        self._queue: list[Queued] = []
        self._running = False
        self._forming = False
        self._batch_ended = trio.Event()
        # The running batch's operations (by id), and where the callers whose
        # operations are queued for the batch after it wait: at its end one of them
        # is woken to run that batch, the others only once it has ended (each woke
        # at both ends before: twice per operation).
        self._in_flight: set[int] = set()
        self._next_lot = trio.lowlevel.ParkingLot()
        self._failed_batches = 0  # in a row
        self._retry_at = 0.0
        self.finished = 0  # operations run so far, committed or failed

    @property
    def busy(self) -> bool:
        """A batch is running now."""
        return self._running

    @property
    def forming(self) -> bool:
        """A batch is about to be taken: what is queued now still joins it."""
        return self._forming

    @property
    def waiting(self) -> int:
        """Operations queued for the next batch."""
        return len(self._queue)

    def queue(
        self, operation: Callable[[sqlite3.Connection], Any], *, retry: bool = False
    ) -> Queued:
        """Queue now: operations run in the order they are queued."""
        item = Queued(operation, retry=retry)
        self._queue.append(item)
        return item

    async def settle(self, item: Queued, *, linger: float = 0.0) -> Any:
        """Wait until `item` has run (running a batch when none is); its value.

        `linger`: when no batch is running, first wait up to that long for someone
        else's batch to take the item, so that it costs no commit of its own."""
        if linger and not self._running:
            with trio.move_on_after(linger):
                while not item.finished:
                    await self._batch_ended.wait()
        while not item.finished:
            if self._running:
                await self._wait_for_batch(item)
                continue
            if item.held and trio.current_time() < self._retry_at:
                with trio.move_on_at(self._retry_at):
                    await self._batch_ended.wait()
                continue
            self._running = True
            waiting: trio.lowlevel.ParkingLot | None = None
            try:
                # Shielded: the batch holds others' operations too.
                with trio.CancelScope(shield=True):
                    # One scheduler pass first: operations made ready by the same
                    # event (a job ending, a batch arriving) join this batch.
                    self._forming = True
                    await trio.lowlevel.checkpoint()
                    self._forming = False
                    batch, self._queue = self._queue, []
                    self._in_flight = {id(queued) for queued in batch}
                    # Who waits for this batch: those parked for the operations it takes.
                    waiting, self._next_lot = self._next_lot, trio.lowlevel.ParkingLot()
                    if self._thread is not None:
                        again = await self._thread.run(batch)
                    else:
                        again = await trio.to_thread.run_sync(self._run_batch, batch)
                    for queued in batch:
                        queued.finished = True
                    self.finished += len(batch) - len(again)
                    self._hold(again)
                    self._after_batch()
            finally:
                self._running = False
                self._in_flight = set()
                ended, self._batch_ended = self._batch_ended, trio.Event()
                ended.set()
                if waiting is not None:
                    waiting.unpark_all()  # their operations ran (or are held: try again)
                if self._queue:  # one of those who queued meanwhile runs the next batch
                    self._next_lot.unpark()
        if item.error is not None:
            raise item.error
        return item.value

    async def _wait_for_batch(self, item: Queued) -> None:
        """While a batch runs: until it ends if it holds `item`; else until the batch
        after it ends, or until this caller is woken to run that batch."""
        if id(item) in self._in_flight:
            await self._batch_ended.wait()
        else:
            await self._next_lot.park()

    def close(self) -> None:
        """Let the batches' own thread go (the Batcher can still be used: it starts again)."""
        if self._thread is not None:
            self._thread.close()

    def _call_run_batch(self, batch: list[Queued]) -> list[Queued]:
        # Looked up per call: a test may wrap run_batch to count the batches.
        return self._run_batch(batch)

    def _hold(self, again: list[Queued]) -> None:
        if not again:
            self._failed_batches = 0
            return
        for queued in again:
            queued.finished, queued.held = False, True
            queued.value = queued.error = None
        self._queue[:0] = again
        self._failed_batches += 1
        self._retry_at = trio.current_time() + min(5.0, 0.05 * 2**self._failed_batches)
