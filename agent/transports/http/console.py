"""A VM's consoles over websockets, for the browser UI (admin scope only: a console is
the machine's keyboard).

/api/v1/vms/<name>/console relays the bytes of the running domain's VNC server
(libvirt puts it on a loopback port) both ways, for noVNC in the page; the
agent reads nothing of the RFB protocol. /api/v1/vms/<name>/serial relays the
domain's serial console (a libvirt stream) as text frames.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import structlog
import trio
from prometheus_client import Counter
from quart import Response, websocket

from agent.core.metrics import REGISTRY
from agent.errors import AgentError, ForbiddenError, UnavailableError
from agent.transports.http.api import API, Route, error_response
from agent.transports.http.resource_kit import resource_view

log = structlog.get_logger("agent.http")

CONSOLE_BYTES = Counter(
    "hostagent_console_bytes_total",
    "Bytes relayed between browsers and VM consoles",
    ["kind", "direction"],
    registry=REGISTRY,
)

_CHUNK = 65536


def check_origin() -> None:
    """A browser's websocket from another site is refused (403): websockets have no
    CORS, and on a tokenless loopback agent any page the user opens could otherwise
    reach a VM's keyboard. Clients that send no Origin (not browsers) pass."""
    origin = websocket.headers.get("Origin")
    if origin is None:
        return
    if urlsplit(origin).netloc.lower() != websocket.headers.get("Host", "").lower():
        raise ForbiddenError(
            "A console opens only from this agent's own pages",
            field="Origin",
            reason=f"{origin} is another site",
        )


async def vm_console(name: str) -> Response | None:
    """Relay the domain's VNC server; refused (403/404/409/503) before the upgrade."""
    try:
        check_origin()
        host, port = await resource_view().console_endpoint(name)
        try:
            tcp = await trio.open_tcp_stream(host, port)
        except OSError as exc:
            raise UnavailableError(
                f"cannot reach VM {name!r}'s VNC server", field="vm", reason=str(exc)
            ) from exc
    except AgentError as exc:
        return error_response(exc)
    await websocket.accept()
    log.info("console.opened", vm=name, kind="vnc")
    async with tcp, trio.open_nursery() as nursery:

        async def to_browser() -> None:
            while data := await tcp.receive_some(_CHUNK):
                CONSOLE_BYTES.labels("vnc", "to_browser").inc(len(data))
                await websocket.send(data)
            nursery.cancel_scope.cancel()  # the VM went away: end the session

        nursery.start_soon(to_browser)
        while True:
            message = await websocket.receive()
            data = message.encode() if isinstance(message, str) else message
            CONSOLE_BYTES.labels("vnc", "to_vm").inc(len(data))
            await tcp.send_all(data)
    log.info("console.closed", vm=name, kind="vnc")
    return None


async def vm_serial(name: str) -> Response | None:
    """Relay the domain's serial console: guest output as text frames, typed text in."""
    try:
        check_origin()
        stream = await resource_view().open_serial(name)
    except AgentError as exc:
        return error_response(exc)
    await websocket.accept()
    log.info("console.opened", vm=name, kind="serial")
    try:
        async with trio.open_nursery() as nursery:

            async def to_browser() -> None:
                while True:
                    # Blocking read in a thread; given up (and the stream aborted) on cancel.
                    data = await trio.to_thread.run_sync(
                        stream.recv, _CHUNK, abandon_on_cancel=True
                    )
                    if not data or isinstance(data, int):  # end, or -2 (would block)
                        if data == -2:
                            await trio.sleep(0.05)
                            continue
                        break
                    await websocket.send(data.decode("utf-8", "replace"))
                nursery.cancel_scope.cancel()

            nursery.start_soon(to_browser)
            while True:
                message = await websocket.receive()
                data = message.encode() if isinstance(message, str) else message
                await trio.to_thread.run_sync(stream.send, data)
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(_abort, stream)
        log.info("console.closed", vm=name, kind="serial")
    return None


def _abort(stream: Any) -> None:
    try:
        stream.abort()
    except Exception as exc:  # noqa: BLE001 (libvirtError: the stream is gone either way)
        log.debug("console.abort_failed", error=str(exc))


ROUTES = [
    Route(
        method="GET",
        rule=f"{API}/vms/<name>/console",
        view=vm_console,  # type: ignore[arg-type]  # websocket views answer nothing
        scope="admin",
        summary="The VM's VNC console over a websocket (binary RFB frames, for noVNC)",
        errors=(401, 403, 404, 409, 503),
        token_in_query=True,
        websocket=True,
    ),
    Route(
        method="GET",
        rule=f"{API}/vms/<name>/serial",
        view=vm_serial,  # type: ignore[arg-type]  # websocket views answer nothing
        scope="admin",
        summary="The VM's serial console over a websocket (text frames)",
        errors=(401, 403, 404, 409, 503),
        token_in_query=True,
        websocket=True,
    ),
]
