"""The job document's validation rules (shared/spec/protocol.md), as answered at intake."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import pytest

from agent import jobs
from agent.core.intake import prepare_job
from agent.errors import ValidationError
from agent.service.daemon import build_registry


def document(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "version": "1.0",
        "job_id": "job-1",
        "kind": "VMOperation",
        "operation": "system.echo",
        "payload": {"type": "system.echo.v1", "data": {"message": "hello"}},
    }
    for key, value in changes.items():
        if value is None:
            base.pop(key, None)
        else:
            base[key] = value
    return base


def prepare(raw: object) -> Any:
    return prepare_job(build_registry(), raw, transport="test", max_timeout=3600)


@pytest.mark.parametrize(
    ("raw", "field", "reason_part"),
    [
        (
            document(operation="echo", payload={"type": "echo.v1"}),
            "operation",
            "Operation must be namespaced",
        ),
        (
            document(operation="System.Echo", payload={"type": "System.Echo.v1"}),
            "operation",
            "[a-z][a-z0-9_]*",
        ),
        (
            document(operation="vm.teleport", payload={"type": "vm.teleport.v1"}),
            "operation",
            "vm.teleport",
        ),
        (document(version="2.0"), "version", "'1.0'"),
        (document(job_id="../../etc/passwd"), "job_id", "[A-Za-z0-9._-]"),
        (document(job_id=".hidden"), "job_id", "not starting with '.'"),
        (document(job_id="x" * 129), "job_id", "1-128"),
        (document(kind=None), "kind", "required"),
        (
            document(payload={"type": "system.sleep.v1", "data": {}}),
            "payload.type",
            "system.echo.v<N>",
        ),
        (
            document(payload={"type": "system.echo.v2", "data": {}}),
            "payload.type",
            "system.echo.v1",
        ),
        (
            document(
                operation="system.sleep",
                payload={"type": "system.sleep.v1", "data": {"seconds": "soon"}},
            ),
            "payload.data.seconds",
            "number",
        ),
        (
            document(
                operation="system.sleep",
                payload={"type": "system.sleep.v1", "data": {"seconds": 1, "nap": True}},
            ),
            "payload.data.nap",
            "Extra inputs",
        ),
        (document(priority=10), "priority", "less than or equal to 9"),
        (document(created_at="yesterday"), "created_at", "datetime"),
        (document(surprise=1), "surprise", "Extra inputs"),
        (["not", "an", "object"], "document", "JSON object"),
    ],
)
def test_invalid_document_names_field_and_reason(raw: object, field: str, reason_part: str) -> None:
    with pytest.raises(ValidationError) as caught:
        prepare(raw)
    assert caught.value.code == "VALIDATION_ERROR"
    assert caught.value.details["field"] == field
    assert reason_part in caught.value.details["reason"]


def test_missing_job_id_gets_a_uuid4_and_created_at() -> None:
    job = prepare(document(job_id=None))
    assert uuid.UUID(job.job_id).version == 4
    assert job.document["created_at"].endswith("Z")


def test_timeout_is_capped_by_config() -> None:
    job = prepare_job(
        build_registry(), document(timeout_seconds=99999), transport="t", max_timeout=60
    )
    assert job.timeout_seconds == 60


def test_same_document_same_fingerprint_and_different_document_differs() -> None:
    assert prepare(document()).fingerprint == prepare(document()).fingerprint
    other = document(payload={"type": "system.echo.v1", "data": {"message": "bye"}})
    assert prepare(document()).fingerprint != prepare(other).fingerprint


@pytest.mark.parametrize(
    "moments",
    [
        # Across a second, a minute, a day and a year; the same second twice.
        [1_767_225_599_999_999_999, 1_767_225_600_000_000_000, 1_767_225_600_000_001_999],
        [1_700_000_000_123_456_789, 1_700_000_000_123_456_999, 1_700_000_001_000_000_000],
    ],
)
def test_utc_now_is_the_isoformat_of_the_moment(
    monkeypatch: pytest.MonkeyPatch, moments: list[int]
) -> None:
    for moment in moments:
        monkeypatch.setattr(jobs.time, "time_ns", lambda moment=moment: moment)
        expected = datetime.fromtimestamp(moment // 1000 / 1e6, UTC)
        expected = expected.replace(microsecond=moment // 1000 % 1_000_000)
        assert jobs.utc_now() == expected.isoformat(timespec="microseconds").replace("+00:00", "Z")
    monkeypatch.undo()
    before = datetime.now(UTC)
    now = datetime.fromisoformat(jobs.utc_now())
    assert before <= now <= datetime.now(UTC)
