"""/ui's files: every view's URL is the page, the assets have their types and a
content security policy, noVNC comes from Debian's package, nothing outside the
UI's folders is served."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from agent.service.daemon import Agent
from agent.transports.http.ui import NOVNC
from tests.http_helpers import http_of

pytestmark = pytest.mark.slow  # an agent per test


async def test_views_assets_and_novnc(ui_agent: Agent) -> None:
    async with httpx.AsyncClient(base_url=http_of(ui_agent).url) as http:
        for path in ("/ui", "/ui/vms", "/ui/vms/web%201/console", "/ui/host"):
            page = await http.get(path)
            assert page.status_code == 200, path
            assert page.headers["content-type"] == "text/html; charset=utf-8"
            assert '<script type="module" src="/ui/static/app.js">' in page.text
            policy = page.headers["content-security-policy"]
            assert "default-src 'self'" in policy
            assert "frame-ancestors 'none'" in policy
        script = await http.get("/ui/static/vms.js")
        assert script.headers["content-type"] == "text/javascript; charset=utf-8"
        assert "export async function vmsView" in script.text
        assert (await http.get("/ui/static/nothing.js")).status_code == 404
        rfb = await http.get("/ui/novnc/core/rfb.js")
        if (NOVNC / "core" / "rfb.js").exists():
            assert rfb.status_code == 200
            assert "export default class RFB" in rfb.text
        else:
            assert rfb.status_code == 404


@pytest.mark.parametrize(
    "path",
    [
        "/ui/static/..%2f__init__.py",
        "/ui/static/%2e%2e/__init__.py",
        "/ui/static/../../ui/__init__.py",
        "/ui/novnc/..%2f..%2f..%2fetc%2fpasswd",
        "/ui/static/%2fetc%2fpasswd",
    ],
)
async def test_nothing_outside_the_ui_folders(ui_agent: Agent, path: str) -> None:
    async with httpx.AsyncClient(base_url=http_of(ui_agent).url) as http:
        answer = await http.get(path)
    assert "root:" not in answer.text
    assert "from __future__" not in answer.text
    assert answer.status_code in (200, 404)  # 200: the page itself, for a view's URL
    if answer.status_code == 200:
        assert answer.headers["content-type"] == "text/html; charset=utf-8"


def test_the_package_ships_the_pages() -> None:
    static = Path(__file__).resolve().parents[2] / "agent/transports/http/ui/static"
    assert {p.name for p in static.iterdir()} >= {"index.html", "app.js", "vms.js", "style.css"}
