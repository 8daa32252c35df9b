"""The VMs view's bulk actions beyond suspend (tests/ui/test_vms_view.py): resume,
shutdown and start on a selection of a few domains on test:///default, each VM's job
shown Completed and its new state in the list, without a reload."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import libvirt
import pytest
from selenium.webdriver.common.by import By

from agent.service.daemon import Agent
from tests.http_helpers import ADMIN
from tests.ui.browser import Page

pytestmark = pytest.mark.slow  # a browser and an agent

COUNT = 3


@pytest.fixture
def paused() -> Iterator[list[str]]:
    """COUNT paused domains on the process's test:///default (the agent's), and one
    running domain of the same prefix that is not selected."""
    prefix = f"bulk{uuid.uuid4().hex[:4]}"
    conn = libvirt.open("test:///default")
    names = [f"{prefix}-{index}" for index in range(COUNT + 1)]
    try:
        for name in names:
            dom = conn.defineXML(
                f"<domain type='test'><name>{name}</name><memory unit='MiB'>64</memory>"
                "<vcpu>1</vcpu><os><type>hvm</type></os></domain>"
            )
            dom.create()
            if name != names[-1]:
                dom.suspend()
        yield names
    finally:
        for name in names:
            dom = conn.lookupByName(name)
            if dom.isActive():
                dom.destroy()
            dom.undefine()
        conn.close()


async def bulk(page: Page, action: str, names: list[str]) -> dict[str, str]:
    """Press the bulk `action`; each selected VM's job status once they all ended."""
    await page.click(f'button[data-bulk="{action}"]')
    statuses: dict[str, str] = await page.until(
        lambda d: d.execute_script(
            "const items = [...document.querySelectorAll("
            "`#activity li[data-action=${arguments[0]}]`)];"
            "const ended = items.map(li => [li.dataset.target,"
            " li.querySelector('.job-status').dataset.status])"
            ".filter(([, s]) => s && !['Pending', 'Running'].includes(s));"
            "return ended.length >= arguments[1] && Object.fromEntries(ended);",
            action,
            len(names),
        )
    )
    return statuses


async def states(page: Page, names: list[str], wanted: str) -> dict[str, str]:
    """The list's state of each VM, once every one of `names` shows `wanted`."""
    shown: dict[str, str] = await page.until(
        lambda d: d.execute_script(
            "const shown = Object.fromEntries([...document.querySelectorAll('#vms tbody tr')]"
            ".map(r => [r.dataset.vm, r.querySelector('[data-state]').textContent]));"
            "return arguments[0].every(n => shown[n] === arguments[1]) && shown;",
            names,
            wanted,
        )
    )
    return shown


async def test_bulk_resume_shutdown_and_start_on_a_selection(
    ui_agent: Agent, page: Page, paused: list[str]
) -> None:
    *chosen, bystander = paused
    await page.open("/ui/vms")
    await page.login(ADMIN)
    await page.type("#vm-filter", chosen[0].rsplit("-", 1)[0])
    await page.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#vms tbody tr")) == COUNT + 1)
    await page.js("window.notReloaded = true")
    for name in chosen:
        await page.click(f'input[data-select="{name}"]')
    assert await page.js("return document.querySelectorAll('#vms tr.selected').length") == COUNT

    assert await bulk(page, "resume", chosen) == dict.fromkeys(chosen, "Completed")
    assert (await states(page, chosen, "running"))[bystander] == "running"
    await page.shot("bulk-resumed")

    assert await bulk(page, "shutdown", chosen) == dict.fromkeys(chosen, "Completed")
    # Only the selection: the VM left unselected still runs.
    assert (await states(page, chosen, "shutoff"))[bystander] == "running"
    await page.shot("bulk-shut-down")

    assert await bulk(page, "start", chosen) == dict.fromkeys(chosen, "Completed")
    await states(page, chosen, "running")
    assert await page.js("return window.notReloaded") is True
    conn = libvirt.open("test:///default")
    try:
        assert all(conn.lookupByName(name).isActive() for name in paused)
    finally:
        conn.close()
