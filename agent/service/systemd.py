"""systemd's service notification protocol (sd_notify(3)), spoken directly.

A service of `Type=notify` finds the manager's datagram socket in
`$NOTIFY_SOCKET`: an absolute path, or an abstract socket name written with a
leading `@`. Each datagram is one or more newline-separated `VAR=VALUE`
assignments: `READY=1`, `STATUS=...`, `WATCHDOG=1`, `STOPPING=1`,
`RELOADING=1` (with `MONOTONIC_USEC=`). When `$WATCHDOG_USEC` is set (and
`$WATCHDOG_PID`, if set, names this process) the manager expects `WATCHDOG=1`
at least that often; we send it at half that period, and only while the
agent's own probe says the dispatcher can make progress.

Without `$NOTIFY_SOCKET` (run by hand, in tests) every send is a no-op.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Protocol

import structlog
import trio

log = structlog.get_logger("agent.service.systemd")

_ENVIRONMENT = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


class Notify(Protocol):
    """Where the agent's service notifications go."""

    @property
    def watchdog_interval(self) -> float | None:
        """Seconds between WATCHDOG=1 pings, or None when no watchdog is asked for."""

    async def send(self, *assignments: str) -> None:
        """Send `VAR=VALUE` assignments as one notification."""


def socket_address(value: str) -> str | None:
    """The AF_UNIX address of a $NOTIFY_SOCKET value; None if it is not one we speak."""
    if value.startswith("@") and len(value) > 1:
        return "\0" + value[1:]  # Linux abstract namespace
    if value.startswith("/"):
        return value
    return None  # relative paths are invalid; vsock: (systemd 254+) is not spoken here


def watchdog_interval(environ: MutableMapping[str, str], pid: int) -> float | None:
    """Half of $WATCHDOG_USEC, in seconds, when the watchdog is meant for `pid`."""
    usec = environ.get("WATCHDOG_USEC", "")
    owner = environ.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if owner and (not owner.isdigit() or int(owner) != pid):
        return None
    return int(usec) / 2 / 1_000_000


class Notifier:
    """Sends notifications to the service manager over its datagram socket."""

    def __init__(self, address: str | None, *, watchdog_interval: float | None = None) -> None:
        self.address = address
        self._watchdog_interval = watchdog_interval if address is not None else None
        self._socket: trio.socket.SocketType | None = None
        self._failed = False

    @classmethod
    def from_environment(cls, environ: MutableMapping[str, str]) -> Notifier:
        """Take the notification settings out of `environ`, so that processes the
        agent starts (qemu-img and the like) do not inherit them."""
        raw = environ.get("NOTIFY_SOCKET", "")
        address = socket_address(raw) if raw else None
        if raw and address is None:
            log.warning("systemd.notify_socket_unsupported", notify_socket=raw)
        interval = watchdog_interval(environ, os.getpid())
        for name in _ENVIRONMENT:
            environ.pop(name, None)
        return cls(address, watchdog_interval=interval)

    @property
    def enabled(self) -> bool:
        return self.address is not None

    @property
    def watchdog_interval(self) -> float | None:
        return self._watchdog_interval

    async def send(self, *assignments: str) -> None:
        """Send one notification. Failures are logged, never raised: the agent's
        work does not depend on the manager hearing about it."""
        if self.address is None:
            return
        # A newline inside a value would start a new assignment.
        message = "\n".join(item.replace("\n", " ") for item in assignments).encode()
        if self._socket is None:
            self._socket = trio.socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            await self._socket.sendto(message, self.address)
        except OSError as exc:
            if not self._failed:
                log.warning("systemd.notify_failed", error=str(exc), message=message.decode())
            self._failed = True
        else:
            self._failed = False

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None


def monotonic_usec() -> int:
    """CLOCK_MONOTONIC in microseconds, as RELOADING=1 wants it in MONOTONIC_USEC."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


async def report_status(
    notify: Notify, describe: Callable[[], str], *, every: float, last: str | None = None
) -> None:
    """Send STATUS= whenever the description changed, looking every `every` seconds.

    `last` is the status already sent (with READY=1), so it is not repeated.
    """
    while True:
        text = describe()
        if text != last:
            await notify.send(f"STATUS={text}")
            last = text
        await trio.sleep(every)


async def feed_watchdog(
    notify: Notify, probe: Callable[[], Awaitable[str | None]], *, every: float
) -> None:
    """Send WATCHDOG=1 every `every` seconds while `probe` answers None in time.

    The probe answers why the agent cannot make progress, or None. A probe
    still unanswered at the next tick counts as a failure too. While it fails
    no ping is sent, so the manager restarts the service once WatchdogSec
    has passed without one; if it recovers first, the pings simply resume.
    """
    while True:
        deadline = trio.current_time() + every
        with trio.move_on_at(deadline) as probing:
            problem = await probe()
        if probing.cancelled_caught:
            problem = f"probe unanswered after {every:g}s"
        if problem is None:
            await notify.send("WATCHDOG=1")
        else:
            log.error("systemd.watchdog_withheld", reason=problem)
        await trio.sleep_until(deadline)
