"""hostagent commands for operators: config check/show, token list/revoke, follow,
completion, and the readable forms of jobs, caps and health."""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.cli.support import (
    EXIT_CANCELLED,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_TIMEOUT,
    config_path,
)
from agent.errors import AgentError, ConfigError, NotFoundError
from agent.service.settings import Settings, load_settings

if TYPE_CHECKING:
    from agent.cli.client import AgentClient

REDACTED = "<redacted>"


def print_json(value: Any) -> None:
    print(json.dumps(value, indent=2))


# --- config ---


def config_check(args: argparse.Namespace) -> int:
    """Validate a config file as `hostagent run` would, without starting anything."""
    from agent.cli.policy import check_allowlist, warn_allowlist
    from agent.transports.http.transport import check_exposure

    path = args.file or config_path(args.config, discover=True)
    if path is None:
        print("hostagent: no config file (the built-in defaults apply)", file=sys.stderr)
    check_allowlist(path)  # every bad rule, named as policy.allow[2].transports[0]
    config = load_settings(path)
    http = config.http
    if http.enabled:
        check_exposure(http)
    warned = warn_allowlist(config)
    print(f"{path or '(defaults)'}: ok" + (f" ({warned} warnings)" if warned else ""))
    return EXIT_OK


# librdkafka properties that hold a secret (sasl.password, ssl.key.password, ...).
_SECRET_PROPERTY = re.compile(r"password|secret|credential", re.IGNORECASE)


def redacted(config: Settings) -> dict[str, Any]:
    """The effective config as plain data, with secrets hidden: token hashes, SecretStr
    settings (pydantic dumps them masked) and librdkafka properties that hold one."""
    data = config.model_dump(mode="json")
    for token in data.get("http", {}).get("tokens", []):
        token["sha256"] = REDACTED
    kafka = data.get("kafka", {})
    if kafka.get("sasl_password"):
        kafka["sasl_password"] = REDACTED
    passthrough = kafka.get("librdkafka", {})
    for key in passthrough:
        if _SECRET_PROPERTY.search(key):
            passthrough[key] = REDACTED
    return data


def config_show(args: argparse.Namespace, config: Settings) -> int:
    print_json(redacted(config))
    return EXIT_OK


# --- tokens ---


def token_list(args: argparse.Namespace, config: Settings) -> int:
    tokens = config.http.tokens
    if args.json:
        print_json([{"name": t.name, "scopes": list(t.scopes)} for t in tokens])
        return EXIT_OK
    print(f"{'NAME':24} SCOPES")
    for token in tokens:
        print(f"{token.name:24} {','.join(token.scopes)}")
    return EXIT_OK


_TABLE = re.compile(r"^\s*\[")


def token_revoke(args: argparse.Namespace, config: Settings) -> int:
    """Remove a token's [[http.tokens]] entry from the config file; the agent drops it on reload."""
    path = config_path(args.config)
    if path is None or not path.is_file():
        raise ConfigError("token revoke: no config file to edit", field="config")
    if args.name not in {token.name for token in config.http.tokens}:
        raise NotFoundError(f"no token named {args.name!r} in the config", field="name")
    lines = path.read_text().splitlines(keepends=True)
    kept = _without_token(lines, args.name)
    if len(kept) == len(lines):
        raise ConfigError(
            f"token {args.name!r} is not a [[http.tokens]] entry of {path} "
            "(set in the environment?); remove it there",
            field="http.tokens",
        )
    _replace(path, "".join(kept))
    load_settings(path)  # the edited file must still be a valid config
    print(f"revoked {args.name} in {path}; `systemctl reload hostagent` applies it")
    return EXIT_OK


def _without_token(lines: list[str], name: str) -> list[str]:
    kept: list[str] = []
    block: list[str] | None = None
    for line in [*lines, "[end]\n"]:
        if _TABLE.match(line):
            if block is not None and not _names(block, name):
                kept.extend(block)
            block = [line] if line.strip() == "[[http.tokens]]" else None
            if block is None:
                kept.append(line)
            continue
        (block if block is not None else kept).append(line)
    kept.pop()  # the sentinel
    return kept


def _names(block: list[str], name: str) -> bool:
    pattern = re.compile(r"^\s*name\s*=\s*[\"']" + re.escape(name) + r"[\"']\s*(#.*)?$")
    return any(pattern.match(line.rstrip("\n")) for line in block)


def _replace(path: Path, text: str) -> None:
    staged = path.with_name(f".{path.name}.tmp")
    staged.write_text(text)
    staged.chmod(path.stat().st_mode & 0o7777)
    staged.replace(path)


# --- following a job ---


def follow(remote: AgentClient, job_id: str, *, timeout: float, progress: bool) -> int:
    """Show a job's progress until it ends; the exit code says how it ended."""
    from agent.cli.client import ProgressView

    view = ProgressView() if progress else None
    try:
        state = remote.follow(job_id, deadline=time.monotonic() + timeout, view=view)
    except KeyboardInterrupt:
        if view is not None:
            view.finish()
        print(
            f"\nhostagent: stopped following; job {job_id} keeps running. "
            f"Follow it again with `hostagent follow {job_id}`, "
            f"cancel it with `hostagent cancel {job_id}`.",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    except AgentError as exc:
        if exc.details.get("field") != "timeout":
            raise
        print(f"hostagent: {exc.message}; it keeps running", file=sys.stderr)
        return EXIT_TIMEOUT
    finally:
        if view is not None:
            view.finish()
    result = remote.result(job_id) if state["status"] == "Completed" else None
    print_json({**state, "result": result})
    return outcome_code(state["status"])


def outcome_code(status: str) -> int:
    return {"Completed": EXIT_OK, "Cancelled": EXIT_CANCELLED}.get(status, EXIT_FAILED)


# --- readable reads ---

JOB_COLUMNS = f"{'JOB ID':40} {'STATUS':10} {'OPERATION':24} SUBMITTED"


def print_jobs(jobs: list[dict[str, Any]], *, header: bool) -> None:
    if header:
        print(JOB_COLUMNS)
    for job in jobs:
        print(f"{job['job_id']:40} {job['status']:10} {job['operation']:24} {job['submitted_at']}")


def caps_summary(caps: dict[str, Any]) -> None:
    operations = caps.get("operations", [])
    namespaces: dict[str, int] = {}
    for operation in operations:
        prefix = operation.split(".")[0]
        namespaces[prefix] = namespaces.get(prefix, 0) + 1
    hypervisor = caps.get("hypervisor") or {}
    rows = [
        ("worker", caps.get("worker_id")),
        ("host", f"{caps.get('hostname')} ({caps.get('arch')}, {caps.get('cpus')} CPUs)"),
        ("memory", f"{(caps.get('memory_bytes') or 0) / 2**30:.1f} GiB"),
        ("hypervisor", f"{hypervisor.get('type', '-')} {hypervisor.get('version', '')}".strip()),
        ("features", ", ".join(caps.get("features", []))),
        ("disk formats", ", ".join(caps.get("disk_formats", [])) or "-"),
        ("max jobs", caps.get("max_concurrent_jobs")),
        (
            "operations",
            f"{len(operations)}: "
            + ", ".join(f"{name} ({count})" for name, count in sorted(namespaces.items())),
        ),
        ("labels", ", ".join(f"{k}={v}" for k, v in caps.get("labels", {}).items()) or "-"),
    ]
    for name, value in rows:
        print(f"{name + ':':14} {value}")
    print("(hostagent caps --json: the full document, with every operation's schema)")


def health_summary(report: dict[str, Any]) -> None:
    print(f"status: {report.get('status')}")
    for name, component in (report.get("components") or {}).items():
        if isinstance(component, dict):
            # Components say why they are not healthy in `reason` (agent.core.health).
            print(f"  {name:12} {component.get('status', '?'):10} {component.get('reason') or ''}")


# --- shell completion ---


def completion(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    import shtab

    print(shtab.complete(parser, shell=args.shell))
    return EXIT_OK
