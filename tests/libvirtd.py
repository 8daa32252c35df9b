"""A private, real libvirtd (QEMU driver) for the tests that need one.

`PrivateLibvirtd` starts this file as a script under
`unshare --mount --propagation private`: in its own mount namespace it
bind-mounts scratch directories over /etc/libvirt, /run/libvirt,
/var/lib/libvirt, /var/log/libvirt and /var/cache/libvirt, so nothing it defines
touches the host's libvirt and nothing of a host libvirtd (if any) is seen.
Its socket lives in the scratch dir, outside those mounts, so the tests
(outside the namespace) connect with `qemu:///system?socket=...`.

The script stays as the daemon's parent and marks itself a child subreaper:
libvirtd daemonizes and QEMU processes are orphaned on purpose, and this
machine's PID 1 reaps orphans only every ~1.7 s, which made every domain
destroy wait for it. It takes commands on stdin, one per line, and answers on
stdout: `start` -> `ready` (once libvirtd accepts connections), `stop` ->
`stopped`; end of input stops libvirtd, kills what is left and exits.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

PR_SET_CHILD_SUBREAPER = 36
# Private but kept between runs: QEMU's capability probe takes ~12 s the first time.
CACHE_DIR = Path("/var/cache/hostagent-tests/libvirt")

LIBVIRTD_CONF = """\
unix_sock_dir = "{sock}"
auth_unix_ro = "none"
auth_unix_rw = "none"
unix_sock_ro_perms = "0700"
unix_sock_rw_perms = "0700"
log_outputs = "3:file:{log}"
"""

# QEMU runs as root so that it can open /dev/kvm without changing the host's
# device permissions; no security driver and no virtlogd (stdio to a file)
# keep the daemon to one process.
QEMU_CONF = """\
user = "root"
group = "root"
dynamic_ownership = 0
remember_owner = 0
security_driver = "none"
stdio_handler = "file"
namespaces = []
"""


class PrivateLibvirtd:
    """Owner of one private libvirtd (see the module docstring)."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.socket = workdir / "sock" / "libvirt-sock"
        self.uri = f"qemu:///system?socket={self.socket}"
        self.log = workdir / "libvirtd.log"
        self._process: subprocess.Popen[str] | None = None

    def _command(self, line: str, expect: str) -> None:
        process = self._process
        assert process is not None
        assert process.stdin is not None
        assert process.stdout is not None
        process.stdin.write(line + "\n")
        process.stdin.flush()
        answer = process.stdout.readline().strip()
        if not answer:  # end of output: the namespace parent died
            raise RuntimeError(
                f"private libvirtd: its parent exited with {process.wait(30)} (unshare --mount "
                "needs CAP_SYS_ADMIN: root on a VM or host, or a privileged container); "
                + self.log_tail()
            )
        if answer != expect:
            raise RuntimeError(f"private libvirtd: {line!r} answered {answer!r}; {self.log_tail()}")

    def log_tail(self) -> str:
        try:
            return "log: " + self.log.read_text()[-2000:]
        except OSError:
            return "no log"

    def open(self) -> None:
        """Start the namespace parent and libvirtd in it; returns once it is ready."""
        missing = [
            tool for tool in ("unshare", "libvirtd", "qemu-system-x86_64") if not shutil.which(tool)
        ]
        if missing:
            raise RuntimeError(f"private libvirtd needs {missing} (make system-deps-test)")
        if os.geteuid() != 0:
            raise RuntimeError("private libvirtd needs root (the QEMU driver's system mode)")
        self._process = subprocess.Popen(
            [
                "unshare",
                "--mount",
                "--propagation",
                "private",
                sys.executable,
                __file__,
                str(self.workdir),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.start()

    def start(self) -> None:
        self._command("start", "ready")

    def stop(self) -> None:
        self._command("stop", "stopped")

    def close(self) -> None:
        process = self._process
        if process is None:
            return
        assert process.stdin is not None
        assert process.stdout is not None
        process.stdin.close()
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        process.stdout.close()
        self._process = None


@contextlib.contextmanager
def private_libvirtd(workdir: Path) -> Iterator[PrivateLibvirtd]:
    daemon = PrivateLibvirtd(workdir)
    try:
        daemon.open()
        yield daemon
    finally:
        daemon.close()


# ---- the namespace side: runs as `python tests/libvirtd.py WORKDIR` under unshare ----


class _Reaper:
    """Reaps every child (libvirtd, orphaned QEMU) and keeps their exit statuses."""

    def __init__(self) -> None:
        self._statuses: dict[int, int] = {}
        self._changed = threading.Condition()
        # A child that never exits keeps waitpid(-1) blocking instead of failing while
        # there is no other child (between two libvirtd runs).
        self.sentinel = os.posix_spawnp("sleep", ["sleep", "infinity"], os.environ)
        threading.Thread(target=self._reap, daemon=True).start()

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, 0)
            except ChildProcessError:
                return  # the sentinel is gone: we are exiting
            with self._changed:
                self._statuses[pid] = status
                self._changed.notify_all()

    def wait_exit(self, pid: int, timeout: float) -> int | None:
        """The exit status of child `pid`, or None if it is still running after `timeout`."""
        with self._changed:
            if self._changed.wait_for(lambda: pid in self._statuses, timeout):
                return self._statuses[pid]
            return None


def _mount_private(workdir: Path) -> None:
    for name, target in (
        ("etc", "/etc/libvirt"),
        ("run", "/run/libvirt"),
        ("lib", "/var/lib/libvirt"),
        ("logs", "/var/log/libvirt"),
        ("cache", "/var/cache/libvirt"),
    ):
        source = CACHE_DIR if name == "cache" else workdir / name
        source.mkdir(parents=True, exist_ok=True)
        Path(target).mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "--bind", str(source), target], check=True)


def _children() -> list[int]:
    me = str(os.getpid())
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                stat = Path(f"/proc/{entry}/stat").read_text()
                if stat.rsplit(")", 1)[1].split()[1] == me:
                    found.append(int(entry))
    return found


def _namespace_main(workdir: Path) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")
    _mount_private(workdir)
    (workdir / "sock").mkdir(exist_ok=True)
    conf = workdir / "libvirtd.conf"
    conf.write_text(LIBVIRTD_CONF.format(sock=workdir / "sock", log=workdir / "libvirtd.log"))
    (workdir / "etc" / "qemu.conf").write_text(QEMU_CONF)
    pid_file = workdir / "libvirtd.pid"
    reaper = _Reaper()

    def stop() -> None:
        with contextlib.suppress(FileNotFoundError, ValueError, ProcessLookupError):
            pid = int(pid_file.read_text())
            os.kill(pid, signal.SIGTERM)
            if reaper.wait_exit(pid, 30) is None:
                os.kill(pid, signal.SIGKILL)
                reaper.wait_exit(pid, 10)

    for line in sys.stdin:
        command = line.strip()
        if command == "start":
            # --daemon returns once the daemon listens; clients then wait for its drivers.
            argv = ["libvirtd", "--daemon", "--config", str(conf), "--pid-file", str(pid_file)]
            status = reaper.wait_exit(os.posix_spawnp("libvirtd", argv, os.environ), 120)
            print("ready" if status == 0 else f"failed {status}", flush=True)
        elif command == "stop":
            stop()
            print("stopped", flush=True)
    stop()
    for pid in _children():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    for pid in _children():
        reaper.wait_exit(pid, 10)


if __name__ == "__main__":
    _namespace_main(Path(sys.argv[1]))
