"""Issue 20: one job_id check for every transport, and text UTF-8 cannot encode
refused with its field instead of raising out of the fingerprint."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from agent.config import Config
from agent.core.intake import prepare_job
from agent.errors import ValidationError
from agent.jobs import check_job_id, fingerprint
from agent.service.daemon import Agent
from tests.http_helpers import SUBMIT, client, serving, with_http
from tests.jobs import job
from tests.spoolkit import drop, read_json, wait_for_files

BAD_IDS = ["/some/dir", "../up", ".hidden", "a" * 129, "", "abc\n", "a/b", "batch", "x\ud800"]


@pytest.mark.parametrize("value", BAD_IDS)
def test_check_job_id_refuses_with_the_callers_field(value: str) -> None:
    with pytest.raises(ValidationError) as refused:
        check_job_id(value, field="key")
    assert refused.value.details["field"] == "key"
    assert "job_id" in refused.value.details["reason"]


@pytest.mark.parametrize("value", [None, 7, b"abc", ["a"]])
def test_check_job_id_refuses_what_is_not_a_string(value: object) -> None:
    with pytest.raises(ValidationError, match="Expected a string") as refused:
        check_job_id(value, field="Idempotency-Key")
    assert refused.value.details["field"] == "Idempotency-Key"


def test_check_job_id_takes_the_contracts_ids() -> None:
    for value in ("a", "inspect-vm-001", "A._-9", "x" * 128):
        assert check_job_id(value, field="job_id") == value


@pytest.mark.parametrize(
    ("document", "field"),
    [
        ({"kind": "\ud800"}, "kind"),
        ({"payload": {"data": {"list": ["ok", "\udcff"]}}}, "payload.data.list.1"),
        ({"labels": {"\ud800key": "v"}}, "labels.\\ud800key"),
    ],
)
def test_fingerprint_names_the_field_of_unencodable_text(
    document: dict[str, object], field: str
) -> None:
    with pytest.raises(ValidationError) as refused:
        fingerprint(document)
    assert refused.value.details["field"] == field
    refused.value.message.encode()  # the report itself is encodable: it never echoes the text


async def test_intake_checks_an_id_the_transport_derived(agent: Agent) -> None:
    with pytest.raises(ValidationError) as refused:
        prepare_job(
            agent.intake.registry,
            job(None),
            transport="kafka",
            job_id="/some/dir",
            max_timeout=60,
        )
    assert refused.value.details["field"] == "job_id"


@pytest.fixture
async def http_agent(config: Config) -> AsyncIterator[Agent]:
    async with serving(with_http(config, spool=True)) as running:
        yield running


@pytest.mark.slow
async def test_a_lone_surrogate_is_a_400_over_http_and_quarantined_by_the_spool(
    http_agent: Agent, config: Config
) -> None:
    body = (
        b'{"version": "1.0", "kind": "T", "operation": "system.echo",'
        b' "payload": {"type": "system.echo.v1", "data": {"message": "\\ud800"}}}'
    )
    async with client(http_agent, SUBMIT) as http:
        answer = await http.post(
            "/api/v1/jobs", content=body, headers={"Content-Type": "application/json"}
        )
        assert answer.status_code == 400, answer.text
        assert answer.json()["details"]["field"] == "payload.data.message"
        # A resource action's Idempotency-Key passes the same check.
        refused = await http.post(
            "/api/v1/vms/test/start", headers={"Idempotency-Key": "../../etc"}
        )
        assert refused.status_code == 400, refused.text
        assert refused.json()["details"]["field"] == "Idempotency-Key"
    spool = config.spool_dir
    drop(spool, "surrogate.json", body)  # the attack's 139-byte file
    (report,) = await wait_for_files(spool / "failed", "*.error.json", 1)
    assert read_json(report)["details"]["field"] == "payload.data.message"
    # The agent lives on: the next job in the same directory runs.
    drop(spool, "next.json", job("after-surrogate"))
    (result,) = await wait_for_files(spool / "done", "after-surrogate.result.json", 1)
    assert read_json(result)["status"] == "Completed"
    assert await http_agent.intake.list_jobs() != ([], 0, None)
