"""The /api/v1 job API over real sockets: every endpoint, envelope and error code."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest
import trio

from agent.config import Config
from agent.jobs import JobStatus
from agent.service.daemon import Agent
from tests.http_helpers import (
    ADMIN,
    CANCEL,
    READ,
    SUBMIT,
    client,
    http_of,
    serving,
    with_http,
)
from tests.jobs import echo_job, sleep_job, wait_done, wait_running
from tests.spoolkit import spool_of


@pytest.fixture
async def served(config: Config) -> AsyncIterator[Agent]:
    async with serving(with_http(config)) as agent:
        yield agent


async def test_submit_answers_201_once_the_job_is_durable(served: Agent) -> None:
    async with client(served, SUBMIT) as http:
        response = await http.post("/api/v1/jobs", json=echo_job("job-1"))
    assert response.status_code == 201
    body = response.json()
    assert body["success"] is True
    assert body["data"]["job_id"] == "job-1"
    assert body["data"]["status"] == "submitted"
    assert body["data"]["message"] == "Job job-1 submitted successfully"
    assert body["data"]["created"] is True
    # Durable: the store has it (the answer was sent after the commit).
    assert (await served.intake.status("job-1")).transport == "http"
    assert (await wait_done(served, "job-1")).status is JobStatus.COMPLETED


async def test_submit_without_job_id_gets_one_assigned(served: Agent) -> None:
    async with client(served, SUBMIT) as http:
        response = await http.post("/api/v1/jobs", json=echo_job())
    assert response.status_code == 201
    assert len(response.json()["data"]["job_id"]) == 36


async def test_identical_resubmit_answers_the_existing_job(served: Agent) -> None:
    async with client(served, SUBMIT) as http:
        first = await http.post("/api/v1/jobs", json=echo_job("same"))
        await wait_done(served, "same")
        again = await http.post("/api/v1/jobs", json=echo_job("same"))
    assert first.status_code == again.status_code == 201
    assert again.json()["data"]["created"] is False
    assert again.json()["data"]["job"]["status"] == "Completed"


async def test_same_id_different_document_is_409_conflict(served: Agent) -> None:
    async with client(served, SUBMIT) as http:
        await http.post("/api/v1/jobs", json=echo_job("taken"))
        response = await http.post("/api/v1/jobs", json=echo_job("taken", kind="Other"))
    assert response.status_code == 409
    assert response.json()["error"] == "CONFLICT"
    assert response.json()["details"]["field"] == "job_id"


@pytest.mark.parametrize(
    ("change", "field", "reason"),
    [
        ({"operation": "echo"}, "operation", "Operation must be namespaced"),
        ({"version": "2.0"}, "version", None),
        ({"operation": "system.nope", "payload": {"type": "system.nope.v1"}}, "operation", None),
        ({"payload": {"type": "system.echo.v1", "data": []}}, "payload.data", None),
        ({"payload": {"type": "system.other.v1"}}, "payload.type", None),
        ({"priority": 10}, "priority", None),
        ({"job_id": ".hidden"}, "job_id", None),
    ],
)
async def test_validation_errors_name_the_field_and_reason(
    served: Agent, change: dict[str, object], field: str, reason: str | None
) -> None:
    async with client(served, SUBMIT) as http:
        response = await http.post("/api/v1/jobs", json={**echo_job("v"), **change})
    assert response.status_code == 400
    body = response.json()
    assert body["error"] == "VALIDATION_ERROR"
    assert body["details"]["field"] == field
    assert body["details"]["reason"]
    if reason is not None:
        assert body["details"]["reason"] == reason


async def test_unknown_operation_reason_names_it(served: Agent) -> None:
    document = {**echo_job("u"), "operation": "vm.nope", "payload": {"type": "vm.nope.v1"}}
    async with client(served, SUBMIT) as http:
        response = await http.post("/api/v1/jobs", json=document)
    assert "vm.nope" in response.json()["details"]["reason"]


@pytest.mark.parametrize("body", [b"{", b"[1, 2]", b"\xff\xfe", b""])
async def test_unreadable_bodies_are_400(served: Agent, body: bytes) -> None:
    async with client(served, SUBMIT) as http:
        response = await http.post(
            "/api/v1/jobs", content=body, headers={"Content-Type": "application/json"}
        )
    assert response.status_code == 400
    assert response.json()["error"] in ("BAD_REQUEST", "VALIDATION_ERROR")


async def test_batch_answers_each_job_in_order(served: Agent) -> None:
    await served.intake.submit(echo_job("exists"), transport="test")
    jobs = [
        echo_job("b-1"),
        {"version": "1.0"},
        echo_job("exists"),
        echo_job("exists", kind="Changed"),
        echo_job("b-2"),
    ]
    async with client(served, SUBMIT) as http:
        response = await http.post("/api/v1/jobs/batch", json={"jobs": jobs})
    assert response.status_code == 200
    data = response.json()["data"]
    assert (data["submitted"], data["failed"]) == (3, 2)
    results = data["results"]
    assert [item["success"] for item in results] == [True, False, True, False, True]
    assert results[0]["data"]["created"] is True
    assert results[1]["error"] == "VALIDATION_ERROR"
    assert results[1]["details"]["index"] == 1
    assert results[2]["data"]["created"] is False
    assert results[3]["error"] == "CONFLICT"
    assert (await served.intake.status("b-2")).transport == "http"


@pytest.mark.parametrize("body", [{"jobs": []}, {"jobs": "x"}, [], {"other": 1}])
async def test_batch_needs_a_list_of_jobs(served: Agent, body: object) -> None:
    async with client(served, SUBMIT) as http:
        response = await http.post("/api/v1/jobs/batch", json=body)
    assert response.status_code == 400
    assert response.json()["details"]["field"] == "jobs"


async def test_batch_size_is_bounded(config: Config) -> None:
    async with serving(with_http(config, max_batch_jobs=2)) as agent, client(agent) as http:
        response = await http.post("/api/v1/jobs/batch", json={"jobs": [echo_job()] * 3})
    assert response.status_code == 400
    assert "At most 2" in response.json()["message"]


async def test_list_filters_and_pages_with_a_cursor(served: Agent) -> None:
    for number in range(5):
        await served.intake.submit(echo_job(f"list-{number}"), transport="test")
    await served.intake.submit(sleep_job("other-op", 0), transport="test")
    seen: list[str] = []
    cursor = None
    async with client(served, READ) as http:
        while True:
            params = {"operation": "system.echo", "limit": 2}
            if cursor:
                params["cursor"] = cursor
            response = await http.get("/api/v1/jobs", params=params)
            assert response.status_code == 200
            page = response.json()["data"]
            assert page["total"] == 5
            assert len(page["jobs"]) <= 2
            seen += [job["job_id"] for job in page["jobs"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert seen == [f"list-{number}" for number in range(5)]
        await wait_done(served, "list-4")
        done = await http.get("/api/v1/jobs", params={"status": "Completed", "limit": 100})
        assert "list-4" in [job["job_id"] for job in done.json()["data"]["jobs"]]


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"status": "done"}, "status"),
        ({"limit": "0"}, "limit"),
        ({"limit": "many"}, "limit"),
        ({"cursor": "bm90LWEtY3Vyc29y"}, "cursor"),
        ({"cursor": "%%%"}, "cursor"),
        ({"colour": "red"}, "colour"),
    ],
)
async def test_list_rejects_bad_queries(served: Agent, params: dict[str, str], field: str) -> None:
    async with client(served, READ) as http:
        response = await http.get("/api/v1/jobs", params=params)
    assert response.status_code == 400
    assert response.json()["error"] == "VALIDATION_ERROR"
    assert response.json()["details"]["field"] == field


async def test_status_and_result_of_a_job(served: Agent) -> None:
    await served.intake.submit(echo_job("s-1"), transport="test")
    await wait_done(served, "s-1")
    async with client(served, READ) as http:
        status = await http.get("/api/v1/jobs/s-1")
        result = await http.get("/api/v1/jobs/s-1/result")
    assert status.json()["data"]["status"] == "Completed"
    assert set(status.json()["data"]) >= {
        "job_id",
        "operation",
        "status",
        "submitted_at",
        "started_at",
        "completed_at",
        "error",
    }
    assert result.json() == {"success": True, "data": {"message": "hello"}}


async def test_unknown_job_is_404_not_found(served: Agent) -> None:
    async with client(served, READ) as http:
        for path in ("/api/v1/jobs/ghost", "/api/v1/jobs/ghost/result", "/api/v1/jobs/ghost/logs"):
            response = await http.get(path)
            assert response.status_code == 404
            assert response.json()["error"] == "NOT_FOUND"
        assert (await http.get("/api/v1/jobs/ghost")).json()["message"] == "Job ghost not found"


async def test_result_is_404_until_there_is_one(served: Agent) -> None:
    await served.intake.submit(sleep_job("slow", 30), transport="test")
    async with client(served, ADMIN) as http:
        response = await http.get("/api/v1/jobs/slow/result")
        assert response.status_code == 404
        assert "no result" in response.json()["message"]
        await http.post("/api/v1/jobs/slow/cancel")


async def test_cancel_a_running_job_then_409_when_terminal(served: Agent) -> None:
    await served.intake.submit(sleep_job("to-cancel", 60), transport="test")
    await wait_running(served, "to-cancel")
    async with client(served, CANCEL) as http:
        response = await http.post("/api/v1/jobs/to-cancel/cancel")
        assert response.status_code == 200
        assert response.json()["data"]["status"] == "Cancelled"
        again = await http.post("/api/v1/jobs/to-cancel/cancel")
    assert again.status_code == 409
    assert again.json()["error"] == "CONFLICT"


async def test_logs_hold_progress_events(served: Agent) -> None:
    await served.intake.submit(sleep_job("progressing", 0), transport="test")
    await wait_done(served, "progressing")
    async with client(served, READ) as http:
        response = await http.get("/api/v1/jobs/progressing/logs")
    data = response.json()["data"]
    assert data["job_id"] == "progressing"
    assert any(entry["type"] == "progress" for entry in data["logs"])


async def test_capabilities_and_health(served: Agent) -> None:
    async with client(served, READ) as http:
        caps = (await http.get("/api/v1/capabilities")).json()["data"]
    async with client(served, token=None) as anonymous:
        health = await anonymous.get("/api/v1/health")
    assert "system.echo" in caps["operations"]
    assert {"worker_id", "features", "disk_formats", "max_concurrent_jobs"} <= set(caps)
    assert health.status_code == 200
    assert health.json()["data"]["status"] in ("healthy", "degraded", "unhealthy")
    assert "components" in health.json()["data"]


async def test_metrics_count_requests_by_route_template(served: Agent) -> None:
    async with client(served, READ) as http:
        await http.get("/api/v1/jobs/ghost")
        response = await http.get("/metrics")
    assert response.status_code == 200
    assert 'route="/api/v1/jobs/<job_id>"' in response.text
    assert 'code="404"' in response.text


def _sample(text: str, name: str, labels: str) -> float:
    for line in text.splitlines():
        if line.startswith(f"{name}{{") and labels in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def test_metrics_scrape_sees_the_job_counters_move(served: Agent) -> None:
    accepted = ("hostagent_jobs_accepted_total", 'transport="http"')
    finished = ("hostagent_jobs_finished_total", 'operation="system.echo",status="Completed"')
    durations = ("hostagent_job_duration_seconds_count", 'operation="system.echo"')
    async with client(served) as http:
        before = (await http.get("/metrics")).text
        with served.intake.events() as subscription:
            for n in range(3):
                assert (await http.post("/api/v1/jobs", json=echo_job(f"m-{n}"))).status_code == 201
            completed = 0
            async for event in subscription.receive:  # published once counted
                completed += event["type"] == "status" and event["data"]["status"] == "Completed"
                if completed == 3:
                    break
        after = (await http.get("/metrics")).text
    for name, labels in (accepted, finished, durations):
        assert _sample(after, name, labels) == _sample(before, name, labels) + 3, name
    assert "_total_total" not in after


async def test_unknown_paths_and_methods_answer_the_error_envelope(served: Agent) -> None:
    async with client(served) as http:
        missing = await http.get("/api/v1/nothing")
        wrong = await http.delete("/api/v1/jobs")
    assert missing.status_code == 404
    assert missing.json()["error"] == "NOT_FOUND"
    assert wrong.status_code == 405
    assert set(wrong.json()) == {"error", "message", "details"}


async def test_a_spool_job_is_visible_and_cancellable_over_http(config: Config) -> None:
    async with serving(with_http(config, spool=True)) as agent:
        await _spool_job_over_http(agent)


async def _spool_job_over_http(served: Agent) -> None:
    assert spool_of(served) is not None
    staged = spool_of(served).root / "tmp" / "from-spool.json"
    staged.write_text(json.dumps(sleep_job("from-spool", 60)))
    with served.intake.events() as subscription:
        staged.rename(spool_of(served).root / "incoming" / "from-spool.json")
        async for event in subscription.receive:
            if event["job_id"] == "from-spool" and event["data"].get("status") == "Running":
                break
    async with client(served) as http:
        status = await http.get("/api/v1/jobs/from-spool")
        assert status.json()["data"]["transport"] == "spool"
        cancelled = await http.post("/api/v1/jobs/from-spool/cancel")
    assert cancelled.json()["data"]["status"] == "Cancelled"


async def test_full_queue_is_503_with_retry_after(config: Config) -> None:
    settings = with_http(config.model_copy(update={"max_pending_jobs": 1}), retry_after_seconds=7)
    async with serving(settings) as agent, client(agent) as http:
        # Both job slots (max_concurrent_jobs=2) busy with long jobs: the next job waits.
        for number in range(2):
            await agent.intake.submit(sleep_job(f"hold-{number}", 60), transport="test")
            await wait_running(agent, f"hold-{number}")
        assert (await http.post("/api/v1/jobs", json=echo_job("fits"))).status_code == 201
        response = await http.post("/api/v1/jobs", json=echo_job("overflow"))
        batch = await http.post("/api/v1/jobs/batch", json={"jobs": [echo_job("b-overflow")]})
        for number in range(2):
            await http.post(f"/api/v1/jobs/hold-{number}/cancel")
    assert response.status_code == 503
    assert response.json()["error"] == "QUEUE_FULL"
    assert response.headers["Retry-After"] == "7"
    assert batch.status_code == 503


async def test_a_draining_agent_answers_503(served: Agent) -> None:
    served.intake.stop_accepting()
    async with client(served) as http:
        response = await http.post("/api/v1/jobs", json=echo_job("late"))
    assert response.status_code == 503
    assert response.json()["error"] == "QUEUE_FULL"
    assert "Retry-After" in response.headers


async def test_oversized_body_is_413(config: Config) -> None:
    async with serving(with_http(config, max_body_bytes=1000)) as agent, client(agent) as http:
        big = echo_job("big", labels={"padding": "x" * 2000})
        response = await http.post("/api/v1/jobs", json=big)
    assert response.status_code == 413
    assert response.json()["error"] == "PAYLOAD_TOO_LARGE"


async def test_a_slow_body_times_out(config: Config) -> None:
    async with serving(with_http(config, body_timeout_seconds=0.2)) as agent:
        assert http_of(agent) is not None
        assert http_of(agent).address is not None
        stream = await trio.open_tcp_stream(*http_of(agent).address)
        async with stream:
            await stream.send_all(
                b"POST /api/v1/jobs HTTP/1.1\r\nHost: test\r\n"
                b"Authorization: Bearer " + ADMIN.encode() + b"\r\n"
                b'Content-Length: 100\r\n\r\n{"version"'
            )
            answer = b""
            with trio.fail_after(10):
                while b"\r\n\r\n" not in answer:
                    answer += await stream.receive_some()
    assert answer.startswith(b"HTTP/1.1 408")


async def test_openapi_documents_every_route_from_the_models(served: Agent) -> None:
    async with client(served, token=None) as http:
        document = (await http.get("/openapi.json")).json()
        docs = await http.get("/docs/reference")
    paths = document["paths"]
    for path, method in [
        ("/api/v1/jobs", "post"),
        ("/api/v1/jobs", "get"),
        ("/api/v1/jobs/batch", "post"),
        ("/api/v1/jobs/{job_id}", "get"),
        ("/api/v1/jobs/{job_id}/result", "get"),
        ("/api/v1/jobs/{job_id}/cancel", "post"),
        ("/api/v1/jobs/{job_id}/logs", "get"),
        ("/api/v1/capabilities", "get"),
        ("/api/v1/health", "get"),
        ("/api/v1/events", "get"),
        ("/api/v1/ws", "get"),
    ]:
        assert method in paths[path], (path, method)
    submit = paths["/api/v1/jobs"]["post"]
    schema_name = submit["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    assert schema_name.endswith("/JobDocument")
    job_document = document["components"]["schemas"]["JobDocument"]
    assert {"version", "kind", "operation", "payload"} <= set(job_document["required"])
    assert submit["x-scope"] == "submit"
    assert docs.status_code == 200
    assert "text/html" in docs.headers["content-type"]
    assert "<script" not in docs.text  # nothing to fetch from a CDN
    assert "/api/v1/jobs/{job_id}/cancel" in docs.text


async def test_keep_alive_survives_answers_sent_before_the_body_was_needed(
    served: Agent,
) -> None:
    # Regression: a 401 sent before the body was read could stall the connection.
    async with client(served, "hat_wrong") as http:
        with trio.fail_after(20):
            for _ in range(20):
                assert (await http.post("/api/v1/jobs", json=echo_job())).status_code == 401
                assert (await http.get("/api/v1/health")).status_code == 200


def _raw_json(document: dict[str, object], **replace: str) -> bytes:
    text = json.dumps(document)
    for old, new in replace.items():
        text = text.replace(old, new)
    return text.encode()


@pytest.mark.parametrize(
    "body",
    [
        # A lone surrogate: valid JSON, but no UTF-8 for it (the fingerprint raised: 500).
        _raw_json(echo_job("lone"), hello="\\ud800"),
        # The same as raw bytes (a UTF-8 encoder would never write them).
        _raw_json(echo_job("lone")).replace(b"hello", b"\xed\xa0\x80"),
    ],
    ids=["escape", "bytes"],
)
async def test_text_without_utf8_is_400_naming_the_field(served: Agent, body: bytes) -> None:
    async with client(served, SUBMIT) as http:
        response = await http.post(
            "/api/v1/jobs", content=body, headers={"Content-Type": "application/json"}
        )
    assert response.status_code == 400, response.text
    assert response.json()["error"] == "BAD_REQUEST"
    assert response.json()["details"]["field"] == "payload.data.message"


async def test_a_declared_charset_is_how_the_body_is_read(served: Agent) -> None:
    document = echo_job("utf16")
    async with client(served, SUBMIT) as http:
        utf16 = await http.post(
            "/api/v1/jobs",
            content=json.dumps(document, ensure_ascii=False).encode("utf-16"),
            headers={"Content-Type": "application/json; charset=UTF-16"},
        )
        latin1 = await http.post(
            "/api/v1/jobs",
            content=json.dumps(echo_job("latin"), ensure_ascii=False)
            .replace("hello", "h\u00e9llo")
            .encode("latin-1"),
            headers={"Content-Type": "application/json; charset=latin-1"},
        )
        unknown = await http.post(
            "/api/v1/jobs",
            content=json.dumps(document).encode(),
            headers={"Content-Type": "application/json; charset=klingon"},
        )
        wrong = await http.post(
            "/api/v1/jobs",
            content=json.dumps(document).encode("utf-16"),
            headers={"Content-Type": "application/json; charset=utf-8"},
        )
    assert utf16.status_code == 201, utf16.text
    assert latin1.status_code == 201, latin1.text
    await wait_done(served, "latin")
    assert "h\u00e9llo" in json.dumps(await served.intake.result("latin"), ensure_ascii=False)
    assert (unknown.status_code, unknown.json()["details"]["field"]) == (415, "Content-Type")
    assert (wrong.status_code, wrong.json()["details"]["field"]) == (400, "body")
