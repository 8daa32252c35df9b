"""Issue 20 in the spool: every per-item step contains its failures. The item is
quarantined with an envelope, looked at again, or its delivery parked; the
transport moves on and the next job in the directory runs."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import trio

from agent.config import Config
from agent.core import periodic as background
from agent.core.outbox import RetryPolicy
from agent.core.registry import Registry
from agent.errors import ValidationError
from agent.jobs import JobDocument, JobState, JobStatus, OutboxEntry
from agent.service.daemon import Agent
from agent.transports.spool.delivery import deliver, forget
from agent.transports.spool.layout import spool_dirs
from tests.jobs import job
from tests.spoolkit import drop, read_json, spool_of, wait_for_files


@pytest.fixture(autouse=True)
def _own_background_failures(monkeypatch: pytest.MonkeyPatch) -> None:
    """The failures these tests cause are theirs: health's `background` component in
    later tests of the same process does not see them."""
    monkeypatch.setattr(background, "_last", {})


async def _next_job_runs(spool: Path, job_id: str) -> None:
    drop(spool, f"{job_id}.json", job(job_id))
    [result] = await wait_for_files(spool / "done", f"{job_id}.result.json", 1)
    assert read_json(result)["status"] == "Completed"


@pytest.mark.slow
async def test_a_result_file_that_cannot_be_written_is_parked_not_fatal(
    agent: Agent, config: Config
) -> None:
    spool = config.spool_dir
    transport = spool_of(agent)
    assert transport.delivery is not None
    transport.delivery.policy = RetryPolicy(attempts=3, first_delay=0.05)
    # A directory where the result file goes: every write of it fails (EISDIR).
    (spool / "done" / "stuck.result.json").mkdir()
    drop(spool, "stuck.json", job("stuck", data={"answer": 42}))
    with trio.fail_after(30):
        while not transport.delivery.parked:
            await trio.sleep(0.01)
    (parked,) = transport.delivery.parked
    assert (parked.job_id, parked.event) == ("stuck", "completed")
    assert "Is a directory" in parked.reason
    health = (await agent.intake.health())["components"]["spool"]
    assert health["status"] == "degraded"
    assert "stuck" in health["reason"]
    assert health["delivery"]["parked_total"] == 1
    # The result is still where the API reads it, and the transport goes on.
    assert await agent.intake.result("stuck") == {"answer": 42}
    await _next_job_runs(spool, "after-stuck")


@pytest.mark.slow
async def test_a_fault_of_the_agent_while_judging_a_file_quarantines_it_with_an_envelope(
    agent: Agent, config: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A bug of ours cannot be caused for real: a fake one, in a step prepare takes.
    validate_payload = Registry.validate_payload

    def faulty(self: Registry, document: JobDocument) -> Any:
        if document.labels.get("fault") == "yes":
            raise KeyError("a bug the document found")
        return validate_payload(self, document)

    monkeypatch.setattr(Registry, "validate_payload", faulty)
    spool = config.spool_dir
    drop(spool, "faulty.json", job("faulty", labels={"fault": "yes"}))
    [report] = await wait_for_files(spool / "failed", "faulty.json.error.json", 1)
    envelope = read_json(report)
    assert envelope["error"] == "INTERNAL_ERROR"
    assert "KeyError" in envelope["details"]["reason"]
    assert (spool / "failed" / "faulty.json").exists()
    await _next_job_runs(spool, "after-faulty")


@pytest.mark.slow
async def test_a_batch_the_store_fails_is_submitted_file_by_file(
    agent: Agent, config: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    intake = agent.intake
    submit_many = intake.submit_many

    async def faulty(jobs: Any) -> Any:
        if any(item.job_id == "poison" for item in jobs):
            raise TypeError("the store choked on one job")
        return await submit_many(jobs)

    monkeypatch.setattr(intake, "submit_many", faulty)
    spool = config.spool_dir
    spool_of(agent).config = spool_of(agent).config.model_copy(update={"claim_batch": 8})
    # Written straight into incoming/ while the claimer sleeps: one batch.
    for name in ("good-1", "poison", "good-2"):
        drop(spool, f"{name}.json", job(name))
    [report] = await wait_for_files(spool / "failed", "poison.json.error.json", 1)
    assert "TypeError" in read_json(report)["details"]["reason"]
    results = await wait_for_files(spool / "done", "good-*.result.json", 2)
    assert [path.name for path in results] == ["good-1.result.json", "good-2.result.json"]


@pytest.mark.slow
async def test_a_quarantine_that_cannot_be_written_waits_and_keeps_the_file(
    agent: Agent, config: Config
) -> None:
    spool = config.spool_dir
    failed = spool / "failed"
    failed.rmdir()
    failed.write_text("not a directory")  # every report and move into it fails
    drop(spool, "bad.json", b"[1, 2, 3]")
    with trio.fail_after(10):
        while (spool / "incoming" / "bad.json").exists():
            await trio.sleep(0.01)
    await _next_job_runs(spool, "while-blocked")
    assert (spool / ".claimed" / "bad.json").exists()  # kept, never lost
    failed.unlink()
    failed.mkdir()
    [report] = await wait_for_files(failed, "bad.json.error.json", 1, limit=30)
    assert read_json(report)["details"]["field"] == "document"


async def test_a_directory_in_cancel_does_not_stop_the_spool(agent: Agent, config: Config) -> None:
    spool = config.spool_dir
    (spool / "cancel" / "some-job").mkdir()
    (spool / "cancel" / "..odd").mkdir()
    await spool_of(agent)._scan_cancel(agent.intake)
    await _next_job_runs(spool, "after-cancel-dir")
    assert os.path.isdir(spool / "cancel" / "some-job")


def test_retention_forgets_only_done_files_named_by_a_job_id(tmp_path: Path) -> None:
    dirs = spool_dirs(tmp_path / "spool")
    for folder in dirs.values():
        folder.mkdir(parents=True)
    outside = tmp_path / "victim.job.json"
    outside.write_text("keep me")
    (dirs["done"] / "gone.job.json").write_text("{}")
    (dirs["done"] / "gone.result.json").write_text("{}")
    forget(dirs, ["gone", "../../victim", "/tmp/victim"])
    assert list(dirs["done"].iterdir()) == []
    assert outside.read_text() == "keep me"


def test_an_entry_whose_id_is_no_job_id_fails_delivery_unjoined(tmp_path: Path) -> None:
    dirs = spool_dirs(tmp_path / "spool")
    for folder in dirs.values():
        folder.mkdir(parents=True)
    state = JobState(
        job_id="../../escape",
        operation="system.echo",
        status=JobStatus.COMPLETED,
        submitted_at="2026-01-01T00:00:00Z",
        transport="spool",
    )
    with pytest.raises(ValidationError):
        deliver(dirs, [OutboxEntry(id=1, event="completed", state=state, data={"result": 1})])
    assert not list(tmp_path.glob("*.json"))
    assert list(dirs["done"].iterdir()) == []
