"""Topic names under the prefix and broadcast selectors (no broker needed)."""

from __future__ import annotations

import pytest

from agent.errors import ConfigError, ValidationError
from agent.transports.kafka import Selector, Topics
from agent.transports.kafka.topics import parse_selector_args


def test_topic_and_group_names_follow_the_contract() -> None:
    topics = Topics("hostagent")
    assert topics.host("hv-01") == "hostagent.host.hv-01.jobs"
    assert topics.host_group("hv-01") == "hostagent.hv-01"
    assert topics.pool("p1") == "hostagent.pool.p1.jobs"
    assert topics.pool_group("p1") == "hostagent.pool.p1"
    assert topics.broadcast == "hostagent.broadcast.jobs"
    assert (topics.events, topics.capabilities, topics.heartbeats) == (
        "hostagent.job-events",
        "hostagent.capabilities",
        "hostagent.heartbeats",
    )
    assert [topics.kind(t) for t in (topics.broadcast, topics.pool("p1"), topics.host("a"))] == [
        "broadcast",
        "pool",
        "host",
    ]


def test_a_worker_id_that_cannot_name_a_topic_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as caught:
        Topics("hostagent").host("hv 01/x")
    assert caught.value.details["field"] == "worker_id"
    with pytest.raises(ConfigError) as caught:
        Topics("p" * 240).pool("p1")
    assert caught.value.details["field"] == "kafka.topic_prefix"


def test_selector_matches_labels_and_operations() -> None:
    selector = Selector.parse({"labels": {"rack": "r12"}, "operations": ["vm.start"]})
    assert selector.matches({"rack": "r12", "zone": "a"}, {"vm.start", "system.echo"})
    assert not selector.matches({"rack": "r1"}, {"vm.start"})
    assert not selector.matches({"rack": "r12"}, {"system.echo"})
    assert Selector.parse(None).matches({}, ())


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ("rack=r12", "selector"),
        ({"hosts": ["a"]}, "selector"),
        ({"labels": {"rack": 12}}, "selector.labels"),
        ({"operations": "vm.start"}, "selector.operations"),
    ],
)
def test_a_malformed_selector_names_its_field(raw: object, field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        Selector.parse(raw)
    assert caught.value.details["field"] == field


def test_command_line_selector() -> None:
    assert parse_selector_args(["rack=r12", "op=vm.start"]) == {
        "labels": {"rack": "r12"},
        "operations": ["vm.start"],
    }
    with pytest.raises(ValidationError):
        parse_selector_args(["rack"])
