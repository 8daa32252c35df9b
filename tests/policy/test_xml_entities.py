"""Job XML is parsed with ElementTree (expat) at intake and handed to libvirt: prove
that no entity trick gets through. Billion laughs and a quadratic blow-up, external
entities (SYSTEM "file:///...secret") in text, attributes and parameter entities, an
external DTD subset: each job is refused (expat: 400; a DOCTYPE, by the XML
allowlist: 403), or, for an admin with policy.allow_passthrough, defined without a
byte of the secret, through the real vm.define / network.define admission on
libvirt's test driver. The secret is sought in the answers, the job's
result and error, the defined object's XML, the log and the job store's files."""

from __future__ import annotations

import resource
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import libvirt
import pytest
import trio
from structlog.testing import capture_logs

from agent.errors import AgentError
from agent.service.daemon import Agent
from agent.service.settings import Settings
from tests.jobs import job_document, wait_done

SECRET = b"xml-entity-secret-5b2e91"
MIB = 1024 * 1024

_DOMAIN = (
    "<domain type='test'><name>{name}</name><memory unit='MiB'>64</memory>"
    "<os><type>hvm</type></os>{extra}</domain>"
)
_NETWORK = "<network><name>{name}</name>{extra}</network>"


def _laughs() -> str:
    """Ten levels of ten: 10^10 bytes from a few hundred."""
    levels = ['<!ENTITY l0 "lollollollol">']
    levels += [f'<!ENTITY l{n} "{f"&l{n - 1};" * 10}">' for n in range(1, 10)]
    return f"<!DOCTYPE {{root}} [{''.join(levels)}]>"


def _quadratic() -> str:
    """One 50 kB entity used a few thousand times: ~100 MB, no nesting at all."""
    return f'<!DOCTYPE {{root}} [<!ENTITY big "{"x" * 50_000}">]>'


def cases(secret: Path) -> dict[str, tuple[str, str, str]]:
    """name -> (DOCTYPE with {root} to fill, the name element's text, extra children)."""
    url = secret.as_uri()
    external = f'<!DOCTYPE {{root}} [<!ENTITY xxe SYSTEM "{url}">]>'
    return {
        "billion-laughs": (_laughs(), "{name}", "<description>&l9;</description>"),
        "quadratic": (_quadratic(), "{name}", "<description>" + "&big;" * 2000 + "</description>"),
        "external-in-text": (external, "{name}", "<description>&xxe;</description>"),
        "external-as-name": (external, "&xxe;", ""),
        "external-in-attribute": (external, "{name}", "<title a='&xxe;'>t</title>"),
        "external-declared-unused": (external, "{name}", ""),
        "external-parameter": (
            f'<!DOCTYPE {{root}} [<!ENTITY % ext SYSTEM "{url}"> %ext;]>',
            "{name}",
            "",
        ),
        "parameter-defines-external": (
            f"<!DOCTYPE {{root}} [<!ENTITY % def \"<!ENTITY inner SYSTEM '{url}'>\"> %def;]>",
            "{name}",
            "<description>&inner;</description>",
        ),
        "external-subset": (f'<!DOCTYPE {{root}} SYSTEM "{url}">', "{name}", ""),
    }


# What expat (ElementTree) refuses as it parses the payload, for any caller. The rest
# the XML allowlist refuses (a DOCTYPE) unless the caller is an admin and the policy
# allows passthrough; then they reach libvirt, which expands no external entity
# either (the tests check the XML it keeps).
REFUSED = {
    "billion-laughs",
    "quadratic",
    "external-in-text",
    "external-as-name",
    "external-in-attribute",
    "parameter-defines-external",
}


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    path = tmp_path / "secret"
    path.write_bytes(SECRET)
    path.chmod(0o600)
    return path


@pytest.fixture
async def agent(config: Settings, request: pytest.FixtureRequest) -> AsyncIterator[Agent]:
    policy = config.policy.model_copy(update={"allow_passthrough": request.param})
    async with trio.open_nursery() as nursery:
        running: Agent = await nursery.start(
            Agent(config.model_copy(update={"policy": policy})).run
        )
        yield running
        nursery.cancel_scope.cancel()


def _document(kind: str, doctype: str, name_text: str, extra: str, name: str) -> dict[str, Any]:
    root, template = ("domain", _DOMAIN) if kind == "vm" else ("network", _NETWORK)
    xml = doctype.format(root=root) + template.format(name=name_text.format(name=name), extra=extra)
    if kind == "vm":
        return job_document("vm.define", {"xml": xml})
    return job_document("network.define", {"name": name, "xml": xml, "start": False})


def _defined_xml(kind: str, name: str) -> str | None:
    """The XML libvirt keeps for the object, if it was defined (the test driver is one
    per process: the agent's own connection sees the same objects)."""
    conn = libvirt.open("test:///default")
    try:
        lookup = conn.lookupByName if kind == "vm" else conn.networkLookupByName
        try:
            return str(lookup(name).XMLDesc(0))
        except libvirt.libvirtError:
            return None
    finally:
        conn.close()


def _store_bytes(config: Settings) -> bytes:
    return b"".join(
        path.read_bytes() for path in config.state_dir.glob(f"{config.store_path.name}*")
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    ("agent", "privileged"),
    [(False, False), (False, True), (True, True)],
    ids=["plain", "admin", "admin-with-passthrough"],
    indirect=["agent"],
)
@pytest.mark.parametrize("kind", ["vm", "network"])
async def test_entities_in_job_xml_are_refused_or_harmless(
    agent: Agent, config: Settings, secret: Path, kind: str, privileged: bool
) -> None:
    seen: list[str] = []  # every text the submitter could read back
    outcome: dict[str, str] = {}
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    with capture_logs() as logs:
        for case, (doctype, name_text, extra) in cases(secret).items():
            name = f"ent-{case}-{uuid.uuid4().hex[:8]}"
            document = _document(kind, doctype, name_text, extra, name)
            try:
                submitted = await agent.intake.submit(
                    document, transport="test", privileged=privileged
                )
            except AgentError as refusal:
                seen.append(str(refusal.to_dict()))
                outcome[case] = refusal.code
                continue
            state = await wait_done(agent, submitted.state.job_id, within=30)
            seen.append(state.model_dump_json())
            seen.extend(str(event) for event in await agent.intake.logs(state.job_id))
            if state.status == "Completed":
                seen.append(str(await agent.intake.result(state.job_id)))
            defined = await trio.to_thread.run_sync(_defined_xml, kind, name)
            seen.append(defined or "")
            outcome[case] = f"{state.status}{'' if defined is None else ', defined'}"
    peak_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    assert {case for case, code in outcome.items() if code == "VALIDATION_ERROR"} == REFUSED
    passthrough = privileged and agent.config.policy.allow_passthrough
    for case in set(outcome) - REFUSED:
        # Refused by the allowlist, or defined by libvirt with the entity left unexpanded.
        expected = "Completed, defined" if passthrough else "FORBIDDEN"
        assert outcome[case] == expected, (case, outcome)
    assert len(seen) >= len(outcome)
    for text in seen:
        assert SECRET.decode() not in text
    assert SECRET.decode() not in str(logs)
    assert SECRET not in _store_bytes(config)
    # No blow-up: 10^10 (laughs) or ~100 MB (quadratic) of expansion never happened.
    assert peak_after - peak_before < 64 * MIB
