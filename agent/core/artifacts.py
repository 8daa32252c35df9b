"""A job's artifact folder: named from a hash of the job id, never joined from it.

Artifacts live in `state_dir/artifacts/<folder_name(job_id)>/`. A job id comes
from a transport (a document, a Kafka key, a header); whatever it holds, it is
never a path component here, so no id can make the folder absolute or climb out
of the root. Files are created and folders removed through descriptors opened
beneath the root with the path policy's walk (no symbolic link, no '..', no
other mount): retention removes only folders it derives the same way, and
nothing outside the root. Blocking: call through trio.to_thread.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
from collections.abc import Iterable
from pathlib import Path

import structlog

from agent.policy.paths import open_beneath

log = structlog.get_logger("agent.core.artifacts")

ARTIFACTS = "artifacts"  # the root's name in the state directory
FOLDER_MODE = 0o750
# Owner and group only, whatever the umask (a screen may show secrets).
FILE_MODE = 0o640
_ROOT_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def folder_name(job_id: str) -> str:
    """The job's folder name: 32 hex digits of the id's SHA-256 (surrogates included)."""
    return hashlib.sha256(job_id.encode(errors="surrogatepass")).hexdigest()[:32]


def create_artifact(root: Path, job_id: str, filename: str) -> tuple[int, Path]:
    """Create (or truncate) `filename` in the job's folder, making the folder as
    needed: an open descriptor for writing and the file's path. `filename` is the
    handler's own constant, never input."""
    if "/" in filename or filename.startswith("."):
        raise ValueError(f"an artifact's file name is one plain component, not {filename!r}")
    root.mkdir(mode=FOLDER_MODE, parents=True, exist_ok=True)
    root_fd = os.open(root, _ROOT_FLAGS)
    try:
        name = folder_name(job_id)
        with contextlib.suppress(FileExistsError):
            os.mkdir(name, FOLDER_MODE, dir_fd=root_fd)
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOCTTY
        fd = open_beneath(root_fd, f"{name}/{filename}", flags, FILE_MODE)
    finally:
        os.close(root_fd)
    try:
        os.fchmod(fd, FILE_MODE)
    except BaseException:
        os.close(fd)
        raise
    return fd, root / name / filename


def remove_folders(root: Path, job_ids: Iterable[str]) -> int:
    """Remove the artifact folders of `job_ids` (pruned jobs); how many went.

    Each folder is derived from its id and confirmed a real directory beneath
    the root before anything is removed; its contents go through descriptors
    (rmtree's fd walk), so a link inside is removed, never followed. Errors
    are logged and skipped: retention carries on."""
    try:
        root_fd = os.open(root, _ROOT_FLAGS)
    except FileNotFoundError:
        return 0  # no job made an artifact yet
    except OSError as exc:  # a link or a file in the root's place: nothing to remove
        log.warning("artifacts.root_refused", root=str(root), error=str(exc))
        return 0
    removed = 0
    try:
        for job_id in job_ids:
            name = folder_name(job_id)
            try:
                os.close(open_beneath(root_fd, name, os.O_RDONLY | os.O_DIRECTORY))
            except FileNotFoundError:
                continue
            except OSError as exc:
                log.warning("artifacts.not_removed", job_id=job_id, folder=name, error=str(exc))
                continue
            shutil.rmtree(name, dir_fd=root_fd, onerror=_report)
            removed += 1
    finally:
        os.close(root_fd)
    return removed


def _report(function: object, path: str, info: object) -> None:
    log.warning("artifacts.remove_failed", path=path, error=str(info))
