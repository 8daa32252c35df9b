"""The sandbox qemu-img and the libguestfs reader run in: they see only the job's files.

Defence in depth behind agent.policy.images: should a check there miss a
reference, the tool still finds nothing to read. bubblewrap (Debian's `bwrap`)
starts the tool in new namespaces (mount, pid, ipc, uts, network, user, cgroup)
whose root is an empty tmpfs holding the system's /usr read-only, a fresh /proc
and /dev, a private /tmp, and each file the agent opened and checked, bound
from the agent's own descriptor (`--ro-bind-fd`/`--bind-fd`) at its own path;
every capability is dropped. The tools open the files by those paths inside
(qemu-img cannot take an inherited descriptor), so they run as root without
capabilities: a bound file owned by root opens, nothing else is there to open.

When bwrap cannot run here, `problem()` says why (health, capabilities) and
image jobs are refused: never run unsandboxed.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import trio

BWRAP = "/usr/bin/bwrap"
# Merged /usr: these are symbolic links into /usr on Debian 12; directories elsewhere.
_SYSTEM_LINKS = ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")


@dataclass(frozen=True)
class Bind:
    """A file the tool may open: the agent's descriptor of it, bound at `path`."""

    fd: int
    path: str
    writable: bool = False


def _system_args() -> list[str]:
    args = ["--ro-bind", "/usr", "/usr"]
    for path in _SYSTEM_LINKS:
        if os.path.islink(path):
            args += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            args += ["--ro-bind", path, path]
    return args


def wrap(argv: Sequence[str], binds: Iterable[Bind], *, extra: Sequence[str] = ()) -> list[str]:
    """`argv` run inside the sandbox with `binds` (pass their fds to the process)."""
    # Neither --die-with-parent (its signal follows the *thread* that started bwrap, and
    # trio starts processes from worker threads that come and go) nor --new-session
    # (run_process kills the job's process group, which the tool must stay in; there
    # is no terminal to take over: stdin is /dev/null, in a session of its own).
    args = [BWRAP, "--unshare-all", "--cap-drop", "ALL"]
    args += [*_system_args(), "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"]  # noqa: S108 (the sandbox's own, empty)
    args += [*extra]
    for bind in binds:
        args += ["--bind-fd" if bind.writable else "--ro-bind-fd", str(bind.fd), bind.path]
    return [*args, "--", *argv]


def pass_fds(binds: Iterable[Bind]) -> tuple[int, ...]:
    return tuple(sorted({bind.fd for bind in binds}))


class Sandbox:
    """Whether the sandbox works here: asked once (a bwrap run of `qemu-img --version`)."""

    def __init__(self) -> None:
        self.checked = False
        self.problem: str | None = None
        self._lock = trio.Lock()

    async def check(self) -> str | None:
        """Why the sandbox cannot run here, or None."""
        async with self._lock:
            if not self.checked:
                self.problem = await _probe()
                self.checked = True
        return self.problem


async def _probe() -> str | None:
    if not os.access(BWRAP, os.X_OK):
        return f"{BWRAP} is missing (Debian: bubblewrap)"
    with trio.move_on_after(15) as waited:
        try:
            probe = await trio.run_process(
                wrap(["qemu-img", "--version"], ()),
                stdin=subprocess.DEVNULL,
                capture_stdout=True,
                capture_stderr=True,
                check=False,
            )
        except OSError as exc:
            return f"bwrap cannot start: {exc.strerror}"
    if waited.cancelled_caught:
        return "bwrap did not finish within 15 s"
    if probe.returncode != 0:
        tail = probe.stderr.decode(errors="replace").strip()[-300:]
        return f"bwrap failed (status {probe.returncode}): {tail}"
    return None


SANDBOX = Sandbox()
