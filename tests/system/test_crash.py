"""Durability of a real agent process: kill -9 at random moments, and a cold start
on a spool full of files. Both on the real clock, bounded."""

from __future__ import annotations

import json
import random
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from tests.agentproc import AgentProcess
from tests.jobs import job, wait_for
from tests.spoolkit import drop


def results(spool: Path) -> list[Path]:
    return list((spool / "done").glob("*.result.json"))


@pytest.mark.slow
def test_kill_9_at_random_moments_loses_no_job(tmp_path: Path) -> None:
    state, spool = tmp_path / "state", tmp_path / "spool"
    total, kills = 2000, 6
    agent = AgentProcess(state, spool, "--max-concurrent", "4")
    agent.start()  # creates the spool

    def writer() -> None:
        for n in range(total):
            if n % 3 == 0:
                document = job(f"j{n}", "system.sleep", {"seconds": random.uniform(0.002, 0.02)})
            else:
                document = job(f"j{n}", data={"n": n})
            drop(spool, f"j{n}.json", document, direct=n % 5 == 0)
            if n % 50 == 0:
                time.sleep(0.02)  # keep dropping across several lives of the agent

    dropping = threading.Thread(target=writer)
    dropping.start()
    rng = random.Random(1234)
    for _ in range(kills):
        time.sleep(rng.uniform(0.2, 1.2))
        agent.kill()
        agent.start()
    dropping.join()
    wait_for(lambda: len(results(spool)) >= total, 240, f"{total} results")
    assert agent.stop() == 0

    assert len(results(spool)) == total
    assert list((spool / "failed").iterdir()) == []
    assert list((spool / "incoming").iterdir()) == []
    assert list((spool / "active").iterdir()) == []
    conn = sqlite3.connect(state / "jobs.sqlite3")
    statuses = dict(conn.execute("SELECT status, count(*) FROM jobs GROUP BY status").fetchall())
    assert statuses == {"Completed": total}
    reruns = conn.execute("SELECT sum(attempts - 1) FROM jobs").fetchone()[0]
    for n in range(total):
        record = json.loads((spool / "done" / f"j{n}.result.json").read_text())
        assert record["status"] == "Completed"
    print(
        f"\n{kills} kill -9s during {total} jobs: all completed, {reruns} re-runs "
        "(jobs running at a kill, re-queued as safe to re-run)"
    )


@pytest.mark.slow
def test_twenty_thousand_files_dropped_while_stopped_are_each_taken_once(tmp_path: Path) -> None:
    state, spool = tmp_path / "state", tmp_path / "spool"
    total = 20_000
    (spool / "tmp").mkdir(parents=True)
    (spool / "incoming").mkdir()
    for n in range(total):
        drop(spool, f"cold-{n}.json", job(f"cold-{n}", data={"n": n}))
    agent = AgentProcess(state, spool)
    started = time.monotonic()
    agent.start(timeout=300)
    wait_for(lambda: len(results(spool)) >= total, 300, f"{total} results")
    elapsed = time.monotonic() - started
    assert agent.stop() == 0
    conn = sqlite3.connect(state / "jobs.sqlite3")
    assert conn.execute("SELECT count(*), min(attempts), max(attempts) FROM jobs").fetchone() == (
        total,
        1,
        1,
    )
    runs = conn.execute("SELECT count(*) FROM transitions WHERE status = 'Running'").fetchone()
    assert runs[0] == total
    assert list((spool / "failed").iterdir()) == []
    assert len(list((spool / "done").glob("*.job.json"))) == total
    print(f"\n{total} files taken exactly once in {elapsed:.1f} s ({total / elapsed:.0f} jobs/s)")


@pytest.mark.slow
def test_killed_between_a_jobs_end_and_its_result_file_writes_it_once_on_restart(
    tmp_path: Path,
) -> None:
    state, spool = tmp_path / "state", tmp_path / "spool"
    agent = AgentProcess(state, spool)
    agent.start()
    # A directory where the result file goes: every attempt to write it fails
    # (a real fault, as a full or broken disk would give) until it is removed.
    blocker = spool / "done" / "stuck.result.json"
    blocker.mkdir()
    drop(spool, "stuck.json", job("stuck", data={"answer": 42}))
    store = sqlite3.connect(state / "jobs.sqlite3")

    def completed() -> bool:
        row = store.execute("SELECT status FROM jobs WHERE job_id = 'stuck'").fetchone()
        return row is not None and row[0] == "Completed"

    wait_for(completed, 30, "the job to complete")
    wait_for(lambda: bool(agent.events("spool.delivery_failed")), 30, "a failed delivery")
    agent.kill()
    blocker.rmdir()
    agent.start()
    wait_for((spool / "done" / "stuck.result.json").is_file, 30, "the result file")
    assert agent.stop() == 0
    record = json.loads((spool / "done" / "stuck.result.json").read_text())
    assert record["status"] == "Completed"
    assert record["result"] == {"answer": 42}
    assert record["attempts"] == 1
    assert sorted(path.name for path in (spool / "done").iterdir()) == [
        "stuck.job.json",
        "stuck.result.json",
    ]
    assert list((spool / "active").iterdir()) == []
    assert list((spool / ".claimed").iterdir()) == []
    assert store.execute("SELECT count(*) FROM outbox").fetchone()[0] == 0
