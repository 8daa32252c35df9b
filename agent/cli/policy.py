"""`hostagent policy show`: the operation allowlist in effect, per transport, per
token (HTTP tokens, Kafka signing keys) and per socket group the rules name.

Asked of the running agent (`GET /api/v1/policy`, over its socket or --url), like
the other read commands: its rules are the ones in effect, reloads included. With
--offline, read from the config file instead (what a reload would apply).

Also the offline check of the rules that `hostagent config check` and `hostagent
validate` run: a bad rule refused naming its field (policy.allow[2].transports[0]),
one that loads but cannot do what it says a warning.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from agent.cli.support import EXIT_OK, add_client_options, connect, no_agent
from agent.errors import ConfigError, UnreachableError
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


# --- the rules checked offline (config check, validate) ---

_ALLOW_ENV = "HOSTAGENT_POLICY__ALLOW"
_EMPTY_OPERATIONS = "empty: a rule must name at least one operation (a glob such as 'vm.*')"


def check_allowlist(path: Path | None, environ: Mapping[str, str] | None = None) -> None:
    """Refuse bad `[[policy.allow]]` rules in the config file `path` (or the JSON of
    HOSTAGENT_POLICY__ALLOW, which replaces them): a ConfigError naming the first bad
    field as `policy.allow[2].transports[0]`, every problem in its details."""
    rules, source = _raw_rules(path, os.environ if environ is None else environ)
    problems = allowlist_problems(rules)
    if not problems:
        return
    field, reason = problems[0]
    more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
    raise ConfigError(
        f"config: {field}: {reason}{more}",
        field=field,
        reason=reason,
        details={
            "source": source,
            "problems": [{"field": where, "reason": why} for where, why in problems],
        },
    )


def _raw_rules(path: Path | None, environ: Mapping[str, str]) -> tuple[object, str]:
    """The rules as written, before any model reads them, and where they come from."""
    import tomllib

    if text := environ.get(_ALLOW_ENV):
        try:
            return json.loads(text), _ALLOW_ENV
        except json.JSONDecodeError as exc:
            raise ConfigError(
                f"config: {_ALLOW_ENV} is not JSON: {exc}", field="policy.allow", reason=str(exc)
            ) from exc
    if path is None or not path.is_file():
        return [], "(defaults)"  # an unreadable path: load_settings says so, naming it
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError):
        return [], str(path)  # likewise
    policy = data.get("policy", {})
    return (policy.get("allow", []) if isinstance(policy, dict) else []), str(path)


def allowlist_problems(rules: object) -> list[tuple[str, str]]:
    """(field, reason) of everything wrong with raw `[[policy.allow]]` tables."""
    import pydantic

    from agent.config import AllowRule

    if not isinstance(rules, list):
        return [("policy.allow", "must be a list of [[policy.allow]] tables")]
    problems: list[tuple[str, str]] = []
    for index, table in enumerate(rules):
        where = f"policy.allow[{index}]"
        if not isinstance(table, dict):
            problems.append((where, "must be a table (transports, tokens, groups, operations)"))
            continue
        try:
            AllowRule.model_validate(table)
        except pydantic.ValidationError as exc:
            problems += [
                (where + _path(error["loc"]), _reason(error))
                for error in exc.errors(include_url=False)
            ]
    return problems


def _path(loc: tuple[int | str, ...]) -> str:
    return "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc)


def _reason(error: Any) -> str:
    kind, loc = error["type"], error["loc"]
    if kind == "extra_forbidden":
        return "unknown key (transports, tokens, groups, operations, resources, name)"
    if kind == "literal_error" and loc[:1] == ("transports",):
        from agent.policy.allowlist import TRANSPORTS

        return f"unknown transport {error['input']!r}: expected one of {', '.join(TRANSPORTS)}"
    if loc == ("operations",) and kind in ("too_short", "missing"):
        return _EMPTY_OPERATIONS
    if loc == ("resources",) and kind == "too_short":
        return "empty: leave resources out to allow any resource"
    return str(error["msg"])


def allowlist_warnings(config: Settings, operations: Sequence[str]) -> list[tuple[str, str]]:
    """(field, reason) of rules that load but cannot do what they say: a glob matching
    no registered operation, a token naming no [[http.tokens]] entry nor Kafka key, a
    `resources` on operations that name none."""
    from agent.policy.allowlist import targets_of

    kafka = getattr(config, "kafka", None)
    known_tokens = {token.name for token in config.http.tokens}
    known_tokens |= {key.id for key in getattr(kafka, "keys", [])}
    warnings: list[tuple[str, str]] = []
    for index, rule in enumerate(config.policy.allow):
        where = f"policy.allow[{index}]"
        matched: list[str] = []
        for number, glob in enumerate(rule.operations):
            found = [name for name in operations if fnmatch.fnmatchcase(name, glob)]
            if not found:
                warnings.append(
                    (
                        f"{where}.operations[{number}]",
                        f"{glob!r} matches no operation this agent registers",
                    )
                )
            matched += found
        for number, token in enumerate(rule.tokens):
            if token not in known_tokens:
                warnings.append(
                    (
                        f"{where}.tokens[{number}]",
                        f"{token!r} names no [[http.tokens]] entry and no Kafka key",
                    )
                )
        if rule.resources is not None and matched and not any(targets_of(o) for o in matched):
            warnings.append(
                (
                    f"{where}.resources",
                    "the operations it allows name no resource, so it allows none of them",
                )
            )
    return warnings


def warn_allowlist(config: Settings) -> int:
    """Print the allowlist's warnings (allowlist_warnings) to stderr; how many."""
    from agent.service.agent import build_registry

    warnings = allowlist_warnings(config, build_registry().operations)
    for field, reason in warnings:
        print(f"hostagent: warning: {field}: {reason}", file=sys.stderr)
    return len(warnings)
