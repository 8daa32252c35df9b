"""References in a runbook, substituted as whole JSON values, and `when` conditions.

A reference is an object with exactly one key:

    {"$param": "size"}                 a parameter's value
    {"$step": "snap.result.name"}      an earlier step's status, result, error or outputs
    {"$label": "env"}                  one of this agent's labels (None when unset)
    {"$fact": "arch"}                  a host fact: worker_id, hostname, arch, cpus, kernel

The whole object is replaced by the value; nothing is ever spliced into a string,
so there is no quoting to get wrong and nothing to inject. Any other key starting
with `$` is refused, so a misspelt reference cannot pass as data.

A condition (a step's `when`) is a reference or literal that must be a boolean,
or `{"equals": [A, B]}`, `{"in": [A, [..]]}`, `{"not": C}`, `{"all": [C..]}`,
`{"any": [C..]}`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from agent.errors import ValidationError

REF_KEYS = frozenset({"$param", "$step", "$label", "$fact"})
STEP_PARTS = frozenset({"status", "result", "error", "outputs"})
FACTS = frozenset({"worker_id", "hostname", "arch", "cpus", "kernel"})
_OPERATORS = frozenset({"equals", "in", "not", "all", "any"})


class SubstitutionError(ValidationError):
    """A reference that cannot be resolved (a skipped step's result, a missing key)."""


class _Unresolved:
    """A value known only once an earlier step has run (intake checks leave it open)."""

    def __repr__(self) -> str:
        return "<unresolved>"


UNRESOLVED: Any = _Unresolved()


def _refuse(field: str, reason: str) -> ValidationError:
    return ValidationError(f"Invalid {field}: {reason}", field=field, reason=reason)


def ref_of(value: Any) -> tuple[str, str] | None:
    """(kind, target) when `value` is a reference object."""
    if isinstance(value, dict) and len(value) == 1:
        ((key, target),) = value.items()
        if key in REF_KEYS and isinstance(target, str):
            return key, target
    return None


def _walk(value: Any, path: str) -> Iterator[tuple[str, Any]]:
    """Every (path, node) of a JSON value, containers before their items."""
    yield path, value
    if isinstance(value, dict) and ref_of(value) is None:
        for key, item in value.items():
            yield from _walk(item, f"{path}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _walk(item, f"{path}.{index}")


def check_refs(value: Any, path: str, *, params: frozenset[str], steps: frozenset[str]) -> None:
    """Refuse references to undeclared parameters, later or unknown steps, unknown
    facts, and `$` keys that are no reference."""
    for where, node in _walk(value, path):
        if not isinstance(node, dict):
            continue
        ref = ref_of(node)
        if ref is None:
            odd = sorted(key for key in node if isinstance(key, str) and key.startswith("$"))
            if odd:
                raise _refuse(
                    f"{where}.{odd[0]}",
                    f"{odd[0]!r} is not a reference: use exactly one of "
                    + ", ".join(sorted(REF_KEYS))
                    + " with a string, alone in its object",
                )
            continue
        kind, target = ref
        if kind == "$param" and target not in params:
            raise _refuse(where, f"no parameter named {target!r}")
        if kind == "$fact" and target not in FACTS:
            raise _refuse(where, f"unknown fact {target!r}; facts: {', '.join(sorted(FACTS))}")
        if kind == "$step":
            step, _, rest = target.partition(".")
            part = rest.partition(".")[0]
            if step not in steps:
                raise _refuse(where, f"{step!r} is not an earlier step")
            if part not in STEP_PARTS:
                raise _refuse(
                    where, f"a step reference is STEP.({'|'.join(sorted(STEP_PARTS))})[.PATH]"
                )


def check_condition(
    value: Any, path: str, *, params: frozenset[str], steps: frozenset[str]
) -> None:
    """A `when` that is well formed (its references as check_refs)."""
    if isinstance(value, bool) or ref_of(value) is not None:
        check_refs(value, path, params=params, steps=steps)
        return
    if not (isinstance(value, dict) and len(value) == 1):
        raise _refuse(path, "a condition is a boolean, a reference, or one operator object")
    ((op, args),) = value.items()
    where = f"{path}.{op}"
    if op not in _OPERATORS:
        raise _refuse(where, f"unknown operator; use one of {', '.join(sorted(_OPERATORS))}")
    if op in ("equals", "in"):
        if not (isinstance(args, list) and len(args) == 2):
            raise _refuse(where, f"{op} takes a list of two values")
        if op == "in" and not (isinstance(args[1], list) or ref_of(args[1]) is not None):
            raise _refuse(f"{where}.1", "in takes a list (or a reference to one)")
        check_refs(args, where, params=params, steps=steps)
    elif op == "not":
        check_condition(args, where, params=params, steps=steps)
    else:
        if not (isinstance(args, list) and args):
            raise _refuse(where, f"{op} takes a non-empty list of conditions")
        for index, item in enumerate(args):
            check_condition(item, f"{where}.{index}", params=params, steps=steps)


@dataclass
class Scope:
    """What references resolve against. `steps` holds each finished step's record
    ({status, result, error, outputs}); `partial`: a step not in it is UNRESOLVED."""

    params: Mapping[str, Any]
    steps: dict[str, dict[str, Any]] = field(default_factory=dict)
    labels: Mapping[str, str] = field(default_factory=dict)
    facts: Mapping[str, Any] = field(default_factory=dict)
    partial: bool = False


def _lookup(scope: Scope, kind: str, target: str, where: str) -> Any:
    if kind == "$param":
        return scope.params[target]
    if kind == "$label":
        return scope.labels.get(target)
    if kind == "$fact":
        return scope.facts.get(target)
    step, _, rest = target.partition(".")
    record = scope.steps.get(step)
    if record is None:
        if scope.partial:
            return UNRESOLVED
        raise SubstitutionError(
            f"Invalid {where}: step {step!r} has not run", field=where, reason="step not run"
        )
    node: Any = record
    for part in rest.split("."):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            reason = f"{target!r}: no {part!r} in the outcome of step {step!r}"
            raise SubstitutionError(f"Invalid {where}: {reason}", field=where, reason=reason)
    return node


def resolve(value: Any, scope: Scope, path: str = "") -> Any:
    """`value` with every reference replaced by its value (a copy; whole values only)."""
    ref = ref_of(value)
    if ref is not None:
        return _lookup(scope, ref[0], ref[1], path)
    if isinstance(value, dict):
        return {key: resolve(item, scope, f"{path}.{key}") for key, item in value.items()}
    if isinstance(value, list):
        return [resolve(item, scope, f"{path}.{index}") for index, item in enumerate(value)]
    return value


def unresolved_paths(value: Any, path: tuple[str | int, ...] = ()) -> list[tuple[str | int, ...]]:
    """Where a resolved value still holds UNRESOLVED."""
    if value is UNRESOLVED:
        return [path]
    found: list[tuple[str | int, ...]] = []
    if isinstance(value, dict):
        for key, item in value.items():
            found += unresolved_paths(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found += unresolved_paths(item, (*path, index))
    return found


def evaluate(condition: Any, scope: Scope, path: str) -> bool | None:
    """A `when`: True or False, or None when it depends on a step not run yet."""
    if isinstance(condition, dict) and len(condition) == 1 and ref_of(condition) is None:
        return _evaluate_operator(condition, scope, path)
    value = resolve(condition, scope, path)
    if value is UNRESOLVED:
        return None
    if not isinstance(value, bool):
        raise SubstitutionError(
            f"Invalid {path}: a condition must be a boolean",
            field=path,
            reason=f"got {type(value).__name__}",
        )
    return value


def _evaluate_operator(condition: dict[str, Any], scope: Scope, path: str) -> bool | None:
    ((op, args),) = condition.items()
    if op == "not":
        inner = evaluate(args, scope, f"{path}.not")
        return None if inner is None else not inner
    if op in ("all", "any"):
        results = [evaluate(c, scope, f"{path}.{op}.{i}") for i, c in enumerate(args)]
        if op == "all":
            return False if False in results else (None if None in results else True)
        return True if True in results else (None if None in results else False)
    left, right = resolve(args, scope, f"{path}.{op}")
    if left is UNRESOLVED or right is UNRESOLVED:
        return None
    if op == "equals":
        return bool(left == right)
    if not isinstance(right, list):
        raise SubstitutionError(
            f"Invalid {path}.in: the second value is not a list",
            field=f"{path}.in",
            reason="not a list",
        )
    return left in right
