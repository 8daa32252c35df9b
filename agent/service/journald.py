"""Log lines journald files under the right priority.

journald reads a `<N>` syslog prefix at the start of each stderr line of a
service (SyslogLevelPrefix=, on by default) and stores N as the line's
PRIORITY, so `journalctl -u hostagent -p warning` works. The prefix is added
only when stderr is the journal (JOURNAL_STREAM names our stderr), so a
terminal or a pipe gets the bare line.
"""

from __future__ import annotations

import os
import sys
from typing import Any, TextIO

# structlog method name -> syslog priority.
PRIORITIES = {
    "debug": 7,
    "info": 6,
    "msg": 6,
    "warning": 4,
    "warn": 4,
    "error": 3,
    "exception": 3,
    "critical": 2,
    "fatal": 2,
}


def stderr_is_journal(stream: TextIO | None = None, environ: dict[str, str] | None = None) -> bool:
    """Whether `stream` is the journal stream systemd connected (JOURNAL_STREAM=dev:inode)."""
    value = (os.environ if environ is None else environ).get("JOURNAL_STREAM", "")
    device, _, inode = value.partition(":")
    if not (device.isdigit() and inode.isdigit()):
        return False
    try:
        stat = os.fstat((stream or sys.stderr).fileno())
    except (OSError, ValueError):
        return False
    return (stat.st_dev, stat.st_ino) == (int(device), int(inode))


class PrefixedLogger:
    """A print logger that puts each line's syslog priority in front of it."""

    def __init__(self, file: TextIO, *, prefix: bool) -> None:
        self._file = file
        self._prefix = prefix

    def _write(self, priority: int, message: str) -> None:
        line = f"<{priority}>{message}" if self._prefix else message
        self._file.write(line + "\n")
        self._file.flush()

    def __getattr__(self, name: str) -> Any:
        priority = PRIORITIES.get(name)
        if priority is None:
            raise AttributeError(name)
        return lambda message: self._write(priority, message)


class PrefixedLoggerFactory:
    def __init__(self, file: TextIO | None = None, *, prefix: bool | None = None) -> None:
        self._file = file or sys.stderr
        self._prefix = stderr_is_journal(self._file) if prefix is None else prefix

    def __call__(self, *args: Any) -> PrefixedLogger:
        return PrefixedLogger(self._file, prefix=self._prefix)
