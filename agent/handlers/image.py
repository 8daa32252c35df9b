"""image.*: disk image files, through qemu-img (and hashlib for checksums)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial
from typing import TYPE_CHECKING, Any, Literal

import trio
from pydantic import BaseModel, ConfigDict, Field, field_validator

from agent.core.context import JobContext, ProcessResult
from agent.core.registry import handler
from agent.errors import ForbiddenError, HandlerError
from agent.handlers import check_disk_size
from agent.policy import sandbox
from agent.policy.images import CheckedImage, Layer, check_image, open_image_chain
from agent.policy.paths import Admission, Policy
from agent.policy.sandbox import SANDBOX

if TYPE_CHECKING:
    from agent.core.capabilities import Capabilities
    from agent.core.health import Health, Status

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
    """At intake: the image and every file it names (checked again when the job runs)."""
    fmt = getattr(payload, "format", None) or getattr(payload, "source_format", None)
    check_image(gate.policy, payload.path, fmt, field="payload.data.path")


def admit_file(payload: ImageRef, gate: Admission) -> None:
    """At intake: a file read as bytes only (image.checksum follows no reference)."""
    gate.policy.check_input(payload.path, field="payload.data.path")


def _policy(ctx: JobContext) -> Policy:
    return ctx.get(Policy)


async def open_image(
    ctx: JobContext,
    path: str,
    fmt: str | None = None,
    *,
    field: str = "payload.data.path",
    writable: bool = False,
) -> CheckedImage:
    """The image and every file it names, opened and checked now (agent.policy.images)."""
    opener = partial(open_image_chain, _policy(ctx), path, fmt, field=field, writable=writable)
    # Not abandoned on cancel: the descriptors it opens are always returned and closed.
    return await trio.to_thread.run_sync(opener)


async def run_qemu_img(
    ctx: JobContext,
    argv: list[str],
    files: list[Layer],
    *,
    on_stdout: Callable[[bytes], Awaitable[None]] | None = None,
    check: bool = True,
) -> ProcessResult:
    """qemu-img in the sandbox, seeing only `files` (bound from the agent's descriptors)."""
    problem = await SANDBOX.check()
    if problem is not None:
        raise ForbiddenError(
            f"{QEMU_IMG}: the sandbox cannot run here: {problem}",
            field="operation",
            reason="qemu-img runs only in the sandbox (bubblewrap); install bubblewrap",
        )
    binds = [sandbox.Bind(f.fd, f.path, f.writable) for f in files]
    wrapped = sandbox.wrap([QEMU_IMG, *argv], binds)
    result = await ctx.run_process(
        wrapped, on_stdout=on_stdout, check=False, pass_fds=sandbox.pass_fds(binds)
    )
    if check and result.returncode != 0:
        # Named as qemu-img, not as the bwrap that ran it.
        tail = result.stderr.decode(errors="replace").strip()[-500:]
        raise HandlerError(f"{QEMU_IMG} exited with status {result.returncode}: {tail}")
    return result


async def _qemu_img_json(ctx: JobContext, argv: list[str], files: list[Layer]) -> Any:
    result = await run_qemu_img(ctx, argv, files)
    return json.loads(result.stdout)


async def _info(ctx: JobContext, image: CheckedImage, index: int = 0, *, shared: bool) -> Any:
    """qemu-img info of one layer alone (its backing left unopened), named by its path."""
    argv = ["info", "--output=json", *(["-U"] if shared else [])]
    found = await _qemu_img_json(ctx, [*argv, image.filename(index, backing=False)], image.files())
    found["filename"] = image.layers[index].path
    return found


class InfoPayload(ImageRef):
    format: ImageFormat | None = Field(
        default=None, description="the image's format; read from its header when absent"
    )
    backing_chain: bool = False
    force_share: bool = Field(
        default=False, description="read an image a running VM holds open (qemu-img -U)"
    )


@handler("image.info", payload=InfoPayload, rerun_safe=True, admit=admit_input)
async def info(payload: InfoPayload, ctx: JobContext) -> Any:
    """qemu-img info as JSON: format, virtual and actual size, backing file, ..."""
    with await open_image(ctx, payload.path, payload.format) as image:
        if not payload.backing_chain:
            return await _info(ctx, image, shared=payload.force_share)
        # One layer at a time: qemu-img's own --backing-chain would open each name again.
        return [
            await _info(ctx, image, index, shared=payload.force_share)
            for index in range(len(image.layers))
        ]


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
    with await open_image(ctx, payload.path, payload.format) as image:
        argv = ["check", "--output=json", *(["-U"] if payload.force_share else [])]
        result = await run_qemu_img(ctx, [*argv, image.filename()], image.files(), check=False)
    finding = _CHECK_FINDINGS.get(result.returncode)
    if result.returncode == 63:
        raise HandlerError(f"{payload.path}: its format has no consistency checks")
    if finding is None:
        tail = result.stderr.decode(errors="replace").strip()[-500:]
        raise HandlerError(f"qemu-img check could not check {payload.path}: {tail}")
    return {**json.loads(result.stdout), "path": payload.path, "result": finding}


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
        field = "payload.data.backing_file"
        check_image(gate.policy, payload.backing_file, payload.backing_format, field=field)


@contextlib.asynccontextmanager
async def _new_output(ctx: JobContext, path: str, fmt: str, field: str) -> AsyncIterator[Layer]:
    """A file the agent creates (O_EXCL, 0640) for qemu-img to write through its descriptor;
    removed (by the walk, never by a name outside the root) unless the job succeeds."""
    policy = _policy(ctx)
    made, fd = await trio.to_thread.run_sync(partial(policy.open_output, path, field=field))
    done = False
    try:
        yield Layer(made, fd, fmt, writable=True)
        done = True
    finally:
        os.close(fd)
        if not done:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(partial(policy.remove_output, made, field=field))


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
    argv = ["create", "-q", "-f", payload.format]
    backing: CheckedImage | None = None
    if payload.backing_file:
        field = "payload.data.backing_file"
        backing = await open_image(ctx, payload.backing_file, payload.backing_format, field=field)
        # -u: the header names the checked backing file; qemu-img need not open it.
        argv += ["-u", "-b", backing.path, "-F", backing.format]
    if payload.preallocation:
        argv += ["-o", f"preallocation={payload.preallocation}"]
    try:
        async with _new_output(ctx, payload.path, payload.format, "payload.data.path") as out:
            await run_qemu_img(ctx, [*argv, out.path, str(payload.size_bytes)], [out])
            return await _info(ctx, CheckedImage([out]), shared=False)
    finally:
        if backing is not None:
            backing.close()


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
    # The format comes from the header as the agent reads it (or must match the one given):
    # only a disk image of the expected format is resized, never another file truncated.
    with await open_image(ctx, payload.path, payload.format, writable=True) as image:
        argv = ["resize", "-q", *(["--shrink"] if payload.shrink else [])]
        await run_qemu_img(ctx, [*argv, image.filename(), str(payload.size_bytes)], image.files())
        return await _info(ctx, image, shared=False)


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
    field = "payload.data.output_path"
    located = policy.check_output(payload.output_path, field=field, overwrite=payload.overwrite)
    output = trio.Path(located.path)
    # Written beside the output and renamed into place: no reader ever sees half an image,
    # and a rerun after a crash overwrites the same leftover.
    partial_path = str(output.with_name(f".{output.name}.{ctx.job_id}.part"))
    await trio.to_thread.run_sync(partial(policy.remove_output, partial_path, field=field))
    argv = ["convert", "-p", "-O", payload.output_format, *(["-c"] if payload.compress else [])]
    reported = -1

    async def on_stdout(chunk: bytes) -> None:
        nonlocal reported
        for match in _PROGRESS.finditer(chunk):
            percent = float(match.group(1))
            if int(percent) > reported:  # at most one event per whole percent
                reported = int(percent)
                await ctx.progress(percent, "converting")

    with await open_image(ctx, payload.path, payload.source_format) as source:
        async with _new_output(ctx, partial_path, payload.output_format, field) as out:
            files = [*source.files(), out]
            await run_qemu_img(
                ctx, [*argv, source.filename(), out.path], files, on_stdout=on_stdout
            )
            publish = partial(
                policy.publish_output,
                partial_path,
                located.path,
                field=field,
                overwrite=payload.overwrite,
            )
            await trio.to_thread.run_sync(publish)
            published = Layer(located.path, out.fd, payload.output_format)
            return await _info(ctx, CheckedImage([published]), shared=False)


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
    admit=admit_file,
)
async def checksum(payload: ChecksumPayload, ctx: JobContext) -> dict[str, Any]:
    """sha256 of the file's bytes, streamed with progress; `expected` must match."""
    # Hashes the very file the policy checked (its descriptor), whatever the path says later.
    opener = partial(_policy(ctx).open_input, payload.path, field="payload.data.path")
    fd = await trio.to_thread.run_sync(opener)
    try:
        value, done = await sha256_of(ctx, fd)
    finally:
        os.close(fd)
    if payload.expected is not None and value != payload.expected.lower():
        raise HandlerError(
            f"sha256 mismatch for {payload.path}: expected {payload.expected.lower()}, got {value}",
            field="payload.data.expected",
        )
    return {"path": payload.path, "algorithm": "sha256", "digest": value, "size_bytes": done}


async def sha256_of(ctx: JobContext, fd: int) -> tuple[str, int]:
    """The sha256 of an open file's bytes (read with pread: the caller keeps its fd and
    offset) and how many bytes it has, with progress events."""
    digest = hashlib.sha256()
    size = os.fstat(fd).st_size
    done, reported = 0, -1

    def read_and_hash(offset: int) -> int:
        data = os.pread(fd, CHUNK, offset)
        digest.update(data)
        return len(data)

    while count := await trio.to_thread.run_sync(read_and_hash, done):
        done += count
        percent = 100 * done / size if size else 100
        if int(percent) > reported:
            reported = int(percent)
            await ctx.progress(percent, "hashing", bytes_done=done)
    return digest.hexdigest(), done


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


async def sandbox_facts() -> dict[str, Any]:
    """Capability fact `sandbox`: whether qemu-img and libguestfs can run sandboxed here."""
    problem = await SANDBOX.check()
    return {"sandbox": {"tool": "bwrap", "available": problem is None, "problem": problem}}


def contribute(capabilities: Capabilities, health: Health) -> None:
    """The daemon's hook: qemu-img's facts, the sandbox's fact and health component."""

    async def check() -> tuple[Status, str, dict[str, Any]]:
        problem = await SANDBOX.check()
        if problem is not None:
            # Only image.* and guestkit.* are refused: the agent itself works.
            return "degraded", f"image jobs are refused: {problem}", {}
        return "healthy", "qemu-img and libguestfs run in the bwrap sandbox", {}

    capabilities.contribute(qemu_img_facts)
    capabilities.contribute(sandbox_facts)
    health.add("sandbox", check)


HANDLERS = (info, check, create, resize, convert, checksum)
