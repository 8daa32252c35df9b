"""`hostagent policy show`: the operation allowlist in effect, per transport, per
token (HTTP tokens, Kafka signing keys) and per socket group the rules name.

Read from the config the agent runs with (file, environment), as `config show` is:
a reload applies it to new jobs.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from agent.cli.support import EXIT_OK
from agent.policy.allowlist import TRANSPORTS, Allowlist, Caller
from agent.service.settings import Settings

Commands = Any  # argparse's private _SubParsersAction


def add_commands(commands: Commands, common: Callable[[argparse.ArgumentParser], None]) -> None:
    policy = commands.add_parser("policy", help="the host policy: what may run here")
    actions = policy.add_subparsers(dest="policy_command", required=True)
    show = actions.add_parser(
        "show", help="the operation allowlist in effect per transport, token and group"
    )
    common(show)
    show.add_argument("--json", action="store_true", help="the rules and who may run what")


def run(args: argparse.Namespace, config: Settings) -> int:
    report = describe(config)
    if args.json:
        import json

        print(json.dumps(report, indent=2))
    else:
        print_report(report)
    return EXIT_OK


def _operations() -> list[str]:
    from agent.service.agent import build_registry

    return build_registry().operations


def describe(config: Settings, operations: list[str] | None = None) -> dict[str, Any]:
    """The rules, and what each caller they could name may run: `callers` holds one
    entry per transport (its callers no token or group rule names), per HTTP token,
    per Kafka key and per group a rule names."""
    rules = Allowlist.from_config(config.policy)
    known = sorted(operations if operations is not None else _operations())
    callers: list[Caller] = [Caller(transport) for transport in TRANSPORTS]
    callers += [Caller("http", token=token.name) for token in config.http.tokens]
    kafka = getattr(config, "kafka", None)
    callers += [Caller("kafka", token=key.id) for key in getattr(kafka, "keys", [])]
    named_groups = sorted({group for rule in rules.rules for group in rule.groups})
    callers += [Caller("socket", groups=frozenset({group})) for group in named_groups]
    return {
        "rules": rules.to_list(),
        "callers": [_entry(rules, caller, known) for caller in callers],
    }


def _entry(rules: Allowlist, caller: Caller, operations: list[str]) -> dict[str, Any]:
    allowed = rules.operations_for(
        caller.transport, operations, token=caller.token, groups=caller.groups
    )
    return {
        "transport": caller.transport,
        "token": caller.token,
        "groups": sorted(caller.groups),
        "named_by": [f"policy.allow[{rule.index}]" for rule in rules.naming(caller)],
        "operations": {
            name: None if globs is None else list(globs) for name, globs in allowed.items()
        },
    }


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
