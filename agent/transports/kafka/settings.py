"""The `[kafka]` config section."""

from __future__ import annotations

import json
import logging
from typing import Any, Literal

import structlog
from pydantic import Field, SecretStr, field_validator

from agent.config import RESTART, Section
from agent.errors import ConfigError

# Kafka's own rule for topic names (and so for the parts we build them from).
TOPIC_PART = r"^[A-Za-z0-9._-]+$"


Scope = Literal["read", "submit", "cancel", "admin"]


class KafkaKeyConfig(Section):
    """A key whose signed jobs this host takes, with the scopes it grants (as a token's).

    `submit` lets its jobs in; `admin` also lets them past what the host policy
    keeps for admins (as an admin token's jobs).
    """

    id: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._@:-]+$")
    # base64 of the 32 raw bytes (`hostagent key generate` prints it), or PEM.
    public_key: str = Field(min_length=1)
    scopes: list[Scope] = Field(min_length=1)

    @field_validator("public_key")
    @classmethod
    def _an_ed25519_key(cls, value: str) -> str:
        from agent.transports.kafka.signing import load_public_key  # noqa: PLC0415

        try:
            load_public_key(value, field="public_key")
        except ConfigError as exc:
            raise ValueError(f"{exc.message}: {exc.details.get('reason')}") from exc
        return value


class KafkaConfig(Section):
    """The fleet transport; off while `bootstrap_servers` is empty.

    Every setting is read once at start (clients and consumer groups are made once).
    """

    # host:port[,host:port...]; empty: the transport is off.
    bootstrap_servers: str = Field(default="", json_schema_extra=RESTART)
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        default="PLAINTEXT", json_schema_extra=RESTART
    )
    # The usual TLS and SASL settings, passed to librdkafka as ssl.* / sasl.* when set.
    ssl_ca_location: str = Field(default="", json_schema_extra=RESTART)
    ssl_certificate_location: str = Field(default="", json_schema_extra=RESTART)
    ssl_key_location: str = Field(default="", json_schema_extra=RESTART)
    sasl_mechanism: str = Field(default="", json_schema_extra=RESTART)
    sasl_username: str = Field(default="", json_schema_extra=RESTART)
    # A secret: shown as ********** in `config show`, reprs and dumps.
    sasl_password: SecretStr = Field(default=SecretStr(""), json_schema_extra=RESTART)
    topic_prefix: str = Field(
        default="hostagent", pattern=TOPIC_PART, max_length=100, json_schema_extra=RESTART
    )
    # Pools this agent takes work for (<prefix>.pool.<name>.jobs, one shared group per pool).
    pools: list[str] = Field(default_factory=list, json_schema_extra=RESTART)
    # Labels that broadcast selectors match, on top of (and overriding) the agent's `labels`.
    selector_labels: dict[str, str] = Field(default_factory=dict, json_schema_extra=RESTART)
    # Also publish job events for jobs other transports brought in.
    events_for_all_jobs: bool = Field(default=False, json_schema_extra=RESTART)
    # At most one progress event per job this often (terminal events are never held back).
    progress_interval_seconds: float = Field(default=1.0, ge=0, json_schema_extra=RESTART)
    # Topics the agent creates when missing: partitions of job topics, and the
    # replication factor of every topic (-1: the broker's default).
    create_topics: bool = Field(default=True, json_schema_extra=RESTART)
    partitions: int = Field(default=6, ge=1, json_schema_extra=RESTART)
    replication_factor: int = Field(default=-1, ge=-1, json_schema_extra=RESTART)
    # The shortest heartbeat interval: it grows with the fleet so that the whole
    # fleet sends at most max_heartbeats_per_second (README, "Fleet").
    heartbeat_interval_seconds: float = Field(default=10.0, gt=0, json_schema_extra=RESTART)
    max_heartbeats_per_second: float = Field(default=200.0, gt=0, json_schema_extra=RESTART)
    # The capabilities record is re-asserted this often even when nothing changed,
    # and a change is published after this debounce plus up to as much again of jitter.
    capabilities_reassert_seconds: float = Field(default=600.0, gt=0, json_schema_extra=RESTART)
    capabilities_debounce_seconds: float = Field(default=2.0, ge=0, json_schema_extra=RESTART)
    # Messages handed to the job store in one transaction.
    intake_batch: int = Field(default=500, ge=1, json_schema_extra=RESTART)
    # Jobs must be signed by one of `keys` (README, "Signed fleet jobs"); false lets
    # anyone who may write a job topic submit on every host that reads it.
    require_signatures: bool = Field(default=True, json_schema_extra=RESTART)
    keys: list[KafkaKeyConfig] = Field(default_factory=list, json_schema_extra=RESTART)
    # A signature older (or further ahead) than this is a replay: refused.
    signature_max_age_seconds: float = Field(default=300.0, gt=0, json_schema_extra=RESTART)
    # Delivery of an event the brokers refuse as such (too large) is tried this many
    # times, with backoff, then parked: logged and counted in health, never fatal.
    event_attempts: int = Field(default=4, ge=1, json_schema_extra=RESTART)
    # Anything else for librdkafka (e.g. "session.timeout.ms"), applied last.
    librdkafka: dict[str, str] = Field(default_factory=dict, json_schema_extra=RESTART)

    @property
    def enabled(self) -> bool:
        return bool(self.bootstrap_servers)

    def client_config(self) -> dict[str, Any]:
        """Connection settings shared by every client the transport makes."""
        config: dict[str, Any] = {
            "logger": LIBRDKAFKA_LOG,
            # Called only when librdkafka's statistics.interval.ms is set (bench/fleet.py).
            "stats_cb": _log_statistics,
            "bootstrap.servers": self.bootstrap_servers,
            "security.protocol": self.security_protocol,
        }
        passthrough = {
            "ssl.ca.location": self.ssl_ca_location,
            "ssl.certificate.location": self.ssl_certificate_location,
            "ssl.key.location": self.ssl_key_location,
            "sasl.mechanism": self.sasl_mechanism,
            "sasl.username": self.sasl_username,
            "sasl.password": self.sasl_password.get_secret_value(),
        }
        config.update({key: value for key, value in passthrough.items() if value})
        config.update(self.librdkafka)
        return config


class _LibrdkafkaLog:
    """librdkafka's log lines as structured events instead of raw stderr.

    Connection failures repeat every second while a broker is away: they are
    debug here, and the transport's health says "degraded" once instead.
    """

    _log = structlog.get_logger("librdkafka")

    def log(self, level: int, message: str, *args: object) -> None:
        text = message % args if args else message
        if level >= logging.ERROR:
            self._log.debug("librdkafka.error", message=text)
        elif level >= logging.WARNING:
            self._log.debug("librdkafka.warning", message=text)


LIBRDKAFKA_LOG = _LibrdkafkaLog()
_stats_log = structlog.get_logger("agent.transports.kafka")


def _log_statistics(text: str) -> None:
    """librdkafka's totals for one client (requests and bytes to and from the brokers)."""
    stats = json.loads(text)
    _stats_log.info(
        "kafka.statistics",
        client=stats.get("name"),
        tx=stats.get("tx", 0),
        txbytes=stats.get("tx_bytes", 0),
        rx=stats.get("rx", 0),
        rxbytes=stats.get("rx_bytes", 0),
    )
