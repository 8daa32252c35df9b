"""GET /api/v1/policy: the operation allowlist in effect in this running agent (after
any reload) and what each transport, token, Kafka key and named group may run.

The content is agent.policy.report's, as `hostagent policy show --json` prints it:
the live rules are the host policy's (the ones the intake checks), the tokens and
keys those of the config the agent runs with now.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from agent.config import Config
from agent.core.registry import Registry
from agent.policy.allowlist import Allowlist
from agent.policy.paths import Policy
from agent.policy.report import policy_report
from agent.transports.http.envelope import Answer, ok
from agent.transports.http.routes import API, Call, Route, route

ROUTES: list[Route] = []


class PolicyRule(BaseModel):
    """One `[[policy.allow]]` rule, as configured."""

    rule: str = Field(description="where it is in the config: policy.allow[N]")
    name: str | None
    transports: list[str] = Field(description="empty: every transport")
    tokens: list[str] = Field(description="HTTP token names and Kafka key ids; empty: any")
    groups: list[str] = Field(description="socket peers' groups; empty: any")
    operations: list[str] = Field(description="globs over operation names")
    resources: list[str] | None = Field(description="globs over resources; null: any")


class PolicyCaller(BaseModel):
    """A caller the rules could name, and what it may run."""

    transport: str
    token: str | None = Field(description="the HTTP token's name or Kafka key id, if any")
    groups: list[str] = Field(description="the socket group this entry stands for, if any")
    named_by: list[str] = Field(description="the rules naming it; empty: it may run anything")
    operations: dict[str, list[str] | None] = Field(
        description="each operation it may run: null on any resource, else the resource globs"
    )


class PolicyReport(BaseModel):
    rules: list[PolicyRule]
    callers: list[PolicyCaller]


@route(
    ROUTES,
    "GET",
    f"{API}/policy",
    scope="read",
    summary="The operation allowlist in effect, and what each caller may run",
    answer=PolicyReport,
    errors=(401, 403),
)
async def policy(call: Call) -> Answer:
    return ok(await live_report(call))


async def live_report(call: Call) -> dict[str, Any]:
    """The report of the rules the intake checks now, over the registered operations."""
    services = call.api.services
    host = services.find(Policy)
    # No host policy around the API (a bare transport): no allowlist is checked.
    rules = host.allowlist if host is not None else Allowlist()
    config = services.find(Config)
    http = getattr(config, "http", None) or call.api.config
    kafka = getattr(config, "kafka", None)
    registry = services.find(Registry)
    operations: list[str] = (
        registry.operations
        if registry is not None
        else (await call.api.intake.capabilities())["operations"]  # builds every schema
    )
    return policy_report(
        rules,
        operations,
        tokens=[token.name for token in http.tokens],
        keys=[key.id for key in getattr(kafka, "keys", [])],
    )
