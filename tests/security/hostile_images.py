"""Hostile disk images, built at test time with qemu-img and small writers.

Each names a secret outside the image roots in one of the ways a format can:
qcow2 backing and data files (absolute, relative, through a symlink, as json: or
nbd: names), VMDK descriptors with flat and sparse extents, a raw disk whose first
sector is a VMDK descriptor, VMDK parents, chains that mix formats. None of the
secret's bytes may reach anything the submitter can read.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path

MIB = 1024 * 1024


@dataclass(frozen=True)
class Planted:
    """The roots, the directory outside them, and the marker the secret is made of."""

    root: Path
    outside: Path
    marker: bytes

    @property
    def secret(self) -> Path:
        return self.outside / "secret.raw"


def qemu_img(*argv: str, cwd: Path | None = None) -> None:
    subprocess.run(["qemu-img", *argv], check=True, capture_output=True, cwd=cwd)


def plant(root: Path, outside: Path) -> Planted:
    """The secret: 1 MiB of a marker (found by a plain search in any copy of it)."""
    root.mkdir(exist_ok=True)
    outside.mkdir(exist_ok=True)
    marker = b"S3CR3T-" + os.urandom(8).hex().encode() + b"-"
    planted = Planted(root, outside, marker)
    planted.secret.write_bytes((marker * (MIB // len(marker) + 1))[:MIB])
    return planted


def descriptor(extent: str, kind: str = "FLAT", *, create_type: str = "monolithicFlat") -> str:
    tail = " 0" if kind == "FLAT" else ""
    return (
        "# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\n"
        f'createType="{create_type}"\n\n# Extent description\n'
        f'RW 2048 {kind} "{extent}"{tail}\n\n# The Disk Data Base\n#DDB\n'
        'ddb.virtualHWVersion = "4"\nddb.geometry.cylinders = "2"\n'
        'ddb.geometry.heads = "16"\nddb.geometry.sectors = "63"\nddb.adapterType = "ide"\n'
    )


def forget_backing_format(image: Path) -> None:
    """Make qemu probe the backing file's format: the header extension that names it
    becomes one qemu ignores (unknown type)."""
    blob = bytearray(image.read_bytes())
    at = blob.find(struct.pack(">I", 0xE2792ACA), 72, 4096)
    assert at > 0, "no backing format extension"
    blob[at : at + 4] = struct.pack(">I", 0x0BADF00D)
    image.write_bytes(bytes(blob))


def build(p: Planted) -> dict[str, Path]:
    """Every hostile image, by case name (all inside the root; what they name is not)."""
    root, outside, secret = p.root, p.outside, str(p.secret)
    cases: dict[str, Path] = {}

    # qcow2 with an external raw data file outside the roots (resize would grow it).
    data = outside / "data.raw"
    qemu_img(
        "create", "-q", "-f", "qcow2", "-o", f"data_file={data},data_file_raw=on",
        str(root / "datafile.qcow2"), "1M",
    )  # fmt: skip
    data.write_bytes(p.secret.read_bytes())
    cases["qcow2-data-file-outside"] = root / "datafile.qcow2"
    qemu_img(
        "create", "-q", "-f", "qcow2", "-o", "data_file=../outside/data-rel.raw,data_file_raw=on",
        "datafile-rel.qcow2", "1M", cwd=root,
    )  # fmt: skip
    (outside / "data-rel.raw").write_bytes(p.secret.read_bytes())
    cases["qcow2-data-file-relative"] = root / "datafile-rel.qcow2"

    def backed(name: str, backing: str, fmt: str | None = "raw") -> Path:
        argv = ["create", "-q", "-f", "qcow2", "-u", "-b", backing]
        argv += ["-F", fmt] if fmt else []
        qemu_img(*argv, str(root / name), "1M", cwd=root)
        return root / name

    cases["backing-absolute-outside"] = backed("abs.qcow2", secret)
    cases["backing-relative-outside"] = backed("rel.qcow2", "../outside/secret.raw")
    spec = {"driver": "raw", "file": {"driver": "file", "filename": secret}}
    cases["backing-json"] = backed("json.qcow2", "json:" + json.dumps(spec))
    cases["backing-nbd"] = backed("nbd.qcow2", "nbd:127.0.0.1:10809")
    (root / "link.raw").symlink_to(p.secret)
    cases["backing-symlink"] = backed("link.qcow2", "link.raw")

    # VMDK descriptors: flat extents (absolute, relative) and a sparse extent outside.
    (root / "flat.vmdk").write_text(descriptor(secret))
    cases["vmdk-flat-absolute"] = root / "flat.vmdk"
    (root / "flat-rel.vmdk").write_text(descriptor("../outside/secret.raw"))
    cases["vmdk-flat-relative"] = root / "flat-rel.vmdk"
    sparse_extent = outside / "extent.vmdk"
    qemu_img("convert", "-O", "vmdk", secret, str(sparse_extent))
    sparse = descriptor(str(sparse_extent), "SPARSE", create_type="monolithicSparse")
    (root / "sparse.vmdk").write_text(sparse)
    cases["vmdk-sparse-extent"] = root / "sparse.vmdk"
    # A monolithic sparse VMDK whose parent is the secret (a delta disk).
    qemu_img(
        "create", "-q", "-f", "vmdk", "-u", "-b", str(sparse_extent), "-F", "vmdk",
        str(root / "delta.vmdk"), "1M",
    )  # fmt: skip
    cases["vmdk-parent"] = root / "delta.vmdk"

    # What a guest can write: its raw disk's first sector made a descriptor.
    guest = bytearray(MIB)
    text = descriptor(secret).encode()
    guest[: len(text)] = text
    (root / "guest.raw").write_bytes(bytes(guest))
    cases["raw-first-sector-descriptor"] = root / "guest.raw"

    # Chains that mix formats: qcow2 -> qcow2 -> that raw disk (no backing format given),
    # and qcow2 -> a VMDK descriptor.
    qemu_img("create", "-q", "-f", "qcow2", "-u", "-b", "guest.raw", "-F", "raw",
             str(root / "mid.qcow2"), "1M")  # fmt: skip
    forget_backing_format(root / "mid.qcow2")
    cases["chain-to-descriptor"] = backed("chain-top.qcow2", "mid.qcow2", "qcow2")
    cases["chain-qcow2-vmdk"] = backed("chain-vmdk.qcow2", "flat.vmdk", "vmdk")
    cases["chain-raw-named-vmdk-format"] = backed("chain-guest.qcow2", "guest.raw", "vmdk")
    return cases


def fingerprints(folder: Path) -> dict[str, tuple[str, int, int]]:
    """sha256, size and mtime of every file under `folder` (links not followed)."""
    found = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and not path.is_symlink():
            info = path.stat()
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            found[str(path)] = (digest, info.st_size, info.st_mtime_ns)
    return found


def files_holding(folder: Path, marker: bytes) -> list[str]:
    """Files under `folder` that hold the marker (a copy of the secret's bytes)."""
    return [
        str(path)
        for path in folder.rglob("*")
        if path.is_file() and not path.is_symlink() and marker in path.read_bytes()
    ]
