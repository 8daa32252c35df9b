"""The one typed configuration: TOML file, then HOSTAGENT_* environment, then flags.

Nested keys are addressed with a double underscore in the environment
(`HOSTAGENT_SPOOL__MAX_FILE_BYTES`) and with a dot everywhere else
(`spool.max_file_bytes`).
"""

from __future__ import annotations

import json
import os
import socket
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import pydantic
from pydantic import BaseModel, ConfigDict, Field

from agent.errors import ConfigError

DEFAULT_CONFIG_PATH = Path("/etc/hostagent/agent.toml")
ENV_PREFIX = "HOSTAGENT_"
# HOSTAGENT_* variables that are not config keys (the CLI's client settings).
_NOT_CONFIG = {"HOSTAGENT_CONFIG", "HOSTAGENT_TOKEN", "HOSTAGENT_URL"}


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SpoolConfig(_Section):
    enabled: bool = True
    max_file_bytes: int = Field(default=1024 * 1024, gt=0)
    # Empty means any owner; otherwise files owned by other uids are quarantined.
    allowed_uids: list[int] = Field(default_factory=list)
    # A file that does not parse yet is left alone until unchanged this long
    # (it may still be being copied in).
    settle_seconds: float = Field(default=2.0, ge=0)
    rescan_seconds: float = Field(default=30.0, gt=0)
    # watchfiles' rust loop wakes every step ms; it bounds drop->claim latency.
    watch_step_ms: int = Field(default=1, ge=1)
    claim_batch: int = Field(default=256, ge=1)


class ServiceConfig(_Section):
    """How the agent stops, reports and is watched as a system service."""

    # Running jobs get this long to finish after SIGTERM before they are
    # interrupted (and left for restart recovery); keep it well under the
    # unit's TimeoutStopSec.
    drain_seconds: float = Field(default=30.0, ge=0)
    # After interrupting, how long handlers get to unwind before the agent exits anyway.
    cancel_grace_seconds: float = Field(default=5.0, ge=0)
    # How often the STATUS= line sent to systemd is refreshed (when it changed).
    status_interval_seconds: float = Field(default=2.0, gt=0)
    # The watchdog is withheld when jobs have waited this long while workers sat idle.
    watchdog_stall_seconds: float = Field(default=30.0, gt=0)


class LibvirtConfig(_Section):
    uri: str = "qemu:///system"
    # libvirt keepalive: a probe every interval seconds, the connection is
    # declared dead after count probes go unanswered (0 disables).
    keepalive_interval: int = Field(default=5, ge=1)
    keepalive_count: int = Field(default=3, ge=0)
    # Reconnect backoff after the connection is lost or cannot be opened: doubles up to max.
    reconnect_min_seconds: float = Field(default=0.5, gt=0)
    reconnect_max_seconds: float = Field(default=30.0, gt=0)
    # Health says degraded when a round trip to libvirtd takes longer than this.
    degraded_latency_ms: float = Field(default=500.0, gt=0)


class PolicyConfig(_Section):
    """Where jobs may reach on the host (agent.policy; README "The path policy")."""

    # Image files and pool directories must lie under one of these (or under
    # the directory of a storage pool libvirt has defined, see include_pool_paths).
    image_roots: list[Path] = Field(default_factory=lambda: [Path("/var/lib/libvirt/images")])
    include_pool_paths: bool = True
    # Host devices, block devices, qemu:commandline and the like in vm.define:
    # only for admin tokens, and only when this is true.
    allow_passthrough: bool = False


Scope = Literal["read", "submit", "cancel", "admin"]


class TokenConfig(_Section):
    """One API token: only its SHA-256 is stored (`hostagent token create` prints both)."""

    name: str = Field(min_length=1, max_length=64)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    scopes: list[Scope] = Field(min_length=1)


class HttpConfig(_Section):
    enabled: bool = True
    bind: str = "127.0.0.1:8080"
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
    event_buffer: int = Field(default=1024, ge=1)
    retry_after_seconds: int = Field(default=1, ge=0)
    keep_alive_seconds: float = Field(default=75.0, gt=0)
    # A request's headers must arrive within this many seconds of its first byte.
    header_timeout_seconds: float = Field(default=10.0, gt=0)
    # Open connections at most (also bounded by the descriptor limit); more are
    # closed at once and counted in hostagent_http_connections_refused_total.
    max_connections: int = Field(default=1000, ge=1)
    max_connections_per_client: int = Field(default=256, ge=1)
    # Job API requests processed at once; more wait their turn (health and
    # /metrics never wait: they answer from memory).
    max_active_requests: int = Field(default=8, ge=1)


class Config(_Section):
    worker_id: str = Field(default_factory=socket.gethostname)
    state_dir: Path = Path("/var/lib/hostagent")
    spool_dir: Path = Path("/var/spool/hostagent")
    max_concurrent_jobs: int = Field(default_factory=lambda: os.cpu_count() or 1, ge=1)
    max_pending_jobs: int = Field(default=100_000, ge=1)
    default_timeout_seconds: float = Field(default=3600.0, gt=0)
    max_timeout_seconds: float = Field(default=3600.0, gt=0)
    max_disk_size_gb: int = Field(default=2048, ge=1)
    log_format: Literal["json", "console"] = "json"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    labels: dict[str, str] = Field(default_factory=dict)
    spool: SpoolConfig = Field(default_factory=SpoolConfig)
    service: ServiceConfig = Field(default_factory=ServiceConfig)
    libvirt: LibvirtConfig = Field(default_factory=LibvirtConfig)
    # Capabilities are re-fingerprinted this often (and when libvirt reconnects).
    capabilities_refresh_seconds: float = Field(default=300.0, gt=0)
    http: HttpConfig = Field(default_factory=HttpConfig)
    policy: PolicyConfig = Field(default_factory=PolicyConfig)
    # New jobs are refused (503) while the state directory's filesystem has
    # less free space than this, so the store never fills the disk (0: off).
    state_min_free_bytes: int = Field(default=64 * 1024 * 1024, ge=0)

    @property
    def store_path(self) -> Path:
        return self.state_dir / "jobs.sqlite3"


def _set_dotted(target: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    for part in parents:
        node = target.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"config: {dotted}: {part} is not a section", field=dotted)
        target = node
    target[leaf] = value


def _env_value(text: str) -> Any:
    # Lists and maps come as JSON; scalars stay strings for pydantic to coerce.
    if text[:1] in "[{":
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            return text
    return text


def load_config(
    path: Path | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Config:
    """Build the config; raise ConfigError naming the key on anything wrong.

    `path` None means the default path if it exists. `overrides` are dotted
    keys from command-line flags and win over everything else.
    """
    data: dict[str, Any] = {}
    chosen = path or (DEFAULT_CONFIG_PATH if DEFAULT_CONFIG_PATH.exists() else None)
    if chosen is not None:
        try:
            data = tomllib.loads(chosen.read_text())
        except FileNotFoundError as exc:
            raise ConfigError(f"config: file {chosen} not found", field="config") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config: {chosen} is not valid TOML: {exc}", field="config") from exc
    env = os.environ if environ is None else environ
    for name, text in env.items():
        if name.startswith(ENV_PREFIX) and name not in _NOT_CONFIG:
            key = name.removeprefix(ENV_PREFIX).lower().replace("__", ".")
            _set_dotted(data, key, _env_value(text))
    for key, value in (overrides or {}).items():
        if value is not None:
            _set_dotted(data, key, value)
    try:
        return Config.model_validate(data)
    except pydantic.ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        key = ".".join(str(part) for part in first["loc"])
        raise ConfigError(f"config: {key}: {first['msg']}", field=key, reason=first["msg"]) from exc
