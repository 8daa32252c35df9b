"""Issue 20: hostile images through every image-reading operation.

Each hostile image (tests/security/hostile_images.py) names a secret outside the
image roots. Through image.info, image.check, image.convert, image.resize,
image.checksum, guestkit.inspect and guestkit.profile, every job is refused (at
intake or when it runs), no byte of the secret reaches anything the submitter
can read (results, errors, job logs and events, the daemon's log, files in the
roots), and no file outside the roots changes. Images that are fine run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from agent.config import Config
from agent.errors import ForbiddenError
from agent.service.daemon import Agent
from agent.transports.spool.settings import SpoolConfig
from tests.jobs import ok, submit, wait_done
from tests.security.hostile_images import (
    MIB,
    Planted,
    build,
    files_holding,
    fingerprints,
    plant,
    qemu_img,
)


@pytest.fixture
def config(config: Config) -> Config:
    return config.model_copy(update={"spool": SpoolConfig(enabled=False), "max_disk_size_gb": 4})


@pytest.fixture
def planted(tmp_path: Path) -> Planted:
    return plant(tmp_path / "images", tmp_path / "outside")


def operations(path: str, root: Path, case: str) -> list[tuple[str, dict[str, Any]]]:
    """Every image-reading operation on `path` (guestkit's are refused before a launch)."""
    return [
        ("image.info", {"path": path}),
        ("image.info", {"path": path, "backing_chain": True}),
        ("image.check", {"path": path}),
        ("image.convert", {"path": path, "output_path": str(root / f"out-{case}.qcow2")}),
        (
            "image.convert",
            {"path": path, "output_path": str(root / f"out-{case}.raw"), "output_format": "raw"},
        ),
        ("image.resize", {"path": path, "size_bytes": 2 * MIB}),
        ("image.checksum", {"path": path}),
        ("guestkit.inspect", {"image": {"path": path}}),
        ("guestkit.profile", {"image": {"path": path}}),
    ]


async def outcome(agent: Agent, operation: str, data: dict[str, Any]) -> dict[str, Any]:
    """What the submitter can read of one job: refused at intake, or status, result,
    error and every event."""
    try:
        job_id = await submit(agent, operation, data)
    except ForbiddenError as refused:
        return {"status": "Refused", "error": refused.message, "details": refused.details}
    state = await wait_done(agent, job_id)
    result = await agent.intake.result(job_id) if state.status == "Completed" else None
    events = await agent.intake.logs(job_id)
    return {"status": str(state.status), "result": result, "error": state.error, "events": events}


def readable(found: dict[str, Any]) -> bytes:
    return json.dumps(found, default=str).encode()


@pytest.mark.slow
async def test_every_hostile_image_is_refused_by_every_reader(
    agent: Agent, planted: Planted, capfd: pytest.CaptureFixture[str]
) -> None:
    cases = build(planted)
    outside_before = fingerprints(planted.outside)
    seen: dict[tuple[str, str], dict[str, Any]] = {}
    for case, image in cases.items():
        for operation, data in operations(str(image), planted.root, case):
            found = await outcome(agent, operation, data)
            seen[case, operation] = found
            assert found["status"] in {"Refused", "Failed"} or operation == "image.checksum", (
                case,
                operation,
                found,
            )
            assert planted.marker not in readable(found), (case, operation)
    # image.checksum hashes the file's own bytes and follows nothing: it runs.
    assert all(
        found["status"] == "Completed"
        for (_, operation), found in seen.items()
        if operation == "image.checksum"
    )
    # The refusals say why: the reference and the reason.
    reasons = {case: seen[case, "image.info"]["error"] for case in cases}
    assert "outside the image roots" in reasons["backing-absolute-outside"]
    assert "outside the image roots" in reasons["qcow2-data-file-outside"]
    assert "'..'" in reasons["backing-relative-outside"]
    assert "symbolic links are not followed" in reasons["backing-symlink"]
    assert "names the backing file 'json:" in reasons["backing-json"]
    assert "names the backing file 'nbd:" in reasons["backing-nbd"]
    assert "VMDK descriptor" in reasons["raw-first-sector-descriptor"]
    assert "VMDK descriptor" in reasons["vmdk-sparse-extent"]
    assert "delta disk" in reasons["vmdk-parent"]
    assert "backing file of" in reasons["chain-to-descriptor"]
    assert files_holding(planted.root, planted.marker) == []
    assert fingerprints(planted.outside) == outside_before
    logged = capfd.readouterr()
    assert planted.marker.decode() not in logged.out + logged.err


@pytest.mark.slow
async def test_images_that_name_only_checked_files_run(agent: Agent, planted: Planted) -> None:
    root = planted.root
    (root / "base.raw").write_bytes(b"\x5a" * MIB)
    qemu_img("create", "-q", "-f", "qcow2", "-b", "base.raw", "-F", "raw", str(root / "mid.qcow2"))
    qemu_img("create", "-q", "-f", "qcow2", "-b", str(root / "mid.qcow2"), "-F", "qcow2",
             str(root / "top.qcow2"))  # fmt: skip
    chain = await ok(agent, "image.info", {"path": str(root / "top.qcow2"), "backing_chain": True})
    assert [(layer["filename"], layer["format"]) for layer in chain] == [
        (str(root / "top.qcow2"), "qcow2"),
        (str(root / "mid.qcow2"), "qcow2"),
        (str(root / "base.raw"), "raw"),
    ]
    converted = await ok(
        agent,
        "image.convert",
        {"path": str(root / "top.qcow2"), "output_path": str(root / "flat.raw"),
         "output_format": "raw"},
    )  # fmt: skip
    assert converted["format"] == "raw"
    assert (root / "flat.raw").read_bytes() == b"\x5a" * MIB  # the chain's bytes, through it
    # A monolithic sparse VMDK (one file, no parent) is read.
    qemu_img("convert", "-O", "vmdk", str(root / "base.raw"), str(root / "one.vmdk"))
    assert (await ok(agent, "image.info", {"path": str(root / "one.vmdk")}))["format"] == "vmdk"
    # A raw disk whose first sector reads as a descriptor: as raw when the caller says so.
    (root / "guest.raw").write_bytes(b"version=1\n".ljust(MIB, b"\0"))
    info = await ok(agent, "image.info", {"path": str(root / "guest.raw"), "format": "raw"})
    assert info["format"] == "raw"
    resized = await ok(
        agent, "image.resize", {"path": str(root / "top.qcow2"), "size_bytes": 2 * MIB}
    )
    assert resized["virtual-size"] == 2 * MIB
    assert (root / "base.raw").stat().st_size == MIB  # backing files are never written


@pytest.mark.slow
async def test_a_data_file_inside_the_roots_is_opened_and_bound(
    agent: Agent, planted: Planted
) -> None:
    root = planted.root
    qemu_img(
        "create", "-q", "-f", "qcow2", "-o", f"data_file={root / 'data.raw'},data_file_raw=on",
        str(root / "split.qcow2"), "1M",
    )  # fmt: skip
    (root / "data.raw").write_bytes(b"\x33" * MIB)
    await ok(
        agent,
        "image.convert",
        {"path": str(root / "split.qcow2"), "output_path": str(root / "joined.raw"),
         "output_format": "raw"},
    )  # fmt: skip
    assert (root / "joined.raw").read_bytes() == b"\x33" * MIB
