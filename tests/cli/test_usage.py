"""Usage mistakes are usage errors: exit 2 and one line naming the option, before any
file, store or socket is touched (no agent runs in these tests)."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.cli.command import main
from agent.cli.support import EXIT_USAGE

CASES = [
    (["submit", "--op", "system.echo", "--data", "{bad"], "--data: not valid JSON"),
    (["submit", "--op", "system.echo", "--data", "[1]"], "--data: must be a JSON object"),
    (["submit", "--op", "system.echo", "--data", '{"m": "\\ud800"}'], "--data: holds text"),
    (["submit", "--op", "system.echo\udcff"], "--op: holds text that is not valid UTF-8"),
    (["submit", "--op", "system.echo", "--job-id", "a/b"], "--job-id: 'a/b' is not a job id"),
    (["submit", "/nonexistent/job.json"], "FILE: cannot read /nonexistent/job.json"),
    (["jobs", "--limit", "0"], "--limit: must be 1-1000, not 0"),
    (["jobs", "--limit", "1001"], "--limit: must be 1-1000, not 1001"),
    (["jobs", "--status", "Bogus"], "--status: must be one of Pending, "),
    (["jobs", "--operation", "a b"], "--operation: 'a b' is not an operation name"),
    (["jobs", "--cursor", "zzz"], "--cursor: 'zzz' is not a cursor"),
    (["status", "../etc"], "JOB_ID: '../etc' is not a job id"),
    (["result", ""], "JOB_ID: '' is not a job id"),
    (["cancel", "x%2F"], "JOB_ID: 'x%2F' is not a job id"),
    (["logs", "batch"], "JOB_ID: 'batch' is not a job id"),
    (["follow", "x", "--wait-timeout", "-5"], "--wait-timeout: must be 0 or more seconds"),
    (["validate", "/nonexistent/job.json"], "FILE: cannot read /nonexistent/job.json"),
    (["vm", "info", "../x"], "NAME: '../x' is not a name"),
    (["volume", "info", "..", "disk"], "POOL: '..' is not a name"),
]


@pytest.mark.parametrize(("argv", "message"), CASES)
def test_a_usage_mistake_exits_2_with_one_line_naming_the_option(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    where = ["--state-dir", str(tmp_path / "state"), "--spool-dir", str(tmp_path / "spool")]
    command, *rest = argv
    if command in {"vm", "volume"}:
        where = ["--socket", str(tmp_path / "no.sock")]
    assert main([command, *rest, *where]) == EXIT_USAGE
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith(f"hostagent: {message}"), err
    assert err.count("\n") == 1, err  # one line
    assert not (tmp_path / "state").exists()  # nothing was touched
    assert not (tmp_path / "spool").exists()


@pytest.mark.slow
def test_a_bad_job_file_is_a_usage_error_naming_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for name, content, message in (
        ("broken.json", b"{", "not valid JSON"),
        ("list.json", b"[]", "must be a JSON object, not list"),
        ("latin1.json", b'{"m": "\xe9"}', "is not UTF-8 text"),
    ):
        path = tmp_path / name
        path.write_bytes(content)
        for command in ("submit", "validate"):
            assert main([command, str(path), "--state-dir", str(tmp_path / "s")]) == EXIT_USAGE
            err = capsys.readouterr().err
            assert err.startswith("hostagent: FILE"), err
            assert message in err
            assert str(path) in err
