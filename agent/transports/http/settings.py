"""The [http] section of the configuration: listener, tokens, TLS, limits."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from agent.config import RESTART, Section

Scope = Literal["read", "submit", "cancel", "admin"]


class TokenConfig(Section):
    """One API token: only its SHA-256 is stored (`hostagent token create` prints both)."""

    name: str = Field(min_length=1, max_length=64)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    scopes: list[Scope] = Field(min_length=1)


class HttpConfig(Section):
    enabled: bool = Field(default=True, json_schema_extra=RESTART)
    # The listener is bound once.
    bind: str = Field(default="127.0.0.1:8080", json_schema_extra=RESTART)
    tokens: list[TokenConfig] = Field(default_factory=list)
    # Local development and legacy clients only; refused on a non-loopback bind.
    insecure_no_auth: bool = False
    # GET /api/v1/health without a token (for load balancers and probes).
    open_health: bool = True
    tls_cert: Path | None = None
    tls_key: Path | None = None
    # Set: clients must present a certificate signed by this CA (mTLS).
    tls_client_ca: Path | None = None
    max_body_bytes: int = Field(default=4 * 1024 * 1024, gt=0)
    # The whole request body must arrive within this many seconds.
    body_timeout_seconds: float = Field(default=30.0, gt=0)
    max_batch_jobs: int = Field(default=1000, ge=1)
    # Live events buffered per websocket/SSE client; a client further behind is cut off.
    event_buffer: int = Field(default=8192, ge=1)
    retry_after_seconds: int = Field(default=1, ge=0)
    keep_alive_seconds: float = Field(default=75.0, gt=0)
    # The local API: the same routes over this Unix socket, authorised by the
    # peer's uid instead of a token; unset: /run/hostagent/api.sock for the system
    # agent (state_dir /var/lib/hostagent), else <state_dir>/api.sock.
    socket: Path | None = Field(default=None, json_schema_extra=RESTART)
    socket_enabled: bool = Field(default=True, json_schema_extra=RESTART)
    # Members of this group are admins over the socket (root always is).
    socket_admin_group: str = ""
    # Members may submit and read over the socket, and cancel their own jobs.
    socket_submit_group: str = "hostagent-submit"
    # A request's headers must arrive within this many seconds of its first byte.
    header_timeout_seconds: float = Field(default=10.0, gt=0, json_schema_extra=RESTART)
    # Open connections at most (also kept below the descriptor limit); more are
    # closed at once and counted in hostagent_http_connections_refused_total.
    max_connections: int = Field(default=1000, ge=1, json_schema_extra=RESTART)
    max_connections_per_client: int = Field(default=256, ge=1, json_schema_extra=RESTART)
    # Job API requests processed at once; more wait their turn (health and
    # /metrics never wait: they answer from memory). A submit waiting for its
    # commit is not processing: up to 4 per slot wait so (routes.JobSlots).
    max_active_requests: int = Field(default=8, ge=1, json_schema_extra=RESTART)
