"""Plays systemd for tests: a notify socket, and the real daemon as a subprocess."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Notification:
    at: float  # seconds since the agent process was started
    fields: dict[str, str]

    @property
    def text(self) -> str:
        return "\n".join(f"{key}={value}" for key, value in self.fields.items())


@dataclass
class Service:
    """One agent process under a fake service manager."""

    tmp_path: Path
    environment: dict[str, str] = field(default_factory=dict)
    watchdog_usec: int | None = None
    process: subprocess.Popen[bytes] | None = None
    notifications: list[Notification] = field(default_factory=list)
    started_at: float = 0.0

    def __post_init__(self) -> None:
        self.state_dir = self.tmp_path / "state"
        self.spool_dir = self.tmp_path / "spool"
        self.socket_path = self.tmp_path / "notify.sock"
        self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.socket.bind(str(self.socket_path))
        self.runs = 0

    def start(self) -> None:
        self.runs += 1
        self.log_path = self.tmp_path / f"agent-{self.runs}.log"
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("HOSTAGENT_")},
            "NOTIFY_SOCKET": str(self.socket_path),
            **self.environment,
        }
        if self.watchdog_usec is not None:
            env["WATCHDOG_USEC"] = str(self.watchdog_usec)
        self.notifications = []
        self.started_at = time.monotonic()
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "agent",
                    "run",
                    "--state-dir",
                    str(self.state_dir),
                    "--spool-dir",
                    str(self.spool_dir),
                    # READY=1 also waits for this listener (an ephemeral port).
                    "--http-bind",
                    "127.0.0.1:0",
                    "--insecure-no-auth",
                    "--libvirt-uri",
                    "test:///default",
                ],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )

    def _arrivals(self, seconds: float) -> Iterator[Notification]:
        """Notifications as they arrive, for `seconds`; each is also recorded."""
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            self.socket.settimeout(left)
            try:
                data = self.socket.recv(4096)
            except TimeoutError:
                return
            yield self._record(data)

    def receive(self, seconds: float) -> list[Notification]:
        """Every notification arriving within `seconds`."""
        return list(self._arrivals(seconds))

    def expect(self, wanted: Callable[[Notification], bool], *, within: float) -> Notification:
        """Wait for a notification satisfying `wanted` (earlier ones are kept too)."""
        for notification in self._arrivals(within):
            if wanted(notification):
                return notification
        raise AssertionError(
            f"no such notification within {within}s; got {[n.text for n in self.notifications]}"
            f"\n--- agent log ---\n{self.log()}"
        )

    def _record(self, data: bytes) -> Notification:
        fields = dict(line.split("=", 1) for line in data.decode().split("\n") if line)
        notification = Notification(time.monotonic() - self.started_at, fields)
        self.notifications.append(notification)
        return notification

    def now(self) -> float:
        """Seconds since the agent process was started (the clock of `Notification.at`)."""
        return time.monotonic() - self.started_at

    def signal(self, signum: signal.Signals) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def wait(self, within: float) -> int:
        assert self.process is not None
        return self.process.wait(timeout=within)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_events(self) -> list[dict[str, Any]]:
        events = []
        for line in self.log().splitlines():
            if line.startswith("{"):
                events.append(json.loads(line))
        return events

    def submit(self, document: dict[str, Any]) -> None:
        """Drop a job into the spool the Maildir way: tmp/, then rename into incoming/."""
        (self.spool_dir / "tmp").mkdir(parents=True, exist_ok=True)
        staged = self.spool_dir / "tmp" / f"{document['job_id']}.json"
        staged.write_text(json.dumps(document))
        staged.rename(self.spool_dir / "incoming" / staged.name)

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        self.socket.close()
