"""A real agent process for system tests: started, waited for, killed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path


class AgentProcess:
    def __init__(self, state: Path, spool: Path, *extra: str) -> None:
        self.argv = [
            sys.executable,
            "-m",
            "agent",
            "run",
            "--state-dir",
            str(state),
            "--spool-dir",
            str(spool),
            "--log-format",
            "json",
            # The spool is what these tests drive; the HTTP API has its own daemon tests.
            "--no-http",
            "--no-socket",
            "--libvirt-uri",
            "test:///default",
            *extra,
        ]
        self.process: subprocess.Popen[str] | None = None
        self.env: dict[str, str] | None = None  # None: this process's environment
        self.lines: list[str] = []
        self._ready = threading.Event()

    def start(self, timeout: float = 120.0) -> AgentProcess:
        self._ready.clear()
        self.process = subprocess.Popen(
            self.argv,
            stderr=subprocess.PIPE,
            text=True,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            env=self.env,
        )
        threading.Thread(target=self._read, args=(self.process,), daemon=True).start()
        if not self._ready.wait(timeout):
            self.kill()
            raise AssertionError("agent not ready in time:\n" + "".join(self.lines[-20:]))
        return self

    def _read(self, process: subprocess.Popen[str]) -> None:
        assert process.stderr is not None
        with process.stderr:
            for line in process.stderr:
                self.lines.append(line)
                try:
                    if json.loads(line).get("event") == "agent.ready":
                        self._ready.set()
                except ValueError:
                    continue

    def events(self, name: str) -> list[dict[str, object]]:
        found = []
        for line in self.lines:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if record.get("event") == name:
                found.append(record)
        return found

    def kill(self) -> None:
        """kill -9: no clean-up of any kind."""
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
        if self.process is not None:
            self.process.wait()

    def stop(self, timeout: float = 30.0) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)
