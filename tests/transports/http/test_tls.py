"""TLS and mTLS handshakes against the real server; certificates made at test time."""

from __future__ import annotations

import ssl
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import trio

from agent.config import Config
from agent.errors import ConfigError
from agent.service.daemon import Agent
from agent.transports.http.transport import HttpTransport
from tests.http_helpers import READ, http_of, serving, with_http


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _authority(directory: Path, name: str) -> None:
    _openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "1", "-subj", f"/CN={name}",
        cwd=directory,
    )  # fmt: skip


def _issue(directory: Path, authority: str, name: str, extensions: str) -> None:
    (directory / f"{name}.ext").write_text(extensions)
    _openssl(
        "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}",
        cwd=directory,
    )  # fmt: skip
    _openssl(
        "x509", "-req", "-in", f"{name}.csr", "-CA", f"{authority}.pem", "-CAkey",
        f"{authority}.key", "-CAcreateserial", "-out", f"{name}.pem", "-days", "1",
        "-extfile", f"{name}.ext",
        cwd=directory,
    )  # fmt: skip


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("pki")
    server = "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n"
    client = "extendedKeyUsage=clientAuth\n"
    _authority(directory, "ca")
    _authority(directory, "rogue-ca")
    _issue(directory, "ca", "server", server)
    _issue(directory, "ca", "server2", server)
    _issue(directory, "ca", "client", client)
    _issue(directory, "rogue-ca", "rogue", client)
    return directory


def _tls(config: Config, pki: Path, *, mtls: bool) -> Config:
    return with_http(
        config,
        tls_cert=pki / "server.pem",
        tls_key=pki / "server.key",
        tls_client_ca=pki / "ca.pem" if mtls else None,
    )


def _context(pki: Path, identity: str | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki / "ca.pem"))
    if identity is not None:
        context.load_cert_chain(pki / f"{identity}.pem", pki / f"{identity}.key")
    return context


@pytest.fixture
async def tls_agent(config: Config, pki: Path) -> AsyncIterator[Agent]:
    async with serving(_tls(config, pki, mtls=False)) as agent:
        yield agent


@pytest.fixture
async def mtls_agent(config: Config, pki: Path) -> AsyncIterator[Agent]:
    async with serving(_tls(config, pki, mtls=True)) as agent:
        yield agent


async def _health(agent: Agent, context: ssl.SSLContext) -> int:
    assert http_of(agent) is not None
    async with httpx.AsyncClient(
        verify=context, headers={"Authorization": f"Bearer {READ}"}
    ) as http:
        return (await http.get(f"{http_of(agent).url}/api/v1/jobs")).status_code


@pytest.mark.slow
async def test_tls_serves_https_with_the_configured_certificate(
    tls_agent: Agent, pki: Path
) -> None:
    assert http_of(tls_agent) is not None
    assert http_of(tls_agent).url.startswith("https://127.0.0.1:")
    assert await _health(tls_agent, _context(pki)) == 200


async def test_a_client_that_does_not_trust_the_ca_is_refused(tls_agent: Agent) -> None:
    with pytest.raises(httpx.ConnectError):
        await _health(tls_agent, ssl.create_default_context())


async def test_mtls_accepts_a_client_certificate_from_the_ca(mtls_agent: Agent, pki: Path) -> None:
    assert await _health(mtls_agent, _context(pki, "client")) == 200


@pytest.mark.parametrize("identity", [None, "rogue"])
async def test_mtls_refuses_a_client_without_a_valid_certificate(
    mtls_agent: Agent, pki: Path, identity: str | None
) -> None:
    with pytest.raises(httpx.TransportError):
        await _health(mtls_agent, _context(pki, identity))


async def _peer_certificate(agent: Agent, pki: Path) -> bytes:
    assert http_of(agent) is not None
    assert http_of(agent).address is not None
    host, port = http_of(agent).address
    stream = await trio.open_ssl_over_tcp_stream(host, port, ssl_context=_context(pki))
    async with stream:
        await stream.do_handshake()
        der: bytes = stream.getpeercert(binary_form=True)
        return der


async def test_reload_serves_a_new_certificate_to_new_connections(
    tls_agent: Agent, pki: Path
) -> None:
    assert http_of(tls_agent) is not None
    before = await _peer_certificate(tls_agent, pki)
    renewed = http_of(tls_agent).config.model_copy(
        update={"tls_cert": pki / "server2.pem", "tls_key": pki / "server2.key"}
    )
    await tls_agent.reload(tls_agent.config.model_copy(update={"http": renewed}))  # as SIGHUP
    after = await _peer_certificate(tls_agent, pki)
    assert before != after
    assert after == ssl.PEM_cert_to_DER_cert((pki / "server2.pem").read_text())


def test_unreadable_tls_files_are_a_config_error(config: Config, pki: Path) -> None:
    broken = with_http(config, tls_cert=pki / "missing.pem", tls_key=pki / "server.key")
    with pytest.raises(ConfigError, match="TLS"):
        HttpTransport(broken.http)
