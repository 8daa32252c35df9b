"""`hostagent policy show --offline`: a config file's rules, and what each transport,
token, key and named group may run under them (a table, or --json); without
--offline it asks the running agent (tests/cli/test_policy_show_live.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.cli.command import main
from agent.service.agent import build_registry

CONFIG = """
[[policy.allow]]
name = "ci"
tokens = ["ci"]
operations = ["vm.start", "vm.shutdown"]
resources = ["ci-*"]

[[policy.allow]]
transports = ["spool"]
operations = ["image.*"]

[[policy.allow]]
transports = ["socket"]
groups = ["operators"]
operations = ["vm.info"]

[[http.tokens]]
name = "ci"
sha256 = "{zeros}"
scopes = ["submit"]

[[http.tokens]]
name = "ops"
sha256 = "{zeros}"
scopes = ["admin"]
""".replace("{zeros}", "0" * 64)


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(CONFIG)
    return path


def show(config_file: Path, capsys: pytest.CaptureFixture[str], *flags: str) -> str:
    code = main(["policy", "show", "--config", str(config_file), "--offline", *flags])
    assert code == 0
    return capsys.readouterr().out


def test_policy_show_json_per_transport_token_and_group(
    config_file: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HOSTAGENT_POLICY__ALLOW", raising=False)
    report = json.loads(show(config_file, capsys, "--json"))
    assert [rule["rule"] for rule in report["rules"]] == [f"policy.allow[{n}]" for n in range(3)]
    assert report["rules"][0]["resources"] == ["ci-*"]
    by_who = {
        (entry["transport"], entry["token"], tuple(entry["groups"])): entry
        for entry in report["callers"]
    }
    every = build_registry().operations
    assert sorted(by_who["http", None, ()]["operations"]) == every
    assert by_who["http", None, ()]["named_by"] == []
    ci = by_who["http", "ci", ()]
    assert ci["operations"] == {"vm.shutdown": ["ci-*"], "vm.start": ["ci-*"]}
    assert ci["named_by"] == ["policy.allow[0]"]
    assert sorted(by_who["http", "ops", ()]["operations"]) == every  # no rule names ops
    spool = by_who["spool", None, ()]["operations"]
    assert set(spool) == {op for op in every if op.startswith("image.")}
    assert by_who["socket", None, ("operators",)]["operations"] == {"vm.info": None}


def test_policy_show_table(config_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = show(config_file, capsys)
    assert "policy.allow[0] ci" in out
    assert "http token ci" in out
    assert "vm.start [ci-*]" in out
    assert "every operation (no rule names it)" in out
    assert "socket group operators" in out


def test_policy_show_without_rules_says_everything_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    empty = tmp_path / "empty.toml"
    empty.write_text("")
    assert "every caller may run every operation" in show(empty, capsys)


def test_policy_show_without_an_agent_points_at_offline(
    config_file: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("HOSTAGENT_URL", raising=False)
    state = tmp_path / "state"  # no agent: no socket there
    code = main(["policy", "show", "--config", str(config_file), "--state-dir", str(state)])
    assert code == 69
    assert "--offline" in capsys.readouterr().err
