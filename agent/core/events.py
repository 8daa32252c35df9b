"""In-process event bus: job lifecycle, progress and log events, fanned out.

Publishing never waits and costs the same for any number of subscribers:
each event is appended once to a shared log, encoded once, and every
subscriber reads it from there; one that falls more than its buffer behind
is cut off (its stream ends) instead of slowing the dispatcher down.
"""

from __future__ import annotations

import heapq
import json
import math
from collections import deque
from collections.abc import Callable, Collection, Hashable, Iterator, Mapping
from contextlib import contextmanager
from itertools import count, islice
from typing import Any, TypeVar

import orjson
import structlog
import trio

Event = dict[str, Any]
_T = TypeVar("_T")
log = structlog.get_logger("agent.core.events")
# Wake-up keys whose positions the bus remembers (see EventBus.mark).
_MARKS = 8
# Runs whose events JobIndex holds by job: streams woken together take one run.
_INDEXED_RUNS = 4


class SharedEvent(dict[str, Any]):
    """A published event as every subscriber receives it: its JSON is encoded
    once, on first use, for all of them (it used to be once per subscriber)."""

    __slots__ = ("_forms", "_json", "_text")
    _forms: dict[str, bytes]
    _json: bytes
    _text: str

    @property
    def json(self) -> bytes:
        try:
            return self._json
        except AttributeError:
            self._json = _dumps(self)
            return self._json

    @property
    def text(self) -> str:
        """The JSON as str (a websocket text message), decoded once for all."""
        try:
            return self._text
        except AttributeError:
            self._text = self.json.decode()
            return self._text

    def form(self, name: str, make: Callable[[bytes], bytes]) -> bytes:
        """A transport's wire form of the event (an SSE frame), also made once for all."""
        try:
            forms = self._forms
        except AttributeError:
            forms = self._forms = {}
        found = forms.get(name)
        if found is None:
            found = forms[name] = make(self.json)
        return found


def _dumps(message: Mapping[str, Any]) -> bytes:
    try:
        return orjson.dumps(message, option=orjson.OPT_NON_STR_KEYS)
    except TypeError:
        # What orjson refuses and json takes: an integer beyond 64 bits in a
        # handler's result or log data.
        return json.dumps(message, separators=(",", ":"), default=str).encode()


def encode_json(message: Mapping[str, Any]) -> bytes:
    """Compact JSON of a message: the shared encoding of a SharedEvent, else fresh."""
    if isinstance(message, SharedEvent):
        return message.json
    return _dumps(message)


class Feed:
    """One subscriber's place in the bus's shared log, with a memory channel's
    receiving surface (`async for`, `receive()`, `receive_nowait()`) plus
    `receive_many()`; it ends (EndOfChannel) when the bus closes or when the
    subscriber fell more than `buffer` events behind (then `lagged`)."""

    def __init__(self, bus: EventBus, buffer: int) -> None:
        self._bus = bus
        self.buffer = buffer
        self.cursor = bus.published  # the number of the next event to take
        self.closed = False
        self._lagged = False

    @property
    def lagged(self) -> bool:
        if not self._lagged and self._bus.published - self.cursor > self.buffer:
            self._lagged = True
            self._bus.forget(self)
        return self._lagged

    def receive_nowait(self) -> Event:
        if self.lagged:
            raise trio.EndOfChannel
        if self.cursor < self._bus.published:
            event = self._bus.event_at(self.cursor)
            self.cursor += 1
            return event
        if self.closed:
            raise trio.EndOfChannel
        raise trio.WouldBlock

    @property
    def waiting(self) -> int:
        """How many published events this subscriber has not taken yet."""
        return self._bus.published - self.cursor

    async def wait(self) -> None:
        """Until an event is waiting, or the feed ended (closed, or fell behind)."""
        while self.cursor >= self._bus.published and not self.closed:
            await self._bus.wait_for_more()

    async def wait_woken(self) -> Hashable:
        """`wait`, then the key of the wake-up: every subscriber that one publish woke
        gets the same key, so `take(at=key)` hands them all the same run."""
        await self.wait()
        return ("woken", self._bus.wakes)

    async def gather(self, seconds: float) -> Hashable | None:
        """Let events gather until the next multiple of `seconds` on trio's clock
        (at most `seconds`; the same moment for every subscriber, so they all take
        the same run there: the returned key, for `take(at=)`), or until half the
        buffer waits (so gathering never makes a subscriber lag: None), or the bus
        closes (None)."""
        tick = (math.floor(trio.current_time() / seconds) + 1) * seconds
        with trio.move_on_at(tick) as timer:
            await self._bus.alarm(self.cursor + self.buffer // 2).wait()
        return ("tick", tick) if timer.cancelled_caught else None

    def shared(self, key: tuple[Any, ...], make: Callable[[], bytes]) -> bytes:
        """See EventBus.shared (the key need not name the bus)."""
        return self._bus.shared(key, make)

    def receive_many(self, limit: int) -> list[Event]:
        """Up to `limit` waiting events at once (none: an empty list); ends as receive does."""
        if self.lagged:
            raise trio.EndOfChannel
        end = min(self.cursor + limit, self._bus.published)
        events = self._bus.events_between(self.cursor, end)
        if not events and self.closed:
            raise trio.EndOfChannel
        self.cursor += len(events)
        return events

    def take(self, limit: int, *, at: Hashable | None = None) -> tuple[int, int]:
        """Take up to `limit` waiting events without listing them: their positions
        (first, end), read with `events_between` or a `kept` encoding; ends as receive does.
        With `at` (a key of `gather` or `wait_woken`), only the events published when the
        first subscriber took at that key: subscribers woken together take the same run
        (and can share its encoding), whatever was published while they took turns."""
        if self.lagged:
            raise trio.EndOfChannel
        first = self.cursor
        end = self._bus.published
        if at is not None:
            marked = self._bus.mark(at)
            if first < marked:
                end = marked
        end = min(first + limit, end)
        if first == end and self.closed:
            raise trio.EndOfChannel
        self.cursor = end
        return first, end

    def events_between(self, first: int, end: int) -> list[Event]:
        """The events at positions first..end-1 (taken by this feed, or waiting for it)."""
        return self._bus.events_between(first, end)

    @property
    def oldest(self) -> int:
        """The position of the oldest event the bus still holds."""
        return self._bus.published - len(self._bus.log_window)

    def kept(self, key: Hashable, make: Callable[[], _T]) -> _T:
        """See EventBus.kept (the key need not name the bus)."""
        return self._bus.kept(key, make)

    def events_of(self, jobs: Collection[str], first: int, end: int) -> list[Event]:
        """The events of `jobs` among positions first..end-1, in the bus's order: looked
        up in the run's index by job (JobIndex, built once for every subscriber that
        takes this run), not found by each subscriber looking at every event."""
        return self._bus.kept(JobIndex, JobIndex).events_of(self, jobs, first, end)

    async def receive(self) -> Event:
        while True:
            try:
                event = self.receive_nowait()
            except trio.WouldBlock:
                await self._bus.wait_for_more()
                continue
            await trio.lowlevel.checkpoint()
            return event

    def __aiter__(self) -> Feed:
        return self

    async def __anext__(self) -> Event:
        try:
            return await self.receive()
        except trio.EndOfChannel:
            raise StopAsyncIteration from None

    def close(self) -> None:
        self.closed = True


class JobIndex:
    """The events of the last few runs (first, end) of the bus by job: subscribers that
    follow given jobs and took the same run (Feed.take(at=)) share one index of it, so
    a run of n events costs n lookups once, then one per followed job per subscriber,
    where each subscriber used to look at all n."""

    def __init__(self) -> None:
        self._runs: dict[tuple[int, int], dict[Any, list[tuple[int, Event]]]] = {}

    def events_of(self, feed: Feed, jobs: Collection[str], first: int, end: int) -> list[Event]:
        index = self._runs.get((first, end))
        if index is None:
            if len(self._runs) >= _INDEXED_RUNS:
                del self._runs[next(iter(self._runs))]  # the oldest
            index = self._runs[first, end] = {}
            for position, event in enumerate(feed.events_between(first, end), first):
                found = index.get(event.get("job_id"))
                if found is None:
                    index[event.get("job_id")] = [(position, event)]
                else:
                    found.append((position, event))
        runs = [index[job] for job in jobs if job in index]
        if len(runs) == 1:
            return [event for _, event in runs[0]]
        # (position, event) pairs: positions differ, so events are never compared.
        return [event for _, event in heapq.merge(*runs)]


class Subscription:
    """What `EventBus.subscribe` hands out: `receive` (a Feed) and `lagged`."""

    def __init__(self, bus: EventBus, buffer: int) -> None:
        self.receive = Feed(bus, buffer)

    @property
    def lagged(self) -> bool:
        return self.receive.lagged

    def close(self) -> None:
        self.receive.close()


class EventBus:
    """Publishing appends each event once to a shared log and wakes the waiting
    subscribers; each takes what it has not seen yet, in order. Publishing costs
    the same with one subscriber or a hundred, and never waits: the log keeps the
    last `buffer` events of the largest buffer, and a subscriber further behind
    than its own buffer is cut off."""

    def __init__(self) -> None:
        self._subscriptions: set[Feed] = set()
        self._log: deque[SharedEvent] = deque(maxlen=1)
        self.published = 0  # events published since the bus was made
        self._more = trio.lowlevel.ParkingLot()
        self._shared: tuple[tuple[Any, ...], bytes] | None = None
        # (position, tie, event): set once `published` reaches the position. A
        # gatherer that timed out leaves its entry, gone once the log gets there.
        self._alarms: list[tuple[int, int, trio.Event]] = []
        self._ties = count()
        self._kept: dict[Hashable, Any] = {}
        self.wakes = 0  # publishes that woke waiting subscribers
        self._marks: dict[Hashable, int] = {}

    @contextmanager
    def subscribe(self, *, buffer: int = 1024) -> Iterator[Subscription]:
        """Receive every event published from now on, until the block ends or it lags."""
        subscription = Subscription(self, buffer)
        if buffer > (self._log.maxlen or 0):
            self._log = deque(self._log, maxlen=buffer)
        self._subscriptions.add(subscription.receive)
        try:
            yield subscription
        finally:
            self._subscriptions.discard(subscription.receive)
            subscription.close()

    def shared(self, key: tuple[Any, ...], make: Callable[[], bytes]) -> bytes:
        """Bytes that every subscriber in the same place would build alike (a
        run of SSE frames), made by the first to ask and handed to the rest."""
        if self._shared is not None and self._shared[0] == key:
            return self._shared[1]
        made = make()
        self._shared = (key, made)
        return made

    def kept(self, key: Hashable, make: Callable[[], _T]) -> _T:
        """An object the bus keeps for every subscriber that asks by `key`, made by the
        first: a transport's encoding of the log that all its subscribers read, so an
        event is encoded once for all of them, not once per subscriber."""
        found = self._kept.get(key)
        if found is None:
            found = self._kept[key] = make()
        return found

    def mark(self, key: Hashable) -> int:
        """The number of events published when `key` was first asked for (the last
        few keys are kept): where subscribers woken together stop taking."""
        found = self._marks.get(key)
        if found is None:
            if len(self._marks) >= _MARKS:
                del self._marks[next(iter(self._marks))]  # the oldest
            found = self._marks[key] = self.published
        return found

    @property
    def log_window(self) -> deque[SharedEvent]:
        """The events still held, oldest first."""
        return self._log

    @property
    def listening(self) -> bool:
        """Anyone subscribed: publishers skip building events nobody would receive."""
        return bool(self._subscriptions)

    def publish(self, event: Event) -> None:
        if not self._subscriptions:
            return
        self._log.append(SharedEvent(event))
        self.published += 1
        if self._more:
            self.wakes += 1
            self._more.unpark_all()
        while self._alarms and self._alarms[0][0] <= self.published:
            heapq.heappop(self._alarms)[2].set()

    def alarm(self, position: int) -> trio.Event:
        """An event set once `position` events have been published (or at close)."""
        alarm = trio.Event()
        if position <= self.published:
            alarm.set()
        else:
            heapq.heappush(self._alarms, (position, next(self._ties), alarm))
        return alarm

    def event_at(self, number: int) -> SharedEvent:
        return self._log[number - (self.published - len(self._log))]

    def events_between(self, first: int, end: int) -> list[Event]:
        if first >= end:
            return []
        offset = self.published - len(self._log)
        return list(islice(self._log, first - offset, end - offset))

    async def wait_for_more(self) -> None:
        """Until the next publish (or close)."""
        await self._more.park()

    def forget(self, feed: Feed) -> None:
        """A subscriber fell behind: it is cut off."""
        if feed in self._subscriptions:
            self._subscriptions.discard(feed)
            log.warning("events.subscriber_lagged", behind=self.published - feed.cursor)

    def close(self) -> None:
        """End every subscription (shutdown), so streams can finish."""
        for feed in self._subscriptions:
            feed.close()
        self._subscriptions.clear()
        self._more.unpark_all()
        for _, _, alarm in self._alarms:
            alarm.set()
        self._alarms.clear()
