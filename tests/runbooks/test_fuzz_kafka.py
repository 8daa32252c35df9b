"""Property: invalid runbooks sent over Kafka (signed, to a real broker) are each
answered by a `rejected` event naming the field, and no job is recorded."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer
from hypothesis import HealthCheck, given, settings

from agent.transports.kafka import KafkaConfig
from agent.transports.kafka.client import EventWatcher
from agent.transports.kafka.topics import Topics
from tests.jobs import job
from tests.runbooks.invalid import ALLOW_ONLY, BASE_PARAMETERS, base_runbook, invalid_case
from tests.transports.kafka.fleetkit import KEY_ENTRY, kafka_agent, signed_headers

pytestmark = pytest.mark.slow

EXAMPLES = 150


@pytest.mark.slow
def test_invalid_runbooks_over_kafka_are_rejected_and_nothing_runs(
    kafka_broker: str, kafka_prefix: str, tmp_path: Path
) -> None:
    topic = Topics(kafka_prefix).host("w1")
    images, books = tmp_path / "images", tmp_path / "runbooks"
    images.mkdir()
    books.mkdir()
    (books / "installed.json").write_text(
        json.dumps({**base_runbook(images), "name": "fuzz-installed"})
    )
    agent = kafka_agent(tmp_path, kafka_broker, kafka_prefix, "w1", extra="partitions = 1")
    agent.env = {
        **os.environ,
        "HOSTAGENT_RUNBOOKS__DIRS": json.dumps([str(books)]),
        "HOSTAGENT_RUNBOOKS__INLINE": "any",
        "HOSTAGENT_POLICY__ALLOW": json.dumps(ALLOW_ONLY),
        "HOSTAGENT_POLICY__IMAGE_ROOTS": json.dumps([str(images)]),
    }
    producer = Producer({"bootstrap.servers": kafka_broker})
    sent: dict[str, str] = {}
    agent.start()
    try:

        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        )
        @given(case=invalid_case(images))
        def feed(case: tuple[str, dict[str, Any]]) -> None:
            kind, document = case
            value = json.dumps(document).encode()
            key = document["job_id"].encode()
            headers = signed_headers(topic, key, value)
            producer.produce(topic, value=value, key=key, headers=headers, partition=0)
            sent[document["job_id"]] = kind

        feed()
        assert producer.flush(30) == 0
        config = KafkaConfig(
            bootstrap_servers=kafka_broker, topic_prefix=kafka_prefix, keys=[KEY_ENTRY]
        )
        answers: dict[str, dict[str, Any]] = {}
        with EventWatcher(config, from_beginning=True) as watcher:
            for event in watcher.events(timeout=120):
                if event.get("job_id") in sent:
                    answers[event["job_id"]] = event
                if len(answers) == len(sent):
                    break
        assert answers.keys() == sent.keys()
        for job_id, event in answers.items():
            assert event["type"] == "rejected", (sent[job_id], event)
            assert event["data"]["error"]["details"].get("field"), (sent[job_id], event)
        with sqlite3.connect(tmp_path / "w1" / "state" / "jobs.sqlite3") as conn:
            assert conn.execute("SELECT count(*) FROM jobs").fetchone()[0] == 0
        # A valid runbook over the same door runs, its steps' events on the same topic.
        data = {"runbook": base_runbook(images), "parameters": BASE_PARAMETERS}
        value = json.dumps(job("rb-ok", "runbook.run", data)).encode()
        headers = signed_headers(topic, b"rb-ok", value)
        producer.produce(topic, value=value, key=b"rb-ok", headers=headers, partition=0)
        assert producer.flush(30) == 0
        steps = ["rb-ok.one", "rb-ok.two", "rb-ok.three"]
        with EventWatcher(config, from_beginning=True) as watcher:
            done = list(watcher.until_done(["rb-ok", *steps], timeout=60))
        finished = {e["job_id"]: e["type"] for e in done if e["type"] in ("completed", "failed")}
        assert finished == dict.fromkeys(["rb-ok", *steps], "completed"), done[-3:]
    finally:
        code = agent.stop(timeout=60)
    assert code == 0, "".join(agent.lines[-30:])
    print(f"\nKafka: {len(sent)} invalid runbooks rejected, 0 jobs")
