"""Spool transport: Maildir intake, exactly-once claiming, quarantine of hostile entries."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

import pytest
import trio

from agent.config import Config
from agent.jobs import JobStatus
from agent.service.daemon import Agent
from tests.jobs import job
from tests.spoolkit import drop, read_json, spool_of, wait_for_files

SECRET = "TOP-SECRET-4c1d-never-to-be-read"


@pytest.fixture
def config(config: Config) -> Config:
    spool = config.spool.model_copy(update={"max_file_bytes": 4096, "allowed_uids": [os.getuid()]})
    return config.model_copy(update={"spool": spool})


@pytest.mark.slow
async def test_thousand_files_mixed_writers_each_run_exactly_once(
    agent: Agent, config: Config
) -> None:
    spool = config.spool_dir
    for n in range(1000):
        drop(spool, f"job-{n}.json", job(f"job-{n}", data={"n": n}), direct=n % 2 == 1)
    results = await wait_for_files(spool / "done", "*.result.json", 1000, limit=120)
    assert len(results) == 1000
    assert list((spool / "failed").iterdir()) == []
    assert list((spool / "incoming").iterdir()) == []
    records = [read_json(path) for path in results]
    assert {record["status"] for record in records} == {"Completed"}
    assert {record["attempts"] for record in records} == {1}  # none ran twice
    assert sorted(record["result"]["n"] for record in records) == list(range(1000))
    assert len(list((spool / "done").glob("*.job.json"))) == 1000
    conn = sqlite3.connect(config.store_path)
    runs = conn.execute("SELECT count(*) FROM transitions WHERE status = 'Running'").fetchone()
    assert runs[0] == 1000


def plant_hostile_entries(spool: Path, outside: Path) -> dict[str, str]:
    """Each hostile entry's name in incoming/ -> a part of the reason it must be refused for."""
    incoming = spool / "incoming"
    secret = outside / "secret.txt"
    secret.write_text(SECRET)
    (incoming / "symlink.json").symlink_to(secret)
    linked = outside / "linked.json"
    linked.write_text(json.dumps(job("linked")))
    os.link(linked, incoming / "hardlink.json")
    os.mkfifo(incoming / "fifo.json")
    (incoming / "directory.json").mkdir()
    drop(spool, "oversized.json", job("big", data={"blob": "x" * 5000}))
    drop(
        spool,
        "bad\udcff.json".encode(errors="surrogateescape").decode(errors="surrogateescape"),
        job("oddname"),
    )
    drop(spool, "escape.json", job("../../etc/passwd"))
    drop(spool, "truncated.json", b'{"version": "1.0", "kind": "Te')
    os.utime(incoming / "truncated.json", (1, 1))  # long settled: not a copy in progress
    drop(spool, "plain-op.json", job("plain", operation="echo"))
    drop(spool, "unknown-op.json", job("unknown", operation="vm.teleport"))
    drop(spool, "bad-payload.json", job("badpay", "system.sleep", {"seconds": "soon"}))
    drop(spool, "array.json", b"[1, 2, 3]")
    stranger = spool / "tmp" / "stranger.json"
    stranger.write_text(json.dumps(job("stranger")))
    os.chown(stranger, 4242, 4242)  # the tests run as root
    stranger.rename(incoming / "stranger.json")
    return {
        "stranger.json": "owner uid 4242 is not allowed",
        "symlink.json": "symbolic links are refused",
        "hardlink.json": "hard-linked files are refused",
        "fifo.json": "not a regular file",
        "directory.json": "not a regular file (a directory)",
        "oversized.json": "over the limit of 4096",
        "bad\ufffd.json": "not valid UTF-8",
        "escape.json": "job_id must be",
        "truncated.json": "not valid JSON",
        "plain-op.json": "Operation must be namespaced",
        "unknown-op.json": "vm.teleport",
        "bad-payload.json": "valid number",
        "array.json": "JSON object",
    }


@pytest.mark.slow
async def test_hostile_entries_are_quarantined_unread_and_the_agent_keeps_going(
    agent: Agent, config: Config, tmp_path: Path
) -> None:
    spool = config.spool_dir
    outside = tmp_path / "outside"
    outside.mkdir()
    expected = plant_hostile_entries(spool, outside)
    reports = await wait_for_files(spool / "failed", "*.error.json", len(expected))
    by_name = {path.name.removesuffix(".error.json"): read_json(path) for path in reports}
    assert set(by_name) == set(expected)
    links = {"symlink.json", "hardlink.json"}
    for name, reason in expected.items():
        assert reason in json.dumps(by_name[name], ensure_ascii=False), name
        if name in links:  # removed, never kept where the agent keeps files
            assert by_name[name]["removed"] is True
            assert not os.path.lexists(spool / "failed" / name)
        else:
            assert os.path.lexists(spool / "failed" / name), name
    assert not [path for path in spool.rglob("*") if path.is_symlink()]
    assert list((spool / "incoming").iterdir()) == []
    # The secret was never read: no regular file under the spool or the state dir holds it.
    for root in (spool, config.state_dir):
        for path in root.rglob("*"):
            if path.is_file() and not path.is_symlink():
                assert SECRET.encode() not in path.read_bytes(), path
    assert (outside / "linked.json").exists()  # the other link is untouched
    assert spool_of(agent) is not None
    assert spool_of(agent).quarantined == len(expected)
    drop(spool, "after.json", job("after"))
    [result] = await wait_for_files(spool / "done", "after.result.json", 1)
    assert read_json(result)["status"] == "Completed"


async def test_half_written_copy_is_left_alone_until_complete(agent: Agent, config: Config) -> None:
    spool = config.spool_dir
    whole = json.dumps(job("copied")).encode()
    partial = spool / "incoming" / "copied.json"
    partial.write_bytes(whole[:20])
    await trio.sleep(0.1)  # well inside the settle interval (0.3 s)
    assert partial.exists()
    assert list((spool / "failed").iterdir()) == []
    with partial.open("ab") as rest:
        rest.write(whole[20:])
    [result] = await wait_for_files(spool / "done", "copied.result.json", 1)
    assert read_json(result)["status"] == "Completed"
    assert list((spool / "failed").iterdir()) == []


async def test_resubmitted_file_is_the_same_job_and_a_changed_one_conflicts(
    agent: Agent, config: Config
) -> None:
    spool = config.spool_dir
    drop(spool, "first.json", job("same", data={"v": 1}))
    await wait_for_files(spool / "done", "same.result.json", 1)
    drop(spool, "again.json", job("same", data={"v": 1}))
    drop(spool, "changed.json", job("same", data={"v": 2}))
    [report] = await wait_for_files(spool / "failed", "changed.json.error.json", 1)
    assert read_json(report)["error"] == "CONFLICT"
    with trio.fail_after(10):
        while (spool / "incoming" / "again.json").exists():
            await trio.sleep(0.01)
    state = await agent.intake.status("same")
    assert state.attempts == 1
    assert read_json(spool / "done" / "same.result.json")["result"] == {"v": 1}


@pytest.mark.slow
async def test_file_without_job_id_gets_one_stable_id(agent: Agent, config: Config) -> None:
    spool = config.spool_dir
    drop(spool, "anonymous.json", job(None, data={"who": "nobody"}))
    [result] = await wait_for_files(spool / "done", "*.result.json", 1)
    record = read_json(result)
    assert record["result"] == {"who": "nobody"}
    assert result.name == f"{record['job_id']}.result.json"


@pytest.mark.slow
async def test_cancel_file_cancels_a_running_job(agent: Agent, config: Config) -> None:
    spool = config.spool_dir
    drop(spool, "long.json", job("long", "system.sleep", {"seconds": 60}))
    with agent.intake.events() as subscription:
        async for event in subscription.receive:
            if event["job_id"] == "long" and event["type"] == "progress":
                break
    (spool / "cancel" / "long").touch()
    [result] = await wait_for_files(spool / "done", "long.result.json", 1)
    assert read_json(result)["status"] == JobStatus.CANCELLED.value
    assert list((spool / "cancel").iterdir()) == []
