"""image.*: disk image files, through qemu-img (and hashlib for checksums)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
from typing import Any, Literal

import trio
from pydantic import BaseModel, ConfigDict, Field, field_validator

from agent.core.context import JobContext
from agent.core.registry import handler
from agent.errors import ForbiddenError, HandlerError
from agent.handlers import check_disk_size
from agent.policy.paths import Admission, Policy

QEMU_IMG = "qemu-img"
# qemu-img --help lists every block driver (throttle, blkdebug, nbd, ...); these are disk formats.
_DISK_FORMATS = {
    "bochs",
    "cloop",
    "dmg",
    "luks",
    "parallels",
    "qcow",
    "qcow2",
    "qed",
    "raw",
    "vdi",
    "vhdx",
    "vmdk",
    "vpc",
}
CHUNK = 4 * 1024 * 1024
# `qemu-img convert -p` writes "    (12.34/100%)\r" records, on stdout even without a tty.
_PROGRESS = re.compile(rb"\((\d+(?:\.\d+)?)/100%\)")
ImageFormat = Literal["qcow2", "raw", "vmdk", "vdi", "vhdx", "vpc", "qed"]


def _absolute(value: str) -> str:
    if not value.startswith("/"):
        raise ValueError("must be an absolute path")
    return os.path.normpath(value)


_ROOTED = (
    "absolute path under an image root (policy.image_roots or a storage pool's directory); "
    "no symbolic links, no '..', not in the agent's state or spool directory"
)


class ImageRef(BaseModel):
    model_config = ConfigDict(extra="forbid", defer_build=True)

    path: str = Field(description=f"an existing regular image file: {_ROOTED}")

    _absolute_path = field_validator("path")(_absolute)


def image_resource(ref: ImageRef) -> str:
    return f"image:{ref.path}"


def admit_input(payload: ImageRef, gate: Admission) -> None:
    gate.policy.check_input(payload.path, field="payload.data.path")


def _policy(ctx: JobContext) -> Policy:
    return ctx.get(Policy)


async def _qemu_img_json(ctx: JobContext, argv: list[str]) -> Any:
    result = await ctx.run_process([QEMU_IMG, *argv])
    return json.loads(result.stdout)


async def verified_chain(ctx: JobContext, path: str, fmt: str | None = None) -> list[Any]:
    """Check `path` again now, and every backing file qemu-img would open with it:
    an image's header (or a raw file that looks like one) may name any file."""
    policy = _policy(ctx)
    policy.check_input(path, field="payload.data.path")
    argv = ["info", "--output=json", "--backing-chain", "-U"]
    argv += ["-f", fmt] if fmt else []
    chain: list[Any] = await _qemu_img_json(ctx, [*argv, path])
    for image in chain[1:]:
        policy.check_input(str(image.get("filename", "")), field="payload.data.path")
    return chain


class InfoPayload(ImageRef):
    backing_chain: bool = False
    force_share: bool = Field(
        default=False, description="read an image a running VM holds open (qemu-img -U)"
    )


@handler("image.info", payload=InfoPayload, rerun_safe=True, admit=admit_input)
async def info(payload: InfoPayload, ctx: JobContext) -> Any:
    """qemu-img info as JSON: format, virtual and actual size, backing file, ..."""
    await verified_chain(ctx, payload.path)
    argv = ["info", "--output=json"]
    argv += ["--backing-chain"] if payload.backing_chain else []
    argv += ["-U"] if payload.force_share else []
    return await _qemu_img_json(ctx, [*argv, payload.path])


class CheckPayload(ImageRef):
    format: ImageFormat | None = None
    force_share: bool = False


# qemu-img check's exit codes: 0 clean, 2 corruptions, 3 leaked clusters only.
_CHECK_FINDINGS = {0: "clean", 2: "corrupt", 3: "leaks"}


@handler(
    "image.check",
    payload=CheckPayload,
    rerun_safe=True,
    resource=image_resource,
    admit=admit_input,
)
async def check(payload: CheckPayload, ctx: JobContext) -> dict[str, Any]:
    """qemu-img check: consistency of an image; corruption is a finding, not a failure."""
    await verified_chain(ctx, payload.path, payload.format)
    argv = [QEMU_IMG, "check", "--output=json"]
    argv += ["-f", payload.format] if payload.format else []
    argv += ["-U"] if payload.force_share else []
    result = await ctx.run_process([*argv, payload.path], check=False)
    finding = _CHECK_FINDINGS.get(result.returncode)
    if result.returncode == 63:
        raise HandlerError(f"{payload.path}: its format has no consistency checks")
    if finding is None:
        tail = result.stderr.decode(errors="replace").strip()[-500:]
        raise HandlerError(f"qemu-img check could not check {payload.path}: {tail}")
    return {"path": payload.path, "result": finding, **json.loads(result.stdout)}


class CreatePayload(ImageRef):
    path: str = Field(description=f"the new image (must not exist; created 0640): {_ROOTED}")
    format: ImageFormat = "qcow2"
    size_bytes: int = Field(gt=0)
    backing_file: str | None = Field(default=None, description=f"an existing image: {_ROOTED}")
    backing_format: ImageFormat | None = None
    preallocation: Literal["off", "metadata", "falloc", "full"] | None = None

    _absolute_backing = field_validator("backing_file")(_absolute)


def admit_create(payload: CreatePayload, gate: Admission) -> None:
    gate.policy.check_output(payload.path, field="payload.data.path")
    if payload.backing_file is not None:
        gate.policy.check_input(payload.backing_file, field="payload.data.backing_file")


@handler(
    "image.create",
    payload=CreatePayload,
    rerun_safe=False,
    resource=image_resource,
    admit=admit_create,
)
async def create(payload: CreatePayload, ctx: JobContext) -> Any:
    """qemu-img create: a new image (never over an existing file)."""
    check_disk_size(ctx, payload.size_bytes, field="payload.data.size_bytes")
    argv = [QEMU_IMG, "create", "-q", "-f", payload.format]
    if payload.backing_file:
        await verified_chain(ctx, payload.backing_file, payload.backing_format)
        argv += ["-b", payload.backing_file, "-F", payload.backing_format or payload.format]
    if payload.preallocation:
        argv += ["-o", f"preallocation={payload.preallocation}"]
    # Made here first (O_EXCL, 0640): qemu-img then writes into our file, never
    # over one that appeared since intake, and the mode does not depend on the umask.
    path = _policy(ctx).create_output(payload.path, field="payload.data.path")
    try:
        await ctx.run_process([*argv, path, str(payload.size_bytes)])
    except BaseException:
        with trio.CancelScope(shield=True), contextlib.suppress(FileNotFoundError):
            await trio.Path(path).unlink()
        raise
    return await _qemu_img_json(ctx, ["info", "--output=json", path])


class ResizePayload(ImageRef):
    size_bytes: int = Field(gt=0, description="the new virtual size (absolute)")
    format: ImageFormat | None = None
    shrink: bool = Field(default=False, description="allow shrinking (loses data at the end)")


def admit_resize(payload: ResizePayload, gate: Admission) -> None:
    admit_input(payload, gate)
    if payload.shrink and payload.format is None:
        raise ForbiddenError(
            "image.resize: shrinking needs the image's format",
            field="payload.data.format",
            reason="give format with shrink: true (a file of another format is not cut)",
        )


@handler(
    "image.resize",
    payload=ResizePayload,
    rerun_safe=True,
    resource=image_resource,
    admit=admit_resize,
)
async def resize(payload: ResizePayload, ctx: JobContext) -> Any:
    """qemu-img resize to an absolute virtual size."""
    check_disk_size(ctx, payload.size_bytes, field="payload.data.size_bytes")
    found = (await verified_chain(ctx, payload.path))[0].get("format")
    if found not in _DISK_FORMATS or (payload.format and found != payload.format):
        # Only images of the expected format are resized: never truncate another file.
        raise HandlerError(
            f"{payload.path} is a {found} image, not {payload.format or 'a disk image'}",
            field="payload.data.format",
        )
    argv = [QEMU_IMG, "resize", "-q"]
    argv += ["-f", payload.format] if payload.format else []
    argv += ["--shrink"] if payload.shrink else []
    await ctx.run_process([*argv, payload.path, str(payload.size_bytes)])
    return await _qemu_img_json(ctx, ["info", "--output=json", payload.path])


class ConvertPayload(ImageRef):
    output_path: str = Field(description=f"the image to write (created 0640): {_ROOTED}")
    output_format: ImageFormat = "qcow2"
    source_format: ImageFormat | None = None
    compress: bool = False
    overwrite: bool = False

    _absolute_output = field_validator("output_path")(_absolute)


def admit_convert(payload: ConvertPayload, gate: Admission) -> None:
    admit_input(payload, gate)
    gate.policy.check_output(
        payload.output_path, field="payload.data.output_path", overwrite=payload.overwrite
    )


@handler(
    "image.convert",
    payload=ConvertPayload,
    rerun_safe=True,
    resource=lambda p: f"image:{p.output_path}",
    admit=admit_convert,
)
async def convert(payload: ConvertPayload, ctx: JobContext) -> Any:
    """qemu-img convert with progress; the output appears only when complete."""
    policy = _policy(ctx)
    await verified_chain(ctx, payload.path, payload.source_format)
    located = policy.check_output(
        payload.output_path, field="payload.data.output_path", overwrite=payload.overwrite
    )
    output = trio.Path(located.path)
    # Written beside the output and renamed into place: no reader ever sees half an image,
    # and a rerun after a crash overwrites the same leftover.
    partial = output.with_name(f".{output.name}.{ctx.job_id}.part")
    with contextlib.suppress(FileNotFoundError):
        await partial.unlink()
    policy.create_output(str(partial), field="payload.data.output_path")
    argv = [QEMU_IMG, "convert", "-p", "-O", payload.output_format]
    argv += ["-f", payload.source_format] if payload.source_format else []
    argv += ["-c"] if payload.compress else []
    reported = -1

    async def on_stdout(chunk: bytes) -> None:
        nonlocal reported
        for match in _PROGRESS.finditer(chunk):
            percent = float(match.group(1))
            if int(percent) > reported:  # at most one event per whole percent
                reported = int(percent)
                await ctx.progress(percent, "converting")

    try:
        await ctx.run_process([*argv, payload.path, str(partial)], on_stdout=on_stdout)
        policy.check_output(
            str(output), field="payload.data.output_path", overwrite=payload.overwrite
        )
        await partial.rename(output)
    finally:
        with trio.CancelScope(shield=True), contextlib.suppress(FileNotFoundError):
            await partial.unlink()
    return await _qemu_img_json(ctx, ["info", "--output=json", str(output)])


class ChecksumPayload(ImageRef):
    algorithm: Literal["sha256"] = "sha256"
    expected: str | None = Field(
        default=None, pattern=r"^[0-9a-fA-F]{64}$", description="fail the job if it differs"
    )


@handler(
    "image.checksum",
    payload=ChecksumPayload,
    rerun_safe=True,
    resource=image_resource,
    admit=admit_input,
)
async def checksum(payload: ChecksumPayload, ctx: JobContext) -> dict[str, Any]:
    """sha256 of the file's bytes, streamed with progress; `expected` must match."""
    digest = hashlib.sha256()
    # Hashes the very file the policy checked (its descriptor), whatever the path says later.
    fd = _policy(ctx).open_input(payload.path, field="payload.data.path")
    os.set_blocking(fd, True)
    source = trio.wrap_file(os.fdopen(fd, "rb"))
    async with source:
        size = os.fstat(source.fileno()).st_size
        done, reported = 0, -1

        def read_and_hash() -> int:
            data = source.wrapped.read(CHUNK)
            digest.update(data)
            return len(data)

        while count := await trio.to_thread.run_sync(read_and_hash):
            done += count
            percent = 100 * done / size if size else 100
            if int(percent) > reported:
                reported = int(percent)
                await ctx.progress(percent, "hashing", bytes_done=done)
    value = digest.hexdigest()
    if payload.expected is not None and value != payload.expected.lower():
        raise HandlerError(
            f"sha256 mismatch for {payload.path}: expected {payload.expected.lower()}, got {value}",
            field="payload.data.expected",
        )
    return {"path": payload.path, "algorithm": "sha256", "digest": value, "size_bytes": done}


async def qemu_img_facts() -> dict[str, Any]:
    """Capability facts: the formats qemu-img supports (`disk_formats`) and its version."""
    try:
        help_text = await trio.run_process([QEMU_IMG, "--help"], capture_stdout=True, check=False)
    except FileNotFoundError:
        return {"disk_formats": [], "qemu_img": None}
    text = help_text.stdout.decode(errors="replace")
    formats = re.search(r"Supported formats:(.*)", text)
    version = re.search(r"qemu-img version (\S+)", text)
    return {
        "disk_formats": sorted(_DISK_FORMATS.intersection(formats.group(1).split()))
        if formats
        else [],
        "qemu_img": {"version": version.group(1) if version else None},
        "features": ["qemu-img"],
    }


HANDLERS = (info, check, create, resize, convert, checksum)
