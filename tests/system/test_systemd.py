"""The sd_notify protocol, the watchdog, and the agent as a systemd service."""

from __future__ import annotations

import contextlib
import gc
import itertools
import os
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import uuid
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest
import trio

from agent.config import Config
from agent.service.daemon import Agent, serve
from agent.service.settings import load_settings
from agent.service.systemd import (
    Notifier,
    feed_watchdog,
    report_status,
    socket_address,
    watchdog_interval,
)
from tests.jobs import sleep_job
from tests.systemd_stub import Service

ROOT = Path(__file__).resolve().parents[2]


class Recorder:
    """A service manager in memory: what was sent, and when (trio time)."""

    def __init__(self, watchdog_interval: float | None = None) -> None:
        self.sent: list[tuple[float, str]] = []
        self._interval = watchdog_interval

    @property
    def watchdog_interval(self) -> float | None:
        return self._interval

    async def send(self, *assignments: str) -> None:
        self.sent.append((trio.current_time(), "\n".join(assignments)))

    def times_of(self, message: str) -> list[float]:
        return [at for at, text in self.sent if text == message]

    def texts(self) -> list[str]:
        return [text for _, text in self.sent]


# --- the protocol ---


def test_socket_address_of_a_path_and_of_an_abstract_name() -> None:
    assert socket_address("/run/systemd/notify") == "/run/systemd/notify"
    assert socket_address("@hostagent/notify") == "\0hostagent/notify"


@pytest.mark.parametrize("value", ["relative/notify", "@", "vsock:2:1234", ""])
def test_socket_address_refuses_what_is_not_ours(value: str) -> None:
    assert socket_address(value) is None


def test_watchdog_interval_is_half_of_watchdog_usec() -> None:
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}, 42) == 15.0
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "42"}, 42) == 15.0


@pytest.mark.parametrize(
    "environ",
    [
        {},
        {"WATCHDOG_USEC": "0"},
        {"WATCHDOG_USEC": "soon"},
        {"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "41"},
        {"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "me"},
    ],
)
def test_no_watchdog_unless_asked_for_this_process(environ: dict[str, str]) -> None:
    assert watchdog_interval(environ, 42) is None


def test_from_environment_takes_the_variables_so_children_do_not_inherit_them() -> None:
    environ = {
        "NOTIFY_SOCKET": "@manager",
        "WATCHDOG_USEC": "2000000",
        "WATCHDOG_PID": str(os.getpid()),
        "PATH": "/usr/bin",
    }
    notifier = Notifier.from_environment(environ)
    assert notifier.enabled
    assert notifier.address == "\0manager"
    assert notifier.watchdog_interval == 1.0
    assert environ == {"PATH": "/usr/bin"}


def test_from_environment_without_a_manager_is_disabled() -> None:
    notifier = Notifier.from_environment({"WATCHDOG_USEC": "2000000"})
    assert not notifier.enabled
    assert notifier.watchdog_interval is None  # no socket to ping


def test_from_environment_ignores_an_unsupported_socket() -> None:
    assert not Notifier.from_environment({"NOTIFY_SOCKET": "vsock:2:99"}).enabled


@pytest.fixture
def abstract_manager() -> Iterator[tuple[str, socket.socket]]:
    name = f"hostagent-test-{uuid.uuid4()}"
    manager = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    manager.bind("\0" + name)
    manager.settimeout(5)
    yield "@" + name, manager
    manager.close()


async def test_notifier_speaks_to_an_abstract_socket(
    abstract_manager: tuple[str, socket.socket],
) -> None:
    address, manager = abstract_manager
    notifier = Notifier(socket_address(address))
    await notifier.send("READY=1", "STATUS=two\nlines")
    await notifier.send("WATCHDOG=1")
    notifier.close()
    assert manager.recv(4096) == b"READY=1\nSTATUS=two lines"
    assert manager.recv(4096) == b"WATCHDOG=1"


async def test_notifier_speaks_to_a_socket_path(tmp_path: Path) -> None:
    manager = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    manager.bind(str(tmp_path / "notify"))
    manager.settimeout(5)
    with manager:
        notifier = Notifier(str(tmp_path / "notify"))
        await notifier.send("STOPPING=1")
        notifier.close()
        assert manager.recv(4096) == b"STOPPING=1"


async def test_notifier_without_a_manager_does_nothing() -> None:
    await Notifier(None, watchdog_interval=1.0).send("READY=1")
    assert Notifier(None, watchdog_interval=1.0).watchdog_interval is None


async def test_a_lost_manager_is_logged_not_raised(tmp_path: Path) -> None:
    notifier = Notifier(str(tmp_path / "gone"))
    await notifier.send("WATCHDOG=1")  # ENOENT: logged once
    await notifier.send("WATCHDOG=1")
    notifier.close()
    notifier.close()


# --- status and watchdog tasks (virtual time) ---


async def test_status_is_sent_when_it_changes(autojump_clock: trio.abc.Clock) -> None:
    recorder = Recorder()
    lines = iter(["a", "a", "b", "b", "b", "c"])
    with trio.move_on_after(5.5):
        await report_status(recorder, lambda: next(lines, "c"), every=1.0, last="a")
    assert recorder.texts() == ["STATUS=b", "STATUS=c"]


async def test_watchdog_pings_every_interval(autojump_clock: trio.abc.Clock) -> None:
    recorder = Recorder()

    async def healthy() -> str | None:
        return None

    with trio.move_on_after(10.5):
        await feed_watchdog(recorder, healthy, every=1.0)
    pings = recorder.times_of("WATCHDOG=1")
    assert len(pings) == 11
    assert {round(b - a, 6) for a, b in itertools.pairwise(pings)} == {1.0}


async def test_watchdog_withholds_pings_while_the_probe_hangs_or_complains(
    autojump_clock: trio.abc.Clock,
) -> None:
    recorder = Recorder()
    start = trio.current_time()

    async def probe() -> str | None:
        elapsed = trio.current_time() - start
        if 3 <= elapsed < 6:
            await trio.sleep_forever()  # wedged: never answers
        if 8 <= elapsed < 10:
            return "the store does not finish writes"
        return None

    with trio.move_on_after(12.5):
        await feed_watchdog(recorder, probe, every=1.0)
    pings = [round(at - start) for at in recorder.times_of("WATCHDOG=1")]
    assert pings == [0, 1, 2, 6, 7, 10, 11, 12]


# --- the watchdog probe on a real agent ---


@pytest.mark.slow
async def test_probe_finds_a_store_that_cannot_write(agent: Agent) -> None:
    assert await agent.wedged() is None
    recorder = Recorder()
    blocker = sqlite3.connect(agent.config.store_path, isolation_level=None)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(partial(feed_watchdog, recorder, agent.wedged, every=0.1))
            await trio.sleep(0.35)
            blocker.execute("BEGIN EXCLUSIVE")  # holds the write lock like a hung writer
            held_at = trio.current_time()
            await trio.sleep(1.0)
            blocker.execute("COMMIT")
            released_at = trio.current_time()
            await trio.sleep(0.5)
            nursery.cancel_scope.cancel()
    finally:
        blocker.close()
    pings = recorder.times_of("WATCHDOG=1")
    during = [at for at in pings if held_at + 0.15 < at < released_at]
    after = [at for at in pings if at > released_at]
    print(f"pings: {len(pings)}, while the store was locked: {len(during)}, after: {len(after)}")
    assert not during
    assert after


async def test_probe_finds_jobs_waiting_beside_idle_workers(
    agent: Agent, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A lost wakeup: the job is queued but no idle worker hears of it.
    # Idle workers are parked on the old lot; the new one wakes nobody.
    monkeypatch.setattr(agent.dispatcher, "_wakeup", trio.lowlevel.ParkingLot())
    await agent.intake.submit(sleep_job("stuck", 0), transport="test")
    assert agent.dispatcher.queue_depth == 1
    assert await agent.dispatcher.wedged(stall_after=0.2) is None  # first sight
    await trio.sleep(0.3)
    reason = await agent.dispatcher.wedged(stall_after=0.2)
    assert reason is not None
    assert "1 jobs waited" in reason
    monkeypatch.undo()
    agent.dispatcher._wakeup.unpark()
    with trio.fail_after(5):
        while (await agent.intake.status("stuck")).status.value != "Completed":
            await trio.sleep(0.02)
    assert await agent.dispatcher.wedged(stall_after=0.2) is None


async def test_store_errors_count_as_wedged(agent: Agent, monkeypatch: pytest.MonkeyPatch) -> None:
    from agent.errors import AgentError

    async def failing_ping() -> None:
        raise AgentError("job store write failed: disk I/O error")

    monkeypatch.setattr(agent.store, "ping", failing_ping)
    assert await agent.wedged() == "job store: job store write failed: disk I/O error"


# --- serve() in this process: signals, notifications, reload ---


async def test_serve_notifies_reloads_and_drains(config: Config, tmp_path: Path) -> None:
    config_file = tmp_path / "agent.toml"
    config_file.write_text('log_level = "info"\n')
    dirs = {"state_dir": config.state_dir, "spool_dir": config.spool_dir}

    def reread() -> Config:
        return load_settings(config_file, environ={}, overrides=dirs)

    recorder = Recorder(watchdog_interval=0.05)
    async with trio.open_nursery() as nursery:
        agent: Agent = await nursery.start(
            lambda task_status: serve(
                config, load_config=reread, notify=recorder, task_status=task_status
            )
        )
        assert recorder.texts()[0].startswith("STATUS=Starting")
        assert recorder.texts()[1].startswith("READY=1\nSTATUS=Taking jobs: 0 queued")
        config_file.write_text('log_level = "debug"\nmax_concurrent_jobs = 3\n')
        os.kill(os.getpid(), signal.SIGHUP)
        with trio.fail_after(5):
            while agent.config.max_concurrent_jobs != 3:
                await trio.sleep(0.01)
        config_file.write_text("log_level = 7\n")  # invalid: logged, old config kept
        await agent.intake.submit(sleep_job("long", 60), transport="test")
        os.kill(os.getpid(), signal.SIGHUP)
        with trio.fail_after(5):
            while sum(text.startswith("RELOADING=1") for text in recorder.texts()) < 2:
                await trio.sleep(0.01)
            while agent.dispatcher.running_count < 1:
                await trio.sleep(0.01)
        assert agent.config.max_concurrent_jobs == 3
        os.kill(os.getpid(), signal.SIGTERM)
        with trio.fail_after(5):
            while not any(text.startswith("STOPPING=1") for text in recorder.texts()):
                await trio.sleep(0.01)
        os.kill(os.getpid(), signal.SIGHUP)  # ignored while draining
        await trio.sleep(0.1)
        os.kill(os.getpid(), signal.SIGTERM)  # a second one ends the drain now
    texts = recorder.texts()
    assert sum(text.startswith("RELOADING=1\nMONOTONIC_USEC=") for text in texts) == 2
    assert sum(text.startswith("READY=1") for text in texts) == 3
    assert "WATCHDOG=1" in texts
    assert texts.index("STOPPING=1\nSTATUS=Draining: 1 running") > 0
    assert agent.dispatcher.interrupted == ["long"]


async def test_serve_without_a_way_to_reload_ignores_sighup(config: Config) -> None:
    recorder = Recorder()
    async with trio.open_nursery() as nursery:
        await nursery.start(
            lambda task_status: serve(config, notify=recorder, task_status=task_status)
        )
        os.kill(os.getpid(), signal.SIGHUP)
        await trio.sleep(0.1)
        os.kill(os.getpid(), signal.SIGINT)
    assert not any(text.startswith("RELOADING") for text in recorder.texts())
    assert recorder.texts()[-1].startswith("STOPPING=1")


async def test_serve_turns_the_collector_back_on_once_ready(config: Config) -> None:
    gc.disable()  # as `hostagent run` starts (agent.cli.command)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(
                lambda task_status: serve(config, notify=Recorder(), task_status=task_status)
            )
            assert gc.isenabled()
            assert gc.get_freeze_count() > 0  # start-up's objects left out of full passes
            nursery.cancel_scope.cancel()
    finally:
        gc.enable()


# --- the real daemon under a fake manager ---


@pytest.fixture
def service(tmp_path: Path) -> Iterator[Service]:
    running = Service(tmp_path)
    yield running
    running.close()


@pytest.mark.slow
def test_the_daemon_speaks_sd_notify(service: Service) -> None:
    service.watchdog_usec = 400_000  # pings expected every 0.2 s
    service.environment = {"HOSTAGENT_SERVICE__STATUS_INTERVAL_SECONDS": "0.05"}
    service.start()
    ready = service.expect(lambda n: n.fields.get("READY") == "1", within=30)
    starting = service.notifications[0]
    print(
        f"READY=1 after {ready.at:.3f}s from process start "
        f"({ready.at - starting.at:.3f}s after the first STATUS=, sent as serve() began)"
    )
    assert starting.fields["STATUS"].startswith("Starting")
    assert ready.at < 30
    assert ready.fields["STATUS"].startswith("Taking jobs: 0 queued, 0 running")
    assert (service.state_dir / "jobs.sqlite3").exists()  # store open before READY
    assert (service.spool_dir / "incoming").is_dir()  # spool scanned before READY

    service.submit(sleep_job("busy", 1.0))
    busy = service.expect(lambda n: "1 running" in n.fields.get("STATUS", ""), within=10)
    print(f"STATUS with the job running: {busy.fields['STATUS']!r}")
    service.receive(1.5)

    pings = [n.at for n in service.notifications if n.fields == {"WATCHDOG": "1"}]
    intervals = [b - a for a, b in itertools.pairwise(pings)]
    print(
        f"WATCHDOG=1: {len(pings)} pings, interval median {statistics.median(intervals):.3f}s "
        f"min {min(intervals):.3f}s max {max(intervals):.3f}s (asked: 0.2s)"
    )
    assert len(pings) >= 5
    assert 0.1 < statistics.median(intervals) < 0.4  # generous: this host is shared
    statuses = [n.fields["STATUS"] for n in service.notifications if "STATUS" in n.fields]
    assert any("0 running" in text for text in statuses[statuses.index(busy.fields["STATUS"]) :])

    # Wedge the dispatcher: hold the job store's write lock, as a hung disk would.
    blocker = sqlite3.connect(service.state_dir / "jobs.sqlite3", isolation_level=None)
    with contextlib.closing(blocker):
        blocker.execute("BEGIN EXCLUSIVE")
        held_at = service.now()
        service.receive(1.2)
        blocker.execute("COMMIT")
        released_at = service.now()
        service.expect(lambda n: n.fields == {"WATCHDOG": "1"}, within=5)
    pings = [n.at for n in service.notifications if n.fields == {"WATCHDOG": "1"}]
    silent = [b - a for a, b in itertools.pairwise(pings) if b > held_at]
    resumed = next(at for at in pings if at > released_at) - released_at
    print(
        f"store write lock held {released_at - held_at:.3f}s: longest gap between pings "
        f"{max(silent):.3f}s, first ping {resumed:.3f}s after release"
    )
    assert max(silent) >= 1.0  # no ping while the store could not write
    assert resumed < 1.0

    service.signal(signal.SIGHUP)
    service.expect(lambda n: n.fields.get("RELOADING") == "1", within=10)
    service.expect(lambda n: n.fields.get("READY") == "1", within=10)

    sent_term = service.now()
    service.signal(signal.SIGTERM)
    stopping = service.expect(lambda n: n.fields.get("STOPPING") == "1", within=10)
    assert service.wait(within=30) == 0
    print(
        f"STOPPING=1 {stopping.at - sent_term:.3f}s after SIGTERM; "
        f"exited 0 {service.now() - sent_term:.3f}s after it"
    )
    events = [event["event"] for event in service.log_events()]
    assert "agent.reloaded" in events
    assert "agent.drained" in events


# --- the unit and tmpfiles files ---


def _installable_unit(tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at this checkout's hostagent, which exists."""
    hostagent = shutil.which("hostagent") or str(ROOT / ".venv" / "bin" / "hostagent")
    text = (ROOT / "systemd" / "hostagent.service").read_text()
    unit = tmp_path / "hostagent.service"
    unit.write_text(text.replace("/opt/hostagent/bin/hostagent", hostagent))
    return unit


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze missing")
def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    unit = _installable_unit(tmp_path)
    verified = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, check=False
    )
    assert verified.returncode == 0, verified.stderr
    assert verified.stderr == ""


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze missing")
def test_unit_security_exposure(tmp_path: Path) -> None:
    unit = _installable_unit(tmp_path)
    report = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", "--no-pager", str(unit)],
        capture_output=True,
        text=True,
        check=False,
    )
    if "--offline" in report.stderr:
        pytest.skip(f"this systemd-analyze has no offline security: {report.stderr.strip()}")
    overall = [line for line in report.stdout.splitlines() if "Overall exposure" in line]
    print(overall[0] if overall else report.stdout[-500:])
    assert overall
    exposure = float(overall[0].split("hostagent.service:")[1].split()[0])
    # 2.0 before image tools ran in a bubblewrap sandbox, which must create namespaces
    # (RestrictNamespaces, @mount): +0.3. Each tool then holds no capability and sees
    # only its job's files, worth far more than the points.
    assert exposure <= 2.3


def test_unit_declares_what_the_agent_relies_on() -> None:
    lines = [
        line.strip()
        for line in (ROOT / "systemd" / "hostagent.service").read_text().splitlines()
        if "=" in line and not line.lstrip().startswith("#")
    ]
    settings: dict[str, list[str]] = {}
    for line in lines:
        key, _, value = line.partition("=")
        settings.setdefault(key, []).append(value)
    assert settings["Type"] == ["notify"]
    assert settings["KillMode"] == ["mixed"]
    assert "hostagent-submit" in settings["SupplementaryGroups"][0]
    assert "libvirt" in settings["SupplementaryGroups"][0]
    stop = int(settings["TimeoutStopSec"][0].removesuffix("s"))
    service = Config().service
    assert service.drain_seconds + service.cancel_grace_seconds < stop - 10
    assert "/var/spool/hostagent" in settings["ReadWritePaths"][0]
    assert Config().spool_dir == Path("/var/spool/hostagent")
    assert Config().state_dir == Path("/var/lib/hostagent")


@pytest.mark.skipif(shutil.which("systemd-tmpfiles") is None, reason="systemd-tmpfiles missing")
def test_tmpfiles_creates_the_spool_with_its_modes(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "passwd").write_text(
        "root:x:0:0::/root:/bin/sh\nhostagent:x:990:990::/var/lib/hostagent:/sbin/nologin\n"
    )
    (root / "etc" / "group").write_text(
        "root:x:0:\nhostagent:x:990:\nhostagent-submit:x:989:\nlibvirt:x:988:\n"
    )
    # libvirt's image directory, as libvirt-daemon-system ships it.
    (root / "var" / "lib" / "libvirt" / "images").mkdir(parents=True, mode=0o711)
    subprocess.run(
        [
            "systemd-tmpfiles",
            "--create",
            f"--root={root}",
            str(ROOT / "systemd" / "hostagent.tmpfiles"),
        ],
        check=True,
        capture_output=True,
    )
    spool = root / "var" / "spool" / "hostagent"
    modes = {
        path.name: (oct(path.stat().st_mode & 0o7777), path.stat().st_gid)
        for path in [spool, *spool.iterdir()]
    }
    assert modes == {
        "hostagent": ("0o2750", 989),
        "tmp": ("0o2770", 989),
        "incoming": ("0o2770", 989),
        "cancel": ("0o2770", 989),
        "active": ("0o750", 990),
        "done": ("0o2750", 989),
        "failed": ("0o2750", 989),
    }
    # The agent's own image root. (Its ACL on libvirt's image directory names the
    # user, which tmpfiles resolves on the host, not under --root: the container
    # test in test_service_container.py proves it, creating an image there.)
    images = root / "var" / "lib" / "hostagent" / "images"
    assert (oct(images.stat().st_mode & 0o7777), images.stat().st_gid) == ("0o2770", 988)
    assert all(path.stat().st_uid == 990 for path in [spool, *spool.iterdir()])
