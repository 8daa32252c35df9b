"""runbook.run: an installed (or inline) runbook, checked whole at intake, each step
run as a child job of the runbook's job, resumed after a restart.

Resuming: each step's child job has an id derived from the runbook job's id, the
step and the attempt, so a re-run of the runbook job (recovery re-queues it: it is
safe to re-run) finds the children it already submitted. A completed step is not
run again; a step whose child the restart interrupted was re-queued by recovery if
its operation is safe to re-run, else failed by it, and the runbook fails there
with that reason (never a second attempt of an unsafe step).
"""

from __future__ import annotations

import hashlib
import os
import platform
import socket
from collections.abc import Callable
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, Strict

from agent.config import Config
from agent.core.context import JobContext
from agent.core.registry import Handler, Registry, handler
from agent.core.withheld import redact
from agent.errors import AgentError, ForbiddenError, HandlerError, ValidationError
from agent.jobs import JobState, JobStatus
from agent.policy.paths import Admission
from agent.runbooks import (
    RUNBOOK_OPERATION,
    Allow,
    Runbook,
    RunbookLibrary,
    Scope,
    check_parameters,
    check_runbook,
    evaluate,
    parse_runbook,
    resolve,
)
from agent.runbooks.checks import allowlist_of
from agent.runbooks.loader import inline_sha256
from agent.runbooks.model import Step
from agent.runbooks.substitution import UNRESOLVED, SubstitutionError

# How recovery fails a job it cannot re-run (agent.store.writes.recover).
_UNSAFE_RESTART = "The agent restarted while the job was running"
# How the allowlist is found for a caller's admission (None: every step may run).
AllowFor = Callable[[Admission], Allow | None]


class RunbookRunPayload(BaseModel):
    model_config = ConfigDict(extra="forbid", defer_build=True)

    runbook: str | dict[str, Any] = Field(
        description="An installed runbook's name, or a runbook document (where "
        "`[runbooks] inline` allows it)"
    )
    version: Annotated[int, Strict()] | None = Field(default=None, ge=1)
    parameters: dict[str, Any] = Field(default_factory=dict)
    dry_run: Annotated[bool, Strict()] = False


def host_facts(config: Config) -> dict[str, Any]:
    """What `{"$fact": ...}` answers."""
    return {
        "worker_id": config.worker_id,
        "hostname": socket.gethostname(),
        "arch": platform.machine(),
        "cpus": os.cpu_count(),
        "kernel": platform.release(),
    }


def child_id(parent: str, step: str, attempt: int) -> str:
    """The id of a step's child job: the same on every run of the runbook job."""
    suffix = f".{step}" + (f".{attempt}" if attempt > 1 else "")
    if len(parent) + len(suffix) > 128:
        parent = parent[:40] + "-" + hashlib.sha256(parent.encode()).hexdigest()[:16]
    return parent + suffix


def _find_runbook(
    payload: RunbookRunPayload, library: RunbookLibrary, *, inline_ok: bool
) -> tuple[Runbook, dict[str, Any]]:
    """The runbook a payload names, and its identity (name, version, sha256)."""
    if isinstance(payload.runbook, str):
        installed = library.get(payload.runbook, payload.version, field="payload.data.runbook")
        return installed.runbook, {
            "name": installed.runbook.name,
            "version": installed.runbook.version,
            "sha256": installed.sha256,
        }
    if not inline_ok:
        raise ForbiddenError(
            "Inline runbooks are not allowed for this caller",
            field="payload.data.runbook",
            reason="[runbooks] inline refuses it; run an installed runbook by name",
        )
    runbook = parse_runbook(payload.runbook, prefix="payload.data.runbook")
    if payload.version is not None and payload.version != runbook.version:
        raise ValidationError(
            "version does not match the inline runbook's",
            field="payload.data.version",
            reason=f"the runbook says version {runbook.version}",
        )
    identity = {"name": runbook.name, "version": runbook.version}
    return runbook, {**identity, "sha256": inline_sha256(payload.runbook), "inline": True}


def runbook_handler(
    library: RunbookLibrary,
    registry: Registry,
    settings: Callable[[], Config],
    allow_for: AllowFor = allowlist_of,
) -> Handler:
    """The runbook.run handler over these installed runbooks and operations."""

    def inline_ok(privileged: bool) -> bool:
        rule = settings().runbooks.inline
        return rule == "any" or (rule == "admin" and privileged)

    def admit(payload: RunbookRunPayload, admission: Admission) -> None:
        config = settings()
        runbook, _ = _find_runbook(payload, library, inline_ok=inline_ok(admission.privileged))
        params = check_parameters(runbook, payload.parameters, prefix="payload.data.parameters")
        check_runbook(
            runbook,
            params,
            registry=registry,
            admission=admission,
            allow=allow_for(admission),
            labels=config.labels,
            facts=host_facts(config),
            prefix="payload.data.",
        )

    def secrets(payload: RunbookRunPayload) -> list[Any]:
        try:
            runbook, _ = _find_runbook(payload, library, inline_ok=True)
        except AgentError:
            return []  # refused by admit: nothing is recorded
        # A secret's default too: an inline runbook's document holds it.
        return [
            payload.parameters.get(name, param.default)
            for name, param in runbook.parameters.items()
            if param.secret and (name in payload.parameters or not param.required)
        ]

    async def run(payload: RunbookRunPayload, ctx: JobContext) -> dict[str, Any]:
        """Run a runbook: its steps as child jobs, in order."""
        config = ctx.get(Config)
        # Admitted at intake (inline included): found again the same way.
        runbook, identity = _find_runbook(payload, library, inline_ok=True)
        params = check_parameters(runbook, payload.parameters, prefix="parameters")
        scope = Scope(params, labels=config.labels, facts=host_facts(config))
        # Secret values: the job's own (ctx.secrets), and defaults of an installed runbook.
        hidden = [*ctx.secrets, *(params[name] for name in runbook.secrets)]
        if payload.dry_run:
            scope.partial = True
            steps = [_dry_step(step, index, scope) for index, step in enumerate(runbook.steps)]
            return {"runbook": identity, "dry_run": True, "steps": steps, "outputs": {}}
        outcome = await _run_steps(runbook, identity, scope, ctx, registry, secrets=hidden)
        # A secret's default is no job's secret value: the runbook's result hides it too.
        return redact(outcome, hidden) if hidden else outcome

    return handler(
        RUNBOOK_OPERATION,
        payload=RunbookRunPayload,
        # A re-run resumes: completed steps are found, not run again (module docstring).
        rerun_safe=True,
        admit=admit,
        secrets=secrets,
    )(run)


async def _run_steps(
    runbook: Runbook,
    identity: dict[str, Any],
    scope: Scope,
    ctx: JobContext,
    registry: Registry,
    *,
    secrets: list[Any],
) -> dict[str, Any]:
    outcomes: list[dict[str, Any]] = []
    outputs: dict[str, Any] = {}
    total = len(runbook.steps)
    for index, step in enumerate(runbook.steps):
        await ctx.progress(100 * index / total, f"step {index + 1}/{total}: {step.name}")
        where = f"steps.{index}"
        try:
            wanted = True if step.when is None else evaluate(step.when, scope, f"{where}.when")
            data = resolve(step.payload, scope, f"{where}.payload") if wanted else None
        except SubstitutionError as exc:
            raise _failed_at(index, step, exc.message) from None
        if not wanted or data is None:
            outcomes.append({"name": step.name, "job_id": None, "status": "Skipped"})
            scope.steps[step.name] = {"status": "Skipped", "result": None, "error": None}
            await ctx.log("runbook.step_skipped", step=step.name)
            continue
        # The secret values this step's payload holds: recorded redacted in its child.
        carried = [value for value in secrets if _holds(data, value)]
        state, result = await _run_step(ctx, step, data, registry, carried)
        outcome: dict[str, Any] = {
            "name": step.name,
            "job_id": state.job_id if state else None,
            "status": state.status.value if state else JobStatus.FAILED.value,
        }
        record: dict[str, Any] = {"status": outcome["status"], "result": result, "error": None}
        if state is not None and state.status is JobStatus.COMPLETED:
            outcome["result"] = result
            step_outputs = {}
            for name, path in step.outputs.items():
                try:
                    step_outputs[name] = resolve(
                        {"$step": f"{step.name}.{path}"},
                        Scope({}, steps={step.name: record}),
                        f"{where}.outputs.{name}",
                    )
                except SubstitutionError as exc:
                    raise _failed_at(index, step, exc.message) from None
            record["outputs"] = step_outputs
            outputs.update(step_outputs)
        else:
            error = _error_of(state, result)
            outcome["error"] = record["error"] = error
            record["outputs"] = {}
            await ctx.log("runbook.step_failed", level="warning", step=step.name, error=error)
            if step.on_failure == "abort":
                raise _failed_at(index, step, error)
        outcomes.append(outcome)
        scope.steps[step.name] = record
    await ctx.progress(100, "all steps done")
    return {"runbook": identity, "steps": outcomes, "outputs": outputs}


def _error_of(state: JobState | None, refusal: Any) -> str:
    if state is None:
        return str(refusal)
    return state.error or f"ended {state.status.value}"


def _failed_at(index: int, step: Step, reason: str) -> HandlerError:
    return HandlerError(
        f"Failed at step {index + 1} ({step.name}): {reason}",
        field=f"steps.{index}",
        details={"step": step.name},
    )


def _holds(value: Any, secret: Any) -> bool:
    if value == secret and type(value) is type(secret):
        return True
    if isinstance(value, dict):
        return any(_holds(item, secret) for item in value.values())
    if isinstance(value, list):
        return any(_holds(item, secret) for item in value)
    return False


async def _run_step(
    ctx: JobContext, step: Step, data: dict[str, Any], registry: Registry, secrets: list[Any]
) -> tuple[JobState | None, Any]:
    """(final state, result) of the step's child; (None, reason) when the intake refused
    it. Attempts up to max_attempts, never again after a restart interrupted an unsafe one."""
    version = registry.get(step.operation).version
    state: JobState | None = None
    for attempt in range(1, step.max_attempts + 1):
        job_id = child_id(ctx.job_id, step.name, attempt)
        state = await ctx.children.find(job_id)
        if state is None:
            document: dict[str, Any] = {
                "version": "1.0",
                "job_id": job_id,
                "kind": "RunbookStep",
                "operation": step.operation,
                "payload": {"type": f"{step.operation}.v{version}", "data": data},
                "labels": {"runbook_job": ctx.job_id, "runbook_step": step.name},
            }
            if step.timeout_seconds is not None:
                document["timeout_seconds"] = step.timeout_seconds
            try:
                state = await ctx.submit_child(document, secrets)
            except AgentError as exc:  # refused at the step's intake: nothing ran
                return None, f"refused: {exc.message}"
        if not state.status.terminal:
            state = await ctx.children.wait(job_id)
        if state.status is JobStatus.COMPLETED:
            return state, await ctx.children.result(job_id)
        if state.status is JobStatus.CANCELLED or (state.error or "").startswith(_UNSAFE_RESTART):
            break  # cancelled by someone, or not safe to run again: no further attempt
    return state, None


def _dry_step(step: Step, index: int, scope: Scope) -> dict[str, Any]:
    """What a step would do: whether it runs, its payload as far as known now."""
    where = f"steps.{index}"
    report: dict[str, Any] = {"name": step.name, "operation": step.operation}
    try:
        wanted = True if step.when is None else evaluate(step.when, scope, f"{where}.when")
        data = resolve(step.payload, scope, f"{where}.payload")
    except SubstitutionError as exc:
        return {**report, "status": "WouldFail", "error": exc.message}
    report["payload"] = _show_open(data, step.payload)
    if wanted is False:
        report["status"] = "WouldSkip"
    else:
        report["status"] = "WouldRun" if wanted else "DependsOnEarlierSteps"
        # No handler has a check mode yet: the step is named, never skipped silently.
        report["check_mode"] = False
        report["note"] = f"{step.operation} has no check mode: it would run; nothing was changed"
    return report


def _show_open(value: Any, template: Any) -> Any:
    """A resolved payload with the values still open shown as their references."""
    if value is UNRESOLVED:
        return template
    if isinstance(value, dict) and isinstance(template, dict):
        return {key: _show_open(item, template.get(key)) for key, item in value.items()}
    if isinstance(value, list) and isinstance(template, list):
        return [_show_open(item, tmpl) for item, tmpl in zip(value, template, strict=True)]
    return value
