"""The operation allowlist on Kafka: a job its signing key may not run is answered
with a `rejected` event naming the field and the rule, and never recorded."""

from __future__ import annotations

import pytest
import trio

from agent.config import Config
from agent.service.settings import Settings
from agent.transports.kafka import KafkaConfig
from agent.transports.kafka.topics import Topics
from tests.http_helpers import serving
from tests.jobs import wait_done
from tests.transports.kafka.fleetkit import (
    FLEET_KEY_ID,
    KEY_ENTRY,
    Events,
    echo,
    send_signed,
    sleep,
)
from tests.transports.test_allowlist_doors import no_job, ruled


def _kafka_settings(config: Config, bootstrap: str, prefix: str) -> Config:
    kafka = KafkaConfig(
        bootstrap_servers=bootstrap,
        topic_prefix=prefix,
        heartbeat_interval_seconds=1.0,
        keys=[KEY_ENTRY],  # type: ignore[list-item]
    )
    data = config.model_dump()
    data.update(worker_id="w1", kafka=kafka.model_dump())
    data["http"] = {**data["http"], "enabled": False}
    return Settings.model_validate(data)


@pytest.mark.slow
async def test_kafka_rejects_what_the_signing_key_may_not_run(
    config: Config, kafka_broker: str, kafka_prefix: str
) -> None:
    settings = _kafka_settings(config, kafka_broker, kafka_prefix)
    rules = [
        {"transports": ["kafka"], "tokens": [FLEET_KEY_ID], "operations": ["system.echo"]},
    ]
    settings = ruled(settings, rules)
    kafka = settings.kafka  # type: ignore[attr-defined]
    topic = Topics(kafka_prefix).host("w1")
    async with serving(settings) as agent:
        await trio.to_thread.run_sync(
            lambda: send_signed(kafka, topic, [sleep("k-sleep", 0), echo("k-echo")])
        )
        events = Events(kafka)
        await trio.to_thread.run_sync(lambda: events.read(["k-sleep", "k-echo"], timeout=60))
        echoed = await wait_done(agent, "k-echo")
        refused = await no_job(agent, "k-sleep")
        submitter = await agent.intake.submitter("k-echo")
    assert events.types("k-sleep") == ["rejected"]
    error = events.by_job["k-sleep"][0]["data"]["error"]
    assert error["error"] == "FORBIDDEN"
    assert error["details"]["field"] == "operation"
    assert error["details"]["rule"] == "policy.allow[0]"
    assert refused
    assert echoed.status.value == "Completed"
    assert echoed.transport == "kafka"
    assert submitter == f"key:{FLEET_KEY_ID}"
