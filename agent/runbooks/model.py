"""The runbook document: a procedure as data over registered operations.

A runbook names its typed parameters and its steps; a step names an operation,
its payload (JSON, with references substituted as whole values, see
substitution.py), when it runs, what happens when it fails and what it outputs.
Nothing in a runbook is ever spliced into a string or handed to a shell.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any, Literal

import pydantic
from pydantic import BaseModel, ConfigDict, Field, Strict, field_validator, model_validator

from agent.errors import ValidationError
from agent.jobs import raise_validation_error
from agent.runbooks.substitution import check_condition, check_refs

# The versions of the runbook document this agent reads.
SUPPORTED_SCHEMA_VERSIONS = (1,)
NAME_PATTERN = r"^[a-z][a-z0-9_-]{0,63}$"
STEP_NAME_PATTERN = r"^[a-z][a-z0-9_-]{0,31}$"
MAX_STEPS = 64
ParamType = Literal["string", "integer", "number", "boolean", "array", "object"]


class Parameter(BaseModel):
    """A typed parameter; without a default it is required."""

    model_config = ConfigDict(extra="forbid", defer_build=True)

    type: ParamType
    description: str = Field(default="", max_length=1000)
    enum: list[Any] | None = Field(default=None, min_length=1, max_length=256)
    # Strings only: the whole value must match (re.fullmatch).
    pattern: str | None = Field(default=None, max_length=256)
    # Numbers: the value's bounds; strings and arrays: their length's.
    min: Annotated[float, Strict()] | None = Field(default=None, allow_inf_nan=False)
    max: Annotated[float, Strict()] | None = Field(default=None, allow_inf_nan=False)
    default: Any = None
    # Never logged, stored, echoed in events or results (see README "Runbooks").
    secret: bool = False

    @property
    def required(self) -> bool:
        return "default" not in self.model_fields_set

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"pattern does not compile: {exc}") from None
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Parameter:
        if self.pattern is not None and self.type != "string":
            raise ValueError("pattern applies to string parameters only")
        if (self.min is not None or self.max is not None) and self.type not in (
            "string",
            "integer",
            "number",
            "array",
        ):
            raise ValueError("min and max apply to strings, numbers and arrays")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError("min is greater than max")
        if not self.required:
            problem = value_problem(self, self.default)
            if problem is not None:
                raise ValueError(f"default: {problem}")
        return self


class Step(BaseModel):
    """One operation of the procedure, run as a child job of the runbook's job."""

    model_config = ConfigDict(extra="forbid", defer_build=True)

    name: str = Field(pattern=STEP_NAME_PATTERN)
    operation: str = Field(min_length=3, max_length=128)
    # The operation's payload data; `{"$param": ...}` / `{"$step": ...}` are whole values.
    payload: dict[str, Any] = Field(default_factory=dict)
    # A condition (substitution.evaluate): the step is skipped when it is false.
    when: Any = None
    on_failure: Literal["abort", "continue"] = "abort"
    max_attempts: Annotated[int, Strict()] = Field(default=1, ge=1, le=10)
    timeout_seconds: Annotated[float, Strict()] | None = Field(
        default=None, ge=0.01, le=365 * 86400.0, allow_inf_nan=False
    )
    # Output name -> path into the step's outcome ("result.name"); later steps use
    # `{"$step": "STEP.outputs.NAME"}`, and the runbook's result lists them.
    outputs: dict[str, str] = Field(default_factory=dict, max_length=64)

    @field_validator("outputs")
    @classmethod
    def _output_paths(cls, value: dict[str, str]) -> dict[str, str]:
        for name, path in value.items():
            if not re.fullmatch(r"[a-z][a-z0-9_]{0,63}", name):
                raise ValueError(f"output name {name!r} must match [a-z][a-z0-9_]*")
            if not (path == "result" or path.startswith("result.")):
                raise ValueError(f"output {name}: the path must start with 'result'")
        return value


class Runbook(BaseModel):
    """A runbook document (schema_version 1)."""

    model_config = ConfigDict(extra="forbid", defer_build=True)

    schema_version: Annotated[int, Strict()]
    name: str = Field(pattern=NAME_PATTERN)
    version: Annotated[int, Strict()] = Field(ge=1, le=1_000_000)
    description: str = Field(default="", max_length=4000)
    parameters: dict[str, Parameter] = Field(default_factory=dict, max_length=64)
    steps: list[Step] = Field(min_length=1, max_length=MAX_STEPS)

    @model_validator(mode="before")
    @classmethod
    def _known_schema(cls, data: Any) -> Any:
        if isinstance(data, dict):
            version = data.get("schema_version")
            if version is not None and version not in SUPPORTED_SCHEMA_VERSIONS:
                supported = ", ".join(str(v) for v in SUPPORTED_SCHEMA_VERSIONS)
                raise ValidationError(
                    f"Unknown runbook schema_version {version!r}; this agent supports {supported}",
                    field="schema_version",
                    reason=f"supported schema versions: {supported}",
                )
        return data

    @field_validator("parameters")
    @classmethod
    def _parameter_names(cls, value: dict[str, Parameter]) -> dict[str, Parameter]:
        for name in value:
            if not re.fullmatch(r"[a-z][a-z0-9_]{0,63}", name):
                raise ValueError(f"parameter name {name!r} must match [a-z][a-z0-9_]*")
        return value

    @model_validator(mode="after")
    def _references(self) -> Runbook:
        """Step names unique, references to declared parameters and earlier steps only."""
        seen: list[str] = []
        outputs: set[str] = set()
        for index, step in enumerate(self.steps):
            where = f"steps.{index}"
            if step.name in seen:
                raise _at(f"{where}.name", f"step name {step.name!r} is used twice")
            for name in step.outputs:
                if name in outputs:
                    raise _at(f"{where}.outputs.{name}", f"output {name!r} is named twice")
                outputs.add(name)
            earlier = frozenset(seen)
            params = frozenset(self.parameters)
            check_refs(step.payload, f"{where}.payload", params=params, steps=earlier)
            if step.when is not None:
                check_condition(step.when, f"{where}.when", params=params, steps=earlier)
            seen.append(step.name)
        return self

    @property
    def secrets(self) -> frozenset[str]:
        """Names of the secret parameters."""
        return frozenset(name for name, item in self.parameters.items() if item.secret)


def _at(field: str, reason: str) -> ValidationError:
    return ValidationError(f"Invalid {field}: {reason}", field=field, reason=reason)


def parse_runbook(data: object, *, prefix: str = "") -> Runbook:
    """A runbook document validated whole; ValidationError naming the field (under `prefix`)."""
    head = f"{prefix}." if prefix else ""
    if not isinstance(data, dict):
        raise _at(prefix or "runbook", "a runbook is a JSON object (or a YAML mapping)")
    try:
        return Runbook.model_validate(data)
    except ValidationError as exc:
        field = exc.details.get("field")
        raise type(exc)(
            exc.message,
            details={**exc.details, "field": f"{head}{field}" if field else prefix or None},
        ) from None
    except pydantic.ValidationError as exc:
        # An error raised inside a validator arrives wrapped: keep its own field.
        cause = _inner_agent_error(exc)
        if cause is not None:
            field = cause.details.get("field", "")
            raise type(cause)(
                cause.message, details={**cause.details, "field": f"{head}{field}"}
            ) from None
        raise_validation_error(exc, prefix=prefix)


def _inner_agent_error(exc: pydantic.ValidationError) -> ValidationError | None:
    for error in exc.errors(include_url=False):
        found = (error.get("ctx") or {}).get("error")
        if isinstance(found, ValidationError):
            return found
    return None


_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "array": (list,),
    "object": (dict,),
}


def value_problem(param: Parameter, value: Any) -> str | None:
    """Why `value` does not fit the parameter (None: it does). Strict JSON types:
    "5" is no integer, true no number."""
    kinds = _TYPES[param.type]
    if not isinstance(value, kinds) or (isinstance(value, bool) and param.type != "boolean"):
        return f"expected {param.type}, got {_json_type(value)}"
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN and infinities are not numbers here"
    return _bounds_problem(param, value)


def _bounds_problem(param: Parameter, value: Any) -> str | None:
    if param.enum is not None and value not in param.enum:
        return f"must be one of {param.enum!r}"
    if param.pattern is not None and not re.fullmatch(param.pattern, str(value)):
        return f"must match the pattern {param.pattern!r}"
    measure = len(value) if isinstance(value, str | list) else value
    if isinstance(measure, int | float) and not isinstance(measure, bool):
        what = "length" if isinstance(value, str | list) else "value"
        if param.min is not None and measure < param.min:
            return f"{what} must be at least {param.min:g}"
        if param.max is not None and measure > param.max:
            return f"{what} must be at most {param.max:g}"
    return None


def _json_type(value: Any) -> str:
    names = {bool: "boolean", int: "integer", float: "number", str: "string", list: "array"}
    return "object" if isinstance(value, dict) else names.get(type(value), type(value).__name__)


def check_parameters(runbook: Runbook, given: dict[str, Any], *, prefix: str) -> dict[str, Any]:
    """The parameters with defaults filled in; ValidationError naming `prefix.NAME`."""
    unknown = sorted(set(given) - set(runbook.parameters))
    if unknown:
        raise _at(f"{prefix}.{unknown[0]}", f"{runbook.name} has no parameter {unknown[0]!r}")
    values: dict[str, Any] = {}
    for name, param in runbook.parameters.items():
        if name not in given:
            if param.required:
                raise _at(f"{prefix}.{name}", "required parameter missing")
            values[name] = param.default
            continue
        problem = value_problem(param, given[name])
        if problem is not None:
            # A secret's value is not echoed: the reason says what is wrong, never the value.
            raise _at(f"{prefix}.{name}", problem)
        values[name] = given[name]
    return values
