"""The hostagent command line."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.cli_resources import add_commands
from agent.config import Config, load_config
from agent.errors import AgentError, BadRequestError
from agent.jobs import JobState, new_job_id
from agent.transports.kafka import KafkaSettings
from agent.transports.kafka import _cli as kafka_cli

if TYPE_CHECKING:
    from agent.client import AgentClient


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        type=Path,
        help="TOML config file (default /etc/hostagent/agent.toml if present)",
    )
    parser.add_argument("--state-dir", type=Path, help="where the job store lives")
    parser.add_argument("--spool-dir", type=Path, help="the spool directory")


def _client(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("talking to a running agent over HTTP")
    group.add_argument(
        "--url", help="the agent's HTTP API, e.g. http://127.0.0.1:8080 (or HOSTAGENT_URL)"
    )
    group.add_argument(
        "--token-file", type=Path, help="file holding the API token (or HOSTAGENT_TOKEN)"
    )
    group.add_argument("--ca-file", type=Path, help="CA bundle to verify the agent's certificate")
    group.add_argument("--client-cert", type=Path, help="client certificate (mTLS)")
    group.add_argument("--client-key", type=Path, help="client certificate key (mTLS)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hostagent", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run the agent in the foreground")
    _common(run)
    run.add_argument("--max-concurrent", type=int, help="jobs run at once")
    run.add_argument("--log-format", choices=["json", "console"])
    run.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    run.add_argument("--libvirt-uri", help="libvirt connection URI (default qemu:///system)")
    run.add_argument("--http-bind", metavar="HOST:PORT", help="HTTP API address (127.0.0.1:8080)")
    run.add_argument(
        "--no-http", dest="http_enabled", action="store_false", default=None, help="no HTTP API"
    )
    run.add_argument(
        "--insecure-no-auth",
        action="store_true",
        default=None,
        help="HTTP API without tokens (development; loopback addresses only)",
    )

    submit = commands.add_parser("submit", help="submit a job (spool, or HTTP with --url)")
    _common(submit)
    _client(submit)
    source = submit.add_mutually_exclusive_group(required=True)
    source.add_argument("file", nargs="?", type=Path, help="a job document (JSON)")
    source.add_argument("--op", help="operation, e.g. system.echo")
    submit.add_argument("--data", default="{}", help="payload data as JSON (with --op)")
    submit.add_argument("--kind", default="VMOperation")
    submit.add_argument("--job-id")
    submit.add_argument("--priority", type=int)
    submit.add_argument("--timeout", type=float, help="timeout_seconds")
    submit.add_argument("--wait", action="store_true", help="wait for the result and print it")
    submit.add_argument(
        "--follow",
        action="store_true",
        help="with --url: show progress and logs live, then print the result",
    )
    submit.add_argument("--wait-timeout", type=float, default=3600.0)
    kafka_cli.add_submit_arguments(submit)
    kafka_cli.add_commands(commands)
    for name in ("fleet", "decommission"):
        _common(commands.choices[name])

    jobs = commands.add_parser("jobs", help="list jobs")
    _common(jobs)
    _client(jobs)
    jobs.add_argument("--status")
    jobs.add_argument("--operation")
    jobs.add_argument("--limit", type=int, default=50)

    for name, text in (
        ("status", "a job's status"),
        ("result", "a job's result"),
        ("logs", "a job's log lines and progress"),
        ("cancel", "cancel a pending or running job"),
    ):
        command = commands.add_parser(name, help=text)
        _common(command)
        _client(command)
        command.add_argument("job_id")

    for name, text in (
        ("caps", "the agent's capabilities (HTTP)"),
        ("health", "the agent's health (HTTP)"),
    ):
        command = commands.add_parser(name, help=text)
        _common(command)
        _client(command)

    RESOURCE_NOUNS.extend(add_commands(commands, _resource_options))

    token = commands.add_parser("token", help="API tokens")
    token_commands = token.add_subparsers(dest="token_command", required=True)
    create = token_commands.add_parser(
        "create", help="print a new random token once, and the config entry that admits it"
    )
    create.add_argument(
        "--scopes",
        required=True,
        help="comma-separated: read, submit, cancel, admin (admin holds all)",
    )
    create.add_argument("--name", help="a name for the token (default: token-<date>)")

    validate = commands.add_parser("validate", help="check a job file without submitting it")
    _common(validate)
    validate.add_argument("file", type=Path)
    return parser


RESOURCE_NOUNS: list[str] = []


def _resource_options(parser: argparse.ArgumentParser) -> None:
    _common(parser)
    _client(parser)


def _resource(args: argparse.Namespace, config: Config) -> int:
    from agent.cli_resources import run_command

    return run_command(args, _require_remote(args))


def _config(args: argparse.Namespace) -> Config:
    overrides: dict[str, Any] = {
        "state_dir": getattr(args, "state_dir", None),
        "spool_dir": getattr(args, "spool_dir", None),
        "max_concurrent_jobs": getattr(args, "max_concurrent", None),
        "log_format": getattr(args, "log_format", None),
        "log_level": getattr(args, "log_level", None),
        "libvirt.uri": getattr(args, "libvirt_uri", None),
        "http.bind": getattr(args, "http_bind", None),
        "http.enabled": getattr(args, "http_enabled", None),
        "http.insecure_no_auth": getattr(args, "insecure_no_auth", None),
    }
    return load_config(getattr(args, "config", None), overrides=overrides)


def _print(value: Any) -> None:
    print(json.dumps(value, indent=2, sort_keys=False))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = _config(args)
        command = _resource if args.command in RESOURCE_NOUNS else _COMMANDS[args.command]
        return int(command(args, config) or 0)
    except AgentError as exc:
        print(f"hostagent: {exc.message}", file=sys.stderr)
        if exc.details:
            print(json.dumps(exc.details), file=sys.stderr)
        return 2 if exc.code == "CONFIG_ERROR" else 1
    except KeyboardInterrupt:
        return 130


def _run(args: argparse.Namespace, config: Config) -> int:
    import faulthandler
    from functools import partial

    import trio

    from agent.daemon import serve
    from agent.logging_config import configure_logging

    configure_logging(config.log_format, config.log_level)
    # When the systemd watchdog gives up it sends SIGABRT: the journal then shows
    # where every thread was stuck.
    faulthandler.enable()
    try:
        # SIGHUP reads the config again the same way: file, environment, these flags.
        trio.run(partial(serve, config, load_config=lambda: _config(args)))
    except BaseExceptionGroup as group:
        # A task's AgentError (e.g. a transport refusing its config) arrives wrapped
        # by the nurseries; report it like any other.
        found, rest = group.split(AgentError)
        if found is None or rest is not None:
            raise
        raise _first_leaf(found) from group
    return 0


def _first_leaf(group: BaseExceptionGroup[AgentError]) -> AgentError:
    first = group.exceptions[0]
    return _first_leaf(first) if isinstance(first, BaseExceptionGroup) else first


def _document(args: argparse.Namespace) -> dict[str, Any]:
    if args.file is not None:
        document = json.loads(args.file.read_text())
        if not isinstance(document, dict):
            raise BadRequestError("the job file must hold a JSON object", field="file")
    else:
        try:
            data = json.loads(args.data)
        except json.JSONDecodeError as exc:
            raise BadRequestError(f"--data is not valid JSON: {exc}", field="data") from exc
        document = {
            "version": "1.0",
            "kind": args.kind,
            "operation": args.op,
            "payload": {"type": f"{args.op}.v1", "data": data},
        }
    for key, value in (
        ("job_id", args.job_id),
        ("priority", args.priority),
        ("timeout_seconds", args.timeout),
    ):
        if value is not None:
            document[key] = value
    # Name the job here so the command can print its id before the agent sees it.
    document.setdefault("job_id", new_job_id())
    return document


def _submit(args: argparse.Namespace, config: Config) -> int:
    from agent.transports.spool.layout import drop_job

    document = _document(args)
    if args.kafka or args.host or args.pool or args.broadcast:
        return kafka_cli.submit(
            args, kafka_cli.settings_from(args, config.section(KafkaSettings)), document
        )
    remote = _remote(args)
    if remote is not None:
        return _submit_http(args, remote, document)
    if args.follow:
        raise BadRequestError("--follow needs --url (a running agent's HTTP API)", field="url")
    job_id = str(document["job_id"])
    spool = config.spool_dir
    (spool / "tmp").mkdir(parents=True, exist_ok=True)
    drop_job(spool, f"{job_id}.json", json.dumps(document).encode())
    print(job_id)
    if not args.wait:
        return 0
    return _wait_for_outcome(spool, job_id, args.wait_timeout)


def _wait_for_outcome(spool: Path, job_id: str, timeout: float) -> int:
    import watchfiles

    from agent.transports.spool.layout import result_name

    result = spool / "done" / result_name(job_id)
    refused = spool / "failed" / f"{job_id}.json.error.json"
    deadline = time.monotonic() + timeout
    watched = [str(spool / "done"), str(spool / "failed")]
    for _ in watchfiles.watch(
        *watched,
        recursive=False,
        yield_on_timeout=True,
        rust_timeout=1000,
        step=5,
        debounce=50,
        watch_filter=None,
    ):
        if result.exists():
            record = json.loads(result.read_text())
            _print(record)
            return 0 if record["status"] == "Completed" else 1
        if refused.exists():
            _print(json.loads(refused.read_text()))
            return 1
        if time.monotonic() > deadline:
            print(f"hostagent: no result for {job_id} after {timeout:g}s", file=sys.stderr)
            return 1
    return 1


def _read(config: Config, query: Any, *args: Any, **kwargs: Any) -> Any:
    from agent.store.schema import connect

    if not config.store_path.exists():
        raise BadRequestError(
            f"no job store at {config.store_path} (is --state-dir right?)", field="state_dir"
        )
    conn = connect(config.store_path, readonly=True)
    try:
        return query(conn, *args, **kwargs)
    finally:
        conn.close()


def _jobs(args: argparse.Namespace, config: Config) -> int:
    from agent.store.queries import list_jobs

    remote = _remote(args)
    if remote is not None:
        with remote:
            page = remote.jobs(status=args.status, operation=args.operation, limit=args.limit)
        jobs, total = [JobState.model_validate(job) for job in page["jobs"]], page["total"]
    else:
        jobs, total, _ = _read(
            config, list_jobs, status=args.status, operation=args.operation, limit=args.limit
        )
    for job in jobs:
        print(f"{job.job_id:40} {job.status.value:10} {job.operation:24} {job.submitted_at}")
    print(f"({len(jobs)} of {total})", file=sys.stderr)
    return 0


def _status(args: argparse.Namespace, config: Config) -> int:
    from agent.store.queries import get_job

    if (remote := _remote(args)) is not None:
        with remote:
            _print(remote.status(args.job_id))
        return 0
    _print(_read(config, get_job, args.job_id).model_dump(mode="json"))
    return 0


def _result(args: argparse.Namespace, config: Config) -> int:
    from agent.store.queries import get_result

    if (remote := _remote(args)) is not None:
        with remote:
            _print(remote.result(args.job_id))
        return 0
    _print(_read(config, get_result, args.job_id))
    return 0


def _logs(args: argparse.Namespace, config: Config) -> int:
    from agent.store.queries import get_events

    if (remote := _remote(args)) is not None:
        with remote:
            events = remote.logs(args.job_id)
    else:
        events = _read(config, get_events, args.job_id)
    for event in events:
        print(json.dumps(event))
    return 0


def _cancel(args: argparse.Namespace, config: Config) -> int:
    # The running agent watches spool/cancel/ and cancels the job named by the file.
    from agent.store.queries import get_job
    from agent.transports.spool.layout import request_cancel

    if (remote := _remote(args)) is not None:
        with remote:
            _print(remote.cancel(args.job_id))
        return 0
    state = _read(config, get_job, args.job_id)
    if state.status.terminal:
        raise BadRequestError(f"Job {args.job_id} is already {state.status.value}", field="status")
    (config.spool_dir / "cancel").mkdir(parents=True, exist_ok=True)
    request_cancel(config.spool_dir, args.job_id)
    print(f"cancel requested for {args.job_id}")
    return 0


def _validate(args: argparse.Namespace, config: Config) -> int:
    from agent.daemon import build_registry
    from agent.intake import prepare_job

    try:
        raw = json.loads(args.file.read_bytes())
    except (OSError, ValueError) as exc:
        raise BadRequestError(f"{args.file}: not readable JSON: {exc}", field="document") from exc
    job = prepare_job(
        build_registry(), raw, transport="cli", max_timeout=config.max_timeout_seconds
    )
    print(f"{args.file}: valid {job.operation} job {job.job_id}")
    return 0


def _caps(args: argparse.Namespace, config: Config) -> int:
    with _require_remote(args) as remote:
        _print(remote.capabilities())
    return 0


def _health(args: argparse.Namespace, config: Config) -> int:
    with _require_remote(args) as remote:
        report = remote.health()
    _print(report)
    return 0 if report.get("status") == "healthy" else 1


def _token(args: argparse.Namespace, config: Config) -> int:
    from datetime import UTC, datetime

    from agent.transports.http.auth import SCOPES, create_token, token_entry_toml

    scopes = [scope.strip() for scope in args.scopes.split(",") if scope.strip()]
    unknown = [scope for scope in scopes if scope not in SCOPES]
    if unknown or not scopes:
        raise BadRequestError(
            f"--scopes: unknown scope(s) {', '.join(unknown) or '(none given)'}",
            field="scopes",
            reason=f"Expected some of {', '.join(SCOPES)}",
        )
    name = args.name or f"token-{datetime.now(UTC):%Y%m%d-%H%M%S}"
    token, entry = create_token(name, scopes)
    print(token)
    print()
    print(token_entry_toml(entry), end="")
    print(
        "\nThe token is shown once and stored nowhere; the agent keeps only its SHA-256.\n"
        "Add the entry to the agent's config (or HOSTAGENT_HTTP__TOKENS as JSON) and restart "
        "or reload it. Clients send 'Authorization: Bearer <token>'.",
        file=sys.stderr,
    )
    return 0


def _remote(args: argparse.Namespace) -> AgentClient | None:
    """The HTTP client when --url (or HOSTAGENT_URL) names a running agent."""
    import os

    from agent.client import AgentClient

    url = getattr(args, "url", None) or os.environ.get("HOSTAGENT_URL")
    if not url:
        return None
    token = os.environ.get("HOSTAGENT_TOKEN")
    if args.token_file is not None:
        try:
            token = args.token_file.read_text().strip()
        except OSError as exc:
            raise BadRequestError(f"--token-file: {exc}", field="token_file") from exc
    cert = None
    if args.client_cert is not None:
        cert = (str(args.client_cert), str(args.client_key or args.client_cert))
    verify: str | bool = str(args.ca_file) if args.ca_file is not None else True
    return AgentClient(url, token=token, verify=verify, cert=cert)


def _require_remote(args: argparse.Namespace) -> AgentClient:
    remote = _remote(args)
    if remote is None:
        raise BadRequestError(f"{args.command} needs --url (or HOSTAGENT_URL)", field="url")
    return remote


def _submit_http(args: argparse.Namespace, remote: AgentClient, document: dict[str, Any]) -> int:
    from agent.client import ProgressView

    with remote:
        answer = remote.submit(document)
        job_id = answer["job_id"]
        print(job_id)
        if not (args.wait or args.follow):
            return 0
        view = ProgressView() if args.follow else None
        try:
            state = remote.follow(job_id, deadline=time.monotonic() + args.wait_timeout, view=view)
        finally:
            if view is not None:
                view.finish()
        result = remote.result(job_id) if state["status"] == "Completed" else None
    _print({**state, "result": result})
    return 0 if state["status"] == "Completed" else 1


_COMMANDS = {
    "run": _run,
    "submit": _submit,
    "jobs": _jobs,
    "status": _status,
    "result": _result,
    "logs": _logs,
    "cancel": _cancel,
    "validate": _validate,
    "caps": _caps,
    "health": _health,
    "token": _token,
    "fleet": kafka_cli.fleet,
    "decommission": kafka_cli.retire,
}
