"""The listener the HTTP API is served from: connection limits, the request-header
deadline and room for probes, all below hypercorn (a `trio.abc.Listener`).

hypercorn's own worker accepts every connection and gives a client that
started a request the whole keep-alive time (75 s) to finish its headers: a
few thousand half-open connections used up the descriptors and the daemon
died of EMFILE elsewhere. Its connections are served unchanged here
(serving.py); what a daemon on a shared host needs is in the streams this
listener hands it:

- at most `max_connections` open (clamped below the descriptor limit so the
  store, the spool and jobs keep theirs) and `max_connections_per_client`
  per address. A client over its own cap is closed at once (refused). When
  all are taken, the oldest connection that is not in a request (still
  sending its headers, or idle between requests) is closed to make room,
  so a probe gets in while slow clients hold every other one; with none
  such, the new connection is refused;
- a request's headers must be complete `header_timeout` after its first
  byte: the read waiting for them has that deadline (hypercorn has no such
  setting; its keep-alive timer runs until a request's headers are in);
- hypercorn answers a request it cannot parse (400, 431) with an empty body:
  such an answer, written while no request is in the app, gets the
  contract's JSON envelope here.

A connection is "in a request" from the app's call to its return: the
serving layer tells the stream (`Connection.serving`).
"""

from __future__ import annotations

import errno
import re
import resource
import socket
import ssl
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http import HTTPStatus
from math import inf
from typing import Any

import structlog
import trio

from agent.core import metrics
from agent.transports.http.envelope import http_error_answer

log = structlog.get_logger("agent.http")

# Descriptors kept for everything but connections: store, spool, jobs' pipes.
RESERVED_DESCRIPTORS = 256
_CAPACITY_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
# hypercorn's answer to a request it could not parse: a status, no body (h11's head).
_EMPTY_REFUSAL = re.compile(rb"HTTP/1\.1 (4\d\d) [^\r\n]*\r\n((?:[^\r\n]+\r\n)*)\r\n\Z")
_EMPTY_LENGTH = b"content-length: 0\r\n"


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


Describe = Callable[[socket.socket], dict[str, Any]]


class Connection(trio.abc.HalfCloseableStream):
    """One accepted connection as hypercorn serves it: a plain socket stream whose reads
    keep the header deadline, and which the listener may close to make room."""

    def __init__(
        self,
        listener: CappedListener,
        inner: trio.abc.Stream,
        sock: trio.socket.SocketType,
        raw: socket.socket,
        *,
        client: str,
        extensions: dict[str, Any],
    ) -> None:
        self._listener = listener
        self._inner = inner
        self.socket = sock  # hypercorn reads the addresses from it
        self.raw = raw  # the same socket, for writes without a scheduling round
        self.client = client
        self.extensions = extensions  # put into every request's ASGI scope
        self.active = 0  # requests in the app now
        self._first_byte_at: float | None = None  # of the headers awaited, if any came
        self._reading: trio.CancelScope | None = None
        self._evicted = False
        self.closed = False
        self.finished = trio.CancelScope()
        self._head = b""  # a response head held for its body (send_all)

    # -- what the serving layer tells it

    @contextmanager
    def serving(self) -> Iterator[None]:
        """Around a request's run in the app: not evictable, no header deadline."""
        self.request_began()
        try:
            yield
        finally:
            self.request_ended()

    def request_began(self) -> None:
        """A request went into the app (`serving`'s start, for callers without a `with`)."""
        self.active += 1
        self._listener.busy(self)
        if self._reading is not None:
            self._reading.deadline = inf

    def request_ended(self) -> None:
        """The app returned from a request (`serving`'s end)."""
        self.active -= 1
        if not self.active:
            self._first_byte_at = None
            self._listener.waiting(self)

    def evict(self) -> None:
        """Closed to make room for a newer connection (its descriptor goes at once)."""
        self._evicted = True
        metrics.HTTP_CONNECTIONS_EVICTED.inc()
        self.close_now()
        self.finish()

    def finish(self) -> None:
        """End the connection's serving: hypercorn's connection (its tasks, its keep-alive
        timer included) runs inside `finished` (serving.py), and with no request in hand a
        closed or timed-out connection has nothing left to wait for."""
        self.finished.cancel()

    def close_now(self) -> None:
        """Close the socket now, whatever the stream's state (the descriptor must go back
        even where an awaited close was cancelled); pending reads end."""
        if not self.closed:
            self.closed = True
            self._listener.closed(self)
        self.socket.close()

    # -- the stream

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        if self._evicted:
            raise trio.BrokenResourceError("closed to make room for another connection")
        deadline = self._deadline()
        if deadline == inf:
            # No header deadline to keep (a request in hand, or none begun): no cancel
            # scope either (a read waiting for a request's first byte is most reads).
            data = await self._receive(max_bytes)
        else:
            by_deadline = await self._receive_by(deadline, max_bytes)
            if by_deadline is None:
                await trio.lowlevel.checkpoint_if_cancelled()  # a cancel from outside wins
                metrics.HTTP_CONNECTIONS_TIMED_OUT.inc()
                self.finish()
                raise trio.BrokenResourceError("the request's headers did not arrive in time")
            data = by_deadline
        if not self.active:
            if not data:
                self.finish()  # the client is gone and nothing is in hand
            elif self._first_byte_at is None:
                self._first_byte_at = trio.current_time()
        return data

    async def _receive_by(self, deadline: float, max_bytes: int | None) -> bytes | bytearray | None:
        """A read that ends at `deadline` (None) unless the app takes the request first
        (`serving` lifts the deadline)."""
        data = None
        with trio.CancelScope(deadline=deadline) as reading:
            self._reading = reading
            data = await self._receive(max_bytes)
        self._reading = None
        if reading.cancelled_caught:
            return None
        return data

    def _deadline(self) -> float:
        if self.active or self._first_byte_at is None:
            return inf
        return self._first_byte_at + self._listener.limits.header_timeout

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if not self.active and data:
            data = _with_envelope(bytes(data))
        if self._head:
            data, self._head = self._head + data, b""
        elif self.active and _fixed_length_head(data):
            # hypercorn writes a fixed-length answer's head, then at once its body: one
            # write for both (each write waits for the connection's lock and a round).
            self._head = bytes(data)
            return
        await self._send_now(data)

    async def _send_now(self, data: bytes | bytearray | memoryview) -> None:
        await self._inner.send_all(data)

    async def _receive(self, max_bytes: int | None) -> bytes | bytearray:
        return await self._inner.receive_some(max_bytes)

    async def wait_send_all_might_not_block(self) -> None:
        await self._inner.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        assert isinstance(self._inner, trio.abc.HalfCloseableStream)
        if self._head:
            await self.send_all(b"")
        await self._inner.send_eof()

    async def aclose(self) -> None:
        try:
            if self._head:
                with trio.move_on_after(1):
                    await self.send_all(b"")
            await self._inner.aclose()
        finally:
            self.close_now()


class PlainConnection(Connection):
    """A connection without TLS, whose writes the socket takes whole are done without a
    scheduling round.

    trio's socket stream yields to the scheduler after every write; under load that is
    a round of every other runnable task each time, and hypercorn writes an answer's
    head, body and end separately: a probe waited many rounds to be answered. (Reads
    keep trio's yield: done at once, a client that always has data waiting, such as a
    large upload, took the loop from the others.)
    """

    async def _send_now(self, data: bytes | bytearray | memoryview) -> None:
        await trio.lowlevel.checkpoint_if_cancelled()
        view = memoryview(data)
        try:
            sent = self.raw.send(view) if view else 0
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            raise trio.BrokenResourceError(str(exc)) from exc
        if sent < len(view):
            await self._inner.send_all(view[sent:])


class TlsConnection(Connection):
    """A connection over TLS: hypercorn asks it for the handshake and the ALPN protocol."""

    _inner: trio.SSLStream[trio.SocketStream]

    @property
    def transport_stream(self) -> Connection:
        return self  # hypercorn reads `.transport_stream.socket`

    async def do_handshake(self) -> None:
        await self._inner.do_handshake()

    def selected_alpn_protocol(self) -> str | None:
        protocol: str | None = self._inner.selected_alpn_protocol()
        return protocol

    async def send_eof(self) -> None:
        # As an SSLStream: TLS has no half-close (hypercorn expects AttributeError).
        raise AttributeError("send_eof")


class CappedListener(trio.abc.Listener[Connection]):
    """A listening socket (non-blocking) whose connections are capped, and made room for
    (module doc)."""

    def __init__(
        self,
        sock: socket.socket,
        limits: ConnectionLimits,
        *,
        tls: ssl.SSLContext | None = None,
        describe: Describe | None = None,
    ) -> None:
        self._socket = sock
        self.limits = limits
        self.cap = connection_cap(limits.max_connections)
        self._tls = tls
        self._describe = describe
        self.open = 0
        self.per_client: Counter[str] = Counter()
        # Connections not in a request, by client, oldest first: those closed to make room.
        self._waiting: dict[str, OrderedDict[Connection, None]] = {}

    async def accept(self) -> Connection:
        refused = 0
        while True:
            try:
                raw, address = self._socket.accept()
            except BlockingIOError:
                await trio.lowlevel.wait_readable(self._socket)
                continue
            except OSError as exc:
                if exc.errno in _CAPACITY_ERRNOS:
                    # trio.serve_listeners waits a moment and tries again: never fatal.
                    metrics.HTTP_ACCEPT_ERRORS.inc()
                    log.warning("http.accept_failed", error=exc.strerror)
                raise
            client = str(address[0]) if isinstance(address, tuple) else "local"
            if self.per_client[client] >= self.limits.per_client or not self._room(client):
                # Early: nothing read, no task, no trio socket; a burst of them is refused
                # in one go (the probe behind it waits for no scheduling round).
                metrics.HTTP_CONNECTIONS_REFUSED.inc()
                raw.close()
                refused += 1
                if refused % 64 == 0:
                    await trio.lowlevel.checkpoint()
                continue
            try:
                extensions = {} if self._describe is None else self._describe(raw)
            except OSError as exc:
                log.warning("http.connection_undescribed", error=str(exc))
                raw.close()
                continue
            await trio.lowlevel.checkpoint()  # an accept is a checkpoint (trio's Listener)
            return self._connection(raw, client, extensions)

    def _room(self, client: str) -> bool:
        """Whether a connection from `client` fits, closing a waiting one if need be: the
        oldest of the client that holds the most, if it holds more than this one would
        (so a client that keeps reconnecting takes room only from itself: refused)."""
        if self.open < self.cap:
            return True
        heaviest = max(self._waiting, key=self.per_client.__getitem__, default=None)
        if heaviest is None or self.per_client[client] + 1 >= self.per_client[heaviest]:
            return False
        oldest = next(iter(self._waiting[heaviest]))
        oldest.evict()
        return True

    def _connection(
        self, raw: socket.socket, client: str, extensions: dict[str, Any]
    ) -> Connection:
        sock = trio.socket.from_stdlib_socket(raw)
        stream = trio.SocketStream(sock)
        connection: Connection
        if self._tls is None:
            connection = PlainConnection(
                self, stream, sock, raw, client=client, extensions=extensions
            )
        else:
            tls = trio.SSLStream(stream, self._tls, server_side=True, https_compatible=True)
            connection = TlsConnection(self, tls, sock, raw, client=client, extensions=extensions)
        self.open += 1
        self.per_client[client] += 1
        self.waiting(connection)
        metrics.HTTP_CONNECTIONS_OPEN.set(self.open)
        return connection

    # -- told by the connections

    def busy(self, connection: Connection) -> None:
        waiting = self._waiting.get(connection.client)
        if waiting is not None:
            waiting.pop(connection, None)
            if not waiting:
                del self._waiting[connection.client]

    def waiting(self, connection: Connection) -> None:
        if not connection.closed:
            self._waiting.setdefault(connection.client, OrderedDict())[connection] = None

    def closed(self, connection: Connection) -> None:
        self.busy(connection)
        self.open -= 1
        self.per_client[connection.client] -= 1
        if not self.per_client[connection.client]:
            del self.per_client[connection.client]
        metrics.HTTP_CONNECTIONS_OPEN.set(self.open)

    async def aclose(self) -> None:
        trio.lowlevel.notify_closing(self._socket)
        self._socket.close()
        await trio.lowlevel.checkpoint()


def _fixed_length_head(data: bytes | bytearray | memoryview) -> bool:
    """A response head (all of it) that announces a body of a known, non-zero length."""
    head = bytes(data[:9])
    if head not in (b"HTTP/1.1 ", b"HTTP/1.0 ") or bytes(data[-4:]) != b"\r\n\r\n":
        return False
    lower = bytes(data).lower()
    return b"\r\ncontent-length: " in lower and b"\r\ncontent-length: 0\r\n" not in lower


def _with_envelope(data: bytes) -> bytes:
    """hypercorn's empty refusal of an unparsable request, with the JSON envelope."""
    if not data.startswith(b"HTTP/1.1 4"):
        return data
    match = _EMPTY_REFUSAL.match(data)
    if match is None or _EMPTY_LENGTH not in match[2]:
        return data
    status = int(match[1])
    try:
        name = HTTPStatus(status).phrase
    except ValueError:
        name = "Bad Request"
    # No Content-Length was read: 0 stands for "no body limit to report".
    answer = http_error_answer(status, name, max_body_bytes=0)
    headers = match[2].replace(
        _EMPTY_LENGTH,
        b"content-type: application/json\r\ncontent-length: %d\r\n" % len(answer.body),
    )
    return b"HTTP/1.1 %d %s\r\n%s\r\n%s" % (status, name.encode(), headers, answer.body)
