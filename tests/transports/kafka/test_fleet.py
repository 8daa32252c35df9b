"""Three real agent processes on one real broker: addressing, exactly-once in a pool,
kill -9 mid-run, and the fleet map read by fresh processes."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from agent.transports.kafka import KafkaConfig
from agent.transports.kafka.client import EventWatcher
from agent.transports.kafka.topics import Topics
from tests.transports.kafka.fleetkit import (
    Events,
    echo,
    kafka_agent,
    send_signed,
    sleep,
    write_key_file,
)

pytestmark = pytest.mark.slow


def hostagent(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )


def fleet_ids(bootstrap: str, prefix: str, *extra: str) -> dict[str, bool]:
    """worker_id -> stale, from a fresh `hostagent fleet --json` process."""
    done = hostagent("fleet", "--bootstrap", bootstrap, "--topic-prefix", prefix, "--json", *extra)
    assert done.returncode == 0, done.stderr
    return {host["worker_id"]: host["stale"] for host in json.loads(done.stdout)}


def test_host_pool_and_broadcast_jobs_reach_the_right_agents(
    tmp_path: Path, kafka_broker: str, kafka_prefix: str
) -> None:
    settings = KafkaConfig(bootstrap_servers=kafka_broker, topic_prefix=kafka_prefix)
    topics = Topics(kafka_prefix)
    agents = {
        "a": kafka_agent(tmp_path, kafka_broker, kafka_prefix, "a", pools=["p1"],
                         labels={"rack": "r1"}),
        "b": kafka_agent(tmp_path, kafka_broker, kafka_prefix, "b", pools=["p1"],
                         labels={"rack": "r2"}),
        "c": kafka_agent(tmp_path, kafka_broker, kafka_prefix, "c", labels={"rack": "r1"}),
    }  # fmt: skip
    try:
        for agent in agents.values():
            agent.start()
        host_jobs = {name: [f"host-{name}-{i}" for i in range(5)] for name in agents}
        for name, ids in host_jobs.items():
            send_signed(settings, topics.host(name), [echo(job_id) for job_id in ids])
        pool_ids = [f"pool-{i}" for i in range(1000)]
        send_signed(settings, topics.pool("p1"), [echo(job_id) for job_id in pool_ids])
        broadcast = {**echo("bcast-1"), "selector": {"labels": {"rack": "r1"}}}
        send_signed(settings, topics.broadcast, [broadcast])

        events = Events(settings)
        all_host = [job_id for ids in host_jobs.values() for job_id in ids]
        events.read([*all_host, *pool_ids], timeout=120)
        for name, ids in host_jobs.items():
            for job_id in ids:
                assert {e["worker_id"] for e in events.by_job[job_id]} == {name}
        ran_on = Counter()
        for job_id in pool_ids:
            completed = [e for e in events.by_job[job_id] if e["type"] == "completed"]
            assert len(completed) == 1, (job_id, events.types(job_id))
            ran_on[completed[0]["worker_id"]] += 1
            # One partition per job_id: its events arrive in the order they happened.
            assert events.types(job_id) == ["accepted", "running", "completed"], job_id
        assert set(ran_on) <= {"a", "b"}
        assert sum(ran_on.values()) == 1000

        # The broadcast: both rack=r1 agents run it, b never does.
        events.read(["bcast-1"], per_job=2, timeout=60)
        assert sorted(e["worker_id"] for e in events.terminal("bcast-1")) == ["a", "c"]
        assert events.by_job["bcast-1"][-1]["data"]["result"] == {"message": "hi"}

        # The fleet map, rebuilt from the compacted topic by fresh processes.
        assert fleet_ids(kafka_broker, kafka_prefix) == {"a": False, "b": False, "c": False}
        assert set(fleet_ids(kafka_broker, kafka_prefix, "--label", "rack=r1")) == {"a", "c"}
        assert set(fleet_ids(kafka_broker, kafka_prefix, "--op", "system.nothing")) == set()
        # The CLI: a host job and a broadcast, each waited for through job-events.
        key = str(write_key_file(tmp_path / "operator.key"))
        connect = ["--kafka", kafka_broker, "--topic-prefix", kafka_prefix, "--wait-timeout", "30",
                   "--key", key]  # fmt: skip
        done = hostagent("submit", *connect, "--host", "b", "--op", "system.echo",
                         "--data", '{"message": "cli"}', "--wait")  # fmt: skip
        assert done.returncode == 0, done.stderr
        answer = json.loads(done.stdout)
        assert (answer["status"], answer["worker_id"]) == ("Completed", "b")
        assert answer["result"] == {"message": "cli"}
        done = hostagent("submit", *connect, "--broadcast", "--selector", "rack=r1",
                         "--op", "system.echo", "--wait")  # fmt: skip
        assert done.returncode == 0, done.stderr
        # One job document per host, each as a local --wait prints it (indented).
        answers = [json.loads(doc) for doc in re.split(r"(?m)^(?=\{)", done.stdout) if doc]
        assert sorted(answer["worker_id"] for answer in answers) == ["a", "c"]

        agents["b"].stop()
        agents["c"].stop()
        # Heartbeats (every 1 s) are stale after three intervals plus 2 s of grace: then c
        # may be removed (and b is shown stale).
        time.sleep(5.5)
        done = hostagent("decommission", "--bootstrap", kafka_broker, "--topic-prefix",
                         kafka_prefix, "c")  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert fleet_ids(kafka_broker, kafka_prefix) == {"a": False, "b": True}
    finally:
        for agent in agents.values():
            agent.kill()
    for name, agent in agents.items():
        assert not agent.events("kafka.rejected"), name


def test_kill_9_of_a_pool_agent_loses_no_job(
    tmp_path: Path, kafka_broker: str, kafka_prefix: str
) -> None:
    settings = KafkaConfig(bootstrap_servers=kafka_broker, topic_prefix=kafka_prefix)
    topics = Topics(kafka_prefix)
    agents = [
        kafka_agent(tmp_path, kafka_broker, kafka_prefix, name, pools=["p1"], max_concurrent=4)
        for name in ("a", "b")
    ]
    ids = [f"job-{i}" for i in range(2000)]
    completed: Counter[str] = Counter()
    seen = threading.Event()

    def watch() -> None:
        # Counts completions as they come, to kill in the middle of the run.
        with EventWatcher(settings, from_beginning=True) as watcher:
            for event in watcher.events(timeout=60):
                if event["type"] == "completed" and event["worker_id"] == "a":
                    completed[event["job_id"]] += 1
                    if len(completed) >= 300:
                        seen.set()
                        return

    try:
        for agent in agents:
            agent.start()
        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        send_signed(settings, topics.pool("p1"), [sleep(job_id, 0.01) for job_id in ids])
        assert seen.wait(60), "agent a completed no jobs"
        agents[0].kill()
        time.sleep(10)
        agents[0].start()
        events = Events(settings)
        events.read(ids, timeout=180)
    finally:
        for agent in agents:
            agent.kill()
    terminal = {job_id: events.terminal(job_id) for job_id in ids}
    lost = [job_id for job_id, ends in terminal.items() if not ends]
    assert lost == []
    assert all(len(ends) == 1 for ends in terminal.values())
    assert all(ends[0]["type"] == "completed" for ends in terminal.values())
    run_twice = [
        job_id for job_id in ids if sum(e["type"] == "running" for e in events.by_job[job_id]) > 1
    ]
    duplicates = sum(e["type"] == "duplicate" for job in events.by_job.values() for e in job)
    # system.sleep is declared safe to re-run: the ones the kill cut short run again.
    print(f"\nkill -9: {len(run_twice)} jobs ran twice, {duplicates} re-read records "
          f"answered as duplicates, {events.repeats} events delivered twice")  # fmt: skip
    assert len(run_twice) <= 4  # at most max_concurrent_jobs were running at the kill
