"""The core settings and the loader: TOML file, then HOSTAGENT_* environment, then flags.

A leaf: it knows no transport. Each transport declares its own `Section`, and the
composition root (agent.service.settings) puts the core and those sections
together into the model `load_config` is given.

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
from typing import Any, Literal, TypeVar

import pydantic
from pydantic import BaseModel, ConfigDict, Field

from agent.errors import ConfigError

DEFAULT_CONFIG_PATH = Path("/etc/hostagent/agent.toml")
# The state directory: others may pass through (the local API's socket lives there
# for `make run`, guests' images may), not list; as the unit's StateDirectoryMode.
STATE_DIR_MODE = 0o751
ENV_PREFIX = "HOSTAGENT_"
# HOSTAGENT_* variables that are not config keys (the CLI's client settings;
# HOSTAGENT_KAFKA_KEY: the key `submit --kafka` signs with).
_NOT_CONFIG = {
    "HOSTAGENT_DEBUG",
    "HOSTAGENT_CONFIG",
    "HOSTAGENT_TOKEN",
    "HOSTAGENT_URL",
    "HOSTAGENT_KAFKA_KEY",
}


class Section(BaseModel):
    """A part of the configuration; unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")


# Marks a setting read once at start: a reload keeps its running value and says so.
RESTART: dict[str, Any] = {"restart": True}

ModelT = TypeVar("ModelT", bound=BaseModel)


class ServiceConfig(Section):
    """How the agent stops, reports and is watched as a system service."""

    # Running jobs get this long to finish after SIGTERM before they are
    # interrupted (and left for restart recovery); keep it well under the
    # unit's TimeoutStopSec.
    drain_seconds: float = Field(default=30.0, ge=0)
    # After interrupting, how long handlers get to unwind before the agent exits anyway.
    cancel_grace_seconds: float = Field(default=5.0, ge=0)
    # How often the STATUS= line sent to systemd is refreshed (when it changed).
    status_interval_seconds: float = Field(default=2.0, gt=0, json_schema_extra=RESTART)
    # The watchdog is withheld when jobs have waited this long while workers sat idle.
    watchdog_stall_seconds: float = Field(default=30.0, gt=0)


class LibvirtConfig(Section):
    # The connection is opened once with these.
    uri: str = Field(default="qemu:///system", json_schema_extra=RESTART)
    # libvirt keepalive: a probe every interval seconds, the connection is
    # declared dead after count probes go unanswered (0 disables).
    keepalive_interval: int = Field(default=5, ge=1, json_schema_extra=RESTART)
    keepalive_count: int = Field(default=3, ge=0, json_schema_extra=RESTART)
    # Reconnect backoff after the connection is lost or cannot be opened: doubles up to max.
    reconnect_min_seconds: float = Field(default=0.5, gt=0)
    reconnect_max_seconds: float = Field(default=30.0, gt=0)
    # Health says degraded when a round trip to libvirtd takes longer than this.
    degraded_latency_ms: float = Field(default=500.0, gt=0)


# The doors a job comes in by, as the operation allowlist names them.
TransportName = Literal["spool", "http", "socket", "kafka"]


class AllowRule(Section):
    """One `[[policy.allow]]` table (agent.policy.allowlist; README "What may run here").

    The rule names the callers its selectors match (every selector given must match;
    none given: every caller) and allows them the operations its globs match, on the
    resources its `resources` globs match when it has them.
    """

    name: str | None = Field(default=None, min_length=1, description="shown in refusals")
    transports: list[TransportName] = Field(default_factory=list)
    tokens: list[str] = Field(default_factory=list)  # HTTP token (and Kafka key) names
    groups: list[str] = Field(default_factory=list)  # socket peers' group names
    operations: list[str] = Field(min_length=1)  # globs: "vm.*", "image.info"
    # Globs over what an operation acts on (a domain's name, "pool/volume", a path);
    # None: any resource, and operations that name none.
    resources: list[str] | None = Field(default=None, min_length=1)


class PolicyConfig(Section):
    """Where jobs may reach on the host (agent.policy.paths; README "The path policy")
    and which operations each caller may run there (README "What may run here")."""

    # Image files and pool directories must lie under one of these (or under
    # the directory of a storage pool libvirt has defined, see include_pool_paths).
    image_roots: list[Path] = Field(
        default_factory=lambda: [Path("/var/lib/libvirt/images"), Path("/var/lib/hostagent/images")]
    )
    include_pool_paths: bool = True
    # Host devices, block devices, qemu:commandline and the like in vm.define:
    # only for admin tokens, and only when this is true.
    allow_passthrough: bool = False
    # The operation allowlist: a caller some rule names may run only what a rule
    # naming it allows; a caller no rule names keeps every operation. Empty: today's.
    allow: list[AllowRule] = Field(default_factory=list)


class StoreConfig(Section):
    """The job store's retention (see agent/store/retention.py)."""

    # Finished jobs (with their events, outbox entries, spool done/ files and
    # artifacts) are pruned this long after they finished; their idempotency
    # record (job_id and fingerprint) is kept at least as long again.
    retention_days: float = Field(default=7.0, gt=0)
    # At most this many jobs are kept (oldest finished pruned first); 0: no cap.
    max_jobs: int = Field(default=0, ge=0)
    # How often retention runs; each run prunes in small batches beside the submits.
    prune_interval_seconds: float = Field(default=600.0, gt=0)


class Config(Section):
    """The core settings: what the agent is, where it keeps state, its limits.

    The transports' sections are not here: agent.service.settings.Settings adds them.
    """

    worker_id: str = Field(default_factory=socket.gethostname, json_schema_extra=RESTART)
    state_dir: Path = Field(default=Path("/var/lib/hostagent"), json_schema_extra=RESTART)
    spool_dir: Path = Field(default=Path("/var/spool/hostagent"), json_schema_extra=RESTART)
    max_concurrent_jobs: int = Field(default_factory=lambda: os.cpu_count() or 1, ge=1)
    max_pending_jobs: int = Field(default=100_000, ge=1)
    default_timeout_seconds: float = Field(default=3600.0, gt=0)
    max_timeout_seconds: float = Field(default=3600.0, gt=0)
    max_disk_size_gb: int = Field(default=2048, ge=1)
    log_format: Literal["json", "console"] = Field(default="json", json_schema_extra=RESTART)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    labels: dict[str, str] = Field(default_factory=dict)
    service: ServiceConfig = Field(default_factory=ServiceConfig)
    libvirt: LibvirtConfig = Field(default_factory=LibvirtConfig)
    store: StoreConfig = Field(default_factory=StoreConfig)
    # Capabilities are re-fingerprinted this often (and when libvirt reconnects).
    capabilities_refresh_seconds: float = Field(default=300.0, gt=0)
    policy: PolicyConfig = Field(default_factory=PolicyConfig)
    # New jobs are refused (503) while the state directory's filesystem has
    # less free space than this, so the store never fills the disk (0: off).
    state_min_free_bytes: int = Field(default=64 * 1024 * 1024, ge=0)
    # Events (Kafka's job-events) carry a result up to this many bytes of JSON;
    # beyond it `result_truncated` and a reference (agent.core.outbox.event_data).
    max_event_result_bytes: int = Field(default=256 * 1024, ge=0)

    @property
    def store_path(self) -> Path:
        return self.state_dir / "jobs.sqlite3"


def restart_keys(model: type[BaseModel], prefix: str = "") -> set[str]:
    """Dotted keys of `model`'s settings marked RESTART, its sections' included."""
    keys: set[str] = set()
    for name, info in model.model_fields.items():
        kind = info.annotation
        if info.json_schema_extra == RESTART:
            keys.add(prefix + name)
        if isinstance(kind, type) and issubclass(kind, BaseModel):
            keys |= restart_keys(kind, f"{prefix}{name}.")
    return keys


def _config_error(exc: pydantic.ValidationError) -> ConfigError:
    first = exc.errors(include_url=False)[0]
    key = ".".join(str(part) for part in first["loc"])
    reason = "Unknown key" if first["type"] == "extra_forbidden" else first["msg"]
    return ConfigError(f"config: {key}: {first['msg']}", field=key, reason=reason)


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
    model: type[ModelT],
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> ModelT:
    """Build `model` (the settings the composition root declares); raise
    ConfigError naming the key on anything wrong.

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
        return model.model_validate(data)
    except pydantic.ValidationError as exc:
        raise _config_error(exc) from exc
