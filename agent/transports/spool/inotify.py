"""Linux inotify read directly on trio's readiness, so an idle spool sleeps.

watchfiles' Rust notifier wakes every `step` ms to keep its latency low (about
a thousand wake-ups a second at the 1 ms step the spool needed); here the
process sleeps in epoll until the kernel has an event, and the event is read
within microseconds of the rename.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import trio

# From <sys/inotify.h>.
IN_CLOSE_WRITE = 0x00000008
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000
IN_ONLYDIR = 0x01000000
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC

_HEADER = struct.Struct("iIII")  # wd, mask, cookie, len
# Room for many events per read: a burst of drops is taken in few system calls.
_READ_BYTES = 256 * 1024

_libc = ctypes.CDLL(None, use_errno=True)


@dataclass(frozen=True)
class Change:
    """One kernel event: the watched directory, the entry's name, what happened."""

    directory: Path
    name: str
    mask: int

    @property
    def renamed_in(self) -> bool:
        """The entry arrived whole, by a rename (the Maildir way)."""
        return bool(self.mask & IN_MOVED_TO)


class Overflow(Exception):  # noqa: N818 (a condition, not an error of the caller)
    """The kernel dropped events (its queue overflowed, or a watch went away): rescan."""


class Inotify:
    """An inotify instance watching a few directories; `read()` waits for changes."""

    def __init__(self) -> None:
        fd = _libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            code = ctypes.get_errno()
            raise OSError(code, f"inotify_init1: {os.strerror(code)}")
        self.fd: int = fd
        self._directories: dict[int, Path] = {}

    def watch(self, directory: Path, mask: int) -> None:
        """Report `mask` events of entries in `directory` from now on."""
        wd = _libc.inotify_add_watch(self.fd, os.fsencode(directory), mask | IN_ONLYDIR)
        if wd < 0:
            code = ctypes.get_errno()
            raise OSError(code, f"inotify_add_watch: {os.strerror(code)}", str(directory))
        self._directories[wd] = directory

    async def read(self) -> list[Change]:
        """The next changes, waiting (asleep) until there are some; raises Overflow."""
        while True:
            try:
                data = os.read(self.fd, _READ_BYTES)
            except BlockingIOError:
                await trio.lowlevel.wait_readable(self.fd)
                continue
            except OSError as exc:  # pragma: no cover (EINTR is retried by Python)
                if exc.errno == errno.EINTR:
                    continue
                raise
            await trio.lowlevel.checkpoint()
            return self.parse(data)

    def parse(self, data: bytes) -> list[Change]:
        """Decode a buffer of kernel events (raises Overflow when events were lost)."""
        changes: list[Change] = []
        lost = False
        offset = 0
        while offset < len(data):
            wd, mask, _cookie, length = _HEADER.unpack_from(data, offset)
            offset += _HEADER.size
            raw = data[offset : offset + length].rstrip(b"\0")
            offset += length
            if mask & (IN_Q_OVERFLOW | IN_IGNORED):
                lost = True
                continue
            directory = self._directories.get(wd)
            # Directories are reported too: the claimer quarantines them with the reason.
            if directory is None or not raw:
                continue
            # surrogateescape: a name that is not UTF-8 reaches the claimer, which quarantines it.
            changes.append(Change(directory, os.fsdecode(raw), mask))
        if lost:
            raise Overflow
        return changes

    def close(self) -> None:
        if self.fd >= 0:
            # Wake a task blocked in wait_readable on it before the fd goes away.
            with contextlib.suppress(RuntimeError):  # outside trio: nobody can be waiting
                trio.lowlevel.notify_closing(self.fd)
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> Inotify:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
