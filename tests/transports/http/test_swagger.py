"""Swagger UI at /docs renders in a real headless Chromium, from assets the agent
serves itself (the browser runs with no network but the agent's)."""

from __future__ import annotations

import json
import re
import shutil
import struct
import subprocess
import urllib.request
from pathlib import Path

import pytest

from tests.localapi import socket_agent


def chromium(*args: str) -> subprocess.CompletedProcess[str]:
    browser = shutil.which("chromium")
    assert browser is not None, "Debian's chromium package is a test dependency (make test)"
    return subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            # Nothing but the agent: a CDN fetch would fail, not silently succeed.
            "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
            "--virtual-time-budget=15000",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.slow
def test_docs_render_every_operation_in_headless_chromium(tmp_path: Path) -> None:
    agent = socket_agent(tmp_path).start()
    try:
        [ready] = agent.events("http.ready")
        url = str(ready["url"])
        with urllib.request.urlopen(f"{url}/openapi.json") as answer:
            document = json.load(answer)
        dom = chromium("--dump-dom", f"{url}/docs")
        shot = tmp_path / "docs.png"
        chromium(f"--screenshot={shot}", "--window-size=1280,2000", f"{url}/docs")
    finally:
        agent.stop()
    assert dom.returncode == 0, dom.stderr[-2000:]
    rendered = set(re.findall(r'class="opblock-summary-path" data-path="([^"]+)"', dom.stdout))
    assert rendered == set(document["paths"])
    for tag in ("jobs", "events", "agent", "metrics"):
        assert f'data-tag="{tag}"' in dom.stdout
    assert "Submit a job" in dom.stdout
    png = shot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", png[16:24])
    assert (width, height) == (1280, 2000)
    # A blank page compresses to a few kB; the rendered operations do not.
    assert len(png) > 50_000
