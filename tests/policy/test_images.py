"""agent.policy.images: how the agent reads image headers and walks what they name."""

from __future__ import annotations

import os
import struct
import subprocess
from pathlib import Path

import pytest

from agent.config import Config
from agent.errors import ForbiddenError
from agent.policy.images import MAX_DEPTH, detect_format, open_image_chain
from agent.policy.paths import Policy

MIB = 1024 * 1024


def qemu_img(*argv: str, cwd: Path | None = None) -> None:
    subprocess.run(["qemu-img", *argv], check=True, capture_output=True, cwd=cwd)


@pytest.fixture
def root(config: Config) -> Path:
    folder = Path(config.policy.image_roots[0])
    folder.mkdir()
    return folder


@pytest.fixture
def policy(config: Config) -> Policy:
    return Policy(config)


def refusal(policy: Policy, path: Path, fmt: str | None = None) -> str:
    with pytest.raises(ForbiddenError) as refused:
        open_image_chain(policy, str(path), fmt)
    assert refused.value.details["field"] == "payload.data.path"
    return refused.value.message


def open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (b"QFI\xfb\x00\x00\x00\x03" + bytes(504), "qcow2"),
        (b"QFI\xfb\x00\x00\x00\x01" + bytes(504), "qcow"),
        (b"KDMV" + bytes(508), "vmdk"),
        (b"COWD" + bytes(508), "vmdk3"),
        (b"# a comment\n\n  version=1\nCID=1\n", "vmdk-descriptor"),
        (b'version=2\r\ncreateType="vmfs"\n', "vmdk-descriptor"),
        (bytes(64) + b"\x7f\x10\xda\xbe" + bytes(444), "vdi"),
        (b"vhdxfile" + bytes(504), "vhdx"),
        (b"conectix" + bytes(504), "vpc"),
        (bytes(512), "raw"),
        (b"hello, not a disk\n", "raw"),
    ],
)
def test_the_format_is_read_from_the_header(head: bytes, expected: str) -> None:
    assert detect_format(head) == expected


def test_a_chain_becomes_one_spec_with_a_driver_per_layer(root: Path, policy: Policy) -> None:
    (root / "base.raw").write_bytes(bytes(MIB))
    qemu_img("create", "-q", "-f", "qcow2", "-b", "base.raw", "-F", "raw", "top.qcow2", cwd=root)
    with open_image_chain(policy, str(root / "top.qcow2")) as image:
        assert [(layer.path, layer.format) for layer in image.layers] == [
            (str(root / "top.qcow2"), "qcow2"),
            (str(root / "base.raw"), "raw"),
        ]
        assert image.spec() == {
            "driver": "qcow2",
            "file": {"driver": "file", "filename": str(root / "top.qcow2")},
            "backing": {
                "driver": "raw",
                "file": {"driver": "file", "filename": str(root / "base.raw")},
            },
        }
        assert image.spec(0, backing=False)["backing"] is None
        fds = [layer.fd for layer in image.files()]
    for fd in fds:  # closed with the image
        with pytest.raises(OSError, match="Bad file descriptor"):
            os.fstat(fd)


@pytest.mark.slow
def test_a_loop_and_a_chain_too_deep_are_refused(root: Path, policy: Policy) -> None:
    qemu_img("create", "-q", "-f", "qcow2", "a.qcow2", "1M", cwd=root)
    qemu_img("create", "-q", "-f", "qcow2", "-u", "-b", "a.qcow2", "-F", "qcow2", "b.qcow2", "1M",
             cwd=root)  # fmt: skip
    qemu_img("rebase", "-u", "-b", "b.qcow2", "-F", "qcow2", "a.qcow2", cwd=root)
    before = open_descriptors()
    assert "appears twice in one image" in refusal(policy, root / "b.qcow2")
    assert open_descriptors() == before  # every descriptor opened so far is closed
    qemu_img("create", "-q", "-f", "qcow2", "l0.qcow2", "1M", cwd=root)
    for level in range(1, MAX_DEPTH + 1):
        qemu_img("create", "-q", "-f", "qcow2", "-u", "-b", f"l{level - 1}.qcow2", "-F", "qcow2",
                 f"l{level}.qcow2", "1M", cwd=root)  # fmt: skip
    assert f"deeper than {MAX_DEPTH}" in refusal(policy, root / f"l{MAX_DEPTH}.qcow2")
    with open_image_chain(policy, str(root / f"l{MAX_DEPTH - 1}.qcow2")) as image:
        assert len(image.layers) == MAX_DEPTH


def test_formats_and_features_the_agent_cannot_check_are_refused(
    root: Path, policy: Policy
) -> None:
    qemu_img("create", "-q", "-f", "vdi", str(root / "disk.vdi"), "1M")
    assert "looks like a vdi image" in refusal(policy, root / "disk.vdi")
    assert "format vdi is not opened" in refusal(policy, root / "disk.vdi", "vdi")
    (root / "plain.raw").write_bytes(bytes(MIB))
    assert "is not a qcow2 image (a raw file)" in refusal(policy, root / "plain.raw", "qcow2")
    qemu_img("create", "-q", "-f", "qcow2", str(root / "locked.qcow2"), "1M")
    blob = bytearray((root / "locked.qcow2").read_bytes())
    blob[32:36] = struct.pack(">I", 1)  # crypt_method: AES
    (root / "locked.qcow2").write_bytes(bytes(blob))
    assert "is encrypted" in refusal(policy, root / "locked.qcow2")


def test_only_single_file_vmdk_is_opened(root: Path, policy: Policy) -> None:
    (root / "base.raw").write_bytes(bytes(MIB))
    qemu_img("convert", "-O", "vmdk", str(root / "base.raw"), str(root / "sparse.vmdk"))
    qemu_img("convert", "-O", "vmdk", "-o", "subformat=streamOptimized",
             str(root / "base.raw"), str(root / "stream.vmdk"))  # fmt: skip
    for name in ("sparse.vmdk", "stream.vmdk"):
        with open_image_chain(policy, str(root / name)) as image:
            assert [layer.format for layer in image.layers] == ["vmdk"]
            assert image.spec()["backing"] is None
    # Capacity 0 sends qemu to the embedded descriptor's extents: refused.
    blob = bytearray((root / "sparse.vmdk").read_bytes())
    blob[12:20] = struct.pack("<Q", 0)
    (root / "zero.vmdk").write_bytes(bytes(blob))
    assert "extents are listed in its descriptor" in refusal(policy, root / "zero.vmdk")
    # A header that points at its footer: qemu takes capacity and the rest from the
    # footer (1 KiB from the end), and so does the check.
    blob = bytearray((root / "stream.vmdk").read_bytes())
    header = bytes(blob[:512])
    blob[56:64] = struct.pack("<Q", 0xFFFFFFFFFFFFFFFF)  # gd_offset: "in the footer"
    marker, eos = struct.pack("<QII", 0, 0, 3).ljust(512, b"\0"), bytes(512)
    (root / "footer.vmdk").write_bytes(bytes(blob) + marker + header + eos)
    with open_image_chain(policy, str(root / "footer.vmdk")) as image:
        assert image.format == "vmdk"
    empty = header[:12] + struct.pack("<Q", 0) + header[20:]
    (root / "zero-footer.vmdk").write_bytes(bytes(blob) + marker + empty + eos)
    assert "extents are listed in its descriptor" in refusal(policy, root / "zero-footer.vmdk")


def test_a_data_file_is_checked_like_a_backing_file(root: Path, policy: Policy) -> None:
    qemu_img("create", "-q", "-f", "qcow2", "-o", "data_file=data.raw,data_file_raw=on",
             "split.qcow2", "1M", cwd=root)  # fmt: skip
    with open_image_chain(policy, str(root / "split.qcow2"), writable=True) as image:
        data = image.layers[0].data_file
        assert data is not None
        assert (data.path, data.writable) == (str(root / "data.raw"), True)
        assert image.spec()["data-file"] == {"driver": "file", "filename": str(root / "data.raw")}
    os.link(root / "data.raw", root / "second-name.raw")
    message = refusal(policy, root / "split.qcow2")
    named_by = f"the external data file named by {root / 'split.qcow2'}"
    assert message.startswith(f"payload.data.path: {named_by}")
    assert "has 2 links" in message
