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

from agent.context import JobContext
from agent.errors import HandlerError
from agent.handlers import check_disk_size
from agent.registry import handler

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


class ImageRef(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: str = Field(description="absolute path of the image file")

    _absolute_path = field_validator("path")(_absolute)


def image_resource(ref: ImageRef) -> str:
    return f"image:{ref.path}"


async def _qemu_img_json(ctx: JobContext, argv: list[str]) -> Any:
    result = await ctx.run_process([QEMU_IMG, *argv])
    return json.loads(result.stdout)


class InfoPayload(ImageRef):
    backing_chain: bool = False
    force_share: bool = Field(
        default=False, description="read an image a running VM holds open (qemu-img -U)"
    )


@handler("image.info", payload=InfoPayload, rerun_safe=True)
async def info(payload: InfoPayload, ctx: JobContext) -> Any:
    """qemu-img info as JSON: format, virtual and actual size, backing file, ..."""
    argv = ["info", "--output=json"]
    argv += ["--backing-chain"] if payload.backing_chain else []
    argv += ["-U"] if payload.force_share else []
    return await _qemu_img_json(ctx, [*argv, payload.path])


class CheckPayload(ImageRef):
    format: ImageFormat | None = None
    force_share: bool = False


# qemu-img check's exit codes: 0 clean, 2 corruptions, 3 leaked clusters only.
_CHECK_FINDINGS = {0: "clean", 2: "corrupt", 3: "leaks"}


@handler("image.check", payload=CheckPayload, rerun_safe=True, resource=image_resource)
async def check(payload: CheckPayload, ctx: JobContext) -> dict[str, Any]:
    """qemu-img check: consistency of an image; corruption is a finding, not a failure."""
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
    format: ImageFormat = "qcow2"
    size_bytes: int = Field(gt=0)
    backing_file: str | None = None
    backing_format: ImageFormat | None = None
    preallocation: Literal["off", "metadata", "falloc", "full"] | None = None

    _absolute_backing = field_validator("backing_file")(_absolute)


@handler("image.create", payload=CreatePayload, rerun_safe=False, resource=image_resource)
async def create(payload: CreatePayload, ctx: JobContext) -> Any:
    """qemu-img create: a new image (never over an existing file)."""
    check_disk_size(ctx, payload.size_bytes, field="payload.data.size_bytes")
    if await trio.Path(payload.path).exists():
        raise HandlerError(f"{payload.path} already exists", field="payload.data.path")
    argv = [QEMU_IMG, "create", "-q", "-f", payload.format]
    if payload.backing_file:
        argv += ["-b", payload.backing_file, "-F", payload.backing_format or payload.format]
    if payload.preallocation:
        argv += ["-o", f"preallocation={payload.preallocation}"]
    await ctx.run_process([*argv, payload.path, str(payload.size_bytes)])
    return await _qemu_img_json(ctx, ["info", "--output=json", payload.path])


class ResizePayload(ImageRef):
    size_bytes: int = Field(gt=0, description="the new virtual size (absolute)")
    format: ImageFormat | None = None
    shrink: bool = Field(default=False, description="allow shrinking (loses data at the end)")


@handler("image.resize", payload=ResizePayload, rerun_safe=True, resource=image_resource)
async def resize(payload: ResizePayload, ctx: JobContext) -> Any:
    """qemu-img resize to an absolute virtual size."""
    check_disk_size(ctx, payload.size_bytes, field="payload.data.size_bytes")
    argv = [QEMU_IMG, "resize", "-q"]
    argv += ["-f", payload.format] if payload.format else []
    argv += ["--shrink"] if payload.shrink else []
    await ctx.run_process([*argv, payload.path, str(payload.size_bytes)])
    return await _qemu_img_json(ctx, ["info", "--output=json", payload.path])


class ConvertPayload(ImageRef):
    output_path: str
    output_format: ImageFormat = "qcow2"
    source_format: ImageFormat | None = None
    compress: bool = False
    overwrite: bool = False

    _absolute_output = field_validator("output_path")(_absolute)


@handler(
    "image.convert",
    payload=ConvertPayload,
    rerun_safe=True,
    resource=lambda p: f"image:{p.output_path}",
)
async def convert(payload: ConvertPayload, ctx: JobContext) -> Any:
    """qemu-img convert with progress; the output appears only when complete."""
    output = trio.Path(payload.output_path)
    if await output.exists() and not payload.overwrite:
        raise HandlerError(f"{output} already exists", field="payload.data.output_path")
    # Written beside the output and renamed into place: no reader ever sees half an image,
    # and a rerun after a crash overwrites the same leftover.
    partial = output.with_name(f".{output.name}.{ctx.job_id}.part")
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


@handler("image.checksum", payload=ChecksumPayload, rerun_safe=True, resource=image_resource)
async def checksum(payload: ChecksumPayload, ctx: JobContext) -> dict[str, Any]:
    """sha256 of the file's bytes, streamed with progress; `expected` must match."""
    digest = hashlib.sha256()
    try:
        source = await trio.open_file(payload.path, "rb")
    except OSError as exc:
        raise HandlerError(f"cannot read {payload.path}: {exc.strerror}") from exc
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
