"""guestkit.*: look inside guest disks (read-only) with libguestfs.

Each job runs _guestfs_reader.py with the system Python (where Debian's binding
lives) in a process group of its own, so a cancel or timeout kills the appliance
and everything it started; its scratch directory is removed whatever happens.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
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
from agent.errors import HandlerError
from agent.handlers import _findings, _guestfs_host, image
from agent.handlers._guestfs_host import Accelerator, libguestfs_problem
from agent.policy.paths import Admission

if TYPE_CHECKING:
    from agent.core.capabilities import Capabilities
    from agent.core.health import Health

log = structlog.get_logger("agent.guestkit")

SYSTEM_PYTHON = "/usr/bin/python3"
READER = Path(__file__).with_name("_guestfs_reader.py")
SECTOR = 512
# libguestfs' fixed socket directory parent for root (it ignores XDG_RUNTIME_DIR then).
ROOT_SOCKDIR = "/tmp"  # noqa: S108 (libguestfs' choice, not a file of ours)
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
    format: image.ImageFormat | None = Field(default=None, description="probed when absent")
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
    # Regular image files under the roots only: no block devices, no /etc, no store.
    gate.policy.check_input(payload.image.path, field="payload.data.image.path")


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
    """Check the image, then run the reader; answer the image described and what it found."""
    size = await _file_size(guest.path)
    described: dict[str, Any] = {"path": guest.path}
    if guest.checksum is not None:
        described["checksum"] = await _verify_checksum(guest.path, guest.checksum, ctx)
    described["format"] = await _image_format(guest.path, guest.format, size, ctx)
    accelerator = await ACCELERATOR.choose()
    await ctx.log("guestfs.launch", accelerator=accelerator.name, kvm=accelerator.kvm_problem)
    request = {"disk": guest.path, "format": described["format"], "want": want}
    return described, await _run_reader(request, accelerator.name == "tcg", ctx)


async def _file_size(path: str) -> int | None:
    """The size of an image file, None for a block device; else why it will not do."""
    field = "payload.data.image.path"
    try:
        found = await trio.Path(path).stat()
    except FileNotFoundError:
        raise HandlerError(f"{path} does not exist", field=field, reason="not_found") from None
    except OSError as exc:
        raise HandlerError(f"cannot read {path}: {exc.strerror}", field=field) from exc
    mode, size = found.st_mode, found.st_size
    if stat.S_ISBLK(mode):
        return None
    if not stat.S_ISREG(mode):
        raise HandlerError(f"{path} is not a file or block device", field=field)
    return size


async def _verify_checksum(path: str, expected: str, ctx: JobContext) -> str:
    # image.checksum's own code: one way to hash an image, with its progress events.
    hashed = await image.checksum.run(image.ChecksumPayload(path=path), ctx)
    actual = f"sha256:{hashed['digest']}"
    if actual != expected.lower():
        raise HandlerError(
            f"checksum mismatch for {path}: expected {expected.lower()}, got {actual}",
            field="payload.data.image.checksum",
            reason="checksum_mismatch",
            details={"expected": expected.lower(), "actual": actual},
        )
    return actual


async def _image_format(path: str, claimed: str | None, size: int | None, ctx: JobContext) -> str:
    """The format qemu reads the image as (`claimed`, checked, or probed): a file that
    is no disk image fails here, in milliseconds, rather than after an appliance launch."""
    field = "payload.data.image.path"
    # -U: a running VM's disk is read without taking (or waiting for) its lock.
    argv = [image.QEMU_IMG, "info", "-U", "--output=json"]
    argv += ["-f", claimed] if claimed else []
    probe = await ctx.run_process([*argv, path], check=False)
    if probe.returncode != 0:
        tail = probe.stderr.decode(errors="replace").strip()[-300:]
        raise HandlerError(f"{path} is not a disk image qemu can open: {tail}", field=field)
    probed = str(json.loads(probe.stdout)["format"])
    # Any file reads as "raw"; a raw disk, though, is whole sectors (a text file rarely is).
    if probed == "raw" and size is not None and size % SECTOR:
        raise HandlerError(
            f"{path} is not a disk image: {size} bytes is not a whole "
            f"number of {SECTOR}-byte sectors",
            field=field,
            reason="not_an_image",
        )
    return probed


async def _run_reader(request: dict[str, Any], tcg: bool, ctx: JobContext) -> dict[str, Any]:
    scratch = await trio.to_thread.run_sync(lambda: tempfile.mkdtemp(prefix="hostagent-guestfs-"))
    records: list[dict[str, Any]] = []
    sockdirs: list[str] = []
    pending = b""

    async def on_stdout(chunk: bytes) -> None:
        nonlocal pending, sockdirs
        *lines, pending = (pending + chunk).split(b"\n")
        for line in lines:
            record = json.loads(line)
            if "sockdir" in record:
                sockdirs += _socket_directories(record["sockdir"])
                continue
            records.append(record)
            if "stage" in record:
                await ctx.progress(_STAGES.get(record["stage"]), record["stage"])

    argv = [
        # XDG_RUNTIME_DIR is where libguestfs puts its sockets (when not root): scratch too.
        *("env", f"XDG_RUNTIME_DIR={scratch}", SYSTEM_PYTHON, str(READER)),
        json.dumps({**request, "tmpdir": scratch, "tcg": tcg}),
    ]
    try:
        process = await ctx.run_process(argv, on_stdout=on_stdout, check=False)
    finally:
        # A killed appliance leaves its overlay and sockets behind: not ours to keep.
        with trio.CancelScope(shield=True):
            for leftover in (scratch, *sockdirs):
                await trio.to_thread.run_sync(partial(shutil.rmtree, leftover, ignore_errors=True))
    final = records[-1] if records else {}
    if "result" in final:
        await ctx.progress(100, "done")
        return dict(final["result"])
    if "error" in final:
        raise HandlerError(
            f"{request['disk']}: {final['error']}",
            field="payload.data.image.path",
            reason=final.get("reason"),
        )
    tail = process.stderr.decode(errors="replace").strip()[-500:]
    raise HandlerError(f"libguestfs reader exited with status {process.returncode}: {tail}")


def _socket_directories(path: str) -> list[str]:
    """The directory if it is one libguestfs names as its own in /tmp, else nothing:
    what the reader says must never steer rmtree elsewhere. (Sockets in the scratch
    directory, when not root, go with it.)"""
    parent, name = os.path.split(path)
    return [path] if parent == ROOT_SOCKDIR and re.fullmatch(r"libguestfs\w{6}", name) else []


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
