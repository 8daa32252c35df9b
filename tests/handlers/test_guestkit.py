"""guestkit.* on real guest disks, inspected by a real libguestfs appliance.

An appliance launch costs ~20 s here (TCG: this machine's KVM aborts qemu), so
the three jobs that need a full inspection run once, together, in a module
fixture; the tests read their outcomes. Failures that must come before any
launch, the cancel, and the registration run as jobs of their own.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from datetime import date
from pathlib import Path
from typing import Any

import pytest
import trio

from agent.config import Config, LibvirtConfig, PolicyConfig
from agent.errors import ForbiddenError, NotFoundError, ValidationError
from agent.handlers import _findings, _guestfs_host
from agent.service.daemon import Agent
from agent.service.settings import Settings
from agent.transports.http.settings import HttpConfig
from agent.transports.spool.settings import SpoolConfig
from tests import guestdisks
from tests.agentproc import AgentProcess
from tests.jobs import failed, job_document, run_job, submit, wait_done

LAUNCH_WITHIN = 600  # seconds: three appliances at once on a busy 2-core machine


def sha256(path: Path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def disks() -> dict[str, Path]:
    return {
        "planted": guestdisks.build(guestdisks.planted_disk()),
        "clean": guestdisks.build(guestdisks.clean_disk()),
    }


@pytest.fixture
def config(config: Config) -> Config:
    # The cached test disks are an image root too (the path policy refuses the rest).
    roots = [*config.policy.image_roots, guestdisks.CACHE]
    return config.model_copy(update={"policy": PolicyConfig(image_roots=roots)})


def module_config(root: Path) -> Settings:
    return Settings(
        state_dir=root / "state",
        spool_dir=root / "spool",
        max_concurrent_jobs=4,
        spool=SpoolConfig(enabled=False),
        libvirt=LibvirtConfig(uri="test:///default"),
        http=HttpConfig(enabled=False),
        # The path policy's roots: the cached disks, and this module's overlays.
        policy=PolicyConfig(image_roots=[guestdisks.CACHE, root / "images"]),
    )


@pytest.fixture(scope="module")
def outcomes(
    disks: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, dict[str, Any]]:
    """The three full inspections, run at once; each: state, result, events."""
    planted = disks["planted"]
    base = tmp_path_factory.mktemp("guestkit")
    (base / "images").mkdir()
    # An overlay whose backing file is the clean disk (the planted one is held locked
    # below), in another root: the reader's sandbox shows both (the agent checked both),
    # at their own paths.
    overlay = base / "images" / "overlay.qcow2"
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(disks["clean"]), "-F", "qcow2",
         str(overlay)],
        check=True,
    )  # fmt: skip
    jobs = {
        "inspect": (
            "guestkit.inspect",
            {"image": {"path": str(planted), "checksum": sha256(planted)}},
        ),
        "profile": ("guestkit.profile", {"image": {"path": str(planted), "format": "qcow2"}}),
        "clean": ("guestkit.profile", {"image": {"path": str(disks["clean"])}}),
        "overlay": ("guestkit.inspect", {"image": {"path": str(overlay)}}),
    }
    found: dict[str, dict[str, Any]] = {}

    async def run_all() -> None:
        agent = Agent(module_config(base))
        async with trio.open_nursery() as nursery:
            await nursery.start(agent.run)
            ids = {name: await submit(agent, *job) for name, job in jobs.items()}
            for name, job_id in ids.items():
                state = await wait_done(agent, job_id, within=LAUNCH_WITHIN)
                result = await agent.intake.result(job_id) if state.status == "Completed" else None
                events = await agent.intake.logs(job_id)
                found[name] = {"state": state, "result": result, "events": events}
            found["health"] = await agent.intake.health()
            nursery.cancel_scope.cancel()

    # A VM writing to the planted disk holds its write lock throughout: inspection must
    # neither need nor take the lock.
    with held_open_for_writing(planted):
        locked = subprocess.run(
            ["qemu-img", "info", str(planted)], capture_output=True, check=False
        )
        trio.run(run_all)
    found["lock"] = {"info_without_share": locked.returncode, "stderr": locked.stderr.decode()}
    return found


class held_open_for_writing:  # noqa: N801 (reads as the context manager it is)
    def __init__(self, path: Path) -> None:
        self.path = path
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> None:
        # Ready once qemu-io holds the write lock: a plain `qemu-img info` is refused for it.
        # qemu-io gives up at once when someone else still holds the image (the disk
        # builder's libguestfs appliance may be exiting): start it again until it holds.
        deadline = time.monotonic() + 60
        probe = ["qemu-img", "info", str(self.path)]
        self._start()
        while subprocess.run(probe, capture_output=True, check=False).returncode == 0:
            assert self.process is not None
            if self.process.poll() is not None:
                self._stop()
                self._start()
            if time.monotonic() > deadline:
                self._stop()
                raise AssertionError("qemu-io never took the image's lock")
            time.sleep(0.05)

    def _start(self) -> None:
        # qemu-io opens read-write and waits on stdin: the locks a running VM holds.
        self.process = subprocess.Popen(
            ["qemu-io", "-f", "qcow2", str(self.path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def _stop(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait()
        assert self.process.stdin is not None
        self.process.stdin.close()

    def __exit__(self, *exc_info: object) -> None:
        self._stop()


def completed(outcome: dict[str, Any]) -> dict[str, Any]:
    assert outcome["state"].status == "Completed", outcome["state"].error
    result: dict[str, Any] = outcome["result"]
    return result


@pytest.mark.slow
def test_inspect_reports_the_planted_guest(
    outcomes: dict[str, dict[str, Any]], disks: dict[str, Path]
) -> None:
    result = completed(outcomes["inspect"])
    planted = disks["planted"]
    assert result["version"] == "1.0"
    assert result["image"] == {"path": str(planted), "format": "qcow2", "checksum": sha256(planted)}
    assert result["operating_system"] == {
        "type": "linux",
        "distribution": "debian",
        # libguestfs names a Debian guest by its /etc/debian_version, as virt-inspector does.
        "product_name": "10.13",
        "version": "10.13",
        "hostname": guestdisks.PLANTED_HOSTNAME,
        "arch": "x86_64",
        "package_format": "deb",
        "package_management": "apt",
    }
    # Installed packages only: the removed one (its configuration left) is not listed.
    assert result["packages"] == {
        "count": len(guestdisks.PLANTED_PACKAGES),
        "manager": "apt",
        "packages": sorted(guestdisks.PLANTED_PACKAGES),
    }
    assert result["services"] == [
        {"name": "getty@tty1.service", "state": "masked"},
        {"name": "auditd.service", "state": "enabled", "target": "multi-user.target"},
        {"name": "ssh.service", "state": "enabled", "target": "multi-user.target"},
    ]
    assert result["filesystems"] == [
        {"device": "/dev/sda", "type": "ext4", "size": 64 * 1024 * 1024, "mountpoint": "/"}
    ]


@pytest.mark.slow
def test_inspect_reads_through_a_checked_backing_chain(
    outcomes: dict[str, dict[str, Any]],
) -> None:
    result = completed(outcomes["overlay"])
    assert result["image"]["format"] == "qcow2"
    assert result["operating_system"]["hostname"] == guestdisks.CLEAN_HOSTNAME
    assert result["packages"]["count"] == len(guestdisks.CLEAN_PACKAGES)


@pytest.mark.slow
def test_inspect_reads_a_disk_a_writer_holds_locked(outcomes: dict[str, dict[str, Any]]) -> None:
    assert outcomes["lock"]["info_without_share"] != 0
    assert "lock" in outcomes["lock"]["stderr"]
    completed(outcomes["inspect"])


@pytest.mark.slow
def test_inspect_reports_progress_at_each_stage(outcomes: dict[str, dict[str, Any]]) -> None:
    messages = [
        event["data"].get("message")
        for event in outcomes["inspect"]["events"]
        if event["type"] == "progress"
    ]
    stages = [m for m in messages if m not in ("hashing", None)]
    assert stages == ["launch", "inspect", "mount", "packages", "services", "filesystems", "done"]
    assert "hashing" in messages[: messages.index("launch")]  # the checksum came first


@pytest.mark.slow
def test_profile_reports_exactly_the_planted_findings(
    outcomes: dict[str, dict[str, Any]],
) -> None:
    result = completed(outcomes["profile"])
    assert result["profiles"] == ["security", "compliance"]
    by_id = {item["id"]: item for item in result["findings"]}
    assert sorted(by_id) == sorted(
        [
            "ssh.root_login",
            "ssh.password_authentication",
            "accounts.empty_password",
            "accounts.extra_uid0",
            "files.world_writable_etc",
            "firewall.absent",
            "packages.obsolete",
            "release.end_of_life",
            "audit.logs_disabled",
            "journald.not_persistent",
        ]
    )
    assert len(result["findings"]) == len(by_id)
    assert by_id["ssh.root_login"]["evidence"] == "/etc/ssh/sshd_config:2: PermitRootLogin yes"
    assert by_id["ssh.password_authentication"]["evidence"] == (
        "/etc/ssh/sshd_config:3: PasswordAuthentication yes"
    )
    assert by_id["accounts.empty_password"]["evidence"].endswith(": empty password field for alice")
    assert by_id["accounts.extra_uid0"]["evidence"] == "/etc/passwd: UID 0 for toor"
    assert by_id["files.world_writable_etc"]["evidence"] == "world-writable: /etc/cron.d/backup"
    assert by_id["packages.obsolete"]["evidence"].endswith(": legacy-daemon")
    assert by_id["release.end_of_life"]["evidence"] == "debian.csv: buster support ended 2024-06-30"
    assert by_id["audit.logs_disabled"]["evidence"] == "/etc/audit/auditd.conf:2: write_logs = no"
    assert by_id["journald.not_persistent"]["evidence"] == (
        "/etc/systemd/journald.conf:2: Storage=volatile"
    )
    for item in result["findings"]:
        assert set(item) == {"id", "severity", "title", "evidence"}
    assert result["summary"] == {
        "total": 10,
        "by_severity": {"critical": 0, "high": 4, "medium": 4, "low": 2, "info": 0},
    }


@pytest.mark.slow
def test_profile_of_a_clean_guest_finds_nothing(outcomes: dict[str, dict[str, Any]]) -> None:
    result = completed(outcomes["clean"])
    assert result["operating_system"]["hostname"] == guestdisks.CLEAN_HOSTNAME
    assert result["findings"] == []
    assert result["summary"]["total"] == 0


@pytest.mark.slow
def test_health_names_the_accelerator_after_a_job(outcomes: dict[str, dict[str, Any]]) -> None:
    component = outcomes["health"]["components"]["guestfs"]
    assert component["status"] == "healthy"
    assert component["accelerator"] in ("kvm", "tcg")
    # TCG only when qemu said why KVM would not do.
    assert (component["accelerator"] == "tcg") == (component["kvm"] is not None)


def launched(events: list[dict[str, Any]]) -> bool:
    return any(e["type"] == "progress" and e["data"].get("message") == "launch" for e in events)


async def test_checksum_mismatch_fails_before_any_inspection(
    agent: Agent, disks: dict[str, Path]
) -> None:
    planted = disks["planted"]
    wrong = "sha256:" + "0" * 64
    job_id = await submit(
        agent, "guestkit.inspect", {"image": {"path": str(planted), "checksum": wrong}}
    )
    state = await wait_done(agent, job_id)
    assert state.status == "Failed"
    assert state.error == (
        f"checksum mismatch for {planted}: expected {wrong}, got {sha256(planted)}"
    )
    assert not launched(await agent.intake.logs(job_id))


async def test_missing_and_non_image_paths_fail_clearly(agent: Agent, tmp_path: Path) -> None:
    images = tmp_path / "images"  # the test config's image root
    images.mkdir()
    missing = images / "missing.qcow2"
    (images / "folder").mkdir()
    for path, error, reason in (
        (missing, NotFoundError, "no such file"),
        (images / "folder", ForbiddenError, "only regular files"),
    ):
        with pytest.raises(error) as refused:  # the path policy, at intake
            await submit(agent, "guestkit.inspect", {"image": {"path": str(path)}})
        assert refused.value.details["reason"].startswith(reason)
    notes = images / "notes.txt"
    notes.write_text("not a disk\n")
    assert await failed(agent, "guestkit.profile", {"image": {"path": str(notes)}}) == (
        f"{notes} is not a disk image: 11 bytes is not a whole number of 512-byte sectors"
    )
    bogus = images / "bogus.qcow2"
    bogus.write_bytes(b"QFI\xfb" + bytes(508))
    assert "is not a disk image qemu can open" in await failed(
        agent, "guestkit.inspect", {"image": {"path": str(bogus), "format": "qcow2"}}
    )


async def test_payload_is_checked_at_intake(agent: Agent) -> None:
    bad: list[tuple[dict[str, Any], str]] = [
        ({"image": {"path": "relative.qcow2"}}, "payload.data.image.path"),
        ({"image": {"path": "/x", "checksum": "md5:00"}}, "payload.data.image.checksum"),
        ({"image": {"path": "/x", "format": "iso"}}, "payload.data.image.format"),
        ({"image": {"path": "/x"}, "options": {"include_apps": True}}, "payload.data.options"),
    ]
    for data, field in bad:
        with pytest.raises(ValidationError) as refused:
            await agent.intake.submit(job_document("guestkit.inspect", data), transport="test")
        assert refused.value.details["field"].startswith(field)
    document = job_document("guestkit.profile", {"image": {"path": "/x"}, "profiles": ["pci"]})
    with pytest.raises(ValidationError) as refused:
        await agent.intake.submit(document, transport="test")
    assert refused.value.details["field"] == "payload.data.profiles.0"


def appliance_processes(scratch_prefix: str) -> list[int]:
    """Processes whose command line names a guestkit scratch directory (qemu does)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        if scratch_prefix.encode() in cmdline:
            found.append(int(entry))
    return found


@pytest.mark.slow
async def test_cancel_during_inspection_leaves_no_appliance(
    agent: Agent, disks: dict[str, Path]
) -> None:
    before = set(Path("/tmp").glob("hostagent-guestfs-*"))
    sockets_before = set(Path("/tmp").glob("libguestfs*"))
    job_id = await submit(agent, "guestkit.inspect", {"image": {"path": str(disks["planted"])}})
    with agent.intake.events() as subscription:
        async for event in subscription.receive:
            if event["job_id"] == job_id and event["data"].get("message") == "launch":
                break
    scratch = [str(path) for path in set(Path("/tmp").glob("hostagent-guestfs-*")) - before]
    assert len(scratch) == 1
    # qemu is up once its command line (naming the scratch sockets) shows in /proc.
    with trio.fail_after(60):
        while not any(
            b"qemu-system" in Path(f"/proc/{pid}/cmdline").read_bytes()
            for pid in appliance_processes(scratch[0])
        ):
            await trio.sleep(0.2)
    await agent.intake.cancel(job_id)
    state = await wait_done(agent, job_id)
    assert state.status == "Cancelled"
    assert appliance_processes(scratch[0]) == []
    assert not Path(scratch[0]).exists()
    # Not even the sockets' directory, which libguestfs puts in /tmp for root.
    assert set(Path("/tmp").glob("libguestfs*")) <= sockets_before


async def test_test_echo_is_system_echo(agent: Agent) -> None:
    state, result = await run_job(agent, "test.echo", {"message": "hello"})
    assert (state.status, result) == ("Completed", {"message": "hello"})


@pytest.mark.slow
async def test_capabilities_and_health_offer_guestkit(agent: Agent) -> None:
    described = await agent.intake.capabilities()
    assert {"guestkit.inspect", "guestkit.profile", "test.echo"} <= set(described["operations"])
    schema = described["operation_schemas"]["guestkit.inspect"]
    assert schema["payload_type"] == "guestkit.inspect.v1"
    assert "image" in schema["schema"]["properties"]
    assert "inspect" in described["features"]
    health = await agent.intake.health()
    assert health["components"]["guestfs"]["status"] == "healthy"


async def test_without_a_kernel_guestkit_is_not_offered(
    config: Config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    empty_boot = tmp_path / "boot"
    empty_boot.mkdir()
    monkeypatch.setattr(_guestfs_host, "BOOT", empty_boot)
    async with trio.open_nursery() as nursery:
        agent: Agent = await nursery.start(Agent(config).run)
        described = await agent.intake.capabilities()
        assert not any(op.startswith("guestkit.") for op in described["operations"])
        assert "inspect" not in described["features"]
        component = (await agent.intake.health())["components"]["guestfs"]
        assert component["status"] == "degraded"
        assert (
            component["reason"]
            == f"no kernel for the appliance in {empty_boot} (Debian: linux-image-amd64)"
        )
        with pytest.raises(ValidationError):
            await submit(agent, "guestkit.inspect", {"image": {"path": "/x.qcow2"}})
        nursery.cancel_scope.cancel()


def test_sshd_first_value_wins_includes_first_and_match_blocks_are_not_global() -> None:
    files = {
        "/etc/ssh/sshd_config": "Include /etc/ssh/sshd_config.d/*.conf\nPermitRootLogin yes\n"
        "PasswordAuthentication no\nMatch User backup\n  PermitEmptyPasswords yes\n",
        "/etc/ssh/sshd_config.d/10-hardening.conf": "PermitRootLogin no\n",
    }
    found = _findings.ssh_rules({"files": files})
    assert found == []
    files["/etc/ssh/sshd_config"] = "PermitRootLogin=yes\n"
    found = _findings.ssh_rules({"files": files})
    # PasswordAuthentication defaults to yes in OpenSSH.
    assert [item["id"] for item in found] == ["ssh.root_login", "ssh.password_authentication"]
    assert found[1]["evidence"] == "/etc/ssh/sshd_config: PasswordAuthentication not set"


def test_release_end_of_life_is_read_from_the_guests_distro_info() -> None:
    base = {
        "files": {"/usr/share/distro-info/debian.csv": guestdisks.DISTRO_INFO},
        "operating_system": {"distribution": "debian", "version": "12.8"},
    }
    assert _findings.release_rules(base, date(2028, 6, 30)) == []
    assert [f["id"] for f in _findings.release_rules(base, date(2028, 7, 1))] == [
        "release.end_of_life"
    ]
    no_data = {"files": {}, "operating_system": base["operating_system"]}
    assert _findings.release_rules(no_data, date(2099, 1, 1)) == []


@pytest.mark.slow
def test_client_flow_against_a_running_agent(
    tmp_path: Path, disks: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """As the guestkit client examples do: submit, wait, print product name and count."""
    state, spool = tmp_path / "state", tmp_path / "spool"
    monkeypatch.setenv("HOSTAGENT_POLICY__IMAGE_ROOTS", json.dumps([str(guestdisks.CACHE)]))
    agent = AgentProcess(state, spool).start()
    try:
        data = {"image": {"path": str(disks["clean"]), "format": "qcow2"}}
        submitted = subprocess.run(
            [
                *(sys.executable, "-m", "agent", "submit", "--op", "guestkit.inspect"),
                *("--state-dir", str(state), "--spool-dir", str(spool)),
                *("--data", json.dumps(data), "--wait", "--wait-timeout", str(LAUNCH_WITHIN)),
            ],
            capture_output=True,
            text=True,
            timeout=LAUNCH_WITHIN + 30,
            check=False,
        )
    finally:
        agent.stop()
    assert submitted.returncode == 0, submitted.stderr
    record = json.loads("\n".join(submitted.stdout.splitlines()[1:]))
    assert record["status"] == "Completed"
    result = record["result"]
    assert result["operating_system"]["product_name"] == "13.2"
    assert result["operating_system"]["hostname"] == guestdisks.CLEAN_HOSTNAME
    assert result["packages"]["count"] == len(guestdisks.CLEAN_PACKAGES)
