"""Property: every invalid runbook or parameter set is refused at intake, through HTTP
and the spool of a real agent process, naming the field; and no job ever starts."""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings

from agent.runbooks import check_parameters, parse_runbook
from tests.agentproc import AgentProcess
from tests.http_helpers import SUBMIT, TOKEN_ENTRIES
from tests.runbooks.invalid import ALLOW_ONLY, BASE_PARAMETERS, base_runbook, invalid_case
from tests.spoolkit import drop

pytestmark = pytest.mark.slow

EXAMPLES = 1000


@dataclass
class Running:
    agent: AgentProcess
    url: str
    spool: Path
    state: Path
    images: Path


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    work = tmp_path_factory.mktemp("rbfuzz")
    images, books = work / "images", work / "runbooks"
    images.mkdir()
    books.mkdir()
    (books / "installed.json").write_text(
        json.dumps({**base_runbook(images), "name": "fuzz-installed"})
    )
    agent = AgentProcess(work / "state", work / "spool", "--http-bind", "127.0.0.1:0")
    agent.argv.remove("--no-http")
    agent.env = {
        **os.environ,
        "HOSTAGENT_HTTP__TOKENS": json.dumps([entry.model_dump() for entry in TOKEN_ENTRIES]),
        "HOSTAGENT_RUNBOOKS__DIRS": json.dumps([str(books)]),
        "HOSTAGENT_RUNBOOKS__INLINE": "any",
        "HOSTAGENT_POLICY__ALLOW": json.dumps(ALLOW_ONLY),
        "HOSTAGENT_POLICY__IMAGE_ROOTS": json.dumps([str(images)]),
    }
    agent.start()
    (ready,) = agent.events("http.ready")
    try:
        yield Running(agent, str(ready["url"]), work / "spool", work / "state", images)
    finally:
        assert agent.stop(timeout=60) == 0, "".join(agent.lines[-30:])


def jobs_recorded(state: Path) -> int:
    with sqlite3.connect(state / "jobs.sqlite3", timeout=10) as conn:
        return int(conn.execute("SELECT count(*) FROM jobs").fetchone()[0])


def test_the_base_runbook_is_valid(tmp_path: Path) -> None:
    # What the cases break is the only thing wrong with them.
    runbook = parse_runbook(base_runbook(tmp_path))
    assert check_parameters(runbook, BASE_PARAMETERS, prefix="p")["flag"] is False


def fuzz_settings() -> Any:
    return settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )


def test_invalid_runbooks_over_http_are_refused_naming_the_field(running: Running) -> None:
    kinds: Counter[str] = Counter()
    with httpx.Client(
        base_url=running.url, headers={"Authorization": f"Bearer {SUBMIT}"}, timeout=60
    ) as client:

        @fuzz_settings()
        @given(case=invalid_case(running.images))
        def feed(case: tuple[str, dict[str, Any]]) -> None:
            kind, document = case
            answer = client.post("/api/v1/jobs", json=document)
            assert answer.status_code in (400, 403), (kind, answer.status_code, answer.text[:300])
            envelope = answer.json()
            assert envelope["details"].get("field"), (kind, envelope)
            kinds[kind] += 1

        feed()
    assert sum(kinds.values()) >= EXAMPLES
    assert len(kinds) == 15, kinds  # every kind of breakage was tried
    assert jobs_recorded(running.state) == 0
    print(f"\nHTTP: {sum(kinds.values())} invalid runbooks refused, 0 jobs: {dict(kinds)}")


def test_invalid_runbooks_in_the_spool_are_quarantined_naming_the_field(running: Running) -> None:
    dropped: dict[str, str] = {}

    @fuzz_settings()
    @given(case=invalid_case(running.images))
    def feed(case: tuple[str, dict[str, Any]]) -> None:
        kind, document = case
        name = f"{document['job_id']}.json"
        drop(running.spool, name, document)
        dropped[name] = kind

    feed()
    failed = running.spool / "failed"
    deadline = time.monotonic() + 180
    while len(list(failed.glob("*.error.json"))) < len(dropped):
        assert time.monotonic() < deadline, len(list(failed.glob("*.error.json")))
        time.sleep(0.2)
    for name, kind in dropped.items():
        report = json.loads((failed / f"{name}.error.json").read_text())
        assert report["error"] in ("VALIDATION_ERROR", "FORBIDDEN"), (kind, report)
        assert report["details"].get("field"), (kind, report)
    assert len(dropped) >= EXAMPLES
    assert jobs_recorded(running.state) == 0
    print(f"\nspool: {len(dropped)} invalid runbooks quarantined, 0 jobs")
