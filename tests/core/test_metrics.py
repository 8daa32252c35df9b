"""Prometheus metrics: counters move when jobs run through a real agent."""

from __future__ import annotations

import os

import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from agent.core import metrics
from agent.core.events import Subscription
from agent.jobs import JobStatus
from agent.service.daemon import Agent
from tests.jobs import echo_job, sleep_job
from tests.spoolkit import spool_of

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape() -> Samples:
    body, content_type = metrics.render()
    assert content_type.startswith("text/plain; version=")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def wait_until_final(subscription: Subscription, job_ids: list[str]) -> None:
    """Until each job's final status was published: metrics are counted just before."""
    waiting = set(job_ids)
    with trio.fail_after(15):
        async for event in subscription.receive:
            if event["type"] == "status" and JobStatus(event["data"]["status"]).terminal:
                waiting.discard(event["job_id"])
            if not waiting:
                return


@pytest.mark.slow
async def test_counters_move_when_jobs_run(agent: Agent) -> None:
    before = scrape()
    with agent.intake.events() as subscription:
        for n in range(3):
            await agent.intake.submit(echo_job(f"echo-{n}"), transport="test")
        timed_out = {**sleep_job("sleepy", 30), "timeout_seconds": 0.05}
        await agent.intake.submit(timed_out, transport="test")
        await agent.intake.submit(echo_job("echo-0"), transport="test")  # the same job again
        await wait_until_final(subscription, ["echo-0", "echo-1", "echo-2", "sleepy"])
    assert (await agent.intake.status("sleepy")).status is JobStatus.FAILED
    after = scrape()

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("hostagent_jobs_accepted_total", transport="test") == 4
    completed = {"operation": "system.echo", "status": "Completed"}
    assert moved("hostagent_jobs_finished_total", **completed) == 3
    failed = {"operation": "system.sleep", "status": "Failed"}
    assert moved("hostagent_jobs_finished_total", **failed) == 1
    assert moved("hostagent_job_duration_seconds_count", operation="system.echo") == 3
    assert moved("hostagent_job_duration_seconds_count", operation="system.sleep") == 1
    assert moved("hostagent_job_duration_seconds_sum", operation="system.sleep") >= 0.05
    # Each job that started was timed in the queue.
    assert moved("hostagent_job_queue_wait_seconds_count", operation="system.echo") == 3
    assert value(after, "hostagent_queue_depth") == 0
    assert value(after, "hostagent_jobs_running") == 0
    # Known transports and operations have their series from the start.
    assert ("hostagent_jobs_accepted_total", frozenset({("transport", "spool")})) in after
    info = {"operation": "system.info", "status": "Cancelled"}
    assert ("hostagent_jobs_finished_total", frozenset(info.items())) in after


@pytest.mark.slow
async def test_gauges_show_running_and_queued_jobs(agent: Agent) -> None:
    for n in range(3):  # two workers in the test config
        await agent.intake.submit(sleep_job(f"nap-{n}", 30), transport="test")
    with trio.fail_after(10):
        while agent.dispatcher.running_count < 2:
            await trio.sleep(0.01)
    samples = scrape()
    assert value(samples, "hostagent_jobs_running") == 2
    assert value(samples, "hostagent_queue_depth") == 1
    for n in range(3):
        await agent.intake.cancel(f"nap-{n}")
    samples = scrape()
    assert value(samples, "hostagent_jobs_running") == 0
    assert value(samples, "hostagent_queue_depth") == 0


@pytest.mark.slow
async def test_spool_quarantine_is_counted(agent: Agent) -> None:
    assert spool_of(agent) is not None
    before = value(scrape(), "hostagent_spool_quarantined_total")
    target = spool_of(agent).dirs["failed"] / "elsewhere.json"
    target.write_text("{}")
    os.symlink(target, spool_of(agent).dirs["incoming"] / "link.json")
    with trio.fail_after(10):
        while spool_of(agent).quarantined == 0:
            await trio.sleep(0.01)
    assert value(scrape(), "hostagent_spool_quarantined_total") == before + 1


def test_build_info_and_names_follow_prometheus_conventions() -> None:
    body = metrics.render()[0].decode()
    families = list(text_string_to_metric_families(body))
    names = {family.name for family in families}
    assert "_total_total" not in body
    for family in families:
        assert family.documentation, family.name
        if family.type == "counter":
            assert all(sample.name.endswith(("_total", "_created")) for sample in family.samples), (
                family.name
            )
    ours = {name for name in names if name.startswith("hostagent_")}
    assert {
        "hostagent_build_info",
        "hostagent_jobs_accepted",
        "hostagent_jobs_finished",
        "hostagent_job_duration_seconds",
        "hostagent_http_requests",
    } <= ours
    assert "process_cpu_seconds" in names  # the standard process collector
    build = next(f for f in families if f.name == "hostagent_build_info")
    assert build.samples[0].name == "hostagent_build_info"
    assert build.samples[0].labels["version"]


def test_live_gauges_are_absent_without_a_running_agent() -> None:
    body = metrics.render()[0].decode()
    assert "hostagent_queue_depth" not in body
    assert "hostagent_jobs_running" not in body


def test_a_job_that_never_started_counts_as_finished_without_a_duration() -> None:
    from agent.jobs import JobState

    before = scrape()
    state = JobState(
        job_id="x",
        operation="test.metrics",
        status=JobStatus.CANCELLED,
        submitted_at="2026-01-30T10:00:00Z",
        completed_at="2026-01-30T10:00:01Z",
        transport="test",
    )
    metrics.record_finished(state)
    after = scrape()
    labels = {"operation": "test.metrics", "status": "Cancelled"}
    assert value(after, "hostagent_jobs_finished_total", **labels) == (
        value(before, "hostagent_jobs_finished_total", **labels) + 1
    )
    assert value(after, "hostagent_job_duration_seconds_count", operation="test.metrics") == 0


def test_no_created_series_and_the_queue_wait_and_rejections_are_exposed() -> None:
    from agent.core import metrics as exposed

    exposed.record_rejected("http", "VALIDATION_ERROR")
    text = exposed.render()[0].decode()
    assert "_created" not in text
    assert "# TYPE hostagent_job_queue_wait_seconds histogram" in text
    assert 'hostagent_jobs_rejected_total{code="VALIDATION_ERROR",transport="http"}' in text
