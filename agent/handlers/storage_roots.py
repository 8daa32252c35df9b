"""Storage pools' directories: which the path policy counts as image roots, and where
storage.pool.define may put one.

A pool's directory is checked as image paths are (agent.policy.paths): from
its image root, never through a symbolic link, '..' or another mount. A pool
below a configured root adds no root of its own (its files are reached
through that root's walk, so a link swapped in for the pool's directory is
not followed); a pool elsewhere, which only an operator defines, counts as a
root only if no component of its path is a symbolic link.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import PurePosixPath
from typing import Any
from xml.etree import ElementTree as ET

import structlog
import trio

from agent.errors import ForbiddenError, HypervisorError
from agent.policy.paths import Policy, open_beneath

log = structlog.get_logger("agent.storage")

POOL_DIRECTORY_MODE = 0o755
_DIRECTORY = os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC


def pool_paths(conn: Any) -> list[str]:
    """Target directories of every defined pool (blocking: inside LibvirtConnection.call)."""
    paths = []
    for pool in conn.listAllStoragePools(0):
        root = ET.fromstring(pool.XMLDesc(0))  # noqa: S314 (from libvirtd)
        if root.get("type") in ("dir", "fs", "netfs") and root.findtext("target/path"):
            paths.append(root.findtext("target/path") or "")
    return paths


def pool_roots(policy: Policy, paths: list[str]) -> tuple[list[str], dict[str, str]]:
    """(the pool directories that count as image roots, the refused ones with why); blocking."""
    configured = [root for root in policy.configured_roots if root != "/"]
    kept, refused = [], {}
    for path in paths:
        clean = os.path.normpath(path)
        if any(clean == root or clean.startswith(root.rstrip("/") + "/") for root in configured):
            continue  # reached through its configured root, link-free
        why = _not_link_free(path)
        if why is None:
            kept.append(clean)
        else:
            refused[path] = why
    return kept, refused


def _not_link_free(path: str) -> str | None:
    """Why `path` may not be a root (a link or a file on the way), or None. Components
    that do not exist (yet) have nothing to follow."""
    parts = PurePosixPath(path).parts
    if not path.startswith("/") or ".." in parts:
        return "not an absolute path without '..'"
    current = "/"
    for part in parts[1:]:
        current = os.path.join(current, part)
        try:
            info = os.lstat(current)
        except FileNotFoundError:
            return None
        if stat.S_ISLNK(info.st_mode):
            return f"{current} is a symbolic link"
        if not stat.S_ISDIR(info.st_mode):
            return f"{current} is not a directory"
    return None


async def refresh_pool_roots(hv: Any, policy: Policy) -> dict[str, Any]:
    """Capability facts and policy: the image roots, with the defined pools' directories."""
    try:
        paths = await hv.call(pool_paths)
    except HypervisorError as exc:
        log.info("policy.pool_roots_unavailable", error=exc.message)
        return {"image_roots": list(policy.roots)}
    kept, refused = await trio.to_thread.run_sync(pool_roots, policy, paths)
    for path, why in refused.items():
        log.warning("policy.pool_root_refused", path=path, reason=why)
    policy.set_pool_roots(kept)
    return {"image_roots": list(policy.roots)}


def check_pool_directory(
    policy: Policy, value: str, *, field: str, missing_ok: bool = False, create: bool = False
) -> str:
    """A dir pool's directory (blocking): strictly below a configured image root (a pool
    cannot widen the roots), reached from it without a symbolic link, '..' or another
    mount anywhere on the way, and a directory. What does not exist yet is made
    (POOL_DIRECTORY_MODE, each part beneath its checked parent) when `create`, passes
    when `missing_ok`, and is refused otherwise."""
    path = policy.check_directory(value, field=field)
    roots = tuple(root for root in policy.configured_roots if root != "/")
    located = policy.locate(path, field=field, roots=roots)

    def refuse(why: str) -> ForbiddenError:
        return ForbiddenError(f"{field}: {path}: {why}", field=field, reason=why)

    try:
        if create:
            # The configured root itself is the operator's; libvirt's build made it too.
            os.makedirs(located.root, mode=POOL_DIRECTORY_MODE, exist_ok=True)
        root_fd = os.open(located.root, _DIRECTORY)
    except FileNotFoundError as exc:
        if missing_ok:
            return path
        raise refuse(f"image root {located.root} does not exist") from exc
    except OSError as exc:
        raise refuse(f"image root {located.root}: {_why(exc)}") from exc
    try:
        parts = located.relative.split("/")
        for depth in range(1, len(parts) + 1):
            walked = "/".join(parts[:depth])
            try:
                try:
                    fd = open_beneath(root_fd, walked, _DIRECTORY)
                except FileNotFoundError:
                    if not create:
                        raise
                    _make_beneath(root_fd, parts[: depth - 1], parts[depth - 1])
                    fd = open_beneath(root_fd, walked, _DIRECTORY)
                os.close(fd)
            except FileNotFoundError as exc:
                if missing_ok:
                    return path
                raise refuse("no such directory (build: true makes it)") from exc
            except OSError as exc:
                raise refuse(_why(exc)) from exc
    finally:
        os.close(root_fd)
    return path


def _make_beneath(root_fd: int, parent: list[str], name: str) -> None:
    parent_fd = open_beneath(root_fd, "/".join(parent), _DIRECTORY) if parent else root_fd
    try:
        # mkdirat: never follows a link at `name` (EEXIST); the next open checks the result.
        os.mkdir(name, POOL_DIRECTORY_MODE, dir_fd=parent_fd)
    except FileExistsError:
        pass  # made meanwhile (a concurrent define): checked by the walk's next open
    finally:
        if parent_fd != root_fd:
            os.close(parent_fd)


def _why(exc: OSError) -> str:
    return {
        errno.ELOOP: "symbolic links are not followed",
        errno.EXDEV: "the path leaves its root (a link or a mount point)",
        errno.ENOTDIR: "a component is not a directory",
    }.get(exc.errno or 0, exc.strerror or "cannot open")
