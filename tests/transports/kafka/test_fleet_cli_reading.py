"""How `fleet jobs` and `submit --kafka --wait` read job events into per-host outcomes,
and the fleet map checks, on events and hosts as agents write them (no broker)."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from agent.errors import ConflictError, UnreachableError, UsageError
from agent.jobs import JobState
from agent.transports.kafka.fleet import FleetHost
from agent.transports.kafka.fleet_commands import outcome
from agent.transports.kafka.fleet_jobs import FleetJob, collect, parse_since, select
from agent.transports.kafka.fleet_targets import (
    broadcast_reach,
    check_decommission,
    check_host,
    pool_reach,
    require_live,
)

NOW = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)


def event(
    kind: str, worker: str, job: str = "j1", at: str = "12:00:00", **data: Any
) -> dict[str, Any]:
    status = {"accepted": "Pending", "running": "Running", "completed": "Completed",
              "failed": "Failed"}.get(kind)  # fmt: skip
    return {"type": kind, "worker_id": worker, "job_id": job, "status": status,
            "timestamp": f"2026-12-07T{at}Z", "data": data, "event_id": f"{worker}:{kind}:{job}",
            "operation": "system.echo"}  # fmt: skip


def host(worker_id: str, *, stale: bool, pools: list[str] = (), **labels: str) -> FleetHost:  # type: ignore[assignment]
    beat = (NOW - timedelta(seconds=40 if stale else 1)).isoformat()
    status, reason = (
        ("stale", "last heartbeat 40 s ago") if stale else ("live", "heartbeat 1 s ago")
    )
    return FleetHost(worker_id=worker_id, labels=labels, pools=list(pools),
                     operations=["system.echo"], last_heartbeat=beat, stale=stale,
                     status=status, reason=reason)  # fmt: skip


def test_since_takes_durations_and_rfc3339_times_and_names_the_option_otherwise() -> None:
    assert parse_since("90s", now=NOW) == NOW - timedelta(seconds=90)
    assert parse_since("1h", now=NOW) == NOW - timedelta(hours=1)
    assert parse_since("2d", now=NOW) == NOW - timedelta(days=2)
    assert parse_since("2026-12-07T10:00:00Z") == NOW - timedelta(hours=2)
    with pytest.raises(UsageError, match="--since: 'yesterday'"):
        parse_since("yesterday")


def test_a_hosts_events_become_the_job_document_a_local_wait_prints() -> None:
    job = FleetJob("j1")
    steps = [
        event("accepted", "a", at="12:00:00", origin="p.host.a.jobs/3/7"),
        event("running", "a", at="12:00:01"),
        event("progress", "a", at="12:00:02", percent=50),
        event("completed", "a", at="12:00:03", result={"message": "hi"}),
    ]
    for seq, step in enumerate(steps, start=1):
        step["event_id"] = f"a:{seq}"  # the agent's outbox ids
        assert job.apply(step) is not None
    # Delivered again after a crash (at least once): the repeats change nothing.
    assert [job.apply(step) for step in steps[1:]] == [None, None, None]
    document = job.hosts["a"].document(priority=7)
    assert set(document) == {*JobState.model_fields, "result", "worker_id"}
    assert document == {
        "job_id": "j1", "operation": "system.echo", "status": "Completed",
        "submitted_at": "2026-12-07T12:00:00Z", "started_at": "2026-12-07T12:00:01Z",
        "completed_at": "2026-12-07T12:00:03Z", "error": None, "progress": 50.0,
        "transport": "kafka", "attempts": 1, "priority": 7, "parent": None,
        "result": {"message": "hi"},
        "worker_id": "a",
    }  # fmt: skip
    assert job.target == "host a"
    # The listing keeps no results (an hour of a fleet's would not fit in memory).
    listed = collect(steps)["j1"].to_dict()
    assert "result" not in listed["hosts"]["a"]
    assert listed["outcome"] == {"Completed": 1}


def test_a_broadcast_outcome_counts_each_host_and_the_worst_exit_code_wins(
    capsys: pytest.CaptureFixture[str],
) -> None:
    job = FleetJob("j1")
    for item in [
        event("accepted", "a", origin="p.broadcast.jobs/0/1"),
        event("completed", "a", result={}),
        event("accepted", "b"),
        event("failed", "b", error="boom"),
        event("rejected", "c", error={"error": "VALIDATION_ERROR", "message": "unsigned"}),
    ]:
        job.apply(item)
    assert job.counts() == {"Completed": 1, "Failed": 1, "Rejected": 1}
    assert job.hosts["c"].refused
    assert job.target == "broadcast"
    assert outcome(job, {"a", "b", "c", "d"}, summary=True, timeout=5) == 1
    err = capsys.readouterr().err
    assert "1 completed, 2 failed, 1 no answer" in err
    assert "no answer from d within the wait timeout (5 s)" in err
    # Only a missing answer: exit 4; all answered and completed: 0.
    done = FleetJob("j2")
    done.apply(event("completed", "a", job="j2"))
    assert outcome(done, {"a", "b"}, summary=False, timeout=5) == 4
    assert outcome(done, {"a"}, summary=False, timeout=5) == 0
    assert outcome(done, None, summary=False, timeout=5) == 0  # a pool: any one host


def test_fleet_jobs_filters_by_operation_host_and_status_newest_first() -> None:
    jobs = collect([
        event("accepted", "a", job="old", at="11:00:00"),
        event("completed", "a", job="old", at="11:00:01"),
        event("accepted", "b", job="new", at="11:30:00"),
        event("failed", "b", job="new", at="11:30:01", error="boom"),
    ])  # fmt: skip
    assert [job.job_id for job in select(jobs.values())] == ["new", "old"]
    assert [job.job_id for job in select(jobs.values(), host="a")] == ["old"]
    assert [job.job_id for job in select(jobs.values(), status="Failed")] == ["new"]
    assert select(jobs.values(), operation="vm.start") == []


def test_the_map_refuses_a_typo_a_stale_only_target_and_a_live_decommission() -> None:
    hosts = [host("alpha", stale=False, rack="r1", pools=["p1"]),
             host("beta", stale=True, rack="r2", pools=["p2"])]  # fmt: skip
    assert check_host(hosts, "beta").worker_id == "beta"  # stale: sent, with a warning
    with pytest.raises(UsageError, match=r"'alpah' is not in the fleet map.*nearest: alpha"):
        check_host(hosts, "alpah")
    reach = broadcast_reach(hosts, operations=["system.echo"], labels={"rack": "r2"})
    with pytest.raises(UnreachableError, match=r"only stale hosts: beta \(stale: last heartbeat"):
        require_live(reach, "--broadcast --selector rack=r2")
    with pytest.raises(UnreachableError, match="matches no host"):
        require_live(broadcast_reach(hosts, operations=["vm.start"], labels={}), "--broadcast")
    assert [h.worker_id for h in require_live(pool_reach(hosts, "p1"), "--pool p1")] == ["alpha"]
    with pytest.raises(ConflictError, match=r"alpha .* is alive"):
        check_decommission(hosts, "alpha")
    with pytest.raises(UsageError, match="WORKER_ID: 'gama' is not in the fleet map"):
        check_decommission(hosts, "gama")
    assert check_decommission(hosts, "beta").worker_id == "beta"


def test_force_skips_the_map_for_a_host_job(capsys: pytest.CaptureFixture[str]) -> None:
    from agent.transports.kafka import KafkaConfig
    from agent.transports.kafka.fleet_commands import check_target

    args = argparse.Namespace(force=True, host="nowhere", pool=None, broadcast=False)
    # No broker at this address: nothing is read.
    settings = KafkaConfig(bootstrap_servers="127.0.0.1:1", topic_prefix="p")
    assert check_target(settings, args, {}, deadline=0, waiting=True) == {"nowhere"}
    assert "not checked against the fleet map" in capsys.readouterr().err
