"""The running daemon process over HTTP: the CLI's client mode end to end, and a
property test that drives every operation of /openapi.json and never gets a 5xx."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.cli.command import main
from agent.cli.support import EXIT_DENIED, EXIT_NOT_FOUND, EXIT_UNREACHABLE
from agent.jobs import JOB_ID_PATTERN
from tests.http_helpers import ADMIN, READ, TOKEN_ENTRIES
from tests.jobs import echo_job, sleep_job

AGENT = [
    sys.executable,
    "-m",
    "agent",
    "run",
    "--log-format",
    "json",
    "--libvirt-uri",
    "test:///default",
]


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real `hostagent run` process on an ephemeral port; yields its URL."""
    work = tmp_path_factory.mktemp("daemon")
    env = {
        **os.environ,
        "HOSTAGENT_HTTP__TOKENS": json.dumps([entry.model_dump() for entry in TOKEN_ENTRIES]),
        "HOSTAGENT_HTTP__BIND": "127.0.0.1:0",
    }
    process = subprocess.Popen(
        [*AGENT, "--state-dir", str(work / "state"), "--spool-dir", str(work / "spool")],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stderr is not None
    url = None
    for line in process.stderr:  # the agent logs one JSON object per line
        event = json.loads(line)
        if event.get("event") == "http.ready":
            url = event["url"]
        if event.get("event") == "agent.ready":
            break
    assert url is not None, "the daemon did not start"
    # Keep reading its log: a pipe nobody reads fills (64 KiB) and the daemon's next
    # log line would block it, and the tests after it would hang.
    drain = threading.Thread(target=process.stderr.read, daemon=True)
    drain.start()
    try:
        yield url
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
        drain.join(timeout=5)
        process.stderr.close()


@pytest.fixture
def cli(daemon: str, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("HOSTAGENT_TOKEN", ADMIN)
    monkeypatch.setenv("HOSTAGENT_URL", daemon)
    return daemon


def _out(capsys: pytest.CaptureFixture[str]) -> tuple[str, str]:
    captured = capsys.readouterr()
    return captured.out, captured.err


@pytest.mark.slow
def test_cli_submit_wait_prints_the_result(cli: str, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["submit", "--op", "system.echo", "--data", '{"n": 7}', "--job-id", "w1", "--wait"])
    out, _ = _out(capsys)
    assert code == 0
    first, _, rest = out.partition("\n")
    assert first == "w1"
    record = json.loads(rest)
    assert record["status"] == "Completed"
    assert record["result"] == {"n": 7}


@pytest.mark.slow
def test_cli_submit_follow_shows_progress_and_status(
    cli: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    document = tmp_path / "job.json"
    document.write_text(json.dumps(sleep_job("followed", 0.2)))
    code = main(["submit", str(document), "--follow"])
    out, err = _out(capsys)
    assert code == 0
    assert "100.0%" in err
    assert "followed: Completed" in err
    assert json.loads(out.partition("\n")[2])["status"] == "Completed"


@pytest.mark.slow
def test_cli_status_jobs_result_logs_caps_health(
    cli: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["submit", "--op", "system.echo", "--job-id", "seen", "--wait"]) == 0
    _out(capsys)
    assert main(["status", "seen", "--json"]) == 0
    assert json.loads(_out(capsys)[0])["status"] == "Completed"
    assert main(["result", "seen", "--json"]) == 0
    assert json.loads(_out(capsys)[0]) == {}
    assert main(["jobs", "--operation", "system.echo"]) == 0
    out, err = _out(capsys)
    assert "seen" in out
    assert "jobs)" in err
    assert main(["logs", "seen"]) == 0
    _out(capsys)
    assert main(["caps", "--json"]) == 0
    assert "system.echo" in json.loads(_out(capsys)[0])["operations"]
    assert main(["health", "--json"]) == 0
    assert json.loads(_out(capsys)[0])["status"] == "healthy"


@pytest.mark.slow
def test_cli_cancel_over_http(cli: str, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    document = tmp_path / "long.json"
    document.write_text(json.dumps(sleep_job("long", 60)))
    assert main(["submit", str(document)]) == 0
    assert main(["cancel", "long"]) == 0
    assert _out(capsys)[0].splitlines()[1] == "long: Cancelled"
    assert main(["cancel", "long"]) == 1
    assert "already Cancelled" in _out(capsys)[1]


@pytest.mark.slow
def test_cli_reports_remote_errors(
    cli: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    assert main(["status", "nobody"]) == EXIT_NOT_FOUND
    assert "Job nobody not found" in _out(capsys)[1]
    assert main(["submit", "--op", "echo"]) == 1
    assert "namespaced" in _out(capsys)[1]
    token_file = tmp_path / "token"
    token_file.write_text("hat_wrong\n")
    assert main(["jobs", "--token-file", str(token_file)]) == EXIT_DENIED
    assert "not valid" in _out(capsys)[1]
    monkeypatch.setenv("HOSTAGENT_TOKEN", READ)
    assert main(["submit", "--op", "system.echo"]) == EXIT_DENIED
    assert "lacks the 'submit' scope" in _out(capsys)[1]


def test_cli_without_a_reachable_agent(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["health", "--url", "http://127.0.0.1:9"]) == EXIT_UNREACHABLE
    assert "cannot reach" in _out(capsys)[1]
    assert main(["caps", "--state-dir", "/nonexistent"]) == EXIT_UNREACHABLE
    assert "no running agent" in _out(capsys)[1]


# --- property test: nothing the API is sent answers 5xx ---

_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)


def _from_schema(  # noqa: PLR0911, PLR0912 (one branch per schema keyword)
    schema: dict[str, Any], components: dict[str, Any], depth: int = 0
) -> Any:
    """A strategy for values of a (simple) JSON schema; anything goes past a depth."""
    if depth > 4:
        return _JSON
    if "$ref" in schema:
        return _from_schema(components[schema["$ref"].rsplit("/", 1)[1]], components, depth + 1)
    for key in ("anyOf", "oneOf"):
        if key in schema:
            return st.one_of([_from_schema(s, components, depth + 1) for s in schema[key]])
    if "const" in schema:
        return st.just(schema["const"])
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    kind = schema.get("type")
    if kind == "object":
        properties = schema.get("properties", {})
        required = set(schema.get("required", []))
        return st.fixed_dictionaries(
            {
                k: _from_schema(v, components, depth + 1)
                for k, v in properties.items()
                if k in required
            },
            optional={
                k: _from_schema(v, components, depth + 1)
                for k, v in properties.items()
                if k not in required
            },
        )
    if kind == "array":
        return st.lists(_from_schema(schema.get("items", {}), components, depth + 1), max_size=3)
    if kind == "string":
        if "pattern" in schema:
            return st.from_regex(schema["pattern"], fullmatch=True).filter(
                lambda text: len(text) <= schema.get("maxLength", 128)
            )
        return st.text(min_size=schema.get("minLength", 0), max_size=schema.get("maxLength", 30))
    if kind == "integer":
        return st.integers(schema.get("minimum", -(2**40)), schema.get("maximum", 2**40))
    if kind == "number":
        return st.floats(allow_nan=False, allow_infinity=False)
    if kind == "boolean":
        return st.booleans()
    if kind == "null":
        return st.none()
    return _JSON


_HTTP = httpx.Client()  # one keep-alive pool for every example
_VALID = echo_job()
_NEARLY_VALID = st.builds(
    lambda key, value: {**_VALID, key: value}, st.sampled_from(sorted(_VALID)), _JSON
)


@pytest.fixture(scope="module")
def openapi(daemon: str) -> dict[str, Any]:
    document: dict[str, Any] = httpx.get(f"{daemon}/openapi.json").json()
    return document


def _draw_parameters(
    data: st.DataObject, path: str, operation: dict[str, Any], components: dict[str, Any]
) -> tuple[str, dict[str, Any], bool]:
    """The path with its parameters filled, the query, and whether both obey the document."""
    conforming = True
    params: dict[str, Any] = {}
    for parameter in operation.get("parameters", []):
        if parameter["in"] == "path":
            value = data.draw(
                st.from_regex(JOB_ID_PATTERN, fullmatch=True).filter(lambda v: v != "batch")
                | st.text(min_size=1, max_size=20)
            )
            conforming &= re.fullmatch(JOB_ID_PATTERN, value) is not None and value != "batch"
            path = path.replace(f"{{{parameter['name']}}}", urllib.parse.quote(value, safe=""))
        elif parameter["name"] != "access_token" and data.draw(st.booleans()):
            if data.draw(st.booleans()):
                value = data.draw(_from_schema(parameter["schema"], components))
                if value is not None:  # a query string cannot say null: leave it out
                    params[parameter["name"]] = value
            else:
                params[parameter["name"]] = data.draw(st.text(max_size=10))
                conforming = False
    return path, params, conforming


# Streams that answer for as long as the client listens (SSE, websockets): not requests.
ENDLESS = (
    "/api/v1/ws",
    "/api/v1/events",
    "/api/v1/stats/vms",
    "/api/v1/vms/{name}/console",
    "/api/v1/vms/{name}/serial",
)


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@pytest.mark.slow
@given(data=st.data())
def test_no_request_gets_a_5xx(daemon: str, openapi: dict[str, Any], data: st.DataObject) -> None:
    """Nothing answers 5xx; a request the document admits gets an answer the document
    lists; and a GET it admits, made with a token of the scope, succeeds (or is 404)."""
    operations = [
        (method, path, operation)
        for path, methods in openapi["paths"].items()
        for method, operation in methods.items()
        if path not in ENDLESS
    ]
    method, path, operation = data.draw(st.sampled_from(operations))
    components = openapi["components"]["schemas"]
    path, params, conforming = _draw_parameters(data, path, operation, components)
    body: Any = None
    headers: dict[str, str] = {}
    if "requestBody" in operation:
        schema = operation["requestBody"]["content"]["application/json"]["schema"]
        body = data.draw(
            _from_schema(schema, components)
            | _NEARLY_VALID
            | _JSON
            | st.builds(lambda jobs: {"jobs": jobs}, st.lists(_NEARLY_VALID, max_size=3))
        )
        if data.draw(st.integers(0, 9)) > 0:
            headers["Content-Type"] = "application/json"
        else:
            conforming = False
    token = data.draw(st.sampled_from([ADMIN, READ, None, "hat_wrong"]))
    if token:
        headers["Authorization"] = f"Bearer {token}"
    params = {
        key: value if isinstance(value, str) else json.dumps(value) for key, value in params.items()
    }
    response = _HTTP.request(
        method.upper(),
        daemon + path,
        params=params,
        content=None if body is None else json.dumps(body),
        headers=headers,
        timeout=30,
    )
    seen = (method, path, params, body, response.status_code, response.text[:300])
    assert response.status_code < 500, seen
    if conforming:
        assert str(response.status_code) in operation["responses"], seen
        # The job API's reads (where the attack found the document wrong) must succeed;
        # the resource view's reads depend on libvirt's state, so only their codes count.
        if method == "get" and token == ADMIN and path.startswith("/api/v1/jobs"):
            assert response.status_code in (200, 404), seen
    if response.headers.get("content-type", "").startswith("application/json"):
        answer = response.json()
        if response.status_code >= 400:
            assert set(answer) == {"error", "message", "details"}
        else:
            assert answer["success"] is True


def test_the_document_and_the_answers_agree_on_the_corner_cases(daemon: str) -> None:
    """The cases the attack found: each answered as /openapi.json says."""
    read = {"Authorization": f"Bearer {ADMIN}"}
    unknown_cursor = _HTTP.get(f"{daemon}/api/v1/jobs", params={"cursor": "999999"}, headers=read)
    assert unknown_cursor.status_code == 200
    assert unknown_cursor.json()["data"]["jobs"] == []
    empty = _HTTP.get(f"{daemon}/api/v1/jobs", params={"operation": ""}, headers=read)
    assert empty.status_code == 400  # the document's pattern refuses it too
    batch = _HTTP.post(
        f"{daemon}/api/v1/jobs/batch",
        json={"jobs": [None, None]},
        headers=read,
    )
    assert batch.status_code == 400
    assert batch.json()["details"]["field"] == "jobs.0"
    wrong_method = _HTTP.get(f"{daemon}/api/v1/jobs/batch", headers=read)
    assert wrong_method.status_code == 405
    allowed = {method.strip() for method in wrong_method.headers["Allow"].split(",")}
    assert "POST" in allowed
    assert "GET" not in allowed


@pytest.mark.slow
def test_the_daemon_stops_promptly_on_sigterm(tmp_path: Path) -> None:
    process = subprocess.Popen(
        [
            *AGENT,
            "--state-dir",
            str(tmp_path / "s"),
            "--spool-dir",
            str(tmp_path / "p"),
            "--http-bind",
            "127.0.0.1:0",
            "--insecure-no-auth",
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stderr is not None
    url = None
    for line in process.stderr:
        event = json.loads(line)
        url = event.get("url", url)
        if event.get("event") == "agent.ready":
            break
    assert url is not None
    # An open event stream must not hold the shutdown up.
    with httpx.stream("GET", f"{url}/api/v1/events") as stream:
        assert stream.status_code == 200
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0
    process.stderr.close()
    assert time.monotonic() - started < 20
