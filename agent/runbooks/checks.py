"""A runbook checked whole before anything runs: every step's operation, its payload
(after substituting every value known at intake) against the operation's payload
model and admission hook, and the caller's allowlist.

Values that only an earlier step's outcome gives (`{"$step": ...}`) are left open
here; the child job that carries them is checked by the intake like any job when
the step runs, so nothing escapes policy either way.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import pydantic

from agent.core.registry import Registry
from agent.errors import AgentError, ForbiddenError, ValidationError
from agent.policy.allowlist import targets_of
from agent.policy.paths import Admission
from agent.runbooks.model import Runbook, Step
from agent.runbooks.substitution import UNRESOLVED, Scope, resolve, unresolved_paths

RUNBOOK_OPERATION = "runbook.run"
# The caller's allowlist, one call per step: (operation, payload data); raises the
# ForbiddenError naming the field and the rule.
Allow = Callable[[str, dict[str, Any]], None]


def allowlist_of(admission: Admission) -> Allow | None:
    """The allowlist of the caller that submitted the runbook, one call per step.

    A resource the allowlist limits that only an earlier step's outcome names cannot
    be checked now: for a caller the rules name, such a step is refused."""
    caller = admission.caller
    if caller is None:
        return None
    allowlist = admission.policy.allowlist
    if not allowlist.naming(caller):
        return None  # a caller no rule names keeps every operation

    def allow(operation: str, data: dict[str, Any]) -> None:
        for target in targets_of(operation) or ():
            if _lookup(data, target.attribute) is UNRESOLVED:
                raise ForbiddenError(
                    f"{caller.describe()}: {target.field} comes from an earlier step, "
                    "and the allowlist cannot be checked on it before the runbook runs",
                    field=target.field,
                    reason="a resource named by a step reference, for a caller the "
                    "allowlist limits",
                )
        allowlist.check(caller, operation, data)

    return allow


def _lookup(data: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(data, dict):
            return None
        data = data.get(part)
    return data


def at_step(exc: AgentError, prefix: str, index: int, step: Step) -> AgentError:
    """`exc` re-raised as the same kind of error, its field under the step's."""
    inner = exc.details.get("field")
    if isinstance(inner, str) and inner.startswith("payload.data."):
        inner = "payload." + inner.removeprefix("payload.data.")  # an admit hook's name
    field = f"{prefix}steps.{index}" + (f".{inner}" if inner else "")
    details = {**exc.details, "field": field, "step": step.name}
    return type(exc)(f"Step {index + 1} ({step.name}): {exc.message}", details=details)


def check_runbook(
    runbook: Runbook,
    params: Mapping[str, Any],
    *,
    registry: Registry,
    admission: Admission | None,
    allow: Allow | None = None,
    labels: Mapping[str, str] | None = None,
    facts: Mapping[str, Any] | None = None,
    prefix: str = "",
) -> None:
    """Refuse the runbook unless every step passes (blocking: admission hooks stat files)."""
    scope = Scope(params, labels=labels or {}, facts=facts or {}, partial=True)
    for index, step in enumerate(runbook.steps):
        try:
            check_step(step, scope, registry=registry, admission=admission, allow=allow)
        except AgentError as exc:
            raise at_step(exc, prefix, index, step) from None


def check_step(
    step: Step,
    scope: Scope,
    *,
    registry: Registry,
    admission: Admission | None,
    allow: Allow | None,
) -> pydantic.BaseModel | None:
    """One step against its operation; the parsed payload when every value is known."""
    if step.operation == RUNBOOK_OPERATION:
        raise ValidationError(
            "A runbook step cannot run a runbook",
            field="operation",
            reason="runbooks do not nest",
        )
    found = registry.get(step.operation)
    data = resolve(step.payload, scope, "payload")
    open_paths = unresolved_paths(data)
    model = _parse_payload(found.payload_model, data, open_paths)
    if allow is not None:
        allow(step.operation, data)
    if model is None:
        return None
    if found.admit is not None:
        if admission is None:
            raise ForbiddenError(
                f"{step.operation} needs the host policy, and this agent has none",
                field="operation",
                reason="no policy configured",
            )
        found.admit(model, admission)
    return model


def _parse_payload(
    model: type[pydantic.BaseModel], data: dict[str, Any], open_paths: list[tuple[str | int, ...]]
) -> pydantic.BaseModel | None:
    """The payload parsed by the operation's model; None when values are still open
    (then only errors outside the open values refuse it)."""
    try:
        return model.model_validate(data)
    except pydantic.ValidationError as exc:
        errors = [
            error
            for error in exc.errors(include_url=False)
            if not any(_within(error["loc"], path) for path in open_paths)
        ]
        if not errors:
            return None
        first = errors[0]
        where = ".".join(["payload", *(str(part) for part in first["loc"])])
        raise ValidationError(
            f"Invalid {where}: {first['msg']}", field=where, reason=first["msg"]
        ) from None


def _within(loc: tuple[str | int, ...], path: tuple[str | int, ...]) -> bool:
    return tuple(loc[: len(path)]) == path


__all__ = [
    "RUNBOOK_OPERATION",
    "UNRESOLVED",
    "Allow",
    "allowlist_of",
    "at_step",
    "check_runbook",
    "check_step",
]
