"""The outbox through kill -9: a slow consumer killed three times receives
every outcome, in order, with no gap and at most one duplicate per restart."""

from __future__ import annotations

import json
import random
import sqlite3
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from tests.agentproc import AgentProcess

JOBS = 5000
FINAL = {"completed", "failed", "cancelled"}


def delivered(log: Path) -> list[dict[str, object]]:
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines() if line.endswith("}")]


def finished(records: list[dict[str, object]]) -> set[object]:
    return {record["job_id"] for record in records if record["event"] in FINAL}


@pytest.mark.slow
def test_a_slow_consumer_killed_three_times_gets_every_outcome_once_in_order(
    tmp_path: Path,
) -> None:
    state, log = tmp_path / "state", tmp_path / "delivered.jsonl"
    agent = AgentProcess(state, tmp_path / "spool")
    agent.argv = [sys.executable, "-m", "tests.outbox_agent", str(state), str(JOBS), str(log)]
    rng = random.Random(99)
    restarts = 3
    for _ in range(restarts):
        agent.start()
        time.sleep(rng.uniform(0.5, 2.5))
        agent.kill()
    agent.start()
    deadline = time.monotonic() + 300
    while len(finished(delivered(log))) < JOBS:
        assert time.monotonic() < deadline, f"{len(finished(delivered(log)))} of {JOBS} outcomes"
        time.sleep(0.2)
    # The last acknowledgements commit right after the last line is written.
    conn = sqlite3.connect(state / "jobs.sqlite3")
    deadline = time.monotonic() + 30
    while conn.execute("SELECT count(*) FROM outbox").fetchone()[0]:
        assert time.monotonic() < deadline, "the outbox was not emptied"
        time.sleep(0.05)
    agent.kill()

    records = delivered(log)
    copies = Counter(record["id"] for record in records)
    duplicates = sum(count - 1 for count in copies.values())
    assert duplicates <= restarts
    ids = sorted(copies)
    assert ids == list(range(ids[0], ids[-1] + 1))  # no gap
    assert [record["id"] for record in records] == sorted(record["id"] for record in records)
    events: dict[object, list[object]] = defaultdict(list)
    for record in records:
        events[record["job_id"]].append(record["event"])
    assert len(events) == JOBS
    for job_id, seen in events.items():
        assert seen[0] == "accepted", job_id
        assert seen[-1] == "completed", job_id
        assert set(seen[1:-1]) <= {"running", "accepted", "completed"}, job_id
    statuses = dict(conn.execute("SELECT status, count(*) FROM jobs GROUP BY status").fetchall())
    assert statuses == {"Completed": JOBS}
    print(f"\n{restarts} kill -9s: {len(records)} deliveries, {duplicates} duplicates")
