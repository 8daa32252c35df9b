"""One way to open a disk image: every file it names, opened and checked by the agent.

An image's header may name other files: a qcow2 backing file and external data
file, a VMDK descriptor's extents. qemu-img and libguestfs would open those by
name, after any check of ours and without one. So the agent opens the image and
each file it references itself (the path policy's openat2 walk: under a root, no
symbolic link, no '..', regular, one link), reads the format from the header
itself (never trusting qemu's probe for a file a job did not create), and hands
the tools those descriptors only: each bound into an empty sandbox
(agent.policy.sandbox) at its own path, and named in an explicit
`json:{"driver": ..., "file": ..., "backing": ...}` spec with a driver for every
layer, so no reference is followed that the agent did not check.

What is refused, with the reason: VMDK descriptors (text) and any VMDK whose
header sends qemu to its descriptor's extents; VMDK delta disks (a parent);
encrypted qcow2; qcow (v1) and every format other than raw, qcow2 and
monolithic sparse VMDK when it is an input; protocol names (json:, nbd:,
http:, ...) as backing or data files; chains deeper than MAX_DEPTH or with a
loop.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from typing import Any

from agent.errors import ForbiddenError, NotFoundError
from agent.policy.paths import Policy

MAX_DEPTH = 16
SECTOR = 512
# Enough of the start of a file to find every format's magic and a VMDK descriptor.
_PROBE_BYTES = 4096
_QCOW_MAGIC = b"QFI\xfb"
_VMDK_SPARSE_MAGIC = b"KDMV"
_VMDK3_MAGIC = b"COWD"
_VMDK_GD_AT_END = 0xFFFFFFFFFFFFFFFF
# qcow2 header extensions (docs/interop/qcow2.txt).
_EXT_END = 0x00000000
_EXT_BACKING_FORMAT = 0xE2792ACA
_EXT_DATA_FILE = 0x44415441
_INCOMPAT_DATA_FILE = 1 << 2
_MAX_HEADER_READ = 1024 * 1024
# Formats that qemu recognises by their first bytes; none of them is opened as an input.
_OTHER_MAGIC = (
    (0, b"QED\x00", "qed"),
    (0, b"conectix", "vpc"),
    (0, b"vhdxfile", "vhdx"),
    (0, b"LUKS\xba\xbe", "luks"),
    (0, b"WithoutFreeSpace", "parallels"),
    (0, b"WithouFreSpacExt", "parallels"),
    (0, b"Bochs Virtual HD Image", "bochs"),
    (0, b"#!/bin/sh\n#V2.0 Format", "cloop"),
    (64, b"\x7f\x10\xda\xbe", "vdi"),
)
# "nbd:", "json:", "http:" ...: a name qemu would read as a protocol, not a file.
_PROTOCOL = re.compile(r"^[^/]*:")
INPUT_FORMATS = ("raw", "qcow2", "vmdk")


def _refuse(field_name: str, message: str, reason: str) -> ForbiddenError:
    return ForbiddenError(f"{field_name}: {message}", field=field_name, reason=reason)


@dataclass
class Layer:
    """One checked file of an image: its path, the descriptor the agent opened, its format."""

    path: str
    fd: int
    format: str
    writable: bool = False
    data_file: Layer | None = None


@dataclass
class CheckedImage:
    """An image and every file it names, open and checked; close() (or `with`) releases them.

    `layers[0]` is the image, `layers[1:]` its backing chain in order."""

    layers: list[Layer]
    extra: list[Layer] = dataclass_field(default_factory=list)

    @property
    def path(self) -> str:
        return self.layers[0].path

    @property
    def format(self) -> str:
        return self.layers[0].format

    def files(self) -> list[Layer]:
        """Every file the tools may open: layers and their data files."""
        found: list[Layer] = []
        for layer in [*self.layers, *self.extra]:
            found.append(layer)
            if layer.data_file is not None:
                found.append(layer.data_file)
        return found

    def spec(self, start: int = 0, *, backing: bool = True) -> dict[str, Any]:
        """The blockdev spec of layers[start:] (or of that layer alone): an explicit
        driver and file per layer, `backing: null` where the chain ends."""
        layer = self.layers[start]
        node: dict[str, Any] = {
            "driver": layer.format,
            "file": {"driver": "file", "filename": layer.path},
        }
        if layer.data_file is not None:
            node["data-file"] = {"driver": "file", "filename": layer.data_file.path}
        if layer.format != "raw":
            more = backing and start + 1 < len(self.layers)
            node["backing"] = self.spec(start + 1) if more else None
        return node

    def filename(self, start: int = 0, *, backing: bool = True) -> str:
        """The spec as a qemu `json:` filename (no probing, no name resolution by qemu)."""
        return "json:" + json.dumps(self.spec(start, backing=backing), separators=(",", ":"))

    def close(self) -> None:
        for layer in self.files():
            with contextlib.suppress(OSError):
                os.close(layer.fd)
        self.layers, self.extra = [], []

    def __enter__(self) -> CheckedImage:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def detect_format(head: bytes) -> str:
    """The format of a file from its first bytes, as the agent reads them: qcow2, vmdk
    (sparse), vmdk-descriptor, another format's name, or raw when nothing matches."""
    if head.startswith(_QCOW_MAGIC):
        version = struct.unpack_from(">I", head, 4)[0] if len(head) >= 8 else 0
        # Other versions are qcow2 to qemu too (which then refuses them with its reason).
        return "qcow" if version == 1 else "qcow2"
    if head.startswith(_VMDK_SPARSE_MAGIC):
        return "vmdk"
    if head.startswith(_VMDK3_MAGIC):
        return "vmdk3"
    for offset, magic, name in _OTHER_MAGIC:
        if head[offset : offset + len(magic)] == magic:
            return name
    if _looks_like_descriptor(head):
        return "vmdk-descriptor"
    return "raw"


def _looks_like_descriptor(head: bytes) -> bool:
    """What qemu's VMDK probe accepts (after comments and blanks, `version=N`), and more:
    any first sectors naming a createType or extents."""
    if b"createType" in head or b"# Disk DescriptorFile" in head:
        return True
    for raw_line in head.split(b"\n"):
        line = raw_line.strip(b" \r\t")
        if not line or line.startswith(b"#"):
            continue
        return line.startswith(b"version=")
    return False


def open_image_chain(
    policy: Policy,
    path: str,
    fmt: str | None = None,
    *,
    field: str = "payload.data.path",
    writable: bool = False,
) -> CheckedImage:
    """Open `path` and every file its header names, each checked by the path policy.

    `fmt` is the caller's word for the top image's format; without it the agent reads
    the header itself. Blocking (file reads): call it through trio.to_thread.
    Raises ForbiddenError (naming `field` and the reason) for anything unchecked."""
    walk = _Walk(policy, field)
    image = CheckedImage([])
    try:
        current: tuple[str, str | None] | None = (path, fmt)
        while current is not None:
            walk.deeper(path, len(image.layers))
            referrer = image.layers[-1].path if image.layers else None
            layer, current = walk.open_layer(*current, referrer, writable=writable and not referrer)
            image.layers.append(layer)
    except BaseException:
        image.close()
        raise
    return image


def check_image(policy: Policy, path: str, fmt: str | None = None, *, field: str) -> None:
    """open_image_chain, then close: for admission checks (domain disks, intake)."""
    open_image_chain(policy, path, fmt, field=field).close()


@dataclass
class _Walk:
    """One image's walk: the policy, the field errors name, the files seen so far."""

    policy: Policy
    field: str
    seen: set[tuple[int, int]] = dataclass_field(default_factory=set)

    def deeper(self, path: str, depth: int) -> None:
        if depth >= MAX_DEPTH:
            raise _refuse(
                self.field,
                f"{path}: the backing chain is deeper than {MAX_DEPTH}",
                "backing chain too deep",
            )

    def open_checked(self, path: str, named_by: str | None = None, what: str = "") -> int:
        try:
            fd = self.policy.open_input(path, field=self.field)
        except (ForbiddenError, NotFoundError) as exc:
            if named_by is None:
                raise
            reason = str(exc.details.get("reason", "refused"))
            detail = exc.message.removeprefix(f"{self.field}: ")
            message = f"{self.field}: {what} named by {named_by}: {detail}"
            raise type(exc)(message, field=self.field, reason=reason) from exc
        info = os.fstat(fd)
        key = (info.st_dev, info.st_ino)
        if key in self.seen:
            os.close(fd)
            raise _refuse(
                self.field, f"{path} appears twice in one image", "a loop in the backing chain"
            )
        self.seen.add(key)
        return fd

    def open_layer(
        self, name: str, claimed: str | None, referrer: str | None, *, writable: bool
    ) -> tuple[Layer, tuple[str, str | None] | None]:
        """Open one layer; its format checked, its data file opened, its backing returned."""
        field_name = self.field
        path = _resolve(name, referrer, field_name, "backing file")
        fd = self.open_checked(path, referrer, "the backing file")
        layer = Layer(path, fd, "raw", writable=writable)
        try:
            layer.format = _layer_format(fd, claimed, path, referrer, field_name)
            if layer.format == "qcow2":
                return layer, _qcow2_references(self, layer)
            if layer.format == "vmdk":
                _check_sparse_vmdk(fd, path, field_name)
        except BaseException:
            os.close(fd)
            if layer.data_file is not None:
                os.close(layer.data_file.fd)
            raise
        return layer, None


def _layer_format(
    fd: int, claimed: str | None, path: str, referrer: str | None, field_name: str
) -> str:
    """The format a layer is opened as: the caller's (checked against the header) or the
    agent's own reading of the header; never qemu's probe."""
    found = detect_format(os.pread(fd, _PROBE_BYTES, 0))
    what = path if referrer is None else f"{path} (backing file of {referrer})"
    if claimed is None and found not in INPUT_FORMATS:
        raise _refuse(field_name, f"{what} looks like {_describe(found)}", _refusal(found))
    if claimed is not None and claimed not in INPUT_FORMATS:
        raise _refuse(field_name, f"{what}: format {claimed} is not opened", _refusal(claimed))
    fmt = claimed or found
    if fmt == "vmdk" and found == "vmdk-descriptor":
        raise _refuse(field_name, f"{what} is a VMDK descriptor", _refusal(found))
    if fmt not in {"raw", found}:
        raise _refuse(
            field_name, f"{what} is not a {fmt} image ({_describe(found)})", "wrong format"
        )
    return fmt


def _describe(found: str) -> str:
    return {
        "vmdk-descriptor": "a VMDK descriptor",
        "raw": "a raw file",
        "qcow": "a qcow (version 1) image",
        "vmdk3": "a VMDK version 3 image",
    }.get(found, f"a {found} image")


def _refusal(found: str) -> str:
    if found == "vmdk-descriptor":
        return (
            "VMDK descriptors name extent files the agent does not open for qemu: refused "
            "(give format: raw if this is a raw disk)"
        )
    return "only raw, qcow2 and monolithic sparse VMDK images are opened as inputs"


def _resolve(name: str, referrer: str | None, field: str, what: str) -> str:
    """A name from a header as the absolute path qemu would open (relative names are
    relative to the referring image's directory); protocol names are refused."""
    if referrer is None:
        return name
    if not name or "\0" in name:
        raise _refuse(field, f"{referrer} names an empty {what}", f"an empty {what} name")
    if _PROTOCOL.match(name):
        raise _refuse(
            field,
            f"{referrer} names the {what} {name[:80]!r}, not a file",
            "protocol names (json:, nbd:, http:, ...) are refused",
        )
    return name if name.startswith("/") else os.path.join(os.path.dirname(referrer), name)


def _header_text(blob: bytes, field: str, where: str) -> str:
    try:
        return blob.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _refuse(field, f"{where}: a name is not UTF-8", "unreadable name") from exc


def _qcow2_references(walk: _Walk, layer: Layer) -> tuple[str, str | None] | None:
    """Check a qcow2 header: its data file opened and checked, its backing file returned."""
    field = walk.field
    head = os.pread(layer.fd, 104, 0)
    if len(head) < 72:
        raise _refuse(field, f"{layer.path}: truncated qcow2 header", "not a qcow2 image")
    version, backing_offset, backing_size = struct.unpack_from(">IQI", head, 4)
    cluster_bits = struct.unpack_from(">I", head, 20)[0]
    crypt_method = struct.unpack_from(">I", head, 32)[0]
    if crypt_method != 0:
        raise _refuse(field, f"{layer.path} is encrypted", "encrypted images are not opened")
    incompatible, header_length = 0, 72
    if version >= 3:
        if len(head) < 104:
            raise _refuse(field, f"{layer.path}: truncated qcow2 header", "not a qcow2 image")
        incompatible = struct.unpack_from(">Q", head, 72)[0]
        header_length = struct.unpack_from(">I", head, 100)[0]
    cluster = 1 << min(max(cluster_bits, 9), 21)
    extensions = _qcow2_extensions(layer.fd, header_length, min(cluster, _MAX_HEADER_READ))
    backing_format: str | None = None
    if _EXT_BACKING_FORMAT in extensions:
        backing_format = _header_text(extensions[_EXT_BACKING_FORMAT], field, layer.path)
        backing_format = backing_format.rstrip("\0")
    if incompatible & _INCOMPAT_DATA_FILE:
        blob = extensions.get(_EXT_DATA_FILE)
        if not blob:
            raise _refuse(
                field,
                f"{layer.path} has an external data file with no name",
                "an external data file the agent cannot check",
            )
        name = _header_text(blob, field, layer.path).rstrip("\0")
        data_path = _resolve(name, layer.path, field, "data file")
        data_fd = walk.open_checked(data_path, layer.path, "the external data file")
        layer.data_file = Layer(data_path, data_fd, "raw", writable=layer.writable)
    if backing_size == 0 or backing_offset == 0:
        return None
    if backing_size > 1023:
        raise _refuse(field, f"{layer.path}: backing file name too long", "name too long")
    name = _header_text(os.pread(layer.fd, backing_size, backing_offset), field, layer.path)
    if backing_format is not None and backing_format not in INPUT_FORMATS:
        raise _refuse(
            field,
            f"{layer.path} names a {backing_format[:20]!r} backing file",
            _refusal(backing_format),
        )
    return _resolve(name, layer.path, field, "backing file"), backing_format


def _qcow2_extensions(fd: int, start: int, limit: int) -> dict[int, bytes]:
    """The header extensions (type -> data) between the header and the end marker."""
    blob = os.pread(fd, max(limit - start, 0), start)
    found: dict[int, bytes] = {}
    offset = 0
    while offset + 8 <= len(blob):
        kind, length = struct.unpack_from(">II", blob, offset)
        if kind == _EXT_END:
            break
        found[kind] = blob[offset + 8 : offset + 8 + length]
        offset += 8 + ((length + 7) & ~7)
    return found


def _check_sparse_vmdk(fd: int, what: str, field: str) -> None:
    """A monolithic sparse (or stream-optimized) VMDK is one file: refuse what would make
    qemu read its embedded descriptor's extents (capacity 0) or open a parent."""
    head = os.pread(fd, 64, 0)
    if len(head) < 64:
        raise _refuse(field, f"{what}: truncated VMDK header", "not a VMDK image")
    if struct.unpack_from("<Q", head, 56)[0] == _VMDK_GD_AT_END:
        # Stream-optimized: qemu reads the header it uses from the footer, 1 KiB from the end.
        head = os.pread(fd, 64, max(os.fstat(fd).st_size - 1024, 0))
        if len(head) < 64 or not head.startswith(_VMDK_SPARSE_MAGIC):
            raise _refuse(field, f"{what}: no VMDK footer", "not a VMDK image")
    capacity, _granularity, desc_offset, desc_size = struct.unpack_from("<QQQQ", head, 12)
    if capacity == 0:
        raise _refuse(
            field,
            f"{what}: a VMDK whose extents are listed in its descriptor",
            "only monolithicSparse/streamOptimized VMDK with no external extents",
        )
    if desc_offset == 0:
        return
    text = os.pread(fd, min(desc_size, 128) * SECTOR, desc_offset * SECTOR)
    text = text.split(b"\0", 1)[0]
    create_type = re.search(rb'createType\s*=\s*"?(\w+)', text)
    if create_type and create_type.group(1) not in (b"monolithicSparse", b"streamOptimized"):
        raise _refuse(
            field,
            f"{what}: VMDK createType {create_type.group(1).decode(errors='replace')[:40]}",
            "only monolithicSparse/streamOptimized VMDK with no external extents",
        )
    if re.search(rb"parentFileNameHint", text):
        raise _refuse(field, f"{what}: a VMDK delta disk", "VMDK parents are not opened")
    extents = re.findall(rb"^\s*(?:RW|RDONLY|NOACCESS)\s", text, flags=re.MULTILINE)
    if len(extents) > 1:
        raise _refuse(
            field,
            f"{what}: a VMDK with {len(extents)} extents",
            "only monolithicSparse/streamOptimized VMDK with no external extents",
        )


@contextlib.contextmanager
def opened(
    policy: Policy, path: str, fmt: str | None = None, *, field: str, writable: bool = False
) -> Iterator[CheckedImage]:
    """open_image_chain as a context manager (blocking: for worker threads)."""
    image = open_image_chain(policy, path, fmt, field=field, writable=writable)
    try:
        yield image
    finally:
        image.close()
