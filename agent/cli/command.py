"""The hostagent command line."""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
from typing import TYPE_CHECKING, Any

from agent.errors import BadRequestError, UnreachableError

if TYPE_CHECKING:
    from agent.cli.client import AgentClient
    from agent.service.settings import Settings

# Each command imports what it uses: `run` (the daemon) never loads the offline
# commands' modules, and a client command never loads the daemon's.


def _config(args: argparse.Namespace) -> Settings:
    from agent.cli.support import config_path
    from agent.service.settings import load_settings

    overrides: dict[str, Any] = {
        "state_dir": getattr(args, "state_dir", None),
        "spool_dir": getattr(args, "spool_dir", None),
        "max_concurrent_jobs": getattr(args, "max_concurrent", None),
        "log_format": getattr(args, "log_format", None),
        "log_level": getattr(args, "log_level", None),
        "libvirt.uri": getattr(args, "libvirt_uri", None),
        "http.bind": getattr(args, "http_bind", None),
        "http.enabled": getattr(args, "http_enabled", None),
        "http.socket_enabled": getattr(args, "socket_enabled", None),
        "http.insecure_no_auth": getattr(args, "insecure_no_auth", None),
    }
    # `run` reads what the service reads; other commands also find a checkout's hostagent.toml.
    path = config_path(getattr(args, "config", None), discover=args.command != "run")
    return load_settings(path, overrides=overrides)


def main(argv: list[str] | None = None) -> int:
    as_program = argv is None  # not called with arguments by a test or another program
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] != ["run"]:
        if as_program:
            _log_to_stderr()
        return _main(argv)
    from agent.cli.run import tune_malloc

    tune_malloc()  # before any thread starts: the daemon's RSS stays flat
    # The daemon's start-up builds what lives as long as it does (modules,
    # classes, pydantic schemas); the collector would walk it ~180 times (~40 ms,
    # a tenth of the start). It stays off until the daemon is ready (agent.service.daemon
    # freezes what start-up built, then turns it on), or until `run` fails.
    gc.disable()
    try:
        return _main(argv)
    finally:
        gc.enable()


def _main(argv: list[str]) -> int:
    from agent.cli.parser import RESOURCE_NOUNS, build_fleet_parser, build_parser
    from agent.cli.support import run_command

    # `fleet` (scripts run it often, and time it) builds only its own parser.
    parser = build_fleet_parser() if argv[:1] == ["fleet"] else build_parser()
    args = parser.parse_args(argv)

    def command() -> int:
        from agent.cli.usage import check_arguments

        check_arguments(args)
        if args.command == "completion":
            from agent.cli.commands import completion

            return completion(args, parser)
        if args.command == "appliance":
            from agent.handlers._guestfs_host import build_appliance

            print(build_appliance(args.output))
            return 0
        if args.command == "config" and args.config_command == "check":
            from agent.cli.commands import config_check

            return config_check(args)
        if args.command == "validate":
            from agent.cli.policy import check_allowlist
            from agent.cli.support import config_path

            check_allowlist(config_path(args.config))  # all bad rules, before the config loads
        if args.command in RESOURCE_NOUNS:
            return _resource(args, _config(args))
        if args.command == "fleet":
            return _fleet(args)
        return int(_COMMANDS[args.command](args, _config(args)) or 0)

    code = run_command(command, daemon=args.command == "run")
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader of a pipe left before the last buffered line went out.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return code


def _log_to_stderr() -> None:
    """A command's answer is stdout (often JSON a script parses); what is logged on
    the way (librdkafka's "Connection refused" while a broker is down) goes to
    stderr, warnings and worse only (the command's own message says what failed; a
    broker that is down would add a debug line per retry). structlog writes everything
    to stdout until configured; the daemon configures its own. For the process only:
    structlog's set-up is global, and a caller of main(argv) (a test) keeps its own."""
    import logging

    import structlog

    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
    )


def _run(args: argparse.Namespace, config: Settings) -> int:
    from agent.cli.run import run

    # SIGHUP reads the config again the same way: file, environment, these flags.
    return run(config, reload=lambda: _config(args))


def _document(args: argparse.Namespace) -> dict[str, Any]:
    from agent.cli.usage import json_file, json_object

    if args.file is not None:
        document = json_file(args.file, "FILE")
    else:
        data = json_object(args.data, "--data")
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
    from agent.jobs import new_job_id

    # Name the job here so the command can print its id before the agent sees it.
    document.setdefault("job_id", new_job_id())
    return document


def _submit(args: argparse.Namespace, config: Settings) -> int:
    from agent.cli import offline as cli_offline

    document = _document(args)
    if args.kafka or args.host or args.pool or args.broadcast:
        from agent.transports.kafka import cli as kafka_cli

        return kafka_cli.submit(args, kafka_cli.settings_from(args, config.kafka), document)
    remote = _remote(args, config)
    if remote is not None:
        return _submit_http(args, remote, document)
    # No agent to talk to: the spool, if this user may write to it. The CLI never
    # creates the spool's directories: they belong to the agent (or tmpfiles).
    spool = config.spool_dir
    if not (spool / "incoming").is_dir() or not os.access(spool / "tmp", os.W_OK):
        raise _no_agent(config, "submit")
    if args.follow:
        raise BadRequestError("--follow needs a running agent's socket or --url", field="follow")
    return cli_offline.submit_to_spool(args, spool, document)


def _no_agent(config: Settings, command: str) -> UnreachableError:
    from agent.cli.support import no_agent

    return no_agent(config, command)


def _jobs(args: argparse.Namespace, config: Settings) -> int:
    from agent.cli import offline as cli_offline
    from agent.cli.commands import print_jobs

    remote = _remote(args, config)
    if remote is None:
        return cli_offline.jobs_from_store(args, config)
    cursor, first = args.cursor, True
    with remote:
        while True:
            page = remote.jobs(
                status=args.status,
                operation=args.operation,
                limit=args.limit,
                cursor=cursor,
                order="newest",
            )
            if args.json:
                print(json.dumps(page) if args.all else json.dumps(page, indent=2))
            else:
                print_jobs(page["jobs"], header=first)
            first, cursor = False, page["next_cursor"]
            if not (args.all and cursor):
                break
    if not args.json:
        more = f"; more: --cursor {cursor}" if cursor else ""
        print(f"({page['total']} jobs{more})", file=sys.stderr)
    return 0


def _status(args: argparse.Namespace, config: Settings) -> int:
    from agent.cli import offline as cli_offline
    from agent.cli.commands import status_view
    from agent.store.queries import get_job

    if (remote := _remote(args, config)) is not None:
        with remote:
            state = remote.status(args.job_id)
    else:
        state = cli_offline.read_store(config, get_job, args.job_id).model_dump(mode="json")
    if args.json:
        _print(state)
    else:
        status_view(state)
    return 0


def _result(args: argparse.Namespace, config: Settings) -> int:
    from agent.cli import offline as cli_offline
    from agent.cli.commands import print_tree
    from agent.store.queries import get_result

    if (remote := _remote(args, config)) is not None:
        with remote:
            result = remote.result(args.job_id)
    else:
        result = cli_offline.read_store(config, get_result, args.job_id)
    if args.json:
        _print(result)
    else:
        print_tree(result)
    return 0


def _logs(args: argparse.Namespace, config: Settings) -> int:
    from agent.cli import offline as cli_offline
    from agent.store.queries import get_events

    if (remote := _remote(args, config)) is not None:
        with remote:
            events = remote.logs(args.job_id)
    else:
        events = cli_offline.read_store(config, get_events, args.job_id)
    if not args.json:
        from agent.cli.commands import logs_view

        logs_view(events)
        return 0
    for event in events:  # JSON lines: one event each, as they are stored
        print(json.dumps(event))
    return 0


def _cancel(args: argparse.Namespace, config: Settings) -> int:
    from agent.cli import offline as cli_offline
    from agent.store.queries import get_job

    if (remote := _remote(args, config)) is not None:
        with remote:
            answer = remote.cancel(args.job_id)
        if args.json:
            _print(answer)
        else:
            print(f"{args.job_id}: {answer['status']}")
        return 0
    # The running agent watches spool/cancel/ and cancels the job named by the file.
    state = cli_offline.read_store(config, get_job, args.job_id)
    if state.status.terminal:
        raise BadRequestError(f"Job {args.job_id} is already {state.status.value}", field="status")
    from agent.transports.spool.layout import request_cancel

    if not (config.spool_dir / "cancel").is_dir():
        raise _no_agent(config, "cancel")
    request_cancel(config.spool_dir, args.job_id)
    print(f"cancel requested for {args.job_id}")
    return 0


def _follow(args: argparse.Namespace, config: Settings) -> int:
    from agent.cli.commands import follow

    remote = _require_remote(args, config)
    with remote:
        live = not args.json  # a program reading JSON wants no live view on stderr
        return follow(
            remote, args.job_id, timeout=args.wait_timeout, progress=live, as_json=args.json
        )


def _validate(args: argparse.Namespace, config: Settings) -> int:
    from agent.cli.policy import warn_allowlist
    from agent.cli.usage import json_file
    from agent.core.intake import admit_now, prepare_job
    from agent.service.daemon import build_registry

    warn_allowlist(config)
    raw = json_file(args.file, "FILE")
    job = prepare_job(
        build_registry(), raw, transport="cli", max_timeout=config.max_timeout_seconds
    )
    admit_now(job)
    print(f"{args.file}: valid {job.operation} job {job.job_id}")
    return 0


def _caps(args: argparse.Namespace, config: Settings) -> int:
    from agent.cli.commands import caps_summary

    with _require_remote(args, config) as remote:
        caps = remote.capabilities()
    if args.json:
        _print(caps)
    else:
        caps_summary(caps)
    return 0


def _health(args: argparse.Namespace, config: Settings) -> int:
    from agent.cli.commands import health_summary

    with _require_remote(args, config) as remote:
        report = remote.health()
    if args.json:
        _print(report)
    else:
        health_summary(report)
    return 0 if report.get("status") == "healthy" else 1


def _token(args: argparse.Namespace, config: Settings) -> int:
    from agent.cli import commands as cli_commands
    from agent.cli import offline as cli_offline

    action = args.token_command
    if action == "list":
        return cli_commands.token_list(args, config)
    if action == "revoke":
        return cli_commands.token_revoke(args, config)
    return cli_offline.token_create(args, config)


def _config_show(args: argparse.Namespace, config: Settings) -> int:
    from agent.cli.commands import config_show

    return config_show(args, config)


def _remote(args: argparse.Namespace, config: Settings) -> AgentClient | None:
    """The running agent: its socket (from the config), --url or HOSTAGENT_URL."""
    from agent.cli.support import connect

    return connect(args, config)


def _resource(args: argparse.Namespace, config: Settings) -> int:
    from agent.cli.resources import run_command as run_noun

    return run_noun(args, _require_remote(args, config))


def _require_remote(args: argparse.Namespace, config: Settings) -> AgentClient:
    remote = _remote(args, config)
    if remote is None:
        raise _no_agent(config, args.command)
    return remote


def _submit_http(args: argparse.Namespace, remote: AgentClient, document: dict[str, Any]) -> int:
    from agent.cli.commands import follow

    with remote:
        answer = remote.submit(document)
        job_id = answer["job_id"]
        print(job_id, flush=True)
        if not (args.wait or args.follow):
            return 0
        return follow(remote, job_id, timeout=args.wait_timeout, progress=args.follow)


def _print(value: Any) -> None:
    from agent.cli.commands import print_json

    print_json(value)


def _prune(args: argparse.Namespace, config: Settings) -> int:
    from agent.cli import prune as cli_prune

    return cli_prune.run(args, config)


def _policy(args: argparse.Namespace, config: Settings) -> int:
    from agent.cli import policy as cli_policy

    return cli_policy.run(args, config)


def _fleet(args: argparse.Namespace) -> int:
    from agent.cli.support import config_path
    from agent.transports.kafka import cli as kafka_cli

    # The [kafka] section alone: the daemon's settings would load every transport.
    return kafka_cli.fleet(args, kafka_cli.load_kafka_config(config_path(args.config)))


def _decommission(args: argparse.Namespace, config: Settings) -> int:
    from agent.transports.kafka import cli as kafka_cli

    return kafka_cli.retire(args, config.kafka)


def _key(args: argparse.Namespace, config: Settings) -> int:
    from agent.transports.kafka import cli as kafka_cli

    return kafka_cli.generate_key(args, config.kafka)


def _runbook(args: argparse.Namespace, config: Settings) -> int:
    from agent.cli import runbook as cli_runbook

    remote = _remote(args, config) if args.runbook_command == "run" else None
    return cli_runbook.run_command(args, config, remote)


_COMMANDS = {
    "run": _run,
    "submit": _submit,
    "jobs": _jobs,
    "status": _status,
    "result": _result,
    "logs": _logs,
    "cancel": _cancel,
    "follow": _follow,
    "validate": _validate,
    "caps": _caps,
    "health": _health,
    "token": _token,
    "config": _config_show,
    "decommission": _decommission,
    "key": _key,
    "prune": _prune,
    "runbook": _runbook,
    "policy": _policy,
}
