"""`hostagent policy show`: the operation allowlist in effect, per transport, per
token (HTTP tokens, Kafka signing keys) and per socket group the rules name.

Asked of the running agent (`GET /api/v1/policy`, over its socket or --url), like
the other read commands: its rules are the ones in effect, reloads included. With
--offline, read from the config file instead (what a reload would apply).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from agent.cli.support import EXIT_OK, add_client_options, connect, no_agent
from agent.errors import UnreachableError
from agent.policy.allowlist import Allowlist
from agent.policy.report import policy_report
from agent.service.settings import Settings

Commands = Any  # argparse's private _SubParsersAction
POLICY_PATH = "/api/v1/policy"


def add_commands(commands: Commands, common: Callable[[argparse.ArgumentParser], None]) -> None:
    policy = commands.add_parser("policy", help="the host policy: what may run here")
    actions = policy.add_subparsers(dest="policy_command", required=True)
    show = actions.add_parser(
        "show",
        help="the operation allowlist in effect per transport, token and group "
        "(the running agent's; --offline: the config file's)",
    )
    common(show)
    add_client_options(show)
    show.add_argument("--json", action="store_true", help="the rules and who may run what")
    show.add_argument(
        "--offline",
        action="store_true",
        help="read the rules from the config file (--config), not the running agent",
    )


def run(args: argparse.Namespace, config: Settings) -> int:
    report = describe(config) if args.offline else _ask_agent(args, config)
    if args.json:
        import json

        print(json.dumps(report, indent=2))
    else:
        print_report(report)
    return EXIT_OK


def _ask_agent(args: argparse.Namespace, config: Settings) -> dict[str, Any]:
    remote = connect(args, config)
    if remote is None:
        found = no_agent(config, "policy show")
        raise UnreachableError(
            f"{found.message}; --offline reads the rules from the config file instead",
            field="socket",
        )
    with remote:
        report: dict[str, Any] = remote.call("GET", POLICY_PATH)
    return report


def _operations() -> list[str]:
    from agent.service.agent import build_registry

    return build_registry().operations


def describe(config: Settings, operations: list[str] | None = None) -> dict[str, Any]:
    """The report of `config`'s rules (agent.policy.report), as the agent would answer
    it after loading this config."""
    kafka = getattr(config, "kafka", None)
    return policy_report(
        Allowlist.from_config(config.policy),
        operations if operations is not None else _operations(),
        tokens=[token.name for token in config.http.tokens],
        keys=[key.id for key in getattr(kafka, "keys", [])],
    )


def print_report(report: dict[str, Any]) -> None:
    rules = report["rules"]
    if not rules:
        print("No [[policy.allow]] rules: every caller may run every operation.")
    else:
        print(f"{'RULE':18} {'TRANSPORTS':14} {'TOKENS':14} {'GROUPS':12} OPERATIONS  [RESOURCES]")
        for rule in rules:
            label = rule["rule"] + (f" {rule['name']}" if rule["name"] else "")
            resources = f"  [{', '.join(rule['resources'])}]" if rule["resources"] else ""
            print(
                f"{label:18} {_list(rule['transports']):14} {_list(rule['tokens']):14} "
                f"{_list(rule['groups']):12} {', '.join(rule['operations'])}{resources}"
            )
        print()
    print(f"{'CALLER':32} MAY RUN")
    for caller in report["callers"]:
        print(f"{_who(caller):32} {_may_run(caller)}")


def _list(values: list[str]) -> str:
    return ",".join(values) or "*"


def _who(caller: dict[str, Any]) -> str:
    if caller["token"] is not None:
        kind = "key" if caller["transport"] == "kafka" else "token"
        return f"{caller['transport']} {kind} {caller['token']}"
    if caller["groups"]:
        return f"{caller['transport']} group {','.join(caller['groups'])}"
    # Callers no token or group rule names (the spool's have neither).
    return (
        caller["transport"] if caller["transport"] == "spool" else f"{caller['transport']} (others)"
    )


def _may_run(caller: dict[str, Any]) -> str:
    if not caller["named_by"]:
        return "every operation (no rule names it)"
    operations: dict[str, list[str] | None] = caller["operations"]
    if not operations:
        return f"nothing ({', '.join(caller['named_by'])})"
    shown = [
        name if globs is None else f"{name} [{', '.join(globs)}]"
        for name, globs in operations.items()
    ]
    return ", ".join(shown) + f" ({', '.join(caller['named_by'])})"
