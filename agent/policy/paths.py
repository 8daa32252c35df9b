"""The path policy: which files and directories a job may name.

Every handler that takes a path goes through one `Policy`: at intake (the
handler's `admit` hook, so a refusal is a 403 or a quarantine, never a job
that fails later) and again when the job runs (acting on what was verified).

The rules: a path must lie under a configured image root or the directory
of a defined storage pool; it is resolved from that root without following
any symbolic link, without '..' and without crossing a mount point
(openat2 RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS|RESOLVE_NO_XDEV, or a walk with
O_NOFOLLOW at each component where openat2 is missing); inputs must be
regular files with one link; the state and spool directories are never
reachable, whatever the roots say.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import TYPE_CHECKING

from agent.errors import ForbiddenError
from agent.policy.allowlist import Allowlist, Caller

if TYPE_CHECKING:
    from agent.config import Config

# openat2(2): syscall 437 on x86_64 and aarch64 alike.
_SYS_OPENAT2 = 437
_RESOLVE_NO_XDEV = 0x01
_RESOLVE_NO_MAGICLINKS = 0x02
_RESOLVE_NO_SYMLINKS = 0x04
_RESOLVE_BENEATH = 0x08
_RESOLVE = _RESOLVE_BENEATH | _RESOLVE_NO_SYMLINKS | _RESOLVE_NO_MAGICLINKS | _RESOLVE_NO_XDEV
_READ_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
# New images are readable by the group (libvirt's qemu user is in it), never by others.
NEW_FILE_MODE = 0o640


class _OpenHow(ctypes.Structure):
    _fields_ = (
        ("flags", ctypes.c_uint64),
        ("mode", ctypes.c_uint64),
        ("resolve", ctypes.c_uint64),
    )


_libc = ctypes.CDLL(None, use_errno=True)
_openat2_works: bool | None = None


def _openat2(dir_fd: int, relative: str, flags: int, mode: int = 0) -> int:
    how = _OpenHow(flags, mode, _RESOLVE)
    fd = int(
        _libc.syscall(
            _SYS_OPENAT2,
            ctypes.c_int(dir_fd),
            ctypes.c_char_p(os.fsencode(relative)),
            ctypes.byref(how),
            ctypes.c_size_t(ctypes.sizeof(how)),
        )
    )
    if fd < 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), relative)
    return fd


def _mount_id(fd: int) -> str:
    """The mount an open file is on (the kernel's mnt_id): unlike st_dev it is the same
    for every file of one mount, overlayfs included, and differs across bind mounts."""
    with open(f"/proc/self/fdinfo/{fd}") as info:
        for line in info:
            if line.startswith("mnt_id:"):
                return line.split(":", 1)[1].strip()
    raise OSError(errno.EXDEV, "the kernel does not say which mount a file is on")


def _walk_nofollow(dir_fd: int, relative: str, flags: int, mode: int = 0) -> int:
    """openat2's guarantees by hand (where a seccomp filter or an old kernel refuses
    it): O_NOFOLLOW at every component, and every component on the root's mount."""
    root_mount = _mount_id(dir_fd)
    parts = relative.split("/")
    current = os.dup(dir_fd)
    try:
        for part in parts[:-1]:
            step = os.open(part, os.O_PATH | os.O_NOFOLLOW | os.O_DIRECTORY, dir_fd=current)
            os.close(current)
            current = step
            if _mount_id(current) != root_mount:
                raise OSError(errno.EXDEV, "crosses a mount point", relative)
        fd = os.open(parts[-1], flags | os.O_NOFOLLOW, mode, dir_fd=current)
        if _mount_id(fd) != root_mount:
            os.close(fd)
            raise OSError(errno.EXDEV, "crosses a mount point", relative)
        return fd
    finally:
        os.close(current)


def open_beneath(dir_fd: int, relative: str, flags: int, mode: int = 0) -> int:
    """Open `relative` under `dir_fd`, never leaving it and never following a link."""
    global _openat2_works  # noqa: PLW0603 (probed once per process)
    if _openat2_works is not False:
        try:
            return _openat2(dir_fd, relative, flags, mode)
        except OSError as exc:
            if exc.errno != errno.ENOSYS:
                raise
            _openat2_works = False
    return _walk_nofollow(dir_fd, relative, flags, mode)


def _reason(exc: OSError) -> str:
    return {
        errno.ELOOP: "symbolic links are not followed",
        errno.EXDEV: "the path leaves its root (a link or a mount point)",
        errno.ENOENT: "no such file",
        errno.ENOTDIR: "a component is not a directory",
        errno.EACCES: "permission denied",
    }.get(exc.errno or 0, exc.strerror or "cannot open")


@dataclass(frozen=True)
class Located:
    """A path the policy accepted: its root and where it lies below it."""

    path: str
    root: str
    relative: str


class Policy:
    """Image roots, forbidden directories and what callers may do (see module doc)."""

    def __init__(self, config: Config) -> None:
        self.pool_roots: tuple[str, ...] = ()
        self.reload(config)

    def reload(self, config: Config) -> None:
        settings = config.policy
        self.configured_roots = tuple(_clean(str(p)) for p in settings.image_roots)
        self.include_pools = settings.include_pool_paths
        self.allow_passthrough = settings.allow_passthrough
        # Which operations each caller may run (checked at intake; new rules, new jobs).
        self.allowlist = Allowlist.from_config(settings)
        self.forbidden = tuple(
            _clean(os.path.realpath(p)) for p in (config.state_dir, config.spool_dir)
        )

    def _root_inside(self, forbidden: str, path: str) -> bool:
        """True when `path` lies under a configured root strictly inside `forbidden`."""
        return any(
            _under(root, forbidden) and (_under(path, root) or path == root)
            for root in self.configured_roots
        )

    def set_pool_roots(self, paths: Iterable[str]) -> None:
        """The target directories of the defined storage pools (refreshed from libvirt)."""
        self.pool_roots = tuple(sorted({_clean(p) for p in paths if p and p.startswith("/")}))

    @property
    def roots(self) -> tuple[str, ...]:
        extra = self.pool_roots if self.include_pools else ()
        return tuple(r for r in dict.fromkeys((*self.configured_roots, *extra)) if r != "/")

    # -- locating --

    def locate(self, value: str, *, field: str, roots: tuple[str, ...] | None = None) -> Located:
        """The root `value` lies under; ForbiddenError when none, or when it is off limits."""
        if not value.startswith("/"):
            raise ForbiddenError(
                f"{field}: not an absolute path", field=field, reason="not absolute"
            )
        parts = PurePosixPath(value).parts
        if ".." in parts or "\0" in value:
            raise ForbiddenError(
                f"{field}: '..' is not allowed in paths", field=field, reason="'..' in the path"
            )
        path = _clean(value)
        # An image root the operator configured inside the state directory (the
        # service's /var/lib/hostagent/images) is reachable; nothing else there is:
        # files are opened beneath their root, so the agent's own files stay out.
        declared = any(_under(path, root) or path == root for root in self.configured_roots)
        for forbidden in self.forbidden:
            inside = _under(path, forbidden) or path == forbidden
            if inside and not (declared and self._root_inside(forbidden, path)):
                raise ForbiddenError(
                    f"{field}: {path} is inside the agent's own state or spool directory",
                    field=field,
                    reason="the agent's state and spool directories are never reachable",
                )
        allowed = self.roots if roots is None else roots
        for root in sorted(allowed, key=len, reverse=True):
            if path == root or _under(path, root):
                return Located(path, root, path[len(root) :].lstrip("/"))
        raise ForbiddenError(
            f"{field}: {path} is outside the image roots",
            field=field,
            reason=f"only paths under {', '.join(allowed) or '(no roots configured)'}",
        )

    @contextlib.contextmanager
    def _root_fd(self, located: Located, field: str) -> Iterator[int]:
        try:
            fd = os.open(located.root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise ForbiddenError(
                f"{field}: image root {located.root} is unusable: {_reason(exc)}",
                field=field,
                reason=_reason(exc),
            ) from exc
        try:
            yield fd
        finally:
            os.close(fd)

    # -- files that must exist --

    def open_input(self, value: str, *, field: str) -> int:
        """A read-only descriptor of an existing image file (regular, one link)."""
        located = self.locate(value, field=field)
        with self._root_fd(located, field) as root_fd:
            try:
                fd = open_beneath(root_fd, located.relative, _READ_FLAGS)
            except OSError as exc:
                raise ForbiddenError(
                    f"{field}: {located.path}: {_reason(exc)}", field=field, reason=_reason(exc)
                ) from exc
        try:
            _check_regular(os.fstat(fd), field, located.path)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def check_input(self, value: str, *, field: str) -> None:
        os.close(self.open_input(value, field=field))

    # -- files to be written --

    def check_output(self, value: str, *, field: str, overwrite: bool = False) -> Located:
        """A path a job may create: its directory under a root, nothing there unless
        `overwrite` (and then only a regular image file)."""
        located = self.locate(value, field=field)
        if not located.relative:
            raise ForbiddenError(f"{field}: names a root", field=field, reason="not a file path")
        parent, _, name = located.relative.rpartition("/")
        with self._root_fd(located, field) as root_fd, self._directory(root_fd, parent, field) as d:
            try:
                info = os.stat(name, dir_fd=d, follow_symlinks=False)
            except FileNotFoundError:
                return located
            if not overwrite:
                raise ForbiddenError(
                    f"{field}: {located.path} already exists",
                    field=field,
                    reason="exists (pass overwrite: true to replace it)",
                )
            _check_regular(info, field, located.path)
        return located

    def create_output(self, value: str, *, field: str) -> str:
        """Create an empty file at a checked output path (O_EXCL, NEW_FILE_MODE)."""
        path, fd = self.open_output(value, field=field)
        os.close(fd)
        return path

    def open_output(self, value: str, *, field: str) -> tuple[str, int]:
        """Create an empty file at a checked output path (O_EXCL|O_NOFOLLOW, NEW_FILE_MODE)
        in the directory reached by the walk; its path and a read-write descriptor, which
        is what the tools are given (never the name to open again)."""
        located = self.check_output(value, field=field)
        parent, _, name = located.relative.rpartition("/")
        with self._root_fd(located, field) as root_fd, self._directory(root_fd, parent, field) as d:
            try:
                fd = os.open(
                    name,
                    os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                    0,
                    dir_fd=d,
                )
            except FileExistsError as exc:
                raise ForbiddenError(
                    f"{field}: {located.path} already exists", field=field, reason="exists"
                ) from exc
            os.fchmod(fd, NEW_FILE_MODE)  # whatever the umask
        return located.path, fd

    def remove_output(self, value: str, *, field: str) -> None:
        """Unlink a file the agent made (a partial output), in the directory reached by
        the walk: a link swapped into the path removes nothing elsewhere."""
        located = self.locate(value, field=field)
        parent, _, name = located.relative.rpartition("/")
        with (
            self._root_fd(located, field) as root_fd,
            self._directory(root_fd, parent, field) as d,
            contextlib.suppress(FileNotFoundError),
        ):
            os.unlink(name, dir_fd=d)

    def publish_output(self, partial: str, value: str, *, field: str, overwrite: bool) -> None:
        """Rename a finished partial output onto its checked name, within one directory
        reached by the walk (renameat: no name outside the root is ever followed)."""
        located = self.check_output(value, field=field, overwrite=overwrite)
        parent, _, name = located.relative.rpartition("/")
        source_dir, _, source = self.locate(partial, field=field).relative.rpartition("/")
        if source_dir != parent:
            raise ForbiddenError(
                f"{field}: {partial} is not beside {located.path}", field=field, reason="internal"
            )
        with self._root_fd(located, field) as root_fd, self._directory(root_fd, parent, field) as d:
            os.rename(source, name, src_dir_fd=d, dst_dir_fd=d)

    def check_directory(self, value: str, *, field: str) -> str:
        """A directory (existing or to be made) strictly below a configured root;
        pools' own directories do not count, so a pool cannot widen the roots."""
        roots = tuple(r for r in self.configured_roots if r != "/")
        located = self.locate(value, field=field, roots=roots)
        if not located.relative:
            raise ForbiddenError(
                f"{field}: {located.path} is an image root itself",
                field=field,
                reason="a pool must lie below an image root",
            )
        return located.path

    @contextlib.contextmanager
    def _directory(self, root_fd: int, relative: str, field: str) -> Iterator[int]:
        if not relative:
            yield root_fd
            return
        try:
            fd = open_beneath(root_fd, relative, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise ForbiddenError(
                f"{field}: directory {relative}: {_reason(exc)}", field=field, reason=_reason(exc)
            ) from exc
        try:
            yield fd
        finally:
            os.close(fd)


@dataclass(frozen=True)
class Admission:
    """What a handler's `admit` hook checks a payload against: the policy and the caller."""

    policy: Policy
    # The caller holds `admin` (HTTP token); spool files are never privileged.
    privileged: bool = False
    # Who hands the job in (None: not said), for checks of what it names in turn
    # (a runbook's steps) against `policy.allowlist`.
    caller: Caller | None = None


def _check_regular(info: os.stat_result, field: str, path: str) -> None:
    if not stat.S_ISREG(info.st_mode):
        raise ForbiddenError(
            f"{field}: {path} is not a regular file",
            field=field,
            reason="only regular files (no devices, FIFOs, sockets or directories)",
        )
    if info.st_nlink != 1:
        raise ForbiddenError(
            f"{field}: {path} has {info.st_nlink} links",
            field=field,
            reason="hard-linked files are refused",
        )


def _clean(path: str) -> str:
    return os.path.normpath(path) if path.startswith("/") else path


def _under(path: str, root: str) -> bool:
    return path.startswith(root.rstrip("/") + "/")
