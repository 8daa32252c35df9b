"""The quart app, built on the first request that needs it.

The job API's hottest routes, health and /metrics are answered without
quart (front.py), so an agent that is only submitted to and
polled never needs quart, werkzeug, flask, jinja2, the docs or the resource
view: importing and building them is about half of what the HTTP transport
costs at start, in time and memory. The first request for a route only
quart serves (docs, the resource view, live events, list, logs, cancel,
anything over the local socket or HTTP/2) builds the app in a worker thread
and starts its ASGI lifespan; later requests go straight to it.

hypercorn runs the lifespan of the app it serves, which is this wrapper:
it answers the lifespan itself, and hosts the quart app's own lifespan
(startup when built, shutdown when hypercorn shuts down) in that task.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import structlog
import trio

log = structlog.get_logger("agent.http")

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
App = Callable[..., Awaitable[None]]  # an ASGI app (quart types it more narrowly)


class LazyApp:
    """An ASGI app that builds the real one (`build()`, in a thread) when first called."""

    def __init__(self, build: Callable[[], App]) -> None:
        self._build = build
        self._app: App | None = None
        self._lock = trio.Lock()
        self._nursery: trio.Nursery | None = None  # the lifespan task's, while serving
        self._to_app: trio.MemorySendChannel[dict[str, Any]] | None = None
        self._from_app: trio.MemoryReceiveChannel[dict[str, Any]] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        app = self._app if self._app is not None else await self._built()
        await app(scope, receive, send)

    async def _built(self) -> App:
        async with self._lock:
            if self._app is None:
                started = trio.current_time()
                app = await trio.to_thread.run_sync(self._build)
                await self._start(app)
                self._app = app
                log.info("http.app_built", seconds=round(trio.current_time() - started, 3))
            return self._app

    async def _start(self, app: App) -> None:
        """Run the app's lifespan in the lifespan task's nursery, up to its startup."""
        if self._nursery is None:
            return  # served without a lifespan (the tests' bare servers): none to run
        self._to_app, app_receive = trio.open_memory_channel[dict[str, Any]](1)
        app_send, self._from_app = trio.open_memory_channel[dict[str, Any]](1)
        scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}}
        self._nursery.start_soon(app, scope, app_receive.receive, app_send.send)
        await self._lifespan_step("startup")

    async def _lifespan_step(self, step: str) -> None:
        assert self._to_app is not None
        assert self._from_app is not None
        await self._to_app.send({"type": f"lifespan.{step}"})
        answer = await self._from_app.receive()
        if answer["type"] != f"lifespan.{step}.complete":
            raise RuntimeError(f"the quart app's lifespan {step} failed: {answer.get('message')}")

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await receive()  # lifespan.startup: nothing is built yet
            await send({"type": "lifespan.startup.complete"})
            await receive()  # lifespan.shutdown
            async with self._lock:  # not while a build is starting the app's lifespan
                if self._to_app is not None:
                    await self._lifespan_step("shutdown")
                self._nursery = None
            await send({"type": "lifespan.shutdown.complete"})
