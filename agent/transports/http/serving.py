"""Stock hypercorn over our listener, as hypercorn's own trio worker serves its sockets.

hypercorn's `worker_serve` builds its listeners from the sockets it binds,
so the capped listener (listener.py) cannot be handed to it. This module is
the same few lines, with `trio.serve_listeners` over that listener: the ASGI
lifespan, one hypercorn connection server per accepted connection, and on
shutdown `terminated` set and `graceful_timeout` given to the requests in
hand. Nothing of hypercorn is overridden or copied; the connection server
and the worker context are named by their modules (hypercorn documents only
`serve`), so the version they were written against is pinned by a test
(tests/transports/http/test_serving.py).
"""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio.lifespan import Lifespan
from hypercorn.trio.statsd import StatsdLogger
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import ConnectionState
from hypercorn.utils import wrap_app

from agent.transports.http.listener import CappedListener, Connection

# The hypercorn release this module was written against (see the module doc).
HYPERCORN_VERSION = "0.18.0"

AppWrapper = Callable[..., Awaitable[None]]  # hypercorn's wrapped app: five arguments


class _ConnectionApp:
    """The app as one connection calls it: each request marks the connection busy for
    its run (listener.Connection.serving) and carries the connection's scope extensions
    (the local socket's peer)."""

    __slots__ = ("_app", "_connection")

    def __init__(self, app: AppWrapper, connection: Connection) -> None:
        self._app = app
        self._connection = connection

    async def __call__(
        self, scope: Any, receive: Any, send: Any, sync_spawn: Any, call_soon: Any
    ) -> None:
        connection = self._connection
        if connection.extensions:
            scope.update(connection.extensions)
        # connection.serving(), without a generator-based context manager per request.
        connection.request_began()
        try:
            await self._app(scope, receive, send, sync_spawn, call_soon)
        finally:
            connection.request_ended()


async def serve(
    app: Any,
    listener: CappedListener,
    settings: HypercornConfig,
    *,
    lifespan: bool = True,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve an ASGI app on `listener` until cancelled; `lifespan`: run the app's
    ASGI lifespan (one server per app runs it)."""
    settings.set_statsd_logger_class(StatsdLogger)
    wrapped = wrap_app(app, settings.wsgi_max_body_size, None)
    state: dict[str, Any] = {}
    context = WorkerContext(None)

    async def connection(stream: Connection) -> None:
        server = TCPServer(
            _ConnectionApp(wrapped, stream),
            settings,
            context,
            ConnectionState(state.copy()),
            stream,  # type: ignore[arg-type]  # typed as TLS, serves plain streams too
        )
        try:
            # A client gone mid-exchange is its own end, not the server's.
            with (
                stream.finished,
                contextlib.suppress(OSError, trio.BrokenResourceError, ssl.SSLError),
            ):
                await server.run()
        finally:
            stream.close_now()  # hypercorn's close awaits, and a cancel can skip it

    async with trio.open_nursery() as lifespan_nursery:
        if lifespan:
            running = Lifespan(wrapped, settings, state)
            await lifespan_nursery.start(running.handle_lifespan)
            await running.wait_for_startup()
        async with trio.open_nursery() as connections:
            try:
                await connections.start(
                    partial(
                        trio.serve_listeners,
                        connection,
                        [listener],
                        handler_nursery=connections,
                    )
                )
                task_status.started()
                await trio.sleep_forever()
            finally:
                # hypercorn closes idle connections (and those still sending their
                # headers) once terminated; requests in hand get the graceful time.
                await context.terminated.set()
                connections.cancel_scope.deadline = trio.current_time() + settings.graceful_timeout
        if lifespan:
            await running.wait_for_shutdown()
        lifespan_nursery.cancel_scope.cancel()
