"""HTTP transport: the /api/v1 job API, live events, auth and TLS, served by
hypercorn's trio worker inside the daemon's nursery.

Secure by default: every endpoint but health needs a bearer token with the
right scope, and the agent refuses to listen on a non-loopback address
without tokens (`insecure_no_auth` is for loopback only). The listening
socket is bound before the transport says it started, so "ready" means
connections are accepted, and a bind with port 0 reports the port it got.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import structlog
import trio
from hypercorn.config import Config as HypercornConfig

from agent.core.health import Status
from agent.core.intake import TransportIntake
from agent.core.services import Services
from agent.errors import ConfigError
from agent.transports.http import job_api
from agent.transports.http.auth import TokenTable
from agent.transports.http.front import Front
from agent.transports.http.lazy import App, LazyApp
from agent.transports.http.listener import CappedListener, ConnectionLimits
from agent.transports.http.local import (
    LocalAccess,
    PeerPolicy,
    bind_socket,
    describe_peer,
    local_socket_path,
    remove_old_owner_book,
)
from agent.transports.http.routes import ApiState
from agent.transports.http.serving import serve
from agent.transports.http.settings import HttpConfig

__all__ = ["HttpTransport", "hypercorn_settings", "serve_asgi"]

log = structlog.get_logger("agent.http")


def parse_bind(bind: str) -> tuple[str, int]:
    """HOST:PORT or [IPv6]:PORT -> (host, port)."""
    host, sep, port = bind.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ConfigError(
            f"config: http.bind: expected HOST:PORT, got {bind!r}",
            field="http.bind",
            reason="Expected HOST:PORT",
        )
    host = host.removeprefix("[").removesuffix("]")
    return host, int(port)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name other than localhost may resolve to anything


def check_exposure(config: HttpConfig) -> None:
    """Refuse settings that would open the API to the network without auth."""
    host, _ = parse_bind(config.bind)
    if config.tls_key is not None and config.tls_cert is None:
        raise ConfigError(
            "config: http.tls_key is set without http.tls_cert", field="http.tls_cert"
        )
    if config.tls_cert is not None and config.tls_key is None:
        raise ConfigError("config: http.tls_cert is set without http.tls_key", field="http.tls_key")
    if config.tls_client_ca is not None and config.tls_cert is None:
        raise ConfigError(
            "config: http.tls_client_ca (mTLS) needs http.tls_cert and http.tls_key",
            field="http.tls_cert",
        )
    if is_loopback(host):
        return
    if config.insecure_no_auth:
        raise ConfigError(
            f"refusing --insecure-no-auth on {config.bind}: it is allowed on a loopback "
            "address only (127.0.0.1, ::1, localhost)",
            field="http.insecure_no_auth",
            reason="Unauthenticated API on a non-loopback address",
        )
    if not config.tokens:
        raise ConfigError(
            f"refusing to listen on {config.bind} without API tokens: create one with "
            "`hostagent token create --scopes read,submit` and add the printed entry to "
            "the config, or bind to 127.0.0.1",
            field="http.tokens",
            reason="No tokens configured for a non-loopback address",
        )


def build_ssl_context(config: HttpConfig) -> ssl.SSLContext | None:
    if config.tls_cert is None or config.tls_key is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["h2", "http/1.1"])
    _load_tls_files(context, config)
    return context


def _load_tls_files(context: ssl.SSLContext, config: HttpConfig) -> None:
    assert config.tls_cert is not None
    assert config.tls_key is not None
    try:
        context.load_cert_chain(certfile=config.tls_cert, keyfile=config.tls_key)
        if config.tls_client_ca is not None:
            context.load_verify_locations(cafile=config.tls_client_ca)
            context.verify_mode = ssl.CERT_REQUIRED
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"config: http TLS files unusable: {exc}", field="http.tls_cert", reason=str(exc)
        ) from exc


class _Hypercorn(HypercornConfig):
    """hypercorn's config, with the TLS context made (and reloaded) by the transport."""

    def __init__(self, context: ssl.SSLContext | None) -> None:
        super().__init__()
        self._context = context

    def create_ssl_context(self) -> ssl.SSLContext | None:
        return self._context


def hypercorn_settings(config: HttpConfig, context: ssl.SSLContext | None) -> HypercornConfig:
    """The hypercorn settings the agent serves with (also used by bench/http.py's baseline)."""
    settings = _Hypercorn(context)
    settings.accesslog = None
    settings.errorlog = logging.getLogger("hypercorn.error")
    settings.keep_alive_timeout = config.keep_alive_seconds
    # h11 refuses request heads over this (431) before they take more memory.
    settings.h11_max_incomplete_size = 16 * 1024
    settings.keep_alive_max_requests = 1_000_000
    settings.ssl_handshake_timeout = 10.0
    settings.graceful_timeout = 1.0
    return settings


class HttpTransport:
    name = "http"
    outbox = None  # clients poll or watch live events: nothing durable to deliver

    def __init__(
        self, config: HttpConfig, *, state_dir: Path | None = None, services: Services | None = None
    ) -> None:
        check_exposure(config)
        self.config = config
        self._services = services or Services()  # the resource view, where the agent has one
        self.socket_path = local_socket_path(config, state_dir)
        self._context = build_ssl_context(config)
        self._api: ApiState | None = None
        self._tokens = TokenTable(config.tokens, required=not config.insecure_no_auth)
        # Set once listening (port 0 binds report the port the kernel chose).
        self.address: tuple[str, int] | None = None
        self._local: LocalAccess | None = None
        self._intake: TransportIntake | None = None

    @property
    def url(self) -> str:
        assert self.address is not None, "not listening yet"
        host, port = self.address
        host = f"[{host}]" if ":" in host else host
        return f"{'https' if self._context else 'http'}://{host}:{port}"

    def features(self) -> list[str]:
        if not self.config.enabled:
            return ["socket"]  # --no-http: reachable on this host only, not by a fleet
        tls = ["tls"] if self.config.tls_cert is not None else []
        return ["http", "websocket", "sse", "batch", *tls]

    async def health(self) -> tuple[Status, str, dict[str, Any]]:
        tcp = self.config.enabled
        if (tcp and self.address is None) or self._intake is None:
            return "unhealthy", "not listening", {}
        where = {"url": self.url} if tcp else {"socket": str(self.socket_path)}
        if not self._intake.accepting:
            return "degraded", "draining: new jobs are refused", where
        return "healthy", "listening" if tcp else "listening on the local socket only", where

    def reload(self, config: HttpConfig) -> None:
        """Take new tokens and TLS cert/key (SIGHUP); the bind address needs a restart."""
        check_exposure(config)
        tokens = TokenTable(config.tokens, required=not config.insecure_no_auth)
        if config.bind != self.config.bind or (config.tls_cert is None) != (self._context is None):
            log.warning(
                "http.reload_needs_restart",
                reason="the bind address and turning TLS on or off take a restart",
            )
        if self._context is not None and config.tls_cert is not None:
            # Loaded into the live context: new handshakes use the new files.
            _load_tls_files(self._context, config)
        self.config = config
        self._tokens = tokens
        if self._local is not None:
            self._local.policy = PeerPolicy.from_config(config)
        if self._api is not None:
            self._api.config = config
            self._api.tokens = tokens
        log.info("http.reloaded", tokens=len(config.tokens))

    async def run(
        self,
        intake: TransportIntake,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        self._intake = intake
        # http.enabled = false (--no-http): no TCP listener, the local socket still serves.
        listener = self._bind() if self.config.enabled else None
        api = self._api = ApiState(intake, self.config, self._tokens, self._services)
        # quart only for the routes the front does not answer, built when first
        # needed (lazy.py); the socket's LocalAccess is set by then.
        app = LazyApp(lambda: _build_app(api, self._local))
        # The hot routes (job_api.ROUTES marked hot) are answered in front of quart;
        # one bound on job work (api.slots), whichever of the two serves it.
        front = Front(app, api, job_api.ROUTES)
        settings = hypercorn_settings(self.config, self._context)
        async with trio.open_nursery() as nursery:
            await nursery.start(api.health.refresh)
            if self.socket_path is not None:
                await nursery.start(
                    partial(
                        self._serve_socket,
                        front,
                        self.socket_path,
                        intake.submitter,
                        lifespan=listener is None,
                    )
                )
            if listener is not None:
                await nursery.start(
                    partial(serve_asgi, front, listener, settings, limits=self._limits())
                )
            if listener is not None and not self.config.tokens and not self.config.insecure_no_auth:
                log.warning(
                    "http.no_tokens",
                    message="every request over TCP but health is refused until a token is "
                    "configured: `hostagent token create --scopes read,submit,cancel --name NAME`,"
                    " then add the printed entry to the config and `systemctl reload hostagent`",
                )
            log.info(
                "http.ready",
                url=None if listener is None else self.url,
                auth="none (loopback development)" if self.config.insecure_no_auth else "tokens",
                mtls=self.config.tls_client_ca is not None,
                socket=None if self.socket_path is None else str(self.socket_path),
            )
            task_status.started()

    def _limits(self) -> ConnectionLimits:
        return ConnectionLimits(
            max_connections=self.config.max_connections,
            per_client=self.config.max_connections_per_client,
            header_timeout=self.config.header_timeout_seconds,
        )

    async def _serve_socket(
        self,
        app: Any,
        path: Path,
        submitter_of: Callable[[str], Awaitable[str | None]],
        *,
        lifespan: bool = False,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        sock = bind_socket(path)
        # Who submitted a job is recorded with it now; an older agent's book goes.
        await trio.to_thread.run_sync(remove_old_owner_book, path.parent)
        self._local = LocalAccess(PeerPolicy.from_config(self.config), submitter_of)
        # The socket's peers are all one "client": the per-client cap is the whole cap.
        limits = self._limits()
        limits = replace(limits, per_client=limits.max_connections)
        listener = CappedListener(sock, limits, describe=describe_peer)
        settings = hypercorn_settings(self.config, None)
        try:
            # The TCP server runs the app's lifespan (this one when there is none); requests
            # over the socket are authorised by their peer (put into each scope by describe_peer).
            await serve(app, listener, settings, lifespan=lifespan, task_status=task_status)
        finally:
            # Also while cancelled (no await can run then); unlinking a socket is quick.
            path.unlink(missing_ok=True)  # noqa: ASYNC240
            log.info("http.socket_closed", path=str(path))

    def _bind(self) -> socket.socket:
        host, port = parse_bind(self.config.bind)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        listener = socket.socket(family, socket.SOCK_STREAM)
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((host, port))
            listener.listen(1024)
        except OSError as exc:
            listener.close()
            raise ConfigError(
                f"config: http.bind: cannot listen on {self.config.bind}: {exc.strerror}",
                field="http.bind",
                reason=str(exc.strerror),
            ) from exc
        listener.setblocking(False)
        self.address = listener.getsockname()[:2]
        return listener


async def serve_asgi(
    app: Any,
    listener: socket.socket,
    settings: HypercornConfig,
    *,
    limits: ConnectionLimits | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve an ASGI app on a listening TCP socket, with the agent's connection limits,
    until cancelled (also bench/http.py's baseline)."""
    limits = limits or ConnectionLimits()
    capped = CappedListener(listener, limits, tls=settings.create_ssl_context())
    log.info("http.limits", max_connections=capped.cap, per_client=limits.per_client)
    await serve(app, capped, settings, task_status=task_status)


def _build_app(api: ApiState, local: LocalAccess | None) -> App:
    # quart and the routes only it serves are imported here, when first needed.
    from agent.transports.http.app import build_app  # noqa: PLC0415

    return build_app(api, local=local)
