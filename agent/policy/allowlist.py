"""The operation allowlist: which operations, on which resources, each caller may run.

Rules are the `[[policy.allow]]` tables (agent.config.AllowRule). A rule *names* a
caller when every selector it gives matches: `transports` the door the job came in
by, `tokens` the HTTP token's (or Kafka signing key's) name, `groups` one of the
socket peer's groups; a rule that gives none names every caller. A caller some rule
names may run only what a rule naming it allows; a caller no rule names keeps every
operation (no rules at all: today's behaviour).

A rule allows an operation when one of its `operations` globs matches the name and,
if it has `resources`, every resource the payload names matches one of those globs.
Where each operation names its resources is declared here, in TARGETS: a domain's
name (or uuid) for vm.*, the pool for storage.pool.*, "pool/volume" for
storage.volume.*, the network for network.*, image paths (in normal form) for
image.* and guestkit.*, the runbook's name for runbook.run. An operation TARGETS
does not know names no resource, so only rules without `resources` allow it
(tests/policy/test_allowlist.py holds every shipped operation to a declaration).

The check is pure (no I/O, no clock): the intake runs it while it prepares a job,
before anything is recorded, for every transport alike, and the runbook check runs
it for every step. A refusal is a ForbiddenError naming the field (`operation`, or
the payload field of the refused resource) and the rule.
"""

from __future__ import annotations

import fnmatch
import posixpath
import re
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, NamedTuple

from agent.config import AllowRule, PolicyConfig
from agent.errors import ForbiddenError

# The doors jobs come in by, in the order `policy show` and capabilities list them.
TRANSPORTS = ("spool", "http", "socket", "kafka")


@dataclass(frozen=True)
class Caller:
    """Who hands a job in: the door, and what identifies the caller at that door.

    `token`: the HTTP token's name (a Kafka job: its signing key's name); `groups`:
    a socket peer's group names; `privileged`: the caller holds admin (the domain
    policy's passthrough); `submitter`: as recorded with the job (agent.core.submitter).
    """

    transport: str
    token: str | None = None
    groups: frozenset[str] = frozenset()
    privileged: bool = False
    submitter: str | None = None

    def describe(self) -> str:
        """The caller as refusals and logs name it: "http token 'ci'"."""
        words = [self.transport]
        if self.token is not None:
            words.append(f"token '{self.token}'")
        if self.groups:
            words.append("groups " + ", ".join(sorted(self.groups)))
        return " ".join(words)


@dataclass(frozen=True)
class Target:
    """Where a payload names a resource its operation acts on.

    `attribute`: the dotted path in the payload (model attributes or mapping keys);
    `within`: for a volume, the attributes naming its pool (the first one set), making
    the resource "pool/volume"; `path`: a file path, matched in its normal form.
    """

    attribute: str
    within: tuple[str, ...] = ()
    path: bool = False

    @cached_property
    def field(self) -> str:
        """The contract's name of the field, as a refusal names it."""
        return f"payload.data.{self.attribute}"

    @cached_property
    def _parts(self) -> tuple[str, ...]:
        return tuple(self.attribute.split("."))

    def value(self, payload: object) -> str | None:
        """The resource this payload names here (None: it names none)."""
        found = _lookup(payload, self._parts)
        name = found if type(found) is str else _text(found)
        if name is None:
            return None
        if self.path:
            name = _normal_path(name)
        if self.within:
            container = next(
                (found for part in self.within if (found := _text(_lookup(payload, (part,))))),
                None,
            )
            if container is None:
                return None
            name = f"{container}/{name}"
        return name


_DOMAIN = (Target("name"), Target("uuid"))
_VOLUME = (Target("name", within=("pool",)),)
_IMAGE = (Target("path", path=True),)

# Where each operation names its resources: an operation's own entry, else its
# namespace's ("vm.*"). () declares an operation that acts on no named resource.
TARGETS: Mapping[str, tuple[Target, ...]] = {
    "system.*": (),
    "test.echo": (),
    "vm.list": (),
    "vm.*": _DOMAIN,
    "storage.pool.list": (),
    "storage.pool.*": (Target("name"),),
    "storage.volume.list": (Target("name"),),  # the pool whose volumes it lists
    "storage.volume.clone": (
        *_VOLUME,
        Target("new_name", within=("target_pool", "pool")),
    ),
    "storage.volume.*": _VOLUME,
    "network.list": (),
    "network.*": (Target("name"),),
    "image.create": (*_IMAGE, Target("backing_file", path=True)),
    "image.convert": (*_IMAGE, Target("output_path", path=True)),
    "image.*": _IMAGE,
    "guestkit.*": (Target("image.path", path=True),),
    "runbook.run": (Target("runbook"),),  # an installed runbook's name
}


def targets_of(operation: str) -> tuple[Target, ...] | None:
    """Where `operation` names its resources; None: TARGETS does not declare it."""
    found = TARGETS.get(operation)
    if found is not None:
        return found
    namespace = operation
    while "." in namespace:
        namespace = namespace.rpartition(".")[0]
        found = TARGETS.get(f"{namespace}.*")
        if found is not None:
            return found
    return None


class Resource(NamedTuple):
    """A resource a payload names, and the field it is named in."""

    field: str
    name: str


def resources_of(operation: str, payload: object) -> list[Resource] | None:
    """The resources `payload` names for `operation`; None: the operation is undeclared."""
    return _named(targets_of(operation), payload)


def _named(targets: tuple[Target, ...] | None, payload: object) -> list[Resource] | None:
    if targets is None:
        return None
    named: list[Resource] = []
    for target in targets:
        if (name := target.value(payload)) is not None:
            named.append(Resource(target.field, name))
    return named


@dataclass(frozen=True)
class Rule:
    """One compiled `[[policy.allow]]` table; `index` is its place in the list."""

    index: int
    operations: tuple[str, ...]
    resources: tuple[str, ...] | None = None
    transports: frozenset[str] = frozenset()
    tokens: frozenset[str] = frozenset()
    groups: frozenset[str] = frozenset()
    name: str | None = None

    @classmethod
    def of(cls, index: int, table: AllowRule) -> Rule:
        return cls(
            index=index,
            operations=tuple(table.operations),
            resources=None if table.resources is None else tuple(table.resources),
            transports=frozenset(table.transports),
            tokens=frozenset(table.tokens),
            groups=frozenset(table.groups),
            name=table.name,
        )

    @property
    def label(self) -> str:
        """How refusals and `policy show` name the rule: policy.allow[1] (ci)."""
        where = f"policy.allow[{self.index}]"
        return where if self.name is None else f"{where} ({self.name})"

    def names(self, caller: Caller) -> bool:
        """Whether the rule speaks of this caller (every selector it gives matches)."""
        if self.transports and caller.transport not in self.transports:
            return False
        if self.tokens and caller.token not in self.tokens:
            return False
        return not self.groups or not self.groups.isdisjoint(caller.groups)

    @cached_property
    def _operations(self) -> re.Pattern[str]:
        return _any_of(self.operations)

    @cached_property
    def _resources(self) -> re.Pattern[str] | None:
        return None if self.resources is None else _any_of(self.resources)

    def allows_operation(self, operation: str) -> bool:
        return self._operations.match(operation) is not None

    def refused_resource(self, resources: Sequence[Resource] | None) -> Resource | None:
        """The first resource this rule does not allow (the rule allows the operation)."""
        if self._resources is None:
            return None
        if not resources:  # undeclared, or names none: nothing the globs could match
            return _NO_RESOURCE
        for resource in resources:
            if self._resources.match(resource.name) is None:
                return resource
        return None

    def to_dict(self) -> dict[str, Any]:
        return {
            "rule": f"policy.allow[{self.index}]",
            "name": self.name,
            "transports": sorted(self.transports),
            "tokens": sorted(self.tokens),
            "groups": sorted(self.groups),
            "operations": list(self.operations),
            "resources": None if self.resources is None else list(self.resources),
        }


_NO_RESOURCE = Resource("operation", "")


class _Decision(NamedTuple):
    """What the rules say of one caller and operation, whatever the payload."""

    naming: list[Rule]  # the rules naming the caller (none: it may run anything)
    matching: list[Rule]  # those of them allowing the operation
    anywhere: bool  # one of those allows it on any resource
    targets: tuple[Target, ...] | None  # where the operation names its resources


# A refusal echoes this much of the resource's name (the payload's own text).
_SHOWN_CHARS = 200
# Decisions kept per allowlist (callers x operations); a reload builds a new one.
_DECISIONS_KEPT = 4096


@dataclass(frozen=True)
class Allowlist:
    """The rules in effect; `check` is the one question everything asks of them."""

    rules: tuple[Rule, ...] = field(default=())
    # (caller, operation) -> the rules naming the caller and those of them allowing
    # the operation: the same few callers and operations come again and again.
    _decided: dict[tuple[object, ...], _Decision] = field(
        default_factory=dict, compare=False, repr=False
    )

    @classmethod
    def from_rules(cls, tables: Iterable[AllowRule]) -> Allowlist:
        return cls(tuple(Rule.of(index, table) for index, table in enumerate(tables)))

    @classmethod
    def from_config(cls, config: PolicyConfig) -> Allowlist:
        return cls.from_rules(config.allow)

    def naming(self, caller: Caller) -> list[Rule]:
        """The rules that speak of this caller (none: it keeps every operation)."""
        return [rule for rule in self.rules if rule.names(caller)]

    def check(self, caller: Caller, operation: str, payload: object) -> None:
        """Return if `caller` may run `operation` with `payload` (a validated payload
        model or its data as a dict); else raise the ForbiddenError naming the
        field and the rule that refused it."""
        if not self.rules:
            return
        decision = self._decide(caller, operation)
        rules, matching = decision.naming, decision.matching
        if not rules or decision.anywhere:
            return
        if not matching:
            allowed = sorted({glob for rule in rules for glob in rule.operations})
            labels = ", ".join(rule.label for rule in rules)
            raise ForbiddenError(
                f"{caller.describe()} may not run {operation} on this host",
                field="operation",
                reason=f"not allowed by {labels}: allows only {', '.join(allowed)}",
                details={"rule": rules[0].label, "operation": operation},
            )
        resources = _named(decision.targets, payload)
        refusals: list[tuple[Rule, Resource]] = []
        for rule in matching:
            refused = rule.refused_resource(resources)
            if refused is None:
                return
            refusals.append((rule, refused))
        rule, refused = refusals[0]
        globs = ", ".join(rule.resources or ())
        if refused is _NO_RESOURCE:
            what = f"{operation} names no resource"
        else:
            shown = refused.name[:_SHOWN_CHARS] + (
                "..." if len(refused.name) > _SHOWN_CHARS else ""
            )
            what = f"{shown!r} is not one"
        raise ForbiddenError(
            f"{caller.describe()} may not run {operation} on this resource",
            field=refused.field,
            reason=f"{rule.label} allows {operation} only on {globs}; {what}",
            details={"rule": rule.label, "operation": operation},
        )

    def _decide(self, caller: Caller, operation: str) -> _Decision:
        # The fields the rules look at (hashing the Caller itself costs a Python call).
        key = (caller.transport, caller.token, caller.groups, operation)
        found = self._decided.get(key)
        if found is None:
            rules = self.naming(caller)
            matching = [rule for rule in rules if rule.allows_operation(operation)]
            anywhere = any(rule.resources is None for rule in matching)
            found = _Decision(rules, matching, anywhere, targets_of(operation))
            if len(self._decided) >= _DECISIONS_KEPT:
                self._decided.clear()
            self._decided[key] = found
        return found

    def operations_for(
        self,
        transport: str,
        operations: Iterable[str],
        *,
        token: str | None = None,
        groups: Iterable[str] = (),
    ) -> dict[str, tuple[str, ...] | None]:
        """What a caller of `transport` (with `token` / `groups`, if any) may run, of
        `operations`: each allowed one mapped to None (on any resource) or to the
        resource globs it is limited to."""
        caller = Caller(transport, token=token, groups=frozenset(groups))
        rules = self.naming(caller)
        allowed: dict[str, tuple[str, ...] | None] = {}
        for operation in sorted(operations):
            if not rules:
                allowed[operation] = None
                continue
            globs: list[str] = []
            for rule in rules:
                if not rule.allows_operation(operation):
                    continue
                if rule.resources is None:
                    allowed[operation] = None
                    break
                globs += [glob for glob in rule.resources if glob not in globs]
            else:
                if globs and targets_of(operation):
                    allowed[operation] = tuple(globs)
        return allowed

    def to_list(self) -> list[dict[str, Any]]:
        """The rules as `policy show --json` and the capabilities print them."""
        return [rule.to_dict() for rule in self.rules]


def _any_of(globs: Iterable[str]) -> re.Pattern[str]:
    """One pattern matching what any of the shell globs matches (fnmatchcase's rules)."""
    return re.compile("|".join(f"(?:{fnmatch.translate(glob)})" for glob in globs))


def _lookup(payload: object, parts: tuple[str, ...]) -> object:
    found = payload
    for part in parts:
        if found is None:
            return None
        # dict, not Mapping: an ABC's isinstance costs more than the rest of the check.
        found = found.get(part) if isinstance(found, dict) else getattr(found, part, None)
    return found


def _text(value: object) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, uuid.UUID):
        return str(value)
    return None  # not a name (an inline document, a number): names no resource


def _normal_path(path: str) -> str:
    """The path without ./, ../ and doubled slashes (lexically, as globs see it)."""
    normal = posixpath.normpath(path)
    return "/" + normal.lstrip("/") if normal.startswith("//") else normal
