"""image.* handlers on real image files made with qemu-img."""

from __future__ import annotations

import hashlib
import os
import struct
import subprocess
from pathlib import Path

import pytest
import trio

from agent.config import Config
from agent.errors import ForbiddenError, NotFoundError, ValidationError
from agent.service.daemon import Agent
from agent.transports.spool.settings import SpoolConfig
from tests.jobs import failed, job_document, ok, submit, wait_done

MIB = 1024 * 1024


@pytest.fixture
def config(config: Config) -> Config:
    return config.model_copy(update={"spool": SpoolConfig(enabled=False), "max_disk_size_gb": 4})


@pytest.fixture
def images(tmp_path: Path) -> Path:
    folder = tmp_path / "images"
    folder.mkdir()
    return folder


def qemu_img(*argv: str) -> None:
    subprocess.run(["qemu-img", *argv], check=True, capture_output=True)


def random_raw(path: Path, size: int) -> Path:
    # Incompressible data, so that conversions (compressed ones above all) take real time.
    with path.open("wb") as out:
        for _ in range(size // MIB):
            out.write(os.urandom(MIB))
    return path


def qemu_img_processes(needle: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if (
                cmdline
                and cmdline[0].endswith(b"qemu-img")
                and needle.encode() in b" ".join(cmdline)
            ):
                found.append(int(entry))
    return found


@pytest.mark.slow
async def test_image_create_info_check_resize(agent: Agent, images: Path) -> None:
    path = str(images / "disk.qcow2")
    created = await ok(agent, "image.create", {"path": path, "size_bytes": 64 * MIB})
    assert (created["format"], created["virtual-size"]) == ("qcow2", 64 * MIB)
    info = await ok(agent, "image.info", {"path": path})
    assert info["format"] == "qcow2"
    assert info["virtual-size"] == 64 * MIB
    checked = await ok(agent, "image.check", {"path": path})
    assert checked["result"] == "clean"
    assert checked["check-errors"] == 0
    resized = await ok(agent, "image.resize", {"path": path, "size_bytes": 128 * MIB})
    assert resized["virtual-size"] == 128 * MIB
    with pytest.raises(ForbiddenError) as caught:  # refused at intake, never a failed job
        await submit(agent, "image.create", {"path": path, "size_bytes": MIB})
    assert caught.value.message == f"payload.data.path: {path} already exists"


async def test_image_create_with_backing_file(agent: Agent, images: Path) -> None:
    base = images / "base.qcow2"
    qemu_img("create", "-f", "qcow2", str(base), "16M")
    overlay = str(images / "overlay.qcow2")
    await ok(
        agent, "image.create", {"path": overlay, "size_bytes": 16 * MIB, "backing_file": str(base)}
    )
    chain = await ok(agent, "image.info", {"path": overlay, "backing_chain": True})
    assert [image["filename"] for image in chain] == [overlay, str(base)]


@pytest.mark.slow
async def test_image_check_finds_a_corrupt_image_and_fails_on_unreadable(
    agent: Agent, images: Path
) -> None:
    path = images / "broken.qcow2"
    qemu_img("create", "-f", "qcow2", str(path), "16M")
    subprocess.run(
        ["qemu-io", "-c", "write -P 1 0 64k", str(path)], check=True, capture_output=True
    )
    with path.open("r+b") as image:
        # Zero the first refcount block: every used cluster now has refcount 0.
        image.seek(48)
        (table,) = struct.unpack(">Q", image.read(8))
        image.seek(table)
        (block,) = struct.unpack(">Q", image.read(8))
        image.seek(block)
        image.write(bytes(65536))
    checked = await ok(agent, "image.check", {"path": str(path)})
    assert checked["result"] == "corrupt"
    assert checked["corruptions"] > 0
    with pytest.raises(NotFoundError) as caught:  # not found (404), not forbidden
        await submit(agent, "image.check", {"path": str(images / "missing.qcow2")})
    assert caught.value.details["reason"] == "no such file"
    raw = images / "plain.raw"
    raw.write_bytes(b"\0" * 4096)
    assert await failed(agent, "image.check", {"path": str(raw), "format": "raw"}) == (
        f"{raw}: its format has no consistency checks"
    )


async def test_image_size_over_max_disk_size_is_refused(agent: Agent, images: Path) -> None:
    error = await failed(
        agent, "image.create", {"path": str(images / "big.qcow2"), "size_bytes": 5 * 1024**3}
    )
    assert "max_disk_size_gb (4)" in error
    assert not (images / "big.qcow2").exists()


async def test_image_paths_must_be_absolute(agent: Agent) -> None:
    with pytest.raises(ValidationError) as caught:
        await agent.intake.submit(job_document("image.info", {"path": "disk.qcow2"}), transport="t")
    assert caught.value.details["field"] == "payload.data.path"


@pytest.mark.slow
async def test_image_convert_reports_qemu_img_progress(agent: Agent, images: Path) -> None:
    source = random_raw(images / "source.raw", 32 * MIB)
    output = images / "out.qcow2"
    with agent.intake.events() as events:
        job_id = await submit(
            agent, "image.convert", {"path": str(source), "output_path": str(output)}
        )
        state = await wait_done(agent, job_id)
        assert state.status == "Completed", state.error
        progress = []
        while True:
            try:
                event = events.receive.receive_nowait()
            except trio.WouldBlock:
                break
            if event["type"] == "progress" and event["job_id"] == job_id:
                progress.append(event["data"]["percent"])
    assert len(progress) >= 3
    assert progress == sorted(progress)
    assert progress[-1] == 100
    result = await agent.intake.result(job_id)
    assert (result["format"], result["virtual-size"]) == ("qcow2", 32 * MIB)
    assert sorted(p.name for p in images.iterdir()) == ["out.qcow2", "source.raw"]
    with pytest.raises(ForbiddenError) as caught:
        await submit(agent, "image.convert", {"path": str(source), "output_path": str(output)})
    assert caught.value.details["field"] == "payload.data.output_path"


@pytest.mark.slow
async def test_image_convert_cancelled_leaves_no_process_and_no_partial_file(
    agent: Agent, images: Path
) -> None:
    source = random_raw(images / "source.raw", 128 * MIB)
    output = images / "out.qcow2"
    data = {"path": str(source), "output_path": str(output), "compress": True}
    with agent.intake.events() as events:
        job_id = await submit(agent, "image.convert", data)
        with trio.fail_after(30):
            async for event in events.receive:
                if (
                    event["type"] == "progress"
                    and event["job_id"] == job_id
                    and 0 < event["data"]["percent"] < 100
                ):
                    break
    assert qemu_img_processes(str(images)), "qemu-img should be converting now"
    state = await agent.intake.cancel(job_id)
    assert state.status == "Cancelled"
    assert qemu_img_processes(str(images)) == []
    assert sorted(p.name for p in images.iterdir()) == ["source.raw"]


@pytest.mark.slow
async def test_image_convert_timeout_also_cleans_up(agent: Agent, images: Path) -> None:
    source = random_raw(images / "source.raw", 64 * MIB)
    data = {"path": str(source), "output_path": str(images / "o.qcow2"), "compress": True}
    job_id = await submit(agent, "image.convert", data, timeout_seconds=0.2)
    state = await wait_done(agent, job_id)
    assert state.status == "Failed"
    assert state.error == "Job timed out after 0.2 seconds"
    assert qemu_img_processes(str(images)) == []
    assert sorted(p.name for p in images.iterdir()) == ["source.raw"]


@pytest.mark.slow
async def test_image_checksum_streams_with_progress_and_checks_expected(
    agent: Agent, images: Path
) -> None:
    path = random_raw(images / "data.raw", 9 * MIB)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    result = await ok(agent, "image.checksum", {"path": str(path), "expected": digest.upper()})
    assert result == {
        "path": str(path),
        "algorithm": "sha256",
        "digest": digest,
        "size_bytes": 9 * MIB,
    }
    wrong = "0" * 64
    job_id = await submit(agent, "image.checksum", {"path": str(path), "expected": wrong})
    state = await wait_done(agent, job_id)
    assert state.status == "Failed"
    assert state.error == f"sha256 mismatch for {path}: expected {wrong}, got {digest}"
    events = await agent.intake.logs(job_id)
    percents = [e["data"]["percent"] for e in events if e["type"] == "progress"]
    assert percents[-1] == 100
    assert len(percents) >= 3


@pytest.mark.slow
async def test_image_checksum_of_missing_file_is_refused_clearly(
    agent: Agent, images: Path
) -> None:
    with pytest.raises(NotFoundError) as caught:
        await submit(agent, "image.checksum", {"path": str(images / "nope")})
    assert caught.value.details == {"field": "payload.data.path", "reason": "no such file"}


@pytest.mark.slow
async def test_every_output_format_is_written_through_the_agents_descriptor(
    agent: Agent, images: Path
) -> None:
    # qemu-img (sandboxed) sees only the file the agent created, bound at its path;
    # each format's create and convert write into it.
    random_raw(images / "source.raw", MIB)
    for fmt in ("qcow2", "raw", "vmdk", "vdi", "vhdx", "vpc", "qed"):
        made = await ok(
            agent, "image.create", {"path": f"{images}/new.{fmt}", "size_bytes": MIB, "format": fmt}
        )
        assert made["format"] == fmt
        assert made["filename"] == f"{images}/new.{fmt}"
        converted = await ok(
            agent,
            "image.convert",
            {"path": f"{images}/source.raw", "output_path": f"{images}/copy.{fmt}",
             "output_format": fmt},
        )  # fmt: skip
        assert converted["format"] == fmt
        assert (images / f"copy.{fmt}").stat().st_mode & 0o777 == 0o640
    assert sorted(p.name for p in images.iterdir() if p.name.startswith(".")) == []


async def test_a_qemu_img_failure_is_named_as_qemu_img(agent: Agent, images: Path) -> None:
    bogus = images / "bogus.qcow2"
    bogus.write_bytes(b"QFI\xfb" + bytes(508))  # qcow2 magic, version 0: qemu-img refuses
    error = await failed(agent, "image.resize", {"path": str(bogus), "size_bytes": MIB})
    assert error.startswith("qemu-img exited with status 1: qemu-img: Could not open ")
