"""The libvirt connection owner (with hypervisor.objects, the only code that imports libvirt).

One connection per agent, opened by `LibvirtConnection.run` (a child of the
daemon's nursery), kept alive with libvirt keepalive and reopened with
backoff when libvirtd goes away. Handlers hand it blocking functions of the
connection (`await hv.call(fn, *args)`), which run in a worker thread;
`libvirtError` is turned into `HypervisorError` here and nowhere else.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import libvirt
import structlog
import trio

from agent.config import LibvirtConfig
from agent.core.health import Status
from agent.core.metrics import LIBVIRT_UP
from agent.errors import HypervisorError
from agent.hypervisor.objects import domain_state, lookup_domain, translate

log = structlog.get_logger("agent.hypervisor")
T = TypeVar("T")

_event_loop_lock = threading.Lock()
_event_loop_running = False


def _run_event_loop() -> None:
    while True:
        libvirt.virEventRunDefaultImpl()


def _ensure_event_loop() -> None:
    """libvirt's default event loop, once per process, in a daemon thread: keepalive,
    close callbacks and domain lifecycle events need one."""
    global _event_loop_running  # noqa: PLW0603 (libvirt's event loop is process-wide)
    with _event_loop_lock:
        if _event_loop_running:
            return
        # Errors reach callers as exceptions; libvirt would also print each one to stderr.
        libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
        libvirt.virEventRegisterDefaultImpl()
        threading.Thread(target=_run_event_loop, name="libvirt-events", daemon=True).start()
        _event_loop_running = True


@dataclass
class _Held:
    """One open connection and the calls using it: it is closed only once it is
    dropped and unused, as libvirt must not free a connection a call still uses."""

    conn: Any
    generation: int
    users: int = 0
    dropped: bool = False


def _close(conn: Any) -> None:
    try:
        conn.unregisterCloseCallback()
        conn.close()
    except libvirt.libvirtError as exc:
        log.info("libvirt.close_failed", error=str(exc))  # it is gone either way


def _is_alive(conn: Any) -> bool:
    try:
        return bool(conn.isAlive())
    except libvirt.libvirtError:
        return False


class LibvirtConnection:
    """Owns the agent's libvirt connection (a service handlers get from their context)."""

    def __init__(self, config: LibvirtConfig) -> None:
        self.config = config
        self.uri = config.uri
        self._held: _Held | None = None
        self._generation = 0
        self._lost = trio.Event()
        self._token: trio.lowlevel.TrioToken | None = None
        self.last_error: str | None = "not connected yet"
        self._listeners: list[Callable[[], None]] = []
        self._domain_waiters: dict[str, list[trio.Event]] = {}

    @property
    def connected(self) -> bool:
        return self._held is not None

    def on_change(self, listener: Callable[[], None]) -> None:
        """Call `listener` (on the trio thread) whenever the connection comes or goes."""
        self._listeners.append(listener)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Keep a connection open until cancelled; started() after the first attempt,
        whether it succeeded or not (the agent serves other jobs meanwhile)."""
        self._token = trio.lowlevel.current_trio_token()
        await trio.to_thread.run_sync(_ensure_event_loop)
        backoff = self.config.reconnect_min_seconds
        started = False
        try:
            while True:
                self._lost = trio.Event()
                try:
                    # Abandoned on shutdown: an open to an unresponsive host may hang long.
                    conn = await trio.to_thread.run_sync(
                        self._open, self._generation + 1, abandon_on_cancel=True
                    )
                except libvirt.libvirtError as exc:
                    self.last_error = translate(exc).message
                    log.warning(
                        "libvirt.connect_failed",
                        uri=self.uri,
                        error=self.last_error,
                        retry_in=backoff,
                    )
                else:
                    backoff = self.config.reconnect_min_seconds
                    self._set_connection(conn)
                    log.info("libvirt.connected", uri=self.uri, generation=self._generation)
                if not started:
                    task_status.started()
                    started = True
                if self._held is not None:
                    await self._lost.wait()
                    log.warning("libvirt.disconnected", uri=self.uri, reason=self.last_error)
                    await self._drop_connection()
                    continue  # reconnect at once: a restarted libvirtd may already be back
                await trio.sleep(backoff)
                backoff = min(backoff * 2, self.config.reconnect_max_seconds)
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(5):
                await self._drop_connection()

    def _open(self, generation: int) -> Any:
        conn = libvirt.open(self.uri)
        try:
            if self.config.keepalive_count:
                conn.setKeepAlive(self.config.keepalive_interval, self.config.keepalive_count)
        except libvirt.libvirtError as exc:
            # Local drivers (test://) have no keepalive: nothing to keep alive.
            if exc.get_error_code() != libvirt.VIR_ERR_NO_SUPPORT:
                conn.close()
                raise
        conn.registerCloseCallback(self._closed_callback, generation)
        conn.domainEventRegisterAny(
            None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self._lifecycle_callback, None
        )
        return conn

    def _set_connection(self, conn: Any) -> None:
        self._generation += 1
        self._held = _Held(conn, self._generation)
        self.last_error = None
        LIBVIRT_UP.set(1)
        self._changed()

    async def _drop_connection(self) -> None:
        held, self._held = self._held, None
        LIBVIRT_UP.set(0)
        if held is None:
            return
        held.dropped = True
        self._changed()
        if held.users == 0:
            await trio.to_thread.run_sync(_close, held.conn, abandon_on_cancel=True)

    def _changed(self) -> None:
        waiters, self._domain_waiters = self._domain_waiters, {}
        for events in waiters.values():
            for event in events:
                event.set()
        for listener in self._listeners:
            listener()

    def _from_event_thread(self, fn: Callable[..., None], *args: Any) -> None:
        token = self._token
        if token is not None:
            # RunFinishedError: the agent has stopped; nobody is waiting.
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(fn, *args)

    def _closed_callback(self, _conn: Any, reason: int, generation: int) -> None:
        self._from_event_thread(self._mark_lost, generation, f"connection closed (reason {reason})")

    def _lifecycle_callback(self, _conn: Any, dom: Any, _event: int, _detail: int, _o: Any) -> None:
        self._from_event_thread(self._domain_changed, dom.UUIDString())

    def _mark_lost(self, generation: int, reason: str) -> None:
        if self._held is not None and self._held.generation == generation:
            self.last_error = reason
            self._lost.set()

    def _domain_changed(self, uuid: str) -> None:
        for event in self._domain_waiters.pop(uuid, []):
            event.set()

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn(conn, *args)` in a worker thread; libvirt errors become HypervisorError."""
        held = self._held
        if held is None:
            raise HypervisorError(
                f"libvirt at {self.uri} is not connected: {self.last_error}", reason="unavailable"
            )
        held.users += 1
        try:
            return await trio.to_thread.run_sync(fn, held.conn, *args)
        except libvirt.libvirtError as exc:
            error = translate(exc)
            if error.reason == "unavailable" and not await trio.to_thread.run_sync(
                _is_alive, held.conn
            ):
                self._mark_lost(held.generation, error.message)
            raise error from exc
        finally:
            held.users -= 1
            if held.dropped and held.users == 0:
                with trio.CancelScope(shield=True):
                    await trio.to_thread.run_sync(_close, held.conn)

    async def wait_domain_state(self, uuid: str, states: set[str]) -> str:
        """Wait for a domain to reach one of `states`, woken by libvirt's lifecycle
        events; callers put the deadline around it."""
        while True:
            changed = trio.Event()
            self._domain_waiters.setdefault(uuid, []).append(changed)
            try:
                state = await self.call(lambda conn: domain_state(lookup_domain(conn, None, uuid)))
            except HypervisorError as exc:
                if exc.reason != "not_found":
                    raise
                state = "undefined"  # a transient domain is gone once it stops
            if state in states:
                return state
            await changed.wait()

    async def health(self) -> tuple[Status, str, dict[str, Any]]:
        """The `libvirt` health component: connected, and the round trip to libvirtd."""
        figures: dict[str, Any] = {"uri": self.uri, "connected": self.connected}
        if not self.connected:
            return "unhealthy", f"not connected: {self.last_error}", figures
        started = time.perf_counter()
        try:
            await self.call(lambda conn: conn.getLibVersion())
        except HypervisorError as exc:
            figures["connected"] = self.connected
            return "unhealthy", f"libvirt does not answer: {exc.message}", figures
        latency_ms = round((time.perf_counter() - started) * 1000, 3)
        figures["latency_ms"] = latency_ms
        if latency_ms > self.config.degraded_latency_ms:
            return "degraded", f"libvirt answers slowly ({latency_ms} ms)", figures
        return "healthy", "connected", figures
