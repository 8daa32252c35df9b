"""Finding 1: a submit token is not root.

Every operation that takes a path or a definition, sent hostile values over
HTTP with a `submit`-only token: each is refused at intake (403 FORBIDDEN
naming the field), no job exists afterwards, and no byte of a planted secret
reaches anything the submitter can read. The same operations on allowed paths
still run.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio

from agent.config import Config, PolicyConfig
from agent.service.daemon import Agent
from tests.http_helpers import ADMIN, READ, SUBMIT, client, serving, with_http
from tests.jobs import job_document, wait_done
from tests.spoolkit import drop

SECRET = b"planted-secret-7f3c9a"
MIB = 1024 * 1024
QEMU_NS = "xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'"


@dataclass
class Host:
    root: Path  # the one image root
    outside: Path  # a directory beside it, holding the secret
    secret: Path
    state: Path
    spool: Path


@pytest.fixture
def host(tmp_path: Path, config: Config) -> Iterator[Host]:
    root = tmp_path / "images"
    outside = tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    secret = outside / "secret.raw"
    secret.write_bytes(SECRET * 1000)
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", str(root / "good.qcow2"), "1M"], check=True
    )
    (root / "good.raw").write_bytes(b"\0" * MIB)
    # Hostile shapes inside the root.
    (root / "link").symlink_to(secret)
    (root / "chain1").symlink_to(root / "chain2")
    (root / "chain2").symlink_to("../outside/secret.raw")
    (root / "inner-link").symlink_to("good.raw")  # stays inside, still a link
    os.link(secret, root / "hardlink.raw")
    os.mkfifo(root / "fifo")
    (root / "subdir").mkdir()
    (root / "bound").mkdir()
    subprocess.run(["mount", "--bind", str(outside), str(root / "bound")], check=True)
    # A qcow2 whose header names the secret as its backing file.
    subprocess.run(
        [
            *("qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", str(secret)),
            *(str(root / "backed.qcow2"), "1M"),
        ],
        check=True,
    )
    try:
        yield Host(root, outside, secret, config.state_dir, config.spool_dir)
    finally:
        subprocess.run(["umount", str(root / "bound")], check=True)


@pytest.fixture
async def agent(config: Config, host: Host) -> AsyncIterator[Agent]:
    settings = with_http(config, spool=True).model_copy(
        update={"policy": PolicyConfig(image_roots=[host.root])}
    )
    async with serving(settings) as running:
        yield running


def _file_paths(h: Host) -> dict[str, str]:
    """Every hostile value for a field naming an existing file."""
    return {
        "etc-shadow": "/etc/shadow",
        "proc-environ": "/proc/self/environ",
        "sys": "/sys/kernel/notes",
        "dev-zero": "/dev/zero",
        "dev-sda": "/dev/sda",
        "outside": str(h.secret),
        "dotdot-tmp": "/tmp/../../etc/shadow",
        "dotdot-root": f"{h.root}/../outside/secret.raw",
        "symlink": f"{h.root}/link",
        "symlink-chain": f"{h.root}/chain1",
        "symlink-inside": f"{h.root}/inner-link",
        "hardlink": f"{h.root}/hardlink.raw",
        "fifo": f"{h.root}/fifo",
        "directory": f"{h.root}/subdir",
        "bind-mount": f"{h.root}/bound/secret.raw",
        "store": str(h.state / "jobs.sqlite3"),
        "store-wal": str(h.state / "jobs.sqlite3-wal"),
        "spool": str(h.spool / "incoming" / "x.json"),
    }


def _new_paths(h: Host) -> dict[str, str]:
    """Every hostile value for a field naming a file to create."""
    return {
        "etc": "/etc/hostagent-evil.qcow2",
        "tmp": "/tmp/evil.qcow2",
        "state": str(h.state / "evil.qcow2"),
        "store": str(h.state / "jobs.sqlite3"),
        "spool": str(h.spool / "done" / "evil.job.json"),
        "existing": f"{h.root}/good.raw",
        "over-symlink": f"{h.root}/link",
        "through-symlink-dir": f"{h.root}/bound/new.qcow2",
        "dotdot": f"{h.root}/../outside/new.qcow2",
    }


def _cases(h: Host) -> list[tuple[str, str, dict[str, Any], str]]:
    """(case id, operation, payload data, the field the refusal must name)."""
    good = f"{h.root}/good.raw"
    cases: list[tuple[str, str, dict[str, Any], str]] = []
    for name, path in _file_paths(h).items():
        for operation in ("image.info", "image.check", "image.checksum"):
            cases.append((f"{operation}/{name}", operation, {"path": path}, "payload.data.path"))
        cases.append(
            (
                f"image.resize/{name}",
                "image.resize",
                {"path": path, "size_bytes": 512, "shrink": True, "format": "raw"},
                "payload.data.path",
            )
        )
        cases.append(
            (
                f"image.convert-source/{name}",
                "image.convert",
                {"path": path, "output_path": f"{h.root}/out-{name}.qcow2"},
                "payload.data.path",
            )
        )
        cases.append(
            (
                f"image.create-backing/{name}",
                "image.create",
                {"path": f"{h.root}/new-{name}.qcow2", "size_bytes": MIB, "backing_file": path},
                "payload.data.backing_file",
            )
        )
        cases.append(
            (
                f"vm.define-spec/{name}",
                "vm.define",
                {"spec": {"name": "evil", "memory_mib": 64, "disks": [{"path": path}]}},
                "payload.data.spec.disks.0.path",
            )
        )
    for name, path in _new_paths(h).items():
        cases.append(
            (
                f"image.create/{name}",
                "image.create",
                {"path": path, "size_bytes": MIB},
                "payload.data.path",
            )
        )
        cases.append(
            (
                f"image.convert-output/{name}",
                "image.convert",
                {"path": good, "output_path": path},
                "payload.data.output_path",
            )
        )
    for name, path in {
        "slash": "/",
        "etc": "/etc",
        "root-itself": str(h.root),
        "state": str(h.state),
        "spool": str(h.spool),
        "dotdot": f"{h.root}/../outside",
        "pool-root": "/default-pool/sub",  # a pool's directory does not widen the roots
    }.items():
        cases.append(
            (
                f"storage.pool.define/{name}",
                "storage.pool.define",
                {"name": "evil", "path": path},
                "payload.data.path",
            )
        )
    for name, xml in _domains(h).items():
        cases.append((f"vm.define-xml/{name}", "vm.define", {"xml": xml}, "payload.data.xml"))
    return cases


def _domain(devices: str = "", extra: str = "", ns: str = "") -> str:
    return (
        f"<domain type='test' {ns}><name>evil</name><memory>65536</memory>"
        f"<os><type>hvm</type></os>{extra}<devices>{devices}</devices></domain>"
    )


def _domains(h: Host) -> dict[str, str]:
    return {
        "disk-shadow": _domain("<disk type='file'><source file='/etc/shadow'/></disk>"),
        "disk-secret": _domain(f"<disk type='file'><source file='{h.secret}'/></disk>"),
        "disk-symlink": _domain(f"<disk type='file'><source file='{h.root}/link'/></disk>"),
        "disk-store": _domain(f"<disk type='file'><source file='{h.state}/jobs.sqlite3'/></disk>"),
        "block-device": _domain("<disk type='block'><source dev='/dev/sda'/></disk>"),
        "cdrom-block": _domain("<disk type='block' device='cdrom'><source dev='/dev/sr0'/></disk>"),
        "network-disk": _domain(
            "<disk type='network'><source protocol='nbd' name='x'><host name='h'/></source></disk>"
        ),
        "hostdev": _domain(
            "<hostdev mode='subsystem' type='pci'><source>"
            "<address domain='0' bus='0' slot='1' function='0'/></source></hostdev>"
        ),
        "filesystem": _domain(
            "<filesystem type='mount'><source dir='/'/><target dir='root'/></filesystem>"
        ),
        "serial-file": _domain(
            f"<serial type='file'><source path='{h.state}/jobs.sqlite3'/></serial>"
        ),
        "serial-dev": _domain("<serial type='dev'><source path='/dev/ttyS0'/></serial>"),
        "console-log": _domain("<console type='pty'><log file='/etc/cron.d/evil'/></console>"),
        "ethernet-script": _domain(
            "<interface type='ethernet'><script path='/tmp/evil.sh'/></interface>"
        ),
        "emulator": _domain("<emulator>/tmp/evil</emulator>"),
        "kernel": _domain(extra="", devices="").replace(
            "<type>hvm</type>", "<type>hvm</type><kernel>/etc/shadow</kernel>"
        ),
        "seclabel-none": _domain(extra="<seclabel type='none'/>"),
        # Issue 20: what the single-<devices> denylist let through.
        "second-devices-hostdev": _domain().replace(
            "</devices>",
            "</devices><devices><hostdev mode='subsystem' type='pci'/></devices>",
        ),
        "seclabel-static-root": _domain(
            extra="<seclabel type='static' model='dac' relabel='no'><label>+0:+0</label></seclabel>"
        ),
        "input-evdev": _domain("<input type='evdev'><source dev='/dev/input/event0'/></input>"),
        "rng-egd": _domain(
            "<rng model='virtio'><backend model='egd' type='unix'>"
            "<source mode='connect' path='/run/egd.sock'/></backend></rng>"
        ),
        "vnc-socket": _domain("<graphics type='vnc' socket='/run/evil.sock'/>"),
        "qemu-commandline": _domain(
            extra="<qemu:commandline><qemu:arg value='-evil'/></qemu:commandline>", ns=QEMU_NS
        ),
        "qemu-capabilities": _domain(
            extra="<qemu:capabilities><qemu:add capability='x'/></qemu:capabilities>", ns=QEMU_NS
        ),
    }


def _files_under(folder: Path) -> Iterator[Path]:
    """Every file below `folder`; folders other processes remove meanwhile are skipped
    (/tmp is shared with whatever else runs on the machine)."""
    for parent, _, names in os.walk(folder):
        for name in names:
            yield Path(parent) / name


def _no_secret_in(text: str | bytes) -> None:
    data = text.encode() if isinstance(text, str) else text
    assert SECRET not in data


@pytest.mark.slow
async def test_every_hostile_path_is_refused_at_intake_with_the_field(
    agent: Agent, host: Host
) -> None:
    cases = _cases(host)
    assert len(cases) > 150
    started = time.time()
    async with client(agent, SUBMIT) as submitter, client(agent, READ) as reader:
        for case, operation, data, field in cases:
            response = await submitter.post("/api/v1/jobs", json=job_document(operation, data))
            assert response.status_code == 403, (case, response.text)
            body = response.json()
            assert body["error"] == "FORBIDDEN", case
            assert body["details"]["field"] == field, (case, body)
            assert body["details"]["reason"], case
            if field == "payload.data.xml":  # the allowlist names where in the XML
                assert body["details"]["element"].startswith("/domain"), (case, body)
            _no_secret_in(response.text)
        listing = await reader.get("/api/v1/jobs")
        assert listing.json()["data"]["total"] == 0  # nothing was accepted
    # Nothing new anywhere the submitter could read it back from (files older than
    # this test, such as other tests' copies of this very file, are not its doing).
    for folder in (host.root, Path("/tmp")):
        for path in _files_under(folder):
            try:
                if not path.is_file() or path.is_symlink() or "bound" in path.parts:
                    continue
                facts = path.stat()
                if facts.st_mtime < started or facts.st_nlink != 1 or facts.st_size >= 64 * MIB:
                    continue
                data = path.read_bytes()
            except FileNotFoundError:
                continue  # another process's file, removed while this test looked
            _no_secret_in(data)
    assert not Path("/etc/hostagent-evil.qcow2").exists()
    assert not (host.state / "evil.qcow2").exists()


async def test_a_backing_file_outside_the_roots_is_refused_at_intake(
    agent: Agent, host: Host
) -> None:
    # The header names the secret: the file itself is fine, what qemu-img would open
    # with it is not (agent.policy.images, at intake and again when the job runs).
    async with client(agent, SUBMIT) as submitter:
        data = {"path": f"{host.root}/backed.qcow2", "output_path": f"{host.root}/o.raw"}
        document = job_document("image.convert", {**data, "output_format": "raw"})
        response = await submitter.post("/api/v1/jobs", json=document)
        assert response.status_code == 403
        body = response.json()
        assert (body["error"], body["details"]["field"]) == ("FORBIDDEN", "payload.data.path")
        assert f"the backing file named by {host.root}/backed.qcow2" in body["message"]
        assert "outside the image roots" in body["message"]
        assert SECRET.decode() not in response.text
    assert not (host.root / "o.raw").exists()


@pytest.mark.slow
async def test_the_allowed_paths_still_work(agent: Agent, host: Host) -> None:
    root = host.root
    good = f"{root}/good.qcow2"
    allowed = [
        ("image.info", {"path": good}),
        ("image.check", {"path": good}),
        ("image.checksum", {"path": f"{root}/good.raw"}),
        ("image.resize", {"path": f"{root}/good.raw", "size_bytes": 2 * MIB, "format": "raw"}),
        ("image.create", {"path": f"{root}/made.qcow2", "size_bytes": MIB, "backing_file": good}),
        ("image.convert", {"path": good, "output_path": f"{root}/subdir/copy.qcow2"}),
        ("storage.pool.define", {"name": "fine", "path": f"{root}/pool", "start": False}),
        ("vm.define", {"spec": {"name": "fine", "memory_mib": 64, "disks": [{"path": good}]}}),
    ]
    async with client(agent, SUBMIT) as submitter:
        for operation, data in allowed:
            response = await submitter.post("/api/v1/jobs", json=job_document(operation, data))
            assert response.status_code == 201, (operation, response.text)
            job_id = response.json()["data"]["job_id"]
            assert (await wait_done(agent, job_id)).status.value == "Completed", operation
    for made in ("made.qcow2", "subdir/copy.qcow2"):
        assert (root / made).stat().st_mode & 0o777 == 0o640  # whatever the umask


@pytest.mark.slow
async def test_the_spool_quarantines_what_the_policy_refuses(agent: Agent, host: Host) -> None:
    name = "evil.json"
    drop(host.spool, name, job_document("image.checksum", {"path": "/etc/shadow"}))
    report = host.spool / "failed" / f"{name}.error.json"
    with trio.fail_after(10):
        while not report.exists():
            await trio.sleep(0.05)
    error = json.loads(report.read_text())
    assert (error["error"], error["details"]["field"]) == ("FORBIDDEN", "payload.data.path")


@pytest.mark.slow
@pytest.mark.parametrize("allow", [False, True])
async def test_passthrough_needs_admin_and_the_config(
    config: Config, host: Host, allow: bool
) -> None:
    settings = with_http(config).model_copy(
        update={"policy": PolicyConfig(image_roots=[host.root], allow_passthrough=allow)}
    )
    xml = _domains(host)["qemu-commandline"]
    async with serving(settings) as running:
        for token, expected in ((SUBMIT, 403), (ADMIN, 201 if allow else 403)):
            async with client(running, token) as caller:
                answer = await caller.post(
                    "/api/v1/jobs", json=job_document("vm.define", {"xml": xml})
                )
                assert answer.status_code == expected, (token == ADMIN, answer.text)


@pytest.mark.slow
async def test_an_image_root_inside_the_state_directory_reaches_only_itself(
    config: Config,
) -> None:
    """The service keeps its own images in /var/lib/hostagent/images, inside its state
    directory: that root is usable, the store beside it still is not."""
    images = config.state_dir / "images"
    images.mkdir(parents=True)
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", str(images / "own.qcow2"), "1M"], check=True
    )
    config = config.model_copy(update={"policy": PolicyConfig(image_roots=[images])})
    async with serving(with_http(config)) as served, client(served, SUBMIT) as submitter:
        inside = job_document("image.info", {"path": f"{images}/own.qcow2"})
        response = await submitter.post("/api/v1/jobs", json=inside)
        assert response.status_code == 201, response.text
        job_id = response.json()["data"]["job_id"]
        assert (await wait_done(served, job_id)).status.value == "Completed"
        for path in (config.store_path, f"{images}/../jobs.sqlite3"):
            refused = job_document("image.info", {"path": str(path)})
            answer = await submitter.post("/api/v1/jobs", json=refused)
            assert answer.status_code == 403, (path, answer.text)
            assert answer.json()["details"]["field"] == "payload.data.path"
