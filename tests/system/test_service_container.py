"""The .deb under a real systemd: boot systemd 252 in a container over an overlay of /,
install the package, and use the service the way the README says.

Slow (a container boot, a package build, a drain and a watchdog restart); run by
`make test`. The test prints how long each step took.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.container import Container
from tests.jobs import wait_for

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow

# Shorter than the shipped 30 s, so the drain and the watchdog restart take seconds;
# everything else is the unit and config as packaged.
DROP_IN = """[Service]
WatchdogSec=6s
Environment=HOSTAGENT_SERVICE__DRAIN_SECONDS=3
"""


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("deb")
    built = subprocess.run(
        [str(ROOT / "packaging" / "build-deb"), str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert built.returncode == 0, built.stderr[-3000:]
    return Path(built.stdout.strip().splitlines()[-1])


@pytest.fixture
def container(package: Path) -> Iterator[Container]:
    box = Container(binds={package.parent: "/mnt/build"})
    try:
        yield box.boot()
    finally:
        box.shutdown()
    assert not box.mounted()
    assert not box.layers.exists()


def journal(box: Container, *args: str) -> list[dict[str, str]]:
    lines = box.run("journalctl", "-u", "hostagent", "-o", "json", "--no-pager", *args).stdout
    return [json.loads(line) for line in lines.splitlines() if line.strip()]


def messages(entries: list[dict[str, str]], event: str) -> list[dict[str, str]]:
    return [entry for entry in entries if f'"event": "{event}"' in str(entry.get("MESSAGE"))]


def main_pid(box: Container) -> str:
    return box.run("systemctl", "show", "-p", "MainPID", "--value", "hostagent").stdout.strip()


def submit(box: Container, user: str, *args: str) -> subprocess.CompletedProcess[str]:
    return box.run("hostagent", "submit", *args, user=user, check=False)


def test_the_package_under_systemd(package: Path, container: Container) -> None:
    box = container
    steps: dict[str, float] = {}
    mark = time.monotonic()

    def step(name: str) -> None:
        nonlocal mark
        steps[name] = round(time.monotonic() - mark, 1)
        mark = time.monotonic()

    # Install: postinst creates the users, the directories, enables and starts the unit.
    box.run("dpkg", "-i", f"/mnt/build/{package.name}")
    # The service cannot write byte-code under /opt: postinst compiled it once.
    compiled = "ls /opt/hostagent/lib/python3*/site-packages/agent/service/__pycache__/daemon.*.pyc"
    assert box.run("sh", "-c", compiled, check=False).returncode == 0
    box.run("mkdir", "-p", "/etc/systemd/system/hostagent.service.d")
    box.run("tee", "/etc/systemd/system/hostagent.service.d/test.conf", input=DROP_IN)
    box.run("systemctl", "daemon-reload")
    box.run("systemctl", "restart", "hostagent")
    assert box.run("systemctl", "is-active", "hostagent").stdout.strip() == "active"
    assert box.run("systemctl", "is-enabled", "hostagent").stdout.strip() == "enabled"
    status = box.run("systemctl", "status", "hostagent", "--no-pager", check=False).stdout
    assert "Status:" in status
    step("install and start")

    # HTTP on without tokens: a warning saying how to add one.
    warnings = journal(box, "-p", "warning")
    assert messages(warnings, "http.no_tokens"), warnings[-5:]

    # A member of hostagent-submit: through the socket, with no flags and no token.
    box.run("useradd", "--create-home", "--groups", "hostagent-submit", "alice")
    box.run("useradd", "--create-home", "mallory")
    echoed = submit(box, "alice", "--op", "system.echo", "--data", '{"m": 1}', "--wait")
    assert echoed.returncode == 0, echoed.stderr
    record = json.loads(echoed.stdout.split("\n", 1)[1])
    assert record["result"] == {"m": 1}
    assert record["transport"] == "socket"  # not the spool
    # ... and through the spool, the README's way.
    job = {
        "version": "1.0",
        "job_id": "spooled-1",
        "kind": "VMOperation",
        "operation": "system.echo",
        "payload": {"type": "system.echo.v1", "data": {"via": "spool"}},
    }
    box.run(
        "sh",
        "-c",
        "cat > /var/spool/hostagent/tmp/spooled-1.json && "
        "mv /var/spool/hostagent/tmp/spooled-1.json /var/spool/hostagent/incoming/",
        user="alice",
        input=json.dumps(job),
    )
    result_file = "/var/spool/hostagent/done/spooled-1.result.json"
    wait_for(
        lambda: box.run("test", "-r", result_file, user="alice", check=False).returncode == 0,
        20,
        "the spool result",
    )
    assert json.loads(box.run("cat", result_file, user="alice").stdout)["status"] == "Completed"
    listing = box.run("hostagent", "jobs", user="alice").stdout.splitlines()
    assert listing[0].startswith("JOB ID")
    assert {line.split()[0] for line in listing[1:]} >= {"spooled-1", record["job_id"]}
    refused = box.run("hostagent", "jobs", user="mallory", check=False)
    assert refused.returncode == 77, refused.stderr
    assert "Traceback" not in refused.stderr
    step("socket and spool as alice")

    # A failing job is a warning in the journal, with its duration.
    failed = submit(
        box, "alice", "--op", "system.sleep", "--data", '{"seconds": 5}', "--timeout", "0.3"
    )
    failed_id = failed.stdout.strip()
    assert box.run("hostagent", "follow", failed_id, user="alice", check=False).returncode == 1

    # Images as the service user: its own image root, and libvirt's through the ACL.
    for path in ("/var/lib/hostagent/images/a.qcow2", "/var/lib/libvirt/images/b.qcow2"):
        data = {"path": path, "size_bytes": 1048576, "format": "qcow2"}
        made = submit(box, "root", "--op", "image.create", "--data", json.dumps(data), "--wait")
        assert made.returncode == 0, made.stdout + made.stderr
        for op in ("image.info", "image.checksum"):
            read = submit(box, "root", "--op", op, "--data", json.dumps({"path": path}), "--wait")
            assert read.returncode == 0, read.stdout + read.stderr
    step("failed job and images")

    # Reload: the agent stays up and says it reloaded.
    pid = main_pid(box)
    box.run("systemctl", "reload", "hostagent")
    assert main_pid(box) == pid
    wait_for(lambda: messages(journal(box), "agent.reloaded"), 15, "the reload")
    step("reload")

    # Stop during a long job: drained, interrupted, re-run after the next start.
    submit(box, "alice", "--op", "system.sleep", "--data", '{"seconds": 120}', "--job-id", "long-1")
    wait_for(
        lambda: '"Running"' in box.run("hostagent", "status", "long-1", check=False).stdout,
        15,
        "long-1 running",
    )
    started = time.monotonic()
    box.run("systemctl", "stop", "hostagent", timeout=90)
    stop_seconds = time.monotonic() - started
    assert 2.5 < stop_seconds < 30, stop_seconds
    box.run("systemctl", "start", "hostagent")
    recovered = json.loads(box.run("hostagent", "status", "long-1").stdout)
    assert recovered["attempts"] == 2
    assert recovered["status"] in ("Pending", "Running")
    box.run("hostagent", "cancel", "long-1", user="alice")
    step("drain and recovery")

    # A wedged agent (SIGSTOP) misses its watchdog pings: systemd restarts it.
    pid = main_pid(box)
    box.run("kill", "-STOP", pid)
    wait_for(
        lambda: (
            main_pid(box) not in (pid, "0")
            and box.run("systemctl", "is-active", "hostagent", check=False).stdout.strip()
            == "active"
        ),
        60,
        "the watchdog restart",
    )
    entries = box.run("journalctl", "-u", "hostagent", "--no-pager", "-o", "cat").stdout
    assert "Watchdog timeout" in entries
    step("watchdog restart")

    # Priorities as journald stored them.
    everything = journal(box)
    finished = messages(everything, "job.finished")
    by_status = {json.loads(entry["MESSAGE"])["job_id"]: entry for entry in finished}
    assert by_status[failed_id]["PRIORITY"] == "4"
    assert by_status["spooled-1"]["PRIORITY"] == "6"
    assert "duration_seconds" in json.loads(by_status[failed_id]["MESSAGE"])
    assert messages(everything, "http.refused")[0]["PRIORITY"] == "4"
    step("journal priorities")
    print(f"\nsystemd container test steps (seconds): {steps}")
