"""What the operation allowlist lets each caller run: the one report `hostagent
policy show` prints and `GET /api/v1/policy` answers (same content, one builder).

`callers` holds one entry per transport (its callers no token or group rule
names), per HTTP token, per Kafka signing key and per socket group a rule names;
each says which rules name it and the operations it may run, each mapped to None
(on any resource) or to the resource globs it is limited to.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from agent.policy.allowlist import TRANSPORTS, Allowlist, Caller


def policy_report(
    rules: Allowlist,
    operations: Iterable[str],
    *,
    tokens: Iterable[str] = (),
    keys: Iterable[str] = (),
) -> dict[str, Any]:
    """The rules in effect and, of `operations` (the registered ones), what each
    transport, HTTP token (`tokens`), Kafka key (`keys`) and named group may run."""
    known = sorted(operations)
    callers: list[Caller] = [Caller(transport) for transport in TRANSPORTS]
    callers += [Caller("http", token=token) for token in tokens]
    callers += [Caller("kafka", token=key) for key in keys]
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
