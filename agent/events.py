"""In-process event bus: job lifecycle, progress and log events, fanned out.

Publishing never waits: each subscriber has a bounded buffer, and a
subscriber that falls behind is cut off (its channel ends) instead of
slowing the dispatcher down.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import structlog
import trio

Event = dict[str, Any]
log = structlog.get_logger("agent.events")


class Subscription:
    def __init__(self, buffer: int) -> None:
        self._send, self.receive = trio.open_memory_channel[Event](buffer)
        self.lagged = False

    def offer(self, event: Event) -> bool:
        try:
            self._send.send_nowait(event)
        except trio.WouldBlock:
            self.lagged = True
            self._send.close()
            return False
        except trio.ClosedResourceError:
            return False
        return True

    def close(self) -> None:
        self._send.close()


class EventBus:
    def __init__(self) -> None:
        self._subscriptions: set[Subscription] = set()

    @contextmanager
    def subscribe(self, *, buffer: int = 1024) -> Iterator[Subscription]:
        """Receive every event published from now on, until the block ends or it lags."""
        subscription = Subscription(buffer)
        self._subscriptions.add(subscription)
        try:
            yield subscription
        finally:
            self._subscriptions.discard(subscription)
            subscription.close()

    def publish(self, event: Event) -> None:
        for subscription in list(self._subscriptions):
            if not subscription.offer(event):
                self._subscriptions.discard(subscription)
                if subscription.lagged:
                    log.warning("events.subscriber_lagged", dropped_type=event.get("type"))

    def close(self) -> None:
        """End every subscription (shutdown), so streams can finish."""
        for subscription in self._subscriptions:
            subscription.close()
        self._subscriptions.clear()
