"""Issue 20: no job id becomes a path. Artifact folders are derived from a hash of
the id; retention removes only derived folders beneath the root, never through a link."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agent.core.artifacts import create_artifact, folder_name, remove_folders
from agent.store.retention import remove_artifacts


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    folder = tmp_path / "outside"
    folder.mkdir()
    (folder / "precious").write_text("keep me")
    return folder


@pytest.mark.parametrize("job_id", ["/some/dir", "../../etc", "a/b", ".", "..", "x\ud800"])
def test_an_artifact_of_any_id_lands_in_a_derived_folder_beneath_the_root(
    tmp_path: Path, job_id: str
) -> None:
    root = tmp_path / "state" / "artifacts"
    fd, path = create_artifact(root, job_id, "screen.png")
    with os.fdopen(fd, "wb") as out:
        out.write(b"png")
    assert path == root / folder_name(job_id) / "screen.png"
    assert path.read_bytes() == b"png"
    assert path.stat().st_mode & 0o777 == 0o640
    assert [entry.name for entry in root.iterdir()] == [folder_name(job_id)]
    remove_artifacts(root, [job_id])
    assert list(root.iterdir()) == []


def test_retention_removes_only_derived_folders_and_follows_no_link(
    tmp_path: Path, outside: Path
) -> None:
    root = tmp_path / "artifacts"
    fd, _ = create_artifact(root, "job-1", "screen.png")
    os.close(fd)
    # A link inside a job's folder is removed, not followed.
    (root / folder_name("job-1") / "escape").symlink_to(outside)
    # A folder in another job's place that is a link to elsewhere: refused, left alone.
    (root / folder_name("job-2")).symlink_to(outside)
    # A folder named as the id itself (how ids used to become paths): not derived, kept.
    (root / "job-3").mkdir()
    removed = remove_folders(root, ["job-1", "job-2", "job-3", "/some/dir", str(outside)])
    assert removed == 1
    assert sorted(entry.name for entry in root.iterdir()) == sorted([folder_name("job-2"), "job-3"])
    assert (outside / "precious").read_text() == "keep me"


def test_a_root_that_is_a_link_is_refused(tmp_path: Path, outside: Path) -> None:
    (outside / folder_name("job-1")).mkdir()
    root = tmp_path / "artifacts"
    root.symlink_to(outside)
    assert remove_folders(root, ["job-1"]) == 0
    assert (outside / folder_name("job-1")).is_dir()
    with pytest.raises(OSError):  # noqa: PT011 (ELOOP or ENOTDIR: the link is not followed)
        create_artifact(root, "job-1", "screen.png")
    assert sorted(entry.name for entry in outside.iterdir()) == [folder_name("job-1"), "precious"]


def test_a_link_planted_in_a_jobs_folder_place_is_not_written_through(
    tmp_path: Path, outside: Path
) -> None:
    root = tmp_path / "artifacts"
    root.mkdir()
    (root / folder_name("job-1")).symlink_to(outside)
    with pytest.raises(OSError):  # noqa: PT011 (ELOOP: the walk follows no link)
        create_artifact(root, "job-1", "precious")
    assert (outside / "precious").read_text() == "keep me"


def test_an_artifact_file_name_is_one_plain_component(tmp_path: Path) -> None:
    for name in ("../x", ".hidden", "a/b"):
        with pytest.raises(ValueError, match="one plain component"):
            create_artifact(tmp_path, "job-1", name)
