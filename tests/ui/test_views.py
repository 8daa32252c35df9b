"""The UI's tokens and views in headless Chromium on test:///default: no token, no
view; a read-only token sees but cannot act (and the API's 403 is shown when forced);
the console needs admin; a template makes a VM that shows in the list; a VM's action
shows its job's events to the end; make run's tokenless loopback config opens directly."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import libvirt
import pytest
import trio
from selenium.webdriver.common.by import By

from agent.service.daemon import Agent
from agent.service.settings import Settings
from agent.transports.http.settings import HttpConfig
from tests.http_helpers import ADMIN, READ, http_of, serving
from tests.ui.browser import Page, start_chromium

pytestmark = pytest.mark.slow  # a browser and an agent per test


@pytest.fixture
def running_vm() -> Iterator[str]:
    name = f"uiv-{uuid.uuid4().hex[:6]}"
    conn = libvirt.open("test:///default")
    dom = conn.defineXML(
        f"<domain type='test'><name>{name}</name><memory unit='MiB'>128</memory>"
        "<vcpu>2</vcpu><os><type>hvm</type></os></domain>"
    )
    dom.create()
    try:
        yield name
    finally:
        if dom.isActive():
            dom.destroy()
        dom.undefine()
        conn.close()


async def job_end(page: Page, box: str) -> str:
    status: str = await page.until(
        lambda d: d.execute_script(
            f"const s = document.querySelector('{box} .job-status');"
            "return s && s.dataset.status && !['Pending','Running'].includes(s.dataset.status)"
            " && s.dataset.status"
        )
    )
    return status


async def test_without_a_token_the_ui_asks_for_one(ui_agent: Agent, page: Page) -> None:
    await page.open("/ui/vms")
    await page.find("#login")
    assert not await page.js("return !!document.querySelector('#vms')")
    await page.login("hat_not-a-token")
    assert "not accepted" in await page.text("#login-error")
    await page.shot("login")
    # The data behind the views is refused too.
    async with httpx.AsyncClient(base_url=http_of(ui_agent).url) as http:
        assert (await http.get("/api/v1/stats/vms")).status_code == 401
        assert (await http.get("/api/v1/session")).status_code == 401


async def test_read_only_token_sees_but_cannot_act(
    ui_agent: Agent, page: Page, running_vm: str
) -> None:
    await page.open(f"/ui/vms/{running_vm}")
    await page.login(READ)
    button = await page.find('button[data-action="suspend"]')
    assert not await page.run(button.is_enabled)
    # Forced (enabled by hand): the API refuses, and the page says so.
    await page.js("document.querySelector('button[data-action=\"suspend\"]').disabled = false")
    await page.click('button[data-action="suspend"]')
    assert (await job_end(page, "#job")) == "HTTP 403"
    assert "Forbidden (403)" in await page.text("#job .job-status")
    assert await page.text("#vm-state") == "running"

    await page.click("a[href='/ui/vms'][data-nav]")
    await page.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#vms tbody tr")) >= 2)
    bulk = await page.find('button[data-bulk="shutdown"]')
    assert not await page.run(bulk.is_enabled)

    # The console needs admin: the page says so, the websocket refuses.
    await page.open(f"/ui/vms/{running_vm}/console")
    assert "admin" in await page.text("#console-refused")
    # What a read token may see of the screen: the screenshot, loaded with its token.
    width = await page.until(
        lambda d: d.execute_script("return document.querySelector('#screenshot').naturalWidth")
    )
    assert width > 0
    async with httpx.AsyncClient(base_url=http_of(ui_agent).url) as http:
        handshake = {
            "Connection": "Upgrade",
            "Upgrade": "websocket",
            "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
            "Sec-WebSocket-Version": "13",
        }
        path = f"/api/v1/vms/{running_vm}/console"
        refused = await http.get(path, params={"access_token": READ}, headers=handshake)
        assert refused.status_code == 403
    async with httpx.AsyncClient(base_url=http_of(ui_agent).url) as http:
        admitted = await http.get(path, params={"access_token": ADMIN}, headers=handshake)
        assert admitted.status_code == 409  # admin passes; a test domain has no VNC
    # Another site's page cannot open it, token or not (websockets have no CORS).
    async with httpx.AsyncClient(base_url=http_of(ui_agent).url) as http:
        foreign = {**handshake, "Origin": "http://evil.example"}
        cross = await http.get(path, params={"access_token": ADMIN}, headers=foreign)
        assert cross.status_code == 403
        assert cross.json()["details"]["field"] == "Origin"
    await page.shot("console-refused")


async def test_vm_view_action_shows_its_job_to_the_end(
    ui_agent: Agent, page: Page, running_vm: str
) -> None:
    await page.open(f"/ui/vms/{running_vm}")
    await page.login(ADMIN)
    await page.find('button[data-action="suspend"]')
    actions = await page.js(
        "return [...document.querySelectorAll('#vm-actions button')].map(b => b.dataset.action)"
    )
    assert "suspend" in actions
    assert "resume" not in actions  # the API's actions for a running VM
    await page.js("window.notReloaded = true")
    await page.click('button[data-action="suspend"]')
    assert await job_end(page, "#job") == "Completed"
    assert "Completed" in await page.text("#job .events")
    await page.until(
        lambda d: (
            d.execute_script("return document.querySelector('#vm-state [data-state]').textContent")
            == "paused"
        )
    )
    assert await page.js("return window.notReloaded") is True
    await page.until(lambda d: d.find_elements(By.CSS_SELECTOR, 'button[data-action="resume"]'))
    await page.shot("vm")


async def test_template_then_vm_from_it_in_the_list(ui_agent: Agent, page: Page) -> None:
    template = f"tpl-{uuid.uuid4().hex[:6]}"
    vm = f"{template}-vm"
    await page.open("/ui/host")
    await page.login(ADMIN)
    await page.find("#health tr[data-component]")
    policy = await page.text("#policy #allowlist")  # both the path policy and the allowlist
    assert "every caller keeps its scopes" in policy
    assert "Image roots" in await page.text("#policy")
    await page.type("#template-form [name=name]", template)
    await page.type("#template-form [name=memory]", "128")
    await page.type("#template-form [name=disk]", "1")
    await page.type("#template-form [name=storagepool]", "default-pool")
    await page.click("#template-form button[type=submit]")
    assert "added" in await page.text("#template-result")
    row = f'#templates tr[data-template="{template}"]'
    await page.type(f"{row} [data-vm-name]", vm)
    await page.click(f"{row} button[data-create]")
    assert await job_end(page, "#template-job") == "Completed"
    await page.shot("host")
    # A VM from a template whose network does not exist: its job fails, and the jobs
    # list puts failures first; picking it shows its status and logs.
    await page.find(f"#template-job a[href='/ui/vms/{vm}']")
    await page.type("#template-form [name=name]", f"{template}-bad")
    await page.type("#template-form [name=networks]", "no-such-net")
    await page.click("#template-form button[type=submit]")
    bad = f'#templates tr[data-template="{template}-bad"]'
    await page.click(f"{bad} button[data-create]")
    assert await job_end(page, "#template-job") == "Failed"
    first = await page.until(
        lambda d: d.execute_script(
            "const r = document.querySelector('#jobs tr[data-job]');"
            "return r && r.classList.contains('failed') && r.dataset.job"
        )
    )
    await page.click(f'#jobs a[data-show="{first}"]')
    assert await job_end(page, "#job-detail") == "Failed"
    assert "no-such-net" in await page.text("#job-detail .job-status")
    await page.open(f"/ui/vms/{vm}")
    assert await page.text("#vm-state") == "shutoff"
    await page.click("a[href='/ui/vms'][data-nav]")
    await page.type("#vm-filter", vm)
    await page.find(f'#vms tbody tr[data-vm="{vm}"]')
    async with httpx.AsyncClient(
        base_url=http_of(ui_agent).url, headers={"Authorization": f"Bearer {ADMIN}"}
    ) as http:
        await http.delete(f"/api/v1/vms/{vm}", params={"force": "true", "remove_storage": "true"})


@pytest.fixture
async def dev_agent(config: Settings) -> AsyncIterator[Agent]:
    """make run's config: loopback, no tokens."""
    http = HttpConfig(bind="127.0.0.1:0", insecure_no_auth=True)
    async with serving(config.model_copy(update={"http": http})) as agent:
        yield agent


async def test_tokenless_loopback_config_opens_directly(dev_agent: Agent, tmp_path: Path) -> None:
    driver = await trio.to_thread.run_sync(start_chromium)
    try:
        page = Page(driver, http_of(dev_agent).url, tmp_path)
        await page.open("/ui")
        await page.find("#vms tbody tr")
        assert await page.text("#who") == "no tokens (development)"
        assert not await page.js("return !!document.querySelector('#login')")
    finally:
        await trio.to_thread.run_sync(driver.quit)
