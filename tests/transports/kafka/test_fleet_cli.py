"""Fleet commands that never lie, against a real broker and real agents: each rule of
`hostagent submit --kafka`, `decommission` and `fleet jobs` run by fresh processes."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, TopicPartition

from agent.errors import UnavailableError
from agent.jobs import JobState
from agent.transports.kafka import KafkaConfig, read_fleet
from agent.transports.kafka.topics import Topics
from tests.jobs import wait_for
from tests.transports.kafka.fleetkit import kafka_agent, write_key_file

pytestmark = pytest.mark.slow

# Heartbeats every second (fleetkit's default): a stopped host is stale after 3 s.
STALE_AFTER = 3.5


def hostagent(
    *args: str, env: dict[str, str] | None = None
) -> tuple[subprocess.CompletedProcess[str], float]:
    """A fresh `hostagent` process, and how long it ran (seconds, wall clock)."""
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "agent", *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
        env=None if env is None else {**os.environ, **env},
    )
    return done, time.monotonic() - started


def documents(stdout: str) -> list[dict[str, Any]]:
    """The JSON documents a --wait printed one after another (each indented)."""
    return [json.loads(text) for text in re.split(r"(?m)^(?=\{)", stdout) if text.strip()]


def messages_on(settings: KafkaConfig, topic: str) -> int:
    """How many records a topic holds (0 when it does not exist)."""
    consumer = Consumer({"group.id": "count", **settings.client_config()})
    try:
        described = consumer.list_topics(topic, timeout=10).topics.get(topic)
        if described is None or described.error is not None:
            return 0
        return sum(
            consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
            for p in described.partitions
        )
    finally:
        consumer.close()


def live(settings: KafkaConfig) -> dict[str, bool]:
    """worker_id -> live, as the fleet map says now ({} while its topics elect leaders)."""
    try:
        return {host.worker_id: not host.stale for host in read_fleet(settings)}
    except UnavailableError:
        return {}


class Fleet:
    """Connection flags for the CLI, and the signing key the test agents trust."""

    def __init__(self, tmp: Path, bootstrap: str, prefix: str) -> None:
        self.settings = KafkaConfig(bootstrap_servers=bootstrap, topic_prefix=prefix)
        self.topics = Topics(prefix)
        self.key = str(write_key_file(tmp / "operator.key"))
        self.unsigned = ["submit", "--kafka", bootstrap, "--topic-prefix", prefix]
        self.submit = [*self.unsigned, "--key", self.key]
        self.admin = ["--bootstrap", bootstrap, "--topic-prefix", prefix]


def test_typos_stale_targets_and_live_hosts_are_refused_before_anything_is_sent(
    tmp_path: Path, kafka_broker: str, kafka_prefix: str
) -> None:
    fleet = Fleet(tmp_path, kafka_broker, kafka_prefix)
    alpha = kafka_agent(tmp_path, kafka_broker, kafka_prefix, "alpha", labels={"rack": "r1"})
    beta = kafka_agent(tmp_path, kafka_broker, kafka_prefix, "beta", labels={"rack": "r2"},
                       pools=["p2"])  # fmt: skip
    try:
        alpha.start()
        beta.start()
        wait_for(lambda: live(fleet.settings) == {"alpha": True, "beta": True}, 30, "the map")
        beta.stop()
        wait_for(lambda: live(fleet.settings) == {"alpha": True, "beta": False}, 30, "stale")

        # --host with a typo: exit 2, the nearest names, nothing sent.
        done, _ = hostagent(*fleet.submit, "--host", "alpah", "--op", "system.echo", "--wait")
        assert done.returncode == 2, done.stderr
        assert "'alpah' is not in the fleet map" in done.stderr
        assert "nearest: alpha" in done.stderr
        assert messages_on(fleet.settings, fleet.topics.host("alpah")) == 0
        # ... unless --force: sent, and (nobody reads it) the wait ends in exit 4.
        done, _ = hostagent(*fleet.submit, "--host", "alpah", "--op", "system.echo", "--force",
                            "--wait", "--wait-timeout", "2")  # fmt: skip
        assert done.returncode == 4, done.stderr
        assert messages_on(fleet.settings, fleet.topics.host("alpah")) == 1

        # A broadcast that only a stale host matches: non-zero at once, naming both.
        done, took = hostagent(*fleet.submit, "--broadcast", "--selector", "rack=r2",
                               "--op", "system.echo", "--wait")  # fmt: skip
        assert done.returncode == 69, done.stderr
        assert "--selector rack=r2" in done.stderr
        assert "only stale hosts: beta (stale: last heartbeat" in done.stderr
        assert took < 30  # not the default one-hour wait
        done, _ = hostagent(*fleet.submit, "--broadcast", "--selector", "rack=r9",
                            "--op", "system.echo")  # fmt: skip
        assert done.returncode == 69
        assert "matches no host of the fleet map" in done.stderr
        # A pool whose only member is stale: the same.
        done, _ = hostagent(*fleet.submit, "--pool", "p2", "--op", "system.echo", "--wait")
        assert done.returncode == 69
        assert "--pool p2 reaches no live host" in done.stderr
        assert messages_on(fleet.settings, fleet.topics.broadcast) == 0
        assert messages_on(fleet.settings, fleet.topics.pool("p2")) == 0

        # decommission: an unknown host, then a live one, are refused; a stale one goes.
        done, _ = hostagent("decommission", *fleet.admin, "bet")
        assert done.returncode == 2, done.stderr
        assert "nearest: beta" in done.stderr
        done, _ = hostagent("decommission", *fleet.admin, "alpha")
        assert done.returncode == 1, done.stderr
        assert "alpha (live: heartbeat" in done.stderr
        assert "is alive" in done.stderr
        assert live(fleet.settings) == {"alpha": True, "beta": False}
        done, _ = hostagent("decommission", *fleet.admin, "beta")
        assert done.returncode == 0, done.stderr
        assert "removing beta (stale" in done.stderr
        assert live(fleet.settings) == {"alpha": True}
    finally:
        alpha.kill()
        beta.kill()


def test_wait_for_a_stopped_host_ends_with_exit_4_within_a_second_of_its_timeout(
    tmp_path: Path, kafka_broker: str, kafka_prefix: str
) -> None:
    fleet = Fleet(tmp_path, kafka_broker, kafka_prefix)
    agent = kafka_agent(tmp_path, kafka_broker, kafka_prefix, "gone")
    try:
        agent.start()
        wait_for(lambda: live(fleet.settings) == {"gone": True}, 30, "the map")
    finally:
        agent.stop()
    # Python, librdkafka, the map's read and the send take ~2 s of it on a busy host.
    timeout = 5.0
    took = []
    for _ in range(10):
        done, seconds = hostagent(*fleet.submit, "--host", "gone", "--op", "system.echo",
                                  "--wait", "--wait-timeout", str(timeout))  # fmt: skip
        assert done.returncode == 4, done.stderr
        assert "no answer from gone within the wait timeout (5 s)" in done.stderr
        took.append(seconds)
    print(f"\n--wait-timeout {timeout}: took {', '.join(f'{s:.2f}' for s in took)} s")
    assert max(took) <= timeout + 1.0, took


def test_kafka_wait_prints_the_local_job_document_and_fleet_jobs_shows_every_host(
    tmp_path: Path, kafka_broker: str, kafka_prefix: str
) -> None:
    fleet = Fleet(tmp_path, kafka_broker, kafka_prefix)
    # b heartbeats every 10 s: stopped, it stays live in the map for 30 s (no race).
    agents = {
        name: kafka_agent(tmp_path, kafka_broker, kafka_prefix, name, labels={"rack": "r1"},
                          heartbeat=beat)
        for name, beat in (("a", 1.0), ("b", 10.0))
    }  # fmt: skip
    try:
        for agent in agents.values():
            agent.start()
        wait_for(lambda: live(fleet.settings) == {"a": True, "b": True}, 30, "the map")

        # A host job (signed with $HOSTAGENT_KAFKA_KEY, as the README says): the job
        # document of a local --wait (JobState and its result).
        done, _ = hostagent(*fleet.unsigned, "--host", "a", "--op", "system.echo", "--priority",
                            "7", "--data", '{"message": "x"}', "--wait",
                            env={"HOSTAGENT_KAFKA_KEY": fleet.key})  # fmt: skip
        assert done.returncode == 0, done.stderr
        (answer,) = documents(done.stdout)
        assert set(answer) == {*JobState.model_fields, "result", "worker_id"}
        assert answer["status"] == "Completed"
        assert (answer["operation"], answer["priority"], answer["attempts"]) == (
            "system.echo", 7, 1,
        )  # fmt: skip
        assert answer["result"] == {"message": "x"}
        assert answer["worker_id"] == "a"
        assert answer["submitted_at"] <= answer["started_at"] <= answer["completed_at"]

        # A failed job: exit 1, its error as a local --wait shows it.
        done, _ = hostagent(*fleet.submit, "--host", "b", "--op", "system.sleep", "--timeout",
                            "0.1", "--data", '{"seconds": 5}', "--job-id", "slow-1",
                            "--wait")  # fmt: skip
        assert done.returncode == 1, done.stderr
        (answer,) = documents(done.stdout)
        assert (answer["status"], answer["error"]) == ("Failed", "Job timed out after 0.1 seconds")

        # A broadcast to both, b stopped a moment before (its heartbeat still fresh):
        # a's document, then the summary; b did not answer, so exit 4.
        agents["b"].stop()
        done, took = hostagent(*fleet.submit, "--broadcast", "--selector", "rack=r1", "--op",
                               "system.echo", "--job-id", "bcast-1", "--wait",
                               "--wait-timeout", "4")  # fmt: skip
        assert done.returncode == 4, done.stderr
        assert [answer["worker_id"] for answer in documents(done.stdout)] == ["a"]
        assert "1 completed, 0 failed, 1 no answer" in done.stderr
        assert "no answer from b" in done.stderr
        assert took <= 5

        # fleet jobs: each job with its outcome on each host, filtered.
        done, _ = hostagent("fleet", "jobs", *fleet.admin, "--json")
        assert done.returncode == 0, done.stderr
        listing = json.loads(done.stdout)
        jobs = {job["job_id"]: job for job in listing["jobs"]}
        assert listing["total"] == 3
        assert jobs["bcast-1"]["target"] == "broadcast"
        assert jobs["bcast-1"]["operation"] == "system.echo"
        assert jobs["bcast-1"]["hosts"]["a"]["status"] == "Completed"
        assert jobs["slow-1"]["outcome"] == {"Failed": 1}
        assert jobs["slow-1"]["target"] == "host b"
        done, _ = hostagent("fleet", "jobs", *fleet.admin, "--status", "Failed", "--json")
        assert [job["job_id"] for job in json.loads(done.stdout)["jobs"]] == ["slow-1"]
        done, _ = hostagent("fleet", "jobs", *fleet.admin, "--host", "b", "--json")
        assert [job["job_id"] for job in json.loads(done.stdout)["jobs"]] == ["slow-1"]
        done, _ = hostagent("fleet", "jobs", *fleet.admin, "--op", "system.sleep")
        assert done.returncode == 0
        lines = done.stdout.splitlines()
        assert lines[0].split()[:3] == ["JOB", "ID", "OPERATION"]
        assert [line.split()[0] for line in lines[1:]] == ["slow-1"]
        assert "b:Failed" in lines[1]
        done, _ = hostagent("fleet", "jobs", *fleet.admin, "--since", "2099-01-01T00:00:00Z")
        assert done.stdout.splitlines()[1:] == []

        # --follow: the job's events on every host; it ended, so at once, exit 1 (failed).
        done, _ = hostagent("fleet", "jobs", *fleet.admin, "--follow", "slow-1", "--json")
        assert done.returncode == 1, done.stderr
        events = [json.loads(line) for line in done.stdout.splitlines()]
        assert [event["type"] for event in events][:2] == ["accepted", "running"]
        assert events[-1]["type"] == "failed"
        assert {event["worker_id"] for event in events} == {"b"}
        assert "0 completed, 1 failed, 0 no answer" in done.stderr

        # --follow of a running broadcast: until every host that took it has ended it.
        assigned = len(agents["b"].events("kafka.assigned"))
        agents["b"].start()
        # Its one consumer has its partitions and has read (<prefix>.fleet from the start: the
        # size record): it reads the job. A restarted agent's first fetch took ~10 s here.
        wait_for(lambda: len(agents["b"].events("kafka.assigned")) >= assigned + 1, 60, "b")
        wait_for(lambda: len(agents["b"].events("kafka.fleet_size")) >= 2, 60, "b's fleet topic")
        subprocess.run(
            [sys.executable, "-m", "agent", *fleet.submit, "--broadcast", "--selector",
             "rack=r1", "--op", "system.sleep", "--data", '{"seconds": 2}',
             "--job-id", "bsleep-1"],
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip
        done, _ = hostagent("fleet", "jobs", *fleet.admin, "--follow", "bsleep-1",
                            "--wait-timeout", "30")  # fmt: skip
        assert done.returncode == 0, done.stderr
        ends = [line.split() for line in done.stdout.splitlines() if " completed " in line]
        assert sorted(words[1] for words in ends) == ["a", "b"]
        assert "2 completed, 0 failed, 0 no answer" in done.stderr
    finally:
        for agent in agents.values():
            agent.kill()
