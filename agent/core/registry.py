"""Operation name -> handler: its payload model, re-run safety and lock key."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

import pydantic
from pydantic import BaseModel

from agent.core.context import JobContext
from agent.errors import ForbiddenError, ValidationError
from agent.jobs import JobDocument, raise_validation_error
from agent.policy.allowlist import Caller
from agent.policy.paths import Admission, Policy

PayloadT = TypeVar("PayloadT", bound=BaseModel)
HandlerFunc = Callable[[Any, JobContext], Awaitable[Any]]


@dataclass(frozen=True)
class Handler:
    """One operation the agent can run."""

    operation: str
    run: HandlerFunc
    payload_model: type[BaseModel]
    # True when running it again after a crash mid-job cannot do harm.
    rerun_safe: bool
    version: int = 1
    summary: str = ""
    # Key of the resource the job acts on; jobs with the same key never overlap.
    resource: Callable[[Any], str | None] | None = None
    # Checks the payload against the host's policy at intake (paths, domain
    # definitions); raises ForbiddenError naming the field.
    admit: Callable[[Any, Admission], None] | None = None


def handler(
    operation: str,
    *,
    payload: type[PayloadT],
    rerun_safe: bool,
    version: int = 1,
    resource: Callable[[PayloadT], str | None] | None = None,
    admit: Callable[[PayloadT, Admission], None] | None = None,
) -> Callable[[Callable[[PayloadT, JobContext], Awaitable[Any]]], Handler]:
    """Declare an async function `(payload, ctx) -> result` as the handler of `operation`."""

    def wrap(func: Callable[[PayloadT, JobContext], Awaitable[Any]]) -> Handler:
        summary = (func.__doc__ or "").strip().splitlines()[0] if func.__doc__ else ""
        return Handler(
            operation=operation,
            run=func,
            payload_model=payload,
            rerun_safe=rerun_safe,
            version=version,
            summary=summary,
            resource=resource,
            admit=admit,
        )

    return wrap


class Registry:
    def __init__(self, handlers: Iterable[Handler] = (), *, policy: Policy | None = None) -> None:
        self._handlers: dict[str, Handler] = {}
        # None: operations with an admit hook are refused (no policy, no paths).
        self.policy = policy
        for item in handlers:
            self.add(item)

    def add(self, item: Handler) -> None:
        if item.operation in self._handlers:
            raise ValueError(f"operation {item.operation} registered twice")
        self._handlers[item.operation] = item

    def get(self, operation: str) -> Handler:
        try:
            return self._handlers[operation]
        except KeyError:
            raise ValidationError(
                f"No handler for operation '{operation}'",
                field="operation",
                reason=f"Unknown operation '{operation}' on this agent",
            ) from None

    def rerun_safe(self, operation: str) -> bool:
        found = self._handlers.get(operation)
        return found is not None and found.rerun_safe

    @property
    def operations(self) -> list[str]:
        return sorted(self._handlers)

    def validate_payload(self, document: JobDocument) -> BaseModel:
        """The payload parsed by its handler's model; ValidationError names the field."""
        found = self.get(document.operation)
        if document.payload_version != found.version:
            raise ValidationError(
                f"Unsupported payload version for {document.operation}",
                field="payload.type",
                reason=f"This agent speaks {document.operation}.v{found.version}",
            )
        try:
            return found.payload_model.model_validate(document.payload.data)
        except pydantic.ValidationError as exc:
            raise_validation_error(exc, prefix="payload.data")
        raise AssertionError("unreachable")

    def check_allowed(self, caller: Caller, operation: str, payload: BaseModel) -> None:
        """The host's operation allowlist (agent.policy.allowlist) on this caller and
        payload: ForbiddenError naming the field and the rule. Pure: runs at prepare."""
        if self.policy is not None:
            self.policy.allowlist.check(caller, operation, payload)

    def admission(
        self, document: JobDocument, payload: BaseModel, *, caller: Caller
    ) -> Callable[[], None] | None:
        """The handler's host-policy check of this payload, still to run (None: it has
        none). The check opens and stats files, so it blocks: run it in a worker thread.
        Raising ForbiddenError (field, reason) refuses the job."""
        found = self.get(document.operation)
        if found.admit is None:
            return None
        if self.policy is None:
            raise ForbiddenError(
                f"{document.operation} needs the host policy, and this agent has none",
                field="operation",
                reason="no policy configured",
            )
        check, admission = found.admit, Admission(self.policy, caller.privileged, caller)

        def admit() -> None:
            check(payload, admission)

        return admit

    def schemas(self) -> dict[str, dict[str, Any]]:
        """Per-operation payload JSON schema, for capability discovery."""
        return {
            name: {
                "payload_type": f"{name}.v{item.version}",
                "summary": item.summary,
                "rerun_safe": item.rerun_safe,
                "schema": item.payload_model.model_json_schema(),
            }
            for name, item in sorted(self._handlers.items())
        }
