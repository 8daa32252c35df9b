"""Whether libguestfs can work on this host, which appliance it boots, and which
accelerator that appliance gets.

The appliance: the package builds a fixed one at install, as root, with
`hostagent appliance` (build_appliance), under the state directory; the unit names
it in LIBGUESTFS_PATH (libguestfs' own variable). The service cannot build one
itself: its ProtectKernelModules= hides /lib/modules, which supermin reads. Outside
the unit (`make run`, tests) the appliance is built per user in libguestfs' cache.

The start-up check only looks at files (no appliance, no qemu): start-up stays
fast. Whether KVM works is asked of qemu once, at the first job: /dev/kvm can
open fine and still abort qemu when it sets up a vCPU (nested or paravirtual
KVM, as on these build machines), and libguestfs would not fall back to TCG then.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import trio

from agent.errors import HandlerError

if TYPE_CHECKING:
    from agent.core.capabilities import Capabilities
    from agent.core.context import JobContext
    from agent.core.health import Health, Status

BOOT = Path("/boot")
MODULES = Path("/lib/modules")
BINDING = Path("/usr/lib/python3/dist-packages/guestfs.py")
# What libguestfs' direct backend starts, with the CPU model it asks for under KVM.
QEMU = f"qemu-system-{platform.machine()}"
KVM_PROBE = [QEMU, "-accel", "kvm", "-cpu", "max,la57=off", "-display", "none"]
KVM_PROBE += ["-nodefaults", "-S", "-qmp", "stdio"]
_QMP_QUIT = b'{"execute": "qmp_capabilities"}\n{"execute": "quit"}\n'
SUPERMIN_D = Path(f"/usr/lib/{platform.machine()}-linux-gnu/guestfs/supermin.d")
# libguestfs' own appliance cache for this user (it would build it there itself).
APPLIANCE_CACHE = Path(f"/var/tmp/.guestfs-{os.geteuid()}")  # noqa: S108 (libguestfs' choice)
# Where the package builds the fixed appliance (the unit's LIBGUESTFS_PATH).
PACKAGED_APPLIANCE = Path("/var/lib/hostagent/appliance")
APPLIANCE_FILES = ("kernel", "initrd", "root")
# libguestfs takes a directory holding this file as a ready (fixed) appliance.
FIXED_MARK = "README.fixed"


def prebuilt_appliance() -> Path | None:
    """The fixed appliance named by LIBGUESTFS_PATH, when it is complete there."""
    named = os.environ.get("LIBGUESTFS_PATH")  # libguestfs' variable: the unit sets it
    if not named:
        return None
    path = Path(named)
    wanted = (*APPLIANCE_FILES, FIXED_MARK)
    return path if all((path / name).is_file() for name in wanted) else None


def build_appliance(output: Path) -> Path:
    """Build a fixed appliance into `output` (blocking; root, at install: supermin reads
    the host's kernel, its modules and packages). Replaces an older one atomically."""
    problem = _tools_problem() or _kernel_problem()
    if problem is not None:
        raise HandlerError(f"cannot build the libguestfs appliance: {problem}", field="appliance")
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".appliance-", dir=output.parent))
    try:
        built = staging / "appliance"
        argv = ["supermin", "--build", "--copy-kernel", "-f", "ext2"]
        argv += ["--host-cpu", platform.machine(), str(SUPERMIN_D), "-o", str(built)]
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            tail = done.stderr.strip()[-500:]
            raise HandlerError(
                f"supermin failed (status {done.returncode}): {tail}", field="appliance"
            )
        (built / FIXED_MARK).write_text(
            "A fixed libguestfs appliance built by hostagent appliance.\n"
        )
        built.chmod(0o755)  # the service user reads it; nothing in it is secret
        for child in built.iterdir():
            child.chmod(0o644)
        old = staging / "old"
        if output.exists():
            output.rename(old)
        built.rename(output)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return output


def libguestfs_problem() -> str | None:
    """Why libguestfs cannot work here, or None; reads a few paths, starts nothing."""
    problem = _tools_problem()
    if problem is not None or prebuilt_appliance() is not None:
        return problem
    kernel = _kernel_problem()
    named = os.environ.get("LIBGUESTFS_PATH")
    if kernel is not None and named:
        return (
            f"no prebuilt appliance in {named} ({kernel}): run `hostagent appliance {named}`"
            " as root (the package does at install)"
        )
    return kernel


def _tools_problem() -> str | None:
    if not BINDING.exists():
        return f"libguestfs' Python binding is missing ({BINDING}; Debian: python3-guestfs)"
    if not SUPERMIN_D.is_dir():
        return f"no libguestfs appliance ({SUPERMIN_D}; Debian: libguestfs-tools)"
    if shutil.which(QEMU) is None:
        return f"{QEMU} is not installed"
    return None


def _kernel_problem() -> str | None:
    """supermin builds the appliance from the host's own kernel and its modules."""
    kernels = sorted(BOOT.glob("vmlinuz-*"))
    if not kernels:
        return f"no kernel for the appliance in {BOOT} (Debian: linux-image-amd64)"
    versions = [kernel.name.removeprefix("vmlinuz-") for kernel in kernels]
    try:
        found = any((MODULES / version).is_dir() for version in versions)
    except PermissionError:
        # The shipped unit's ProtectKernelModules= hides the modules: no appliance.
        return f"cannot read {MODULES} (ProtectKernelModules= in the unit?)"
    if not found:
        return f"no modules in {MODULES} for the kernels in {BOOT}: {', '.join(versions)}"
    if not any(os.access(kernel, os.R_OK) for kernel in kernels):
        return f"cannot read the kernels in {BOOT}"
    return None


async def fixed_appliance(ctx: JobContext) -> Path:
    """The appliance (kernel, initrd, root) built as libguestfs would build it, but
    outside the sandbox and before the job's files are in reach: supermin reads the
    host's packages, which the sandbox does not show. Quick when it is up to date.
    The prebuilt one (LIBGUESTFS_PATH, the package's) when there is one."""
    prebuilt = prebuilt_appliance()
    if prebuilt is not None:
        return prebuilt
    output = APPLIANCE_CACHE / "appliance.d"
    await trio.to_thread.run_sync(partial(APPLIANCE_CACHE.mkdir, mode=0o755, exist_ok=True))
    argv = ["supermin", "--build", "--if-newer", "--lock", str(APPLIANCE_CACHE / "lock")]
    argv += ["--copy-kernel", "-f", "ext2", "--host-cpu", platform.machine()]
    await ctx.run_process([*argv, str(SUPERMIN_D), "-o", str(output)])
    return output


@dataclass(frozen=True)
class Choice:
    name: Literal["kvm", "tcg"]
    # Why not KVM, when TCG it is.
    kvm_problem: str | None


class Accelerator:
    """KVM when qemu can really use it, else TCG; asked once per process."""

    def __init__(self) -> None:
        self.choice: Choice | None = None
        self._lock = trio.Lock()

    async def choose(self) -> Choice:
        async with self._lock:
            if self.choice is None:
                problem = await kvm_problem()
                self.choice = Choice("tcg" if problem else "kvm", problem)
        return self.choice


async def kvm_problem() -> str | None:
    """Why qemu cannot use KVM here, or None: a paused, diskless qemu asked to quit."""
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "/dev/kvm is missing or not accessible"
    with trio.move_on_after(15) as waited:
        probe = await trio.run_process(
            KVM_PROBE, stdin=_QMP_QUIT, capture_stdout=True, capture_stderr=True, check=False
        )
    if waited.cancelled_caught:
        return "qemu with KVM did not answer within 15 s"
    if probe.returncode != 0:
        lines = probe.stderr.decode(errors="replace").strip().splitlines()
        return f"qemu with KVM failed (status {probe.returncode}): {' '.join(lines[:2])}"
    return None


def contribute(capabilities: Capabilities, health: Health, accelerator: Accelerator) -> None:
    """Capability facts (feature `inspect`) and the `guestfs` health component."""

    async def facts() -> dict[str, Any]:
        if libguestfs_problem() is not None:
            return {"guestfs": None}
        return {"features": ["inspect"], "guestfs": {"backend": "direct"}}

    async def check() -> tuple[Status, str, dict[str, Any]]:
        problem = libguestfs_problem()
        if problem is not None:
            # Only guestkit.* is missing: the agent itself works.
            return "degraded", problem, {}
        choice = accelerator.choice
        if choice is None:
            return "healthy", "libguestfs ready (accelerator chosen at the first job)", {}
        return (
            "healthy",
            "libguestfs ready",
            {"accelerator": choice.name, "kvm": choice.kvm_problem},
        )

    capabilities.contribute(facts)
    health.add("guestfs", check)
