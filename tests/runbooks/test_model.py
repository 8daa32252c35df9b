"""The runbook document, its references and conditions, and the loader, as units."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from agent.errors import ValidationError
from agent.runbooks import RunbookLibrary, Scope, check_parameters, evaluate, parse_runbook, resolve
from agent.runbooks.substitution import UNRESOLVED, SubstitutionError
from tests.runbooks.conftest import ECHO_CHAIN


def runbook(**changes: Any) -> dict[str, Any]:
    return {**json.loads(json.dumps(ECHO_CHAIN)), **changes}


def refusal(document: object) -> dict[str, Any]:
    with pytest.raises(ValidationError) as refused:
        parse_runbook(document, prefix="payload.data.runbook")
    return refused.value.details


def test_an_unknown_schema_version_is_refused_naming_the_supported_ones() -> None:
    details = refusal(runbook(schema_version=2))
    assert details["field"] == "payload.data.runbook.schema_version"
    assert details["reason"] == "supported schema versions: 1"


@pytest.mark.parametrize(
    ("ref", "reason"),
    [
        ({"$step": "last.result"}, "'last' is not an earlier step"),
        ({"$step": "first"}, "a step reference is STEP."),
        ({"$param": "nope"}, "no parameter named 'nope'"),
        ({"$fact": "secret"}, "unknown fact 'secret'"),
    ],
)
def test_references_must_name_what_exists_before_them(ref: dict[str, str], reason: str) -> None:
    document = runbook()
    document["steps"][1]["payload"] = {"said": ref}
    details = refusal(document)
    assert details["field"] == "payload.data.runbook.steps.1.payload.said"
    assert details["reason"].startswith(reason)


def test_a_dollar_key_that_is_no_reference_is_refused() -> None:
    document = runbook()
    document["steps"][0]["payload"] = {"x": {"$param": "greeting", "also": 1}}
    assert refusal(document)["field"] == "payload.data.runbook.steps.0.payload.x.$param"


def test_values_are_substituted_whole_and_never_spliced_into_strings() -> None:
    scope = Scope({"name": "x; rm -rf /", "n": 3})
    template = {
        "a": {"$param": "name"},
        "b": "{$param: name} $(name) {{name}}",
        "c": [{"$param": "n"}],
    }
    assert resolve(template, scope) == {
        "a": "x; rm -rf /",
        "b": "{$param: name} $(name) {{name}}",  # text is text, whatever it looks like
        "c": [3],
    }


def test_step_references_resolve_against_outcomes_or_stay_open_at_intake() -> None:
    record = {"status": "Completed", "result": {"snap": {"name": "s1"}, "list": [5]}, "outputs": {}}
    scope = Scope({}, steps={"snap": record})
    assert resolve({"$step": "snap.result.snap.name"}, scope) == "s1"
    assert resolve({"$step": "snap.result.list.0"}, scope) == 5
    with pytest.raises(SubstitutionError):
        resolve({"$step": "snap.result.missing"}, scope, "steps.1.payload.x")
    assert resolve({"$step": "later.status"}, Scope({}, partial=True)) is UNRESOLVED


def test_conditions() -> None:
    scope = Scope(
        {"on": True, "env": "prod"}, steps={"a": {"status": "Failed"}}, labels={"zone": "b"}
    )
    assert evaluate({"$param": "on"}, scope, "when") is True
    assert evaluate({"equals": [{"$step": "a.status"}, "Completed"]}, scope, "when") is False
    assert evaluate({"in": [{"$label": "zone"}, ["a", "b"]]}, scope, "when") is True
    assert evaluate({"not": {"all": [True, {"$param": "on"}]}}, scope, "when") is False
    assert evaluate({"any": [False, {"equals": [{"$param": "env"}, "prod"]}]}, scope, "when")
    open_scope = Scope({}, partial=True)
    assert evaluate({"equals": [{"$step": "b.status"}, "Completed"]}, open_scope, "when") is None
    with pytest.raises(SubstitutionError):
        evaluate({"$param": "env"}, scope, "when")  # a string is no condition


@pytest.mark.parametrize(
    ("given", "reason"),
    [
        ({"greeting": 5}, "expected string, got integer"),
        ({"greeting": "Hi"}, "must match the pattern"),
        ({"greeting": "a" * 41}, "length must be at most 40"),
        ({"greeting": "hi", "count": "2"}, "expected integer, got string"),
        ({"greeting": "hi", "count": True}, "expected integer, got boolean"),
        ({"greeting": "hi", "count": 2.0}, "expected integer, got number"),
        ({"greeting": "hi", "count": 10}, "value must be at most 9"),
        ({"greeting": "hi", "extra": 1}, "echo-chain has no parameter 'extra'"),
        ({}, "required parameter missing"),
    ],
)
def test_parameters_are_strict(given: dict[str, Any], reason: str) -> None:
    with pytest.raises(ValidationError) as refused:
        check_parameters(parse_runbook(ECHO_CHAIN), given, prefix="parameters")
    assert refused.value.details["reason"].startswith(reason)
    assert refused.value.details["field"].startswith("parameters.")


def test_parameters_get_their_defaults() -> None:
    values = check_parameters(parse_runbook(ECHO_CHAIN), {"greeting": "hi"}, prefix="p")
    assert values == {"greeting": "hi", "count": 2, "loud": False}


def test_a_refused_secret_is_not_echoed() -> None:
    document = runbook()
    document["parameters"]["greeting"]["secret"] = True
    with pytest.raises(ValidationError) as refused:
        check_parameters(parse_runbook(document), {"greeting": "Sw0rdfish!"}, prefix="p")
    assert "Sw0rdfish" not in json.dumps(refused.value.to_dict())


def test_the_library_identifies_runbooks_and_skips_clashes_and_broken_files(
    tmp_path: Path,
) -> None:
    (tmp_path / "a.json").write_text(json.dumps(ECHO_CHAIN))
    (tmp_path / "b.yaml").write_text(json.dumps(runbook(version=2)))  # JSON is YAML too
    (tmp_path / "c.json").write_text(json.dumps(ECHO_CHAIN))  # the same name and version
    (tmp_path / "d.yml").write_text("schema_version: 9\nname: x\n")
    (tmp_path / "notes.txt").write_text("ignored")
    library = RunbookLibrary([tmp_path, tmp_path / "missing"])
    library.load()
    assert [(i.runbook.name, i.runbook.version) for i in library.installed()] == [
        ("echo-chain", 1),
        ("echo-chain", 2),
    ]
    assert library.get("echo-chain").runbook.version == 2  # the highest by default
    assert len(library.get("echo-chain", 1).sha256) == 64
    assert sorted(Path(p["path"]).name for p in library.problems) == ["c.json", "d.yml"]
    with pytest.raises(ValidationError) as refused:
        library.get("echo-chain", 7)
    assert refused.value.details["field"] == "version"
