"""hypercorn's trio worker, with the limits a daemon on a shared host needs.

hypercorn's own `worker_serve` accepts every connection and gives a client
that started a request the whole keep-alive time (75 s) to finish its
headers: a few thousand half-open connections used up the descriptors and
the daemon died of EMFILE elsewhere. Here the accept loop is ours:

- at most `max_connections` open (clamped below the descriptor limit so the
  store, the spool and jobs keep theirs) and `max_connections_per_client`
  per address; more are closed at once and counted;
- a request's headers must be complete `header_timeout_seconds` after its
  first byte, and an idle connection closes after the keep-alive time (both
  deadlines on the connection's read, where hypercorn starts and stops a timer
  task per request);
- EMFILE/ENFILE/ENOBUFS/ENOMEM on accept wait with backoff instead of
  ending the server.
"""

from __future__ import annotations

import contextlib
import errno
import resource
import socket
import ssl
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from math import inf
from typing import Any

import structlog
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.events import Closed, Event, RawData, Updated
from hypercorn.protocol import ProtocolWrapper
from hypercorn.protocol.h11 import H11Protocol
from hypercorn.trio.lifespan import Lifespan
from hypercorn.trio.statsd import StatsdLogger
from hypercorn.trio.task_group import TaskGroup
from hypercorn.trio.tcp_server import MAX_RECV, TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import ConnectionState
from hypercorn.utils import parse_socket_addr, wrap_app

from agent.core import metrics
from agent.transports.http.lean import LeanPath
from agent.transports.http.lean_h11 import LeanH11Protocol

log = structlog.get_logger("agent.http")

# Descriptors kept for everything but connections: store, spool, jobs' pipes.
RESERVED_DESCRIPTORS = 256
_CAPACITY_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}


@dataclass(frozen=True)
class ConnectionLimits:
    max_connections: int = 1000
    per_client: int = 256
    header_timeout: float = 10.0


def connection_cap(wanted: int) -> int:
    """`wanted`, lowered so connections can never take the agent's last descriptors."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return wanted
    return max(1, min(wanted, soft - RESERVED_DESCRIPTORS))


class _Connection(TCPServer):
    """hypercorn's connection, with its idle and header timers as deadlines on the read
    (no timer task started and stopped per request), and whose HTTP/1.1 requests for
    the lean routes skip the ASGI app."""

    def __init__(self, *args: Any, header_timeout: float, lean: LeanPath | None) -> None:
        super().__init__(*args)
        self._header_timeout = header_timeout
        self._lean = lean
        # Between requests: since when (keep-alive time), and since the next one's
        # first byte (header time); None while a request is in progress.
        self._idle_since: float | None = trio.current_time()
        self._first_byte_at: float | None = None
        self._reading = trio.CancelScope()  # the read in progress, for a late deadline

    async def run(self) -> None:
        # hypercorn's, with the HTTP/1.1 protocol that serves the lean routes.
        try:
            try:
                with trio.fail_after(self.config.ssl_handshake_timeout):
                    await self.stream.do_handshake()
            except (trio.BrokenResourceError, trio.TooSlowError):
                return  # the handshake failed
            alpn_protocol = self.stream.selected_alpn_protocol()
            sock = self.stream.transport_stream.socket
            tls = True
        except AttributeError:  # not TLS
            alpn_protocol = "http/1.1"
            sock = self.stream.socket
            tls = False
        try:
            client = parse_socket_addr(sock.family, sock.getpeername())
            server = parse_socket_addr(sock.family, sock.getsockname())
            async with TaskGroup() as task_group:
                self._task_group = task_group
                self.protocol = ProtocolWrapper(
                    self.app,
                    self.config,
                    self.context,
                    task_group,
                    ConnectionState(self.state),
                    tls,
                    client,
                    server,
                    self.protocol_send,
                    alpn_protocol,
                )
                if self._lean is not None and isinstance(self.protocol.protocol, H11Protocol):
                    self.protocol.protocol = LeanH11Protocol(
                        self.app,
                        self.config,
                        self.context,
                        task_group,
                        self.protocol.state,
                        tls,
                        client,
                        server,
                        self.protocol_send,
                        lean=self._lean,
                    )
                await self.protocol.initiate()
                await self._read_data()
        except OSError:
            pass
        finally:
            await self._close()

    async def protocol_send(self, event: Event) -> None:
        if isinstance(event, Updated):  # hypercorn restarts or stops its timer task here
            if event.idle:
                self._idle_since = trio.current_time()
                self._first_byte_at = None
            else:
                self._idle_since = None
            self._reading.deadline = self._deadline()  # an ASGI answer ends while we read
            return
        await super().protocol_send(event)

    def _deadline(self) -> float:
        protocol = self.protocol.protocol
        if isinstance(protocol, LeanH11Protocol) and protocol.body_deadline < inf:
            return protocol.body_deadline
        if self._idle_since is None:
            return inf
        if self._first_byte_at is None:
            return self._idle_since + self.config.keep_alive_timeout
        if self.context.terminated.is_set():
            return -inf  # the server stops: a request still sending its headers is not served
        return self._first_byte_at + self._header_timeout

    def terminate(self) -> None:
        """The server stops (context.terminated is set): apply it to the read in progress."""
        self._reading.deadline = self._deadline()

    async def _read_data(self) -> None:
        # hypercorn's loop, the keep-alive, header and lean body times as the read's deadline.
        try:
            while True:
                try:
                    with (
                        trio.fail_after(self.config.read_timeout or inf),
                        trio.CancelScope(deadline=self._deadline()) as self._reading,
                    ):
                        data = await self.stream.receive_some(MAX_RECV)
                except (trio.ClosedResourceError, trio.BrokenResourceError, trio.TooSlowError):
                    break
                if self._reading.cancelled_caught:
                    protocol = self.protocol.protocol
                    if isinstance(protocol, LeanH11Protocol) and protocol.body_deadline < inf:
                        await protocol.body_timed_out()  # answered 408; the connection closes
                        continue
                    if self._first_byte_at is not None:
                        metrics.HTTP_CONNECTIONS_TIMED_OUT.inc()
                    with trio.CancelScope(shield=True):
                        await self._initiate_server_close()
                    break
                if self._idle_since is not None and self._first_byte_at is None:
                    self._first_byte_at = trio.current_time()
                await self.protocol.handle(RawData(bytes(data)))
                if data == b"":
                    break
        finally:
            protocol = self.protocol.protocol
            if isinstance(protocol, LeanH11Protocol):
                protocol.release()  # whatever ended the connection, the slot goes back
        await self.protocol.handle(Closed())


class _Counts:
    def __init__(self) -> None:
        self.open = 0
        self.per_client: Counter[str] = Counter()

    @contextlib.contextmanager
    def holding(self, client: str) -> Iterator[None]:
        self.open += 1
        self.per_client[client] += 1
        metrics.HTTP_CONNECTIONS_OPEN.set(self.open)
        try:
            yield
        finally:
            self.open -= 1
            self.per_client[client] -= 1
            if not self.per_client[client]:
                del self.per_client[client]
            metrics.HTTP_CONNECTIONS_OPEN.set(self.open)


async def serve_asgi(
    app: Any,
    listener: socket.socket,
    settings: HypercornConfig,
    *,
    limits: ConnectionLimits | None = None,
    lean: LeanPath | None = None,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve an ASGI app on a listening socket until cancelled (see the module doc);
    HTTP/1.1 requests for `lean`'s routes are answered without it."""
    limits = limits or ConnectionLimits()
    settings.set_statsd_logger_class(StatsdLogger)
    wrapped = wrap_app(app, settings.wsgi_max_body_size, None)
    state: dict[str, Any] = {}
    lifespan = Lifespan(wrapped, settings, state)
    context = WorkerContext(None)
    tls = settings.create_ssl_context()
    live: set[_Connection] = set()

    async def handle(stream: trio.SocketStream) -> None:
        served: Any = stream
        if tls is not None:
            served = trio.SSLStream(stream, tls, server_side=True, https_compatible=True)
        connection = _Connection(
            wrapped,
            settings,
            context,
            ConnectionState(state.copy()),
            served,
            header_timeout=limits.header_timeout,
            lean=lean,
        )
        live.add(connection)
        try:
            with contextlib.suppress(OSError, trio.BrokenResourceError, ssl.SSLError):
                await connection.run()
        finally:
            live.discard(connection)

    with trio.socket.from_stdlib_socket(listener) as sock:
        async with trio.open_nursery() as lifespan_nursery:
            await lifespan_nursery.start(lifespan.handle_lifespan)
            await lifespan.wait_for_startup()
            async with trio.open_nursery() as connections:
                task_status.started([])
                try:
                    await _accept_forever(sock, connections, handle, limits)
                finally:
                    await context.terminated.set()
                    for connection in live:
                        connection.terminate()
                    deadline = trio.current_time() + settings.graceful_timeout
                    connections.cancel_scope.deadline = deadline
            await lifespan.wait_for_shutdown()
            lifespan_nursery.cancel_scope.cancel()


async def _accept_forever(
    sock: trio.socket.SocketType,
    connections: trio.Nursery,
    handle: Callable[[trio.SocketStream], Awaitable[None]],
    limits: ConnectionLimits,
) -> None:
    cap = connection_cap(limits.max_connections)
    log.info("http.limits", max_connections=cap, per_client=limits.per_client)
    counts = _Counts()
    backoff = 0.01

    async def held(stream: trio.SocketStream, client: str) -> None:
        try:
            with counts.holding(client):
                await handle(stream)
        finally:
            # hypercorn's close awaits (send_eof) and a cancel can skip it: the
            # descriptor must go back whatever happened.
            stream.socket.close()

    while True:
        try:
            raw, address = await sock.accept()
        except OSError as exc:
            if exc.errno not in _CAPACITY_ERRNOS:
                raise
            # Out of descriptors or memory: wait, never die of it.
            metrics.HTTP_ACCEPT_ERRORS.inc()
            log.warning("http.accept_failed", error=exc.strerror, retry_in=backoff)
            await trio.sleep(backoff)
            backoff = min(backoff * 2, 1.0)
            continue
        backoff = 0.01
        client = str(address[0]) if isinstance(address, tuple) else "local"
        if counts.open >= cap or counts.per_client[client] >= limits.per_client:
            metrics.HTTP_CONNECTIONS_REFUSED.inc()
            raw.close()  # early: nothing read, no task, no descriptor kept
            continue
        connections.start_soon(held, trio.SocketStream(raw), client)
