"""Auth: bearer tokens with scopes, the exposure rules, token creation and reload."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agent.cli.command import main
from agent.config import Config
from agent.errors import ConfigError, ForbiddenError, UnauthorizedError
from agent.service.daemon import Agent
from agent.transports.http.auth import TokenTable, bearer_token, create_token, token_entry_toml
from agent.transports.http.settings import HttpConfig
from agent.transports.http.transport import check_exposure, is_loopback, parse_bind
from tests.http_helpers import (
    ADMIN,
    ADMIN_ENTRY,
    CANCEL,
    READ,
    SUBMIT,
    client,
    http_of,
    serving,
    with_http,
)
from tests.jobs import echo_job

ENDPOINTS = [
    ("POST", "/api/v1/jobs", "submit"),
    ("POST", "/api/v1/jobs/batch", "submit"),
    ("GET", "/api/v1/jobs", "read"),
    ("GET", "/api/v1/jobs/x", "read"),
    ("GET", "/api/v1/jobs/x/result", "read"),
    ("GET", "/api/v1/jobs/x/logs", "read"),
    ("POST", "/api/v1/jobs/x/cancel", "cancel"),
    ("GET", "/api/v1/capabilities", "read"),
    ("GET", "/api/v1/events", "read"),
    ("GET", "/metrics", "read"),
]
TOKENS = {"read": READ, "submit": SUBMIT, "cancel": CANCEL}


@pytest.fixture
async def served(config: Config) -> AsyncIterator[Agent]:
    async with serving(with_http(config)) as agent:
        yield agent


@pytest.mark.parametrize(("method", "path", "scope"), ENDPOINTS)
async def test_missing_or_unknown_token_is_401(
    served: Agent, method: str, path: str, scope: str
) -> None:
    for token in (None, "hat_not-a-real-token"):
        async with client(served, token) as http:
            response = await http.request(method, path, json=echo_job())
        assert response.status_code == 401, (path, token)
        assert response.json()["error"] == "UNAUTHORIZED"
        assert response.headers["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize(("method", "path", "scope"), ENDPOINTS)
async def test_a_token_without_the_scope_is_403(
    served: Agent, method: str, path: str, scope: str
) -> None:
    for name, token in TOKENS.items():
        if name == scope:
            continue
        async with client(served, token) as http:
            response = await http.request(method, path, json=echo_job())
        assert response.status_code == 403, (path, name)
        assert response.json()["error"] == "FORBIDDEN"
        assert response.json()["details"]["reason"] == f"Requires scope '{scope}'"


@pytest.mark.slow
async def test_the_right_scope_and_admin_get_through(served: Agent) -> None:
    for token in (SUBMIT, ADMIN):
        async with client(served, token) as http:
            assert (await http.post("/api/v1/jobs", json=echo_job())).status_code == 201
    for token in (READ, ADMIN):
        async with client(served, token) as http:
            assert (await http.get("/api/v1/capabilities")).status_code == 200


async def test_health_is_open_unless_configured_closed(config: Config) -> None:
    async with serving(with_http(config, open_health=False)) as agent:
        async with client(agent, None) as http:
            assert (await http.get("/api/v1/health")).status_code == 401
        async with client(agent, READ) as http:
            assert (await http.get("/api/v1/health")).status_code == 200


async def test_a_token_in_the_query_only_for_event_streams(served: Agent) -> None:
    async with client(served, None) as http:
        jobs = await http.get("/api/v1/jobs", params={"access_token": READ})
        async with http.stream("GET", "/api/v1/events", params={"access_token": READ}) as stream:
            status = stream.status_code
    assert jobs.status_code == 401
    assert status == 200


async def test_insecure_no_auth_on_loopback_needs_no_token(config: Config) -> None:
    settings = config.model_copy(
        update={"http": HttpConfig(bind="127.0.0.1:0", insecure_no_auth=True)}
    )
    async with serving(settings) as agent, client(agent, None) as http:
        assert (await http.post("/api/v1/jobs", json=echo_job())).status_code == 201


@pytest.mark.slow
async def test_reload_swaps_tokens(served: Agent) -> None:
    assert http_of(served) is not None
    fresh, entry = create_token("fresh", ["read"])
    renewed = served.config.http.model_copy(update={"tokens": [entry]})
    await served.reload(served.config.model_copy(update={"http": renewed}))  # as SIGHUP
    async with client(served, READ) as http:
        assert (await http.get("/api/v1/jobs")).status_code == 401
    async with client(served, fresh) as http:
        assert (await http.get("/api/v1/jobs")).status_code == 200


def test_tokens_are_stored_as_sha256_and_compared_whole() -> None:
    token, entry = create_token("ci", ["submit", "read", "read"])
    assert token.startswith("hat_")
    assert len(token) > 40
    assert entry.sha256 == hashlib.sha256(token.encode()).hexdigest()
    assert token not in entry.model_dump_json()
    assert entry.scopes == ["read", "submit"]
    table = TokenTable([entry, ADMIN_ENTRY])
    assert table.authorize(token, "read").name == "ci"
    with pytest.raises(UnauthorizedError):
        table.authenticate(token[:-1])
    with pytest.raises(UnauthorizedError):
        table.authenticate(None)
    with pytest.raises(ForbiddenError):
        table.authorize(token, "cancel")
    assert TokenTable([], required=False).authorize(None, "admin").name == "anonymous"
    assert 'sha256 = "' in token_entry_toml(entry)


@pytest.mark.parametrize(
    ("header", "token"),
    [
        ("Bearer abc", "abc"),
        ("bearer  abc ", "abc"),
        ("Basic abc", None),
        ("Bearer", None),
        (None, None),
    ],
)
def test_bearer_header_parsing(header: str | None, token: str | None) -> None:
    assert bearer_token(header) == token


@pytest.mark.parametrize(
    ("bind", "host", "port"),
    [
        ("127.0.0.1:8080", "127.0.0.1", 8080),
        ("[::1]:80", "::1", 80),
        ("localhost:0", "localhost", 0),
    ],
)
def test_parse_bind(bind: str, host: str, port: int) -> None:
    assert parse_bind(bind) == (host, port)


@pytest.mark.parametrize("bind", ["8080", "host:", "host:99999", "host:http"])
def test_parse_bind_rejects_garbage(bind: str) -> None:
    with pytest.raises(ConfigError):
        parse_bind(bind)


def test_loopback_addresses() -> None:
    assert is_loopback("127.0.0.1")
    assert is_loopback("127.3.2.1")
    assert is_loopback("::1")
    assert is_loopback("localhost")
    assert not is_loopback("0.0.0.0")
    assert not is_loopback("::")
    assert not is_loopback("10.1.2.3")
    assert not is_loopback("example.org")


def test_non_loopback_needs_tokens_and_refuses_insecure() -> None:
    with pytest.raises(ConfigError, match="without API tokens"):
        check_exposure(HttpConfig(bind="0.0.0.0:8080"))
    with pytest.raises(ConfigError, match="loopback address only"):
        check_exposure(HttpConfig(bind="0.0.0.0:8080", insecure_no_auth=True, tokens=[ADMIN_ENTRY]))
    check_exposure(HttpConfig(bind="0.0.0.0:8080", tokens=[ADMIN_ENTRY]))
    check_exposure(HttpConfig(bind="127.0.0.1:8080", insecure_no_auth=True))


def test_agent_refuses_to_start_on_all_addresses_without_tokens(config: Config) -> None:
    exposed = config.model_copy(update={"http": HttpConfig(bind="0.0.0.0:0")})
    with pytest.raises(ConfigError, match="without API tokens"):
        Agent(exposed)


@pytest.mark.slow
@pytest.mark.parametrize("flags", [[], ["--insecure-no-auth"]])
def test_the_daemon_refuses_0_0_0_0_without_auth(tmp_path: Path, flags: list[str]) -> None:
    """Before it is ready: a clear message and exit status 2 from the real process."""
    command = [sys.executable, "-m", "agent", "run", "--state-dir", str(tmp_path / "state")]
    command += ["--spool-dir", str(tmp_path / "spool"), "--http-bind", "0.0.0.0:0", *flags]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2
    assert "refusing" in done.stderr
    assert "agent.ready" not in done.stderr


def test_token_create_prints_the_token_once_and_its_entry(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["token", "create", "--scopes", "read,submit", "--name", "ci"]) == 0
    out = capsys.readouterr().out
    token = out.splitlines()[0]
    assert hashlib.sha256(token.encode()).hexdigest() in out
    assert 'scopes = ["read", "submit"]' in out
    assert main(["token", "create", "--scopes", "write"]) == 1


def test_tls_settings_must_come_in_pairs() -> None:
    with pytest.raises(ConfigError):
        check_exposure(HttpConfig(tls_cert="c.pem"))  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        check_exposure(HttpConfig(tls_key="k.pem"))  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        check_exposure(HttpConfig(tls_client_ca="ca.pem"))  # type: ignore[arg-type]
