"""The fixed libguestfs appliance the package builds at install (`hostagent appliance`),
and how the agent finds it (LIBGUESTFS_PATH, as the unit sets it)."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.cli.command import main
from agent.handlers import _guestfs_host
from agent.handlers._guestfs_host import FIXED_MARK, libguestfs_problem, prebuilt_appliance


def fake_appliance(where: Path, *, complete: bool = True) -> Path:
    where.mkdir(parents=True)
    names = ("kernel", "initrd", "root", FIXED_MARK) if complete else ("kernel",)
    for name in names:
        (where / name).write_bytes(b"x")
    return where


def test_the_unit_s_appliance_is_used_only_when_complete(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    complete = fake_appliance(tmp_path / "ok")
    monkeypatch.setenv("LIBGUESTFS_PATH", str(complete))
    assert prebuilt_appliance() == complete
    monkeypatch.setenv("LIBGUESTFS_PATH", str(fake_appliance(tmp_path / "half", complete=False)))
    assert prebuilt_appliance() is None
    monkeypatch.delenv("LIBGUESTFS_PATH")
    assert prebuilt_appliance() is None


def test_health_says_how_to_build_a_missing_appliance_under_the_unit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if _guestfs_host._tools_problem() is not None:
        pytest.skip("libguestfs is not installed here")
    # As under the unit: no prebuilt appliance, and the kernel's modules out of reach.
    monkeypatch.setenv("LIBGUESTFS_PATH", str(tmp_path / "appliance"))
    monkeypatch.setattr(_guestfs_host, "MODULES", tmp_path / "no-modules")
    problem = libguestfs_problem()
    assert problem is not None
    assert f"no prebuilt appliance in {tmp_path / 'appliance'}" in problem
    assert "hostagent appliance" in problem
    # With the appliance there, the modules are not needed.
    fake_appliance(tmp_path / "appliance")
    assert libguestfs_problem() is None


@pytest.mark.slow
def test_hostagent_appliance_builds_a_fixed_appliance(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if _guestfs_host._tools_problem() or _guestfs_host._kernel_problem():
        pytest.skip("libguestfs or a kernel for its appliance is missing here")
    output = tmp_path / "appliance"
    output.mkdir()
    (output / "stale").write_text("from an older build")
    assert main(["appliance", str(output)]) == 0
    assert capsys.readouterr().out.strip() == str(output)
    assert {path.name for path in output.iterdir()} == {"kernel", "initrd", "root", FIXED_MARK}
    assert (output / "kernel").stat().st_size > 1_000_000
    assert oct(output.stat().st_mode & 0o777) == "0o755"
    assert list(tmp_path.iterdir()) == [output]  # no staging directory left behind
