"""quart is built on the first request only it serves: an agent that is submitted to and
polled (the lean routes, health, /metrics) never imports it.

Run in a fresh interpreter, so what is imported is the agent's doing alone.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]

SCRIPT = """
import json, sys
import httpx, trio
from agent.service.settings import Settings
from agent.transports.http.settings import HttpConfig
from agent.transports.spool.settings import SpoolConfig
from tests.http_helpers import ADMIN, READ, SUBMIT, TOKEN_ENTRIES, http_of, serving
from tests.jobs import echo_job

def loaded():
    return sorted(name for name in ("quart", "flask", "werkzeug", "jinja2") if name in sys.modules)

async def main(folder):
    config = Settings(
        state_dir=f"{folder}/state",
        spool_dir=f"{folder}/spool",
        spool=SpoolConfig(enabled=False),
        libvirt={"uri": "test:///default"},
        http=HttpConfig(bind="127.0.0.1:0", tokens=TOKEN_ENTRIES),
    )
    seen = {}
    async with serving(config) as agent:
        url = http_of(agent).url
        async with httpx.AsyncClient(base_url=url) as http:
            def auth(token):
                return {"Authorization": f"Bearer {token}"}
            one = echo_job("lazy-1")
            submitted = await http.post("/api/v1/jobs", json=one, headers=auth(SUBMIT))
            batch = await http.post(
                "/api/v1/jobs/batch", json={"jobs": [echo_job("lazy-2")]}, headers=auth(SUBMIT)
            )
            status = await http.get("/api/v1/jobs/lazy-1", headers=auth(READ))
            refused = await http.get("/api/v1/jobs/lazy-1")
            health = await http.get("/api/v1/health")
            metrics = await http.get("/metrics", headers=auth(READ))
            answers = (submitted, batch, status, refused, health, metrics)
            seen["lean"] = [answer.status_code for answer in answers]
            seen["before"] = loaded()
            listing = await http.get("/api/v1/jobs", headers=auth(READ))
            document = await http.get("/openapi.json")
            again = await http.get("/api/v1/jobs", headers=auth(ADMIN))
            seen["quart"] = [listing.status_code, document.status_code, again.status_code]
            seen["total"] = again.json()["data"]["total"]
            seen["after"] = loaded()
    print(json.dumps(seen))

trio.run(main, sys.argv[1])
"""


@pytest.mark.slow
def test_quart_is_built_on_the_first_request_only_it_serves(tmp_path: Path) -> None:
    output = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    seen = json.loads(output.strip().splitlines()[-1])
    assert seen["lean"] == [201, 200, 200, 401, 200, 200]
    assert seen["before"] == []  # none of quart, flask, werkzeug, jinja2
    assert seen["quart"] == [200, 200, 200]
    assert seen["total"] == 2
    assert seen["after"] == ["flask", "jinja2", "quart", "werkzeug"]
