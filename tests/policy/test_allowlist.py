"""The operation allowlist (agent.policy.allowlist): who is named by which rule, what
each rule allows, where a refusal points, and that every shipped operation says
where it names its resources."""

from __future__ import annotations

from fnmatch import fnmatchcase
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.config import AllowRule, Config, PolicyConfig, load_config
from agent.errors import ConfigError, ForbiddenError
from agent.handlers.guestkit import InspectPayload
from agent.handlers.storage import VolumeClonePayload
from agent.handlers.vm import DomainRef
from agent.policy.allowlist import (
    TARGETS,
    TRANSPORTS,
    Allowlist,
    Caller,
    resources_of,
    targets_of,
)
from agent.service.agent import build_registry


def allowlist(*tables: dict[str, Any]) -> Allowlist:
    return Allowlist.from_rules(AllowRule.model_validate(table) for table in tables)


def refusal(rules: Allowlist, caller: Caller, operation: str, payload: object) -> ForbiddenError:
    with pytest.raises(ForbiddenError) as raised:
        rules.check(caller, operation, payload)
    return raised.value


HTTP_CI = Caller("http", token="ci")
CI_RULES = allowlist(
    {
        "name": "ci",
        "tokens": ["ci"],
        "operations": ["vm.start", "vm.shutdown"],
        "resources": ["ci-*"],
    },
    {"tokens": ["ci"], "operations": ["vm.list", "image.info"]},
)


def test_no_rules_keeps_every_operation() -> None:
    Allowlist().check(Caller("kafka"), "storage.pool.delete", {"name": "default"})
    assert Allowlist().operations_for("spool", ["vm.destroy", "image.info"]) == {
        "image.info": None,
        "vm.destroy": None,
    }


def test_vm_start_on_ci_domain_allowed_on_web_refused_naming_field_and_rule() -> None:
    CI_RULES.check(HTTP_CI, "vm.start", DomainRef(name="ci-7"))
    error = refusal(CI_RULES, HTTP_CI, "vm.start", DomainRef(name="web-1"))
    assert error.http_status == 403
    assert error.details["field"] == "payload.data.name"
    assert error.details["rule"] == "policy.allow[0] (ci)"
    assert "'web-1'" in error.details["reason"]
    assert "ci-*" in error.details["reason"]


def test_a_refusal_echoes_a_long_resource_name_shortened() -> None:
    error = refusal(CI_RULES, HTTP_CI, "vm.start", DomainRef(name="w" * 5000))
    assert len(error.details["reason"]) < 400
    assert "..." in error.details["reason"]


def test_operation_no_rule_naming_the_caller_allows_is_refused_on_operation() -> None:
    error = refusal(CI_RULES, HTTP_CI, "vm.destroy", {"name": "ci-7"})
    assert error.details["field"] == "operation"
    assert error.details["rule"] == "policy.allow[0] (ci)"
    assert "policy.allow[1]" in error.details["reason"]


def test_caller_no_rule_names_keeps_todays_rights() -> None:
    for caller in (Caller("http", token="ops"), Caller("spool"), Caller("socket"), Caller("kafka")):
        CI_RULES.check(caller, "vm.destroy", {"name": "web-1"})


def test_selectors_must_all_match_to_name_a_caller() -> None:
    rules = allowlist(
        {"transports": ["socket"], "groups": ["ops"], "operations": ["vm.info"]},
    )
    socket_ops = Caller("socket", groups=frozenset({"users", "ops"}))
    refusal(rules, socket_ops, "vm.destroy", {"name": "a"})
    rules.check(socket_ops, "vm.info", {"name": "a"})
    # Same group over another door, or the socket without the group: not named.
    rules.check(Caller("http", groups=frozenset({"ops"})), "vm.destroy", {"name": "a"})
    rules.check(Caller("socket", groups=frozenset({"users"})), "vm.destroy", {"name": "a"})


def test_a_rule_naming_no_selector_names_every_caller() -> None:
    rules = allowlist({"operations": ["image.*", "guestkit.inspect"]})
    for transport in TRANSPORTS:
        caller = Caller(transport, token="any")
        rules.check(caller, "image.info", {"path": "/x"})
        assert refusal(rules, caller, "vm.start", {"name": "a"}).details["field"] == "operation"


def test_any_rule_naming_the_caller_may_allow() -> None:
    rules = allowlist(
        {"transports": ["kafka"], "operations": ["vm.*"], "resources": ["ci-*"]},
        {"transports": ["kafka"], "operations": ["vm.start"]},
    )
    rules.check(Caller("kafka"), "vm.start", DomainRef(name="web-1"))
    refusal(rules, Caller("kafka"), "vm.stop", DomainRef(name="web-1"))
    rules.check(Caller("kafka"), "vm.stop", DomainRef(name="ci-1"))


def test_domain_by_uuid_is_matched_by_its_uuid() -> None:
    rules = allowlist({"operations": ["vm.*"], "resources": ["ci-*"]})
    ref = DomainRef(uuid="6f1c5f4c-1b9a-4d8e-9c43-2a0c9b7b1e11")  # type: ignore[arg-type]
    error = refusal(rules, Caller("http"), "vm.start", ref)
    assert error.details["field"] == "payload.data.uuid"


def test_resource_rule_allows_no_operation_that_names_no_resource() -> None:
    rules = allowlist({"operations": ["vm.*", "test.*"], "resources": ["ci-*"]})
    for operation in ("vm.list", "test.hold"):
        error = refusal(rules, Caller("http"), operation, {})
        assert error.details["field"] == "operation"
        assert "names no resource" in error.details["reason"]


def test_volumes_are_pool_slash_name_and_clone_checks_both_ends() -> None:
    rules = allowlist({"operations": ["storage.volume.*"], "resources": ["ci/*"]})
    caller = Caller("spool")
    rules.check(caller, "storage.volume.wipe", {"pool": "ci", "name": "disk.qcow2"})
    refusal(rules, caller, "storage.volume.wipe", {"pool": "prod", "name": "disk.qcow2"})
    rules.check(
        caller, "storage.volume.clone", VolumeClonePayload(pool="ci", name="a", new_name="b")
    )
    error = refusal(
        rules,
        caller,
        "storage.volume.clone",
        VolumeClonePayload(pool="ci", name="a", new_name="b", target_pool="prod"),
    )
    assert error.details["field"] == "payload.data.new_name"
    assert "'prod/b'" in error.details["reason"]


def test_paths_are_matched_in_normal_form() -> None:
    rules = allowlist({"operations": ["image.*", "guestkit.*"], "resources": ["/images/ci/*"]})
    caller = Caller("http", token="t")
    rules.check(caller, "image.info", {"path": "/images/ci/a.qcow2"})
    escape = {"path": "/images/ci/../prod/a.qcow2"}
    assert refusal(rules, caller, "image.info", escape).details["field"] == "payload.data.path"
    error = refusal(
        rules, caller, "guestkit.inspect", InspectPayload.model_validate({"image": escape})
    )
    assert error.details["field"] == "payload.data.image.path"
    converted = {"path": "/images/ci/a.qcow2", "output_path": "/images//prod/b.qcow2"}
    assert refusal(rules, caller, "image.convert", converted).details["field"] == (
        "payload.data.output_path"
    )


def test_every_shipped_operation_declares_where_it_names_resources() -> None:
    undeclared = [op for op in build_registry().operations if targets_of(op) is None]
    assert undeclared == []
    assert targets_of("vm.snapshot.create") == TARGETS["vm.*"]
    assert targets_of("vm.list") == ()


def test_resources_of_reads_models_and_mappings_alike() -> None:
    from_model = resources_of("vm.start", DomainRef(name="ci-1"))
    assert from_model is not None
    assert [(r.field, r.name) for r in from_model] == [("payload.data.name", "ci-1")]
    assert resources_of("test.hold", {}) is None


def test_operations_for_reports_per_transport_and_token() -> None:
    rules = allowlist(
        {"transports": ["kafka"], "operations": ["vm.start", "vm.list"], "resources": ["ci-*"]},
        {"transports": ["kafka"], "operations": ["image.info"]},
        {"tokens": ["ci"], "operations": ["system.*"]},
    )
    ops = ["image.info", "system.echo", "vm.destroy", "vm.list", "vm.start"]
    assert rules.operations_for("kafka", ops) == {"image.info": None, "vm.start": ("ci-*",)}
    assert rules.operations_for("http", ops) == dict.fromkeys(ops)
    assert rules.operations_for("http", ops, token="ci") == {"system.echo": None}


def test_rules_come_from_toml_and_from_the_environment(tmp_path: Any) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(
        '[[policy.allow]]\ntransports = ["spool"]\noperations = ["image.info"]\n'
        '[[policy.allow]]\ntokens = ["ci"]\noperations = ["vm.*"]\nresources = ["ci-*"]\n'
    )
    from_file = load_config(path, model=Config, environ={})
    assert [rule.operations for rule in from_file.policy.allow] == [["image.info"], ["vm.*"]]
    env = {"HOSTAGENT_POLICY__ALLOW": '[{"transports": ["kafka"], "operations": ["vm.info"]}]'}
    from_env = load_config(None, model=Config, environ=env)
    assert Allowlist.from_config(from_env.policy).rules[0].transports == {"kafka"}
    assert PolicyConfig().allow == []  # the default: no rules, today's rights


@pytest.mark.parametrize(
    ("table", "key"),
    [
        ({"transports": ["ftp"], "operations": ["vm.*"]}, "policy.allow.0.transports.0"),
        ({"operations": []}, "policy.allow.0.operations"),
        ({"operations": ["vm.*"], "resources": []}, "policy.allow.0.resources"),
        ({"operations": ["vm.*"], "token": ["x"]}, "policy.allow.0.token"),
    ],
)
def test_bad_rules_are_config_errors_naming_the_key(table: dict[str, Any], key: str) -> None:
    env = {"HOSTAGENT_POLICY__ALLOW": __import__("json").dumps([table])}
    with pytest.raises(ConfigError) as raised:
        load_config(None, model=Config, environ=env)
    assert raised.value.details["field"] == key


# The property: check() agrees with the rule as README states it, over random rules.
NAMES = ["ci-1", "ci-2", "web-1", "db"]
OPERATIONS = ["vm.start", "vm.destroy", "vm.list", "image.info", "storage.pool.delete"]
GLOBS = ["vm.*", "vm.start", "image.*", "*", "storage.*", "vm.list", "nothing.*"]
RESOURCE_GLOBS = ["ci-*", "web-?", "db", "/img/*", "*"]

rule_tables = st.fixed_dictionaries(
    {
        "transports": st.lists(st.sampled_from(TRANSPORTS), max_size=2, unique=True),
        "tokens": st.lists(st.sampled_from(["a", "b"]), max_size=1),
        "groups": st.lists(st.sampled_from(["g", "h"]), max_size=1),
        "operations": st.lists(st.sampled_from(GLOBS), min_size=1, max_size=2),
    },
    optional={"resources": st.lists(st.sampled_from(RESOURCE_GLOBS), min_size=1, max_size=2)},
)
callers = st.builds(
    Caller,
    transport=st.sampled_from(TRANSPORTS),
    token=st.sampled_from([None, "a", "b"]),
    groups=st.frozensets(st.sampled_from(["g", "h"]), max_size=2),
)


def expected(tables: list[dict[str, Any]], caller: Caller, operation: str, name: str) -> bool:
    """The README's words, written out again: an oracle independent of the module."""
    naming = [
        t
        for t in tables
        if (not t["transports"] or caller.transport in t["transports"])
        and (not t["tokens"] or caller.token in t["tokens"])
        and (not t["groups"] or set(t["groups"]) & caller.groups)
    ]
    if not naming:
        return True
    has_resource = operation != "vm.list"
    resource = f"/img/{name}" if operation == "image.info" else name
    return any(
        any(fnmatchcase(operation, glob) for glob in t["operations"])
        and (
            "resources" not in t
            or (has_resource and any(fnmatchcase(resource, g) for g in t["resources"]))
        )
        for t in naming
    )


def refused_by(
    rules: Allowlist, caller: Caller, operation: str, payload: object
) -> ForbiddenError | None:
    try:
        rules.check(caller, operation, payload)
    except ForbiddenError as exc:
        return exc
    return None


@pytest.mark.slow
@settings(max_examples=400, deadline=None)
@given(
    tables=st.lists(rule_tables, max_size=4),
    caller=callers,
    operation=st.sampled_from(OPERATIONS),
    name=st.sampled_from(NAMES),
)
def test_check_agrees_with_the_stated_rule(
    tables: list[dict[str, Any]], caller: Caller, operation: str, name: str
) -> None:
    rules = allowlist(*tables)
    payload = {"path": f"/img/{name}"} if operation == "image.info" else {"name": name}
    error = refused_by(rules, caller, operation, payload)
    allowed = error is None
    if error is not None:
        # Every refusal names a field the payload has (or the operation) and a rule
        # that speaks of this caller.
        assert error.details["field"] in {"operation", "payload.data.name", "payload.data.path"}
        index = int(error.details["rule"].split("[")[1].split("]")[0])
        assert rules.rules[index].names(caller)
    assert allowed == expected(tables, caller, operation, name)
    # operations_for agrees: an allowed operation is listed; one listed without
    # resource limits is allowed whatever it names.
    listed = rules.operations_for(
        caller.transport, OPERATIONS, token=caller.token, groups=caller.groups
    )
    if allowed:
        assert operation in listed
    if operation in listed and listed[operation] is None:
        assert allowed
