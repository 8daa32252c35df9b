"""A real systemd 252 booted in a container over an overlay of the root filesystem.

`unshare --mount` gives the overlay its own mount namespace: when the
container's systemd-nspawn exits, the namespace and every mount in it go
away with it, so nothing stays mounted on the host whatever happens to the
test. The overlay's upper layer lives in /dev/shm and is removed at the end.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
import uuid
from pathlib import Path

# Units of this host that would start in the container and are not needed there.
MASKED = (
    "postgresql.service",
    "libvirtd.service",
    "libvirt-guests.service",
    "e2scrub_reap.service",
)


class Container:
    def __init__(self, *, binds: dict[Path, str]) -> None:
        self.name = f"hostagent-test-{uuid.uuid4().hex[:8]}"
        self.layers = Path("/dev/shm") / self.name
        self.binds = binds
        self.process: subprocess.Popen[bytes] | None = None
        self.init_pid: int | None = None
        self.log = self.layers.with_suffix(".log")

    def boot(self, timeout: float = 120.0) -> Container:
        upper, work, root = (self.layers / part for part in ("upper", "work", "root"))
        for directory in (upper, work, root):
            directory.mkdir(parents=True)
        binds = [f"--bind-ro={source}:{target}" for source, target in self.binds.items()]
        nspawn = [
            "systemd-nspawn",
            f"--directory={root}",
            "--boot",
            "--private-network",
            "--register=no",
            "--keep-unit",
            "--link-journal=no",
            f"--machine={self.name}",
            *binds,
            *(f"systemd.mask={unit}" for unit in MASKED),
        ]
        script = (
            f"mount -t overlay overlay -o lowerdir=/,upperdir={upper},workdir={work} {root}"
            ' && exec "$@"'
        )
        argv = ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", script, "sh"]
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [*argv, *nspawn],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        deadline = time.monotonic() + timeout
        while self.init_pid is None:
            self.init_pid = self._init_pid()
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError("container did not boot:\n" + self.log.read_text()[-3000:])
            time.sleep(0.2)
        # PID 1 exists before its bus does: ask until it answers, then wait for the boot.
        while True:
            state = self.run("systemctl", "is-system-running", "--wait", check=False)
            if state.stdout.strip() in ("running", "degraded"):
                return self
            if time.monotonic() > deadline:
                raise AssertionError(f"container not up: {state.stdout}{state.stderr}")
            time.sleep(0.5)

    def _init_pid(self) -> int | None:
        """The container's PID 1: the child of systemd-nspawn that runs systemd."""
        assert self.process is not None
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        try:
            pids = children.read_text().split()
        except OSError:
            return None
        for pid in pids:
            try:
                if Path(f"/proc/{pid}/comm").read_text().strip() == "systemd":
                    return int(pid)
            except OSError:
                continue
        return None

    def run(
        self,
        *argv: str,
        user: str | None = None,
        check: bool = True,
        timeout: float = 120.0,
        input: str | None = None,  # subprocess's own name
    ) -> subprocess.CompletedProcess[str]:
        assert self.init_pid is not None
        prefix = ["runuser", "-u", user, "--"] if user else []
        # A login-like environment: no host variables (HOSTAGENT_*, PATH of a venv) leak in.
        env = ["env", "-i", "PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8"]
        result = subprocess.run(
            ["nsenter", "-t", str(self.init_pid), "-a", *env, *prefix, *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
            input=input,
            check=False,
            cwd="/",
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"{argv} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
            )
        return result

    def shutdown(self) -> None:
        """Power the container off, then remove its layers; nothing stays mounted."""
        if self.process is not None and self.process.poll() is None:
            if self.init_pid is not None:
                self.run("systemctl", "poweroff", "--no-block", check=False, timeout=30)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait()
        shutil.rmtree(self.layers, ignore_errors=True)
        self.log.unlink(missing_ok=True)

    def mounted(self) -> bool:
        return str(self.layers) in Path("/proc/mounts").read_text()
