"""Fixtures of the browser tests: an agent with tokens on test:///default, and a tab."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from agent.service.daemon import Agent
from agent.service.settings import Settings
from tests.http_helpers import http_of, serving, with_http
from tests.ui.browser import Page, start_chromium


@pytest.fixture
async def ui_agent(config: Settings) -> AsyncIterator[Agent]:
    async with serving(with_http(config)) as agent:
        yield agent


@pytest.fixture
async def page(ui_agent: Agent, tmp_path: Path) -> AsyncIterator[Page]:
    driver = await trio.to_thread.run_sync(start_chromium)
    shots = tmp_path / "screenshots"
    shots.mkdir()
    try:
        yield Page(driver, http_of(ui_agent).url, shots)
    finally:
        await trio.to_thread.run_sync(driver.quit)
