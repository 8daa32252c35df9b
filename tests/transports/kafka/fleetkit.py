"""Helpers for the fleet tests: agents with a [kafka] section, jobs, events."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.transports.kafka import KafkaConfig
from agent.transports.kafka.client import EventWatcher, send_jobs
from agent.transports.kafka.signing import private_key_file, public_key_text, sign
from tests.agentproc import AgentProcess

# The operator's key the fleet tests sign with; every test agent trusts it (submit).
FLEET_KEY_ID = "fleet-test"
FLEET_KEY = Ed25519PrivateKey.generate()
SIGNER = (FLEET_KEY_ID, FLEET_KEY)
KEY_ENTRY: dict[str, Any] = {
    "id": FLEET_KEY_ID,
    "public_key": public_key_text(FLEET_KEY.public_key()),
    "scopes": ["submit"],
}


def send_signed(
    settings: KafkaConfig, topic: str, documents: list[dict[str, Any]], **kwargs: Any
) -> int:
    """send_jobs, signed by the fleet tests' key."""
    return send_jobs(settings, topic, documents, signer=SIGNER, **kwargs)


def signed_headers(topic: str, key: bytes | None, value: bytes, **kwargs: Any) -> Any:
    """Headers that sign a hand-made message with the fleet tests' key."""
    return sign(FLEET_KEY, FLEET_KEY_ID, topic=topic, key=key, value=value, **kwargs)


def write_key_file(path: Path) -> Path:
    """The fleet tests' key as `hostagent key generate` writes it (for --key)."""
    path.write_text(private_key_file(FLEET_KEY_ID, FLEET_KEY))
    path.chmod(0o600)
    return path


def echo(job_id: str, message: str = "hi") -> dict[str, Any]:
    return {
        "version": "1.0",
        "job_id": job_id,
        "kind": "Test",
        "operation": "system.echo",
        "payload": {"type": "system.echo.v1", "data": {"message": message}},
    }


def sleep(job_id: str, seconds: float) -> dict[str, Any]:
    return {
        "version": "1.0",
        "job_id": job_id,
        "kind": "Test",
        "operation": "system.sleep",
        "payload": {"type": "system.sleep.v1", "data": {"seconds": seconds}},
    }


def kafka_toml(
    bootstrap: str,
    prefix: str,
    *,
    worker_id: str,
    pools: list[str] = (),  # type: ignore[assignment]
    labels: dict[str, str] | None = None,
    max_concurrent: int = 2,
    log_level: str = "info",
    heartbeat: float = 1.0,
    extra: str = "",
) -> str:
    label_lines = "\n".join(f'{k} = "{v}"' for k, v in (labels or {}).items())
    return f"""
worker_id = "{worker_id}"
max_concurrent_jobs = {max_concurrent}
log_level = "{log_level}"

[labels]
{label_lines}

[kafka]
bootstrap_servers = "{bootstrap}"
topic_prefix = "{prefix}"
pools = {json.dumps(list(pools))}
heartbeat_interval_seconds = {heartbeat}
capabilities_debounce_seconds = 0.1
{extra}

[[kafka.keys]]
id = "{KEY_ENTRY["id"]}"
public_key = "{KEY_ENTRY["public_key"]}"
scopes = {json.dumps(KEY_ENTRY["scopes"])}
"""


def kafka_agent(
    tmp: Path, bootstrap: str, prefix: str, worker_id: str, **kwargs: Any
) -> AgentProcess:
    """An agent process of its own (state, spool, config) reading Kafka."""
    home = tmp / worker_id
    home.mkdir(parents=True, exist_ok=True)
    config = home / "agent.toml"
    config.write_text(kafka_toml(bootstrap, prefix, worker_id=worker_id, **kwargs))
    return AgentProcess(home / "state", home / "spool", "--config", str(config))


class Events:
    """Job events read back from <prefix>.job-events, grouped by job."""

    def __init__(self, settings: KafkaConfig) -> None:
        self.settings = settings
        self.by_job: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self.repeats = 0

    def read(self, job_ids: list[str], *, per_job: int = 1, timeout: float = 60.0) -> None:
        """Read from the topic's start until every job has `per_job` terminal events."""
        self.by_job.clear()
        with EventWatcher(self.settings, from_beginning=True) as watcher:
            for event in watcher.until_done(job_ids, timeout=timeout, per_job=per_job):
                self.by_job[event["job_id"]].append(event)
            self.repeats = watcher.repeats

    def types(self, job_id: str) -> list[str]:
        return [event["type"] for event in self.by_job[job_id]]

    def terminal(self, job_id: str) -> list[dict[str, Any]]:
        return [e for e in self.by_job[job_id] if e["type"] in {"completed", "failed", "cancelled"}]
