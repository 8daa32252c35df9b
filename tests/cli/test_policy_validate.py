"""`hostagent config check` and `hostagent validate` check the allowlist rules offline:
a bad rule is refused (exit 2) naming its field as policy.allow[2].transports[0], a
rule that loads but cannot do what it says is a warning."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.cli.command import main
from agent.cli.support import EXIT_OK, EXIT_USAGE

GOOD = """
[[policy.allow]]
transports = ["spool"]
operations = ["image.*"]
"""

BAD = """
[[policy.allow]]
operations = ["vm.*"]

[[policy.allow]]
transports = ["http"]
operations = ["vm.info"]

[[policy.allow]]
transports = ["spool", "ftp"]
operations = []
token = ["ci"]
"""

JOB = {
    "version": "1.0",
    "kind": "VMOperation",
    "operation": "system.echo",
    "payload": {"type": "system.echo.v1", "data": {}},
}


@pytest.fixture(autouse=True)
def no_rules_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HOSTAGENT_POLICY__ALLOW", raising=False)


def write(tmp_path: Path, text: str, name: str = "agent.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def check(path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(["config", "check", str(path)])
    out, err = capsys.readouterr()
    return code, out, err


def problems(err: str) -> list[dict[str, str]]:
    details = json.loads(err.splitlines()[1])
    found: list[dict[str, str]] = details["problems"]
    return found


def test_config_check_names_every_bad_rule_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = check(write(tmp_path, BAD), capsys)
    assert code == EXIT_USAGE
    assert err.startswith("hostagent: config: policy.allow[2].transports[1]: unknown transport")
    assert problems(err) == [
        {
            "field": "policy.allow[2].transports[1]",
            "reason": "unknown transport 'ftp': expected one of spool, http, socket, kafka",
        },
        {
            "field": "policy.allow[2].operations",
            "reason": "empty: a rule must name at least one operation (a glob such as 'vm.*')",
        },
        {
            "field": "policy.allow[2].token",
            "reason": "unknown key (transports, tokens, groups, operations, resources, name)",
        },
    ]


@pytest.mark.parametrize(
    ("table", "field"),
    [
        ('transports = ["kafka", "smtp"]\noperations = ["vm.*"]', "policy.allow[0].transports[1]"),
        ('transports = ["spool"]', "policy.allow[0].operations"),
        ('operations = ["vm.*"]\nresources = []', "policy.allow[0].resources"),
        ('operations = ["vm.*"]\ngroups = "wheel"', "policy.allow[0].groups"),
    ],
)
def test_config_check_refuses_a_bad_rule(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], table: str, field: str
) -> None:
    code, out, err = check(write(tmp_path, f"[[policy.allow]]\n{table}\n"), capsys)
    assert code == EXIT_USAGE
    assert out == ""
    assert problems(err)[0]["field"] == field


def test_rules_from_the_environment_are_named_the_same_way(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    rules = [{"operations": ["vm.*"]}, {"transports": ["ftp"], "operations": ["vm.*"]}]
    monkeypatch.setenv("HOSTAGENT_POLICY__ALLOW", json.dumps(rules))
    code, _, err = check(write(tmp_path, GOOD), capsys)
    assert code == EXIT_USAGE
    details = json.loads(err.splitlines()[1])
    assert details["source"] == "HOSTAGENT_POLICY__ALLOW"
    assert details["field"] == "policy.allow[1].transports[0]"


def test_a_glob_matching_no_operation_is_a_warning_not_an_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = '[[policy.allow]]\noperations = ["vm.info", "vm.strat", "nosuch.*"]\n'
    code, out, err = check(write(tmp_path, text), capsys)
    assert code == EXIT_OK
    assert out.strip().endswith(": ok (2 warnings)")
    assert err.splitlines() == [
        "hostagent: warning: policy.allow[0].operations[1]: "
        "'vm.strat' matches no operation this agent registers",
        "hostagent: warning: policy.allow[0].operations[2]: "
        "'nosuch.*' matches no operation this agent registers",
    ]


def test_a_token_no_config_entry_has_and_resources_on_nameless_operations_warn(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = (
        '[[policy.allow]]\ntokens = ["ops", "ghost"]\noperations = ["system.*"]\n'
        'resources = ["x*"]\n[[http.tokens]]\nname = "ops"\nsha256 = "' + "0" * 64 + '"\n'
        'scopes = ["submit"]\n'
    )
    code, _, err = check(write(tmp_path, text), capsys)
    assert code == EXIT_OK
    assert "policy.allow[0].tokens[1]: 'ghost' names no [[http.tokens]] entry" in err
    assert "policy.allow[0].tokens[0]" not in err
    assert "policy.allow[0].resources: the operations it allows name no resource" in err


def test_good_rules_pass_without_warnings(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = check(write(tmp_path, GOOD), capsys)
    assert (code, err) == (EXIT_OK, "")
    assert out.strip().endswith(": ok")


def test_validate_refuses_a_job_file_under_bad_rules_and_warns_of_dead_globs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    job = write(tmp_path, json.dumps(JOB), "job.json")
    bad = write(tmp_path, BAD)
    assert main(["validate", "--config", str(bad), str(job)]) == EXIT_USAGE
    assert "policy.allow[2].transports[1]" in capsys.readouterr().err

    dead = write(tmp_path, '[[policy.allow]]\noperations = ["vm.*", "nosuch.*"]\n', "dead.toml")
    assert main(["validate", "--config", str(dead), str(job)]) == EXIT_OK
    out, err = capsys.readouterr()
    assert "valid system.echo job" in out
    assert "policy.allow[0].operations[1]: 'nosuch.*' matches no operation" in err
