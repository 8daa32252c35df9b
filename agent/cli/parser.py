"""The hostagent command line's parser (also the source of its man page and completion)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from agent import __version__
from agent.cli.support import EXIT_CODES_HELP, add_client_options
from agent.transports.kafka import cli as kafka_cli

# The modules other commands' options come from are imported by build_parser:
# build_fleet_parser (`hostagent fleet`, which scripts run often) does without them
# (the handlers pull in libvirt; the policy commands, the daemon's settings).

DESCRIPTION = "hostagent: the per-host job agent, and the command line to talk to it."


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        type=Path,
        help="TOML config file (default /etc/hostagent/agent.toml if present)",
    )
    parser.add_argument("--state-dir", type=Path, help="where the job store lives")
    parser.add_argument("--spool-dir", type=Path, help="the spool directory")


_client = add_client_options


def _json_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="the full answer as JSON")


def _top() -> argparse.ArgumentParser:
    return argparse.ArgumentParser(
        prog="hostagent",
        description=DESCRIPTION,
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def build_fleet_parser() -> argparse.ArgumentParser:
    """The parser of `hostagent fleet [jobs]` alone (the same options as in build_parser)."""
    parser = _top()
    commands = parser.add_subparsers(dest="command", required=True)
    kafka_cli.add_fleet_command(commands, _common)
    return parser


def build_parser() -> argparse.ArgumentParser:
    from agent.cli import runbook as cli_runbook
    from agent.cli.resources import add_commands

    parser = _top()
    parser.add_argument("--version", action="version", version=f"hostagent {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run the agent in the foreground")
    _common(run)
    run.add_argument("--max-concurrent", type=int, help="jobs run at once")
    run.add_argument(
        "--log-format",
        choices=["json", "console"],
        help="json: one JSON object per line (the service, journald); console: for a terminal",
    )
    run.add_argument(
        "--log-level", choices=["debug", "info", "warning", "error"], help="default info"
    )
    run.add_argument("--libvirt-uri", help="libvirt connection URI (default qemu:///system)")
    run.add_argument("--http-bind", metavar="HOST:PORT", help="HTTP API address (127.0.0.1:8080)")
    run.add_argument(
        "--no-http",
        dest="http_enabled",
        action="store_false",
        default=None,
        help="no HTTP API on TCP (the local socket stays: see --no-socket)",
    )
    run.add_argument(
        "--no-socket",
        dest="socket_enabled",
        action="store_false",
        default=None,
        help="no local API socket (http.socket_enabled = false)",
    )
    run.add_argument(
        "--insecure-no-auth",
        action="store_true",
        default=None,
        help="HTTP API without tokens (development; loopback addresses only)",
    )

    _add_submit(commands)
    _add_reads(commands)
    RESOURCE_NOUNS.extend(add_commands(commands, _resource_options))
    _add_admin(commands)
    cli_runbook.add_arguments(commands, _common, _client, _json_flag)
    validate = commands.add_parser("validate", help="check a job file without submitting it")
    _common(validate)
    validate.add_argument("file", type=Path, help="a job document (JSON)")
    return parser


Commands = Any  # argparse's private _SubParsersAction
# The resource nouns (vm, pool, ...) of agent/cli/resources.py, filled by build_parser.
RESOURCE_NOUNS: list[str] = []


def _resource_options(parser: argparse.ArgumentParser) -> None:
    _common(parser)
    add_client_options(parser)


def _add_submit(commands: Commands) -> None:
    submit = commands.add_parser(
        "submit", help="submit a job (through the running agent's socket, or its spool)"
    )
    _common(submit)
    _client(submit)
    source = submit.add_mutually_exclusive_group(required=True)
    source.add_argument("file", nargs="?", type=Path, help="a job document (JSON)")
    source.add_argument("--op", help="operation, e.g. system.echo")
    submit.add_argument("--data", default="{}", help="payload data as JSON (with --op)")
    submit.add_argument(
        "--kind", default="VMOperation", help="the job's kind (default VMOperation)"
    )
    submit.add_argument(
        "--job-id",
        help="the job's id, 1-128 of [A-Za-z0-9._-] (default: a new UUID); the same id "
        "and document again is the same job, not a second one",
    )
    submit.add_argument(
        "--priority", type=int, help="0-9, higher runs first among waiting jobs (default 5)"
    )
    submit.add_argument(
        "--timeout",
        type=float,
        help="timeout_seconds: seconds the job may run, > 0 (default and bound: the "
        "agent's default_timeout_seconds and max_timeout_seconds, 3600)",
    )
    submit.add_argument("--wait", action="store_true", help="wait for the result and print it")
    submit.add_argument(
        "--follow",
        action="store_true",
        help="show progress and logs live, then print the result",
    )
    submit.add_argument(
        "--wait-timeout",
        type=float,
        default=3600.0,
        help="seconds --wait/--follow wait, >= 0 (default 3600); the job keeps running after",
    )
    kafka_cli.add_submit_arguments(submit)
    kafka_cli.add_commands(commands, _common)


def _add_reads(commands: Commands) -> None:
    jobs = commands.add_parser("jobs", help="list jobs, newest first")
    _common(jobs)
    _client(jobs)
    _json_flag(jobs)
    jobs.add_argument(
        "--status",
        help="only jobs in this status: Pending, Assigned, Running, Completed, Failed, Cancelled",
    )
    jobs.add_argument("--operation", help="only jobs of this operation, e.g. vm.start")
    jobs.add_argument("--limit", type=int, default=50, help="jobs per page (1-1000)")
    pages = jobs.add_mutually_exclusive_group()
    pages.add_argument("--cursor", help="the next page: the cursor the previous page printed")
    pages.add_argument("--all", action="store_true", help="every page")

    for name, text in (
        ("status", "a job's status"),
        ("result", "a job's result"),
        ("logs", "a job's log lines and progress"),
        ("cancel", "cancel a pending or running job"),
    ):
        command = commands.add_parser(name, help=text)
        _common(command)
        _client(command)
        _json_flag(command)
        command.add_argument("job_id", help="the job's id (as submit printed it)")

    follow = commands.add_parser("follow", help="show a job's progress live until it ends")
    _common(follow)
    _client(follow)
    follow.add_argument("job_id", help="the job's id (as submit printed it)")
    follow.add_argument(
        "--json", action="store_true", help="no live view; the final state and result as JSON"
    )
    follow.add_argument(
        "--wait-timeout",
        type=float,
        default=3600.0,
        help="seconds to follow, >= 0 (default 3600); the job keeps running after",
    )

    for name, text in (
        ("caps", "the agent's capabilities (a summary; --json: everything)"),
        ("health", "the agent's health"),
    ):
        command = commands.add_parser(name, help=text)
        _common(command)
        _client(command)
        _json_flag(command)


def _add_admin(commands: Commands) -> None:
    from agent.cli import policy as cli_policy
    from agent.cli import prune as cli_prune
    from agent.handlers._guestfs_host import PACKAGED_APPLIANCE

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
    listing = token_commands.add_parser("list", help="the tokens the config admits (names)")
    _common(listing)
    _json_flag(listing)
    revoke = token_commands.add_parser("revoke", help="remove a token from the config file")
    _common(revoke)
    revoke.add_argument("name", help="the token's name (token list shows them)")

    config = commands.add_parser("config", help="check or show the configuration")
    config_commands = config.add_subparsers(dest="config_command", required=True)
    check = config_commands.add_parser(
        "check", help="validate a config file without starting (exit 2 names the bad key)"
    )
    check.add_argument(
        "file", nargs="?", type=Path, help="the config file (default: the one `run` would read)"
    )
    check.add_argument("--config", type=Path, help=argparse.SUPPRESS)
    show = config_commands.add_parser("show", help="the effective config, secrets redacted")
    _common(show)

    cli_policy.add_commands(commands, _common)

    prune = commands.add_parser("prune", help="prune finished jobs past store.retention_days")
    _common(prune)
    cli_prune.add_arguments(prune)

    appliance = commands.add_parser(
        "appliance",
        help="build libguestfs' fixed appliance for guestkit.* (as root; the package's "
        "postinst runs it: the service itself cannot read the kernel's modules)",
    )
    appliance.add_argument(
        "output",
        nargs="?",
        type=Path,
        default=PACKAGED_APPLIANCE,
        help=f"where to build it (default {PACKAGED_APPLIANCE}, the unit's LIBGUESTFS_PATH)",
    )

    completion = commands.add_parser("completion", help="shell completion script")
    completion.add_argument("shell", choices=["bash", "zsh", "tcsh"], help="the shell to complete")
