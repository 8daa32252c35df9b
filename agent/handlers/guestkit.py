"""guestkit.*: look inside guest disks (read-only) with libguestfs.

Each job opens and checks the image and every file it names (agent.policy.images),
then runs _guestfs_reader.py with the system Python (where Debian's binding lives)
in the sandbox (agent.policy.sandbox), which sees those files only, and in a process
group of its own, so a cancel or timeout kills the appliance and everything it
started; its scratch directory is removed whatever happens.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import structlog
import trio
from pydantic import BaseModel, ConfigDict, Field

from agent.core.context import JobContext
from agent.core.registry import Handler, handler
from agent.errors import ForbiddenError, HandlerError
from agent.handlers import _findings, _guestfs_host, image
from agent.handlers._guestfs_host import Accelerator, libguestfs_problem
from agent.policy import sandbox
from agent.policy.images import CheckedImage, Layer, check_image
from agent.policy.paths import Admission
from agent.policy.sandbox import SANDBOX

if TYPE_CHECKING:
    from agent.core.capabilities import Capabilities
    from agent.core.health import Health

log = structlog.get_logger("agent.guestkit")

SYSTEM_PYTHON = "/usr/bin/python3"
READER = Path(__file__).with_name("_guestfs_reader.py")
SECTOR = 512
# Where the reader and the appliance appear inside the sandbox.
SANDBOX_READER = "/run/hostagent/guestfs_reader.py"
SANDBOX_APPLIANCE = "/run/hostagent/appliance"
# Where each stage of the reader starts, in percent of the job.
_STAGES = {
    "launch": 5,
    "inspect": 50,
    "mount": 60,
    "packages": 70,
    "services": 80,
    "filesystems": 85,
    "profile": 85,
}
ACCELERATOR = Accelerator()


class GuestImage(image.ImageRef):
    format: image.ImageFormat | None = Field(
        default=None, description="read from the image's header by the agent when absent"
    )
    checksum: str | None = Field(
        default=None,
        pattern=r"^sha256:[0-9a-fA-F]{64}$",
        description="verified before inspecting: the job fails if the image differs",
    )


class InspectOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", defer_build=True)

    include_packages: bool = True
    include_services: bool = True
    include_filesystems: bool = True


class InspectPayload(BaseModel):
    model_config = ConfigDict(extra="forbid", defer_build=True)

    image: GuestImage
    options: InspectOptions = Field(default_factory=InspectOptions)


class ProfilePayload(BaseModel):
    model_config = ConfigDict(extra="forbid", defer_build=True)

    image: GuestImage
    profiles: list[Literal["security", "compliance"]] = Field(
        default=["security", "compliance"], min_length=1
    )


def _resource(payload: InspectPayload | ProfilePayload) -> str:
    # The key image.* jobs use: no inspection of an image while it is resized or converted.
    return f"image:{payload.image.path}"


def _admit(payload: InspectPayload | ProfilePayload, gate: Admission) -> None:
    # Regular image files under the roots only (no block devices, no /etc, no store),
    # and every file the image names: checked again when the job runs.
    field = "payload.data.image.path"
    check_image(gate.policy, payload.image.path, payload.image.format, field=field)


@handler(
    "guestkit.inspect", payload=InspectPayload, rerun_safe=True, resource=_resource, admit=_admit
)
async def inspect(payload: InspectPayload, ctx: JobContext) -> dict[str, Any]:
    """What is inside a disk image: OS, distribution, version, hostname, packages, services."""
    options = payload.options
    want = [
        name
        for name, wanted in (
            ("packages", options.include_packages),
            ("services", options.include_services),
            ("filesystems", options.include_filesystems),
        )
        if wanted
    ]
    described, found = await _read_guest(payload.image, want, ctx)
    result: dict[str, Any] = {
        "version": "1.0",
        "image": described,
        "operating_system": found["operating_system"],
    }
    if options.include_packages:
        names = found["packages"]
        manager = found["operating_system"]["package_management"]
        result["packages"] = {"count": len(names), "manager": manager, "packages": names}
    if options.include_services:
        result["services"] = found["services"]
    if options.include_filesystems:
        result["filesystems"] = found["filesystems"]
    return result


@handler(
    "guestkit.profile", payload=ProfilePayload, rerun_safe=True, resource=_resource, admit=_admit
)
async def profile(payload: ProfilePayload, ctx: JobContext) -> dict[str, Any]:
    """Security and compliance findings read from a disk image's own files."""
    described, found = await _read_guest(payload.image, ["profile"], ctx)
    material = {
        **found["profile"],
        "operating_system": found["operating_system"],
        "packages": found["packages"],
        "services": found["services"],
    }
    profiles = list(dict.fromkeys(payload.profiles))
    verdict = _findings.evaluate(material, profiles, today=datetime.now(UTC).date())
    return {
        "version": "1.0",
        "image": described,
        "operating_system": found["operating_system"],
        "profiles": profiles,
        **verdict,
    }


async def _read_guest(
    guest: GuestImage, want: list[str], ctx: JobContext
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Open and check the image (and every file it names) now, then run the reader in the
    sandbox on those files; answer the image described and what it found."""
    field = "payload.data.image.path"
    with await image.open_image(ctx, guest.path, guest.format, field=field) as checked:
        top = checked.layers[0]
        described: dict[str, Any] = {"path": guest.path}
        if guest.checksum is not None:
            described["checksum"] = await _verify_checksum(top.fd, guest, ctx)
        described["format"] = await _image_format(checked, ctx)
        accelerator = await ACCELERATOR.choose()
        await ctx.log("guestfs.launch", accelerator=accelerator.name, kvm=accelerator.kvm_problem)
        request = {"disk": top.path, "format": checked.format, "want": want}
        found = await _run_reader(request, accelerator.name == "tcg", checked.files(), ctx)
    return described, found


async def _verify_checksum(fd: int, guest: GuestImage, ctx: JobContext) -> str:
    # image.checksum's own code: one way to hash an image, with its progress events;
    # the bytes hashed are those of the descriptor the reader is given.
    digest, _ = await image.sha256_of(ctx, fd)
    actual = f"sha256:{digest}"
    expected = (guest.checksum or "").lower()
    if actual != expected:
        raise HandlerError(
            f"checksum mismatch for {guest.path}: expected {expected}, got {actual}",
            field="payload.data.image.checksum",
            reason="checksum_mismatch",
            details={"expected": expected, "actual": actual},
        )
    return actual


async def _image_format(checked: CheckedImage, ctx: JobContext) -> str:
    """The format the agent read (or was told and checked); a file that is no disk image
    fails here, in milliseconds, rather than after an appliance launch."""
    field = "payload.data.image.path"
    top = checked.layers[0]
    size = os.fstat(top.fd).st_size
    # Any file reads as "raw"; a raw disk, though, is whole sectors (a text file rarely is).
    if top.format == "raw" and size % SECTOR:
        raise HandlerError(
            f"{top.path} is not a disk image: {size} bytes is not a whole "
            f"number of {SECTOR}-byte sectors",
            field=field,
            reason="not_an_image",
        )
    # -U: a running VM's disk is read without taking (or waiting for) its lock; qemu-img
    # info opens no backing file (the layer alone, as image.info does).
    argv = ["info", "-U", "--output=json", checked.filename(backing=False)]
    probe = await image.run_qemu_img(ctx, argv, checked.files(), check=False)
    if probe.returncode != 0:
        tail = probe.stderr.decode(errors="replace").strip()[-300:]
        raise HandlerError(f"{top.path} is not a disk image qemu can open: {tail}", field=field)
    return top.format


async def _run_reader(
    request: dict[str, Any], tcg: bool, files: list[Layer], ctx: JobContext
) -> dict[str, Any]:
    problem = await SANDBOX.check()
    if problem is not None:
        raise ForbiddenError(
            f"guestkit: the sandbox cannot run here: {problem}",
            field="operation",
            reason="libguestfs runs only in the sandbox (bubblewrap); install bubblewrap",
        )
    appliance = await _guestfs_host.fixed_appliance(ctx)
    scratch = await trio.to_thread.run_sync(lambda: tempfile.mkdtemp(prefix="hostagent-guestfs-"))
    records: list[dict[str, Any]] = []
    pending = b""

    async def on_stdout(chunk: bytes) -> None:
        nonlocal pending
        *lines, pending = (pending + chunk).split(b"\n")
        for line in lines:
            record = json.loads(line)
            if "sockdir" in record:
                continue  # in the sandbox's own /tmp: gone with it
            records.append(record)
            if "stage" in record:
                await ctx.progress(_STAGES.get(record["stage"]), record["stage"])

    argv = [SYSTEM_PYTHON, SANDBOX_READER, json.dumps({**request, "tmpdir": scratch, "tcg": tcg})]
    binds = [sandbox.Bind(f.fd, f.path, writable=False) for f in files]
    wrapped = sandbox.wrap(argv, binds, extra=_reader_sandbox(appliance, scratch))
    try:
        process = await ctx.run_process(
            wrapped, on_stdout=on_stdout, check=False, pass_fds=sandbox.pass_fds(binds)
        )
    finally:
        # A killed appliance leaves its overlay behind: not ours to keep.
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(partial(shutil.rmtree, scratch, ignore_errors=True))
    final = records[-1] if records else {}
    if "result" in final:
        await ctx.progress(100, "done")
        return dict(final["result"])
    if "error" in final:
        why = final["error"]
        if final.get("reason") == "libguestfs":
            # "see earlier error messages": those are the reader's stderr (its debug tail).
            lines = process.stderr.decode(errors="replace").strip().splitlines()
            why += ": " + " | ".join(line.strip() for line in lines[-6:] if line.strip())
        raise HandlerError(
            f"{request['disk']}: {why}",
            field="payload.data.image.path",
            reason=final.get("reason"),
        )
    tail = process.stderr.decode(errors="replace").strip()[-500:]
    raise HandlerError(f"libguestfs reader exited with status {process.returncode}: {tail}")


def _reader_sandbox(appliance: Path, scratch: str) -> list[str]:
    """What the reader sees besides the image's files: its script, the fixed appliance
    (kernel, initrd, root: built outside, before), the job's scratch directory, KVM."""
    args = ["--ro-bind", str(READER), SANDBOX_READER, "--tmpfs", "/var/tmp"]  # noqa: S108 (the sandbox's)
    for name in ("kernel", "initrd", "root"):
        args += ["--ro-bind", str(appliance / name), f"{SANDBOX_APPLIANCE}/{name}"]
    # libguestfs takes a directory holding README.fixed as a ready appliance.
    args += ["--ro-bind", "/dev/null", f"{SANDBOX_APPLIANCE}/README.fixed"]
    args += ["--bind", scratch, scratch]
    for name, value in (
        ("LIBGUESTFS_PATH", SANDBOX_APPLIANCE),
        ("LIBGUESTFS_CACHEDIR", scratch),
        ("XDG_RUNTIME_DIR", scratch),
        ("TMPDIR", scratch),
    ):
        args += ["--setenv", name, value]
    if os.path.exists("/dev/kvm"):
        args += ["--dev-bind", "/dev/kvm", "/dev/kvm"]
    return args


HANDLERS = (inspect, profile)


def available_handlers() -> tuple[Handler, ...]:
    """guestkit.* when libguestfs can work here (a cheap look: nothing is launched)."""
    problem = libguestfs_problem()
    if problem is not None:
        log.warning("guestkit.unavailable", reason=problem)
        return ()
    return HANDLERS


def contribute(capabilities: Capabilities, health: Health) -> None:
    """The daemon's one hook: feature `inspect` and the `guestfs` health component."""
    _guestfs_host.contribute(capabilities, health, ACCELERATOR)
