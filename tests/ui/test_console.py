"""On a real libvirtd with QEMU (tests/libvirtd.py): start a VM from the VM view, open
its console (noVNC over the agent's websocket relay), see a frame that is not blank,
type into it, and shut it down, all in headless Chromium."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import libvirt
import pytest
import trio
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select

from agent.config import LibvirtConfig
from agent.core.metrics import REGISTRY
from agent.service.daemon import Agent
from agent.service.settings import Settings
from tests.http_helpers import ADMIN, client, http_of, serving, with_http
from tests.jobs import wait_done
from tests.libvirtd import PrivateLibvirtd
from tests.ui.browser import Page, start_chromium
from tests.ui.streams import samples

pytestmark = pytest.mark.slow

NON_BLANK = """
const canvas = document.querySelector('#screen canvas');
if (!canvas || !canvas.width) return false;
const pixels = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
let lit = 0;
for (let i = 0; i < pixels.length; i += 4) {
  if (pixels[i] + pixels[i + 1] + pixels[i + 2] > 96) lit += 1;
}
return lit > 100 && lit;
"""


@pytest.fixture
async def qemu_agent(config: Settings, libvirtd: PrivateLibvirtd) -> AsyncIterator[Agent]:
    config = config.model_copy(update={"libvirt": LibvirtConfig(uri=libvirtd.uri)})
    async with serving(with_http(config)) as agent:
        yield agent


@pytest.fixture
async def qemu_page(qemu_agent: Agent, tmp_path: Path) -> AsyncIterator[Page]:
    driver = await trio.to_thread.run_sync(start_chromium)
    shots = tmp_path / "screenshots"
    shots.mkdir()
    try:
        yield Page(driver, http_of(qemu_agent).url, shots)
    finally:
        await trio.to_thread.run_sync(driver.quit)


def relayed(direction: str) -> float:
    found = REGISTRY.get_sample_value(
        "hostagent_console_bytes_total", {"kind": "vnc", "direction": direction}
    )
    return found or 0.0


async def job_end(page: Page, box: str) -> str:
    status: str = await page.until(
        lambda d: d.execute_script(
            f"const s = document.querySelector('{box} .job-status');"
            "return s && s.dataset.status && !['Pending','Running'].includes(s.dataset.status)"
            " && s.dataset.status"
        ),
        within=60,
    )
    return status


async def test_start_console_keys_and_shutdown_on_real_qemu(
    qemu_agent: Agent, qemu_page: Page
) -> None:
    page = qemu_page
    name = f"real-ui-{uuid.uuid4().hex[:6]}"
    async with client(qemu_agent, ADMIN) as http:
        answer = await http.post("/api/v1/vms", json={"spec": {"name": name, "memory_mib": 64}})
        assert answer.status_code == 202, answer.text
        await wait_done(qemu_agent, answer.json()["data"]["job_id"])
    try:
        await page.open(f"/ui/vms/{name}")
        await page.login(ADMIN)
        await page.click('button[data-action="start"]')
        assert await job_end(page, "#job") == "Completed"
        await page.until(
            lambda d: (
                d.execute_script(
                    "return document.querySelector('#vm-state [data-state]').textContent"
                )
                == "running"
            )
        )
        await page.shot("vm")
        # Its live usage, as the VMs view gets it: real counters from QEMU.
        _first, second = await samples(qemu_agent, 2)
        usage = next(vm for vm in second["vms"] if vm["name"] == name)
        assert (usage["state"], usage["memory_kib"], usage["vcpus"]) == ("running", 65536, 1)
        assert usage["cpu_percent"] is not None

        await page.click("#open-console")
        await page.until(
            lambda d: (
                d.execute_script("return document.querySelector('#console-status').dataset.state")
                == "connected"
            ),
            within=30,
        )
        lit = await page.until(lambda d: d.execute_script(NON_BLANK), within=60)
        assert lit > 100
        await page.shot("console")

        before = relayed("to_vm")
        await page.type("#paste-text", "Hello")
        await page.click("#paste")
        assert await page.text("#keys-sent") == "5 keys sent"
        # Each key is a press and a release (8 bytes each, more with QEMU's extended
        # key events) relayed to the VM's VNC server.
        with trio.fail_after(10):
            while relayed("to_vm") < before + 5 * 2 * 8:
                await trio.sleep(0.05)
        assert relayed("to_browser") > 0
        # The keymap: on a German layout '@' is AltGr+Q, four events for one character.
        await page.run(
            lambda: Select(page.driver.find_element(By.ID, "keymap")).select_by_value("de")
        )
        before = relayed("to_vm")
        await page.type("#paste-text", "@")
        await page.click("#paste")
        assert await page.text("#keys-sent") == "6 keys sent"
        with trio.fail_after(10):
            while relayed("to_vm") < before + 4 * 8:
                await trio.sleep(0.05)
        assert await page.js("return localStorage.getItem('hostagent.keymap')") == "de"

        await page.click("a[href$='/ui/vms/" + name + "'][data-nav]")
        await page.click('button[data-action="poweroff"]')
        assert await job_end(page, "#job") == "Completed"
        await page.until(
            lambda d: (
                d.execute_script(
                    "return document.querySelector('#vm-state [data-state]').textContent"
                )
                == "shutoff"
            )
        )
    finally:
        async with httpx.AsyncClient(
            base_url=http_of(qemu_agent).url, headers={"Authorization": f"Bearer {ADMIN}"}
        ) as http:
            await http.delete(f"/api/v1/vms/{name}", params={"force": "true"})


SERIAL_DOMAIN = """<domain type='{kind}'>
  <name>{name}</name><memory unit='MiB'>64</memory><vcpu>1</vcpu>
  <os><type>hvm</type><bios useserial='yes' rebootTimeout='500'/></os>
  <devices><serial type='pty'><target port='0'/></serial><console type='pty'/></devices>
</domain>"""


async def test_serial_console_in_the_page_on_real_qemu(
    qemu_agent: Agent, qemu_page: Page, libvirtd: PrivateLibvirtd
) -> None:
    """SeaBIOS writes to the serial port (useserial) and reboots every half second with
    no disk: its text shows in the console view's serial panel."""
    page = qemu_page
    name = f"real-ui-{uuid.uuid4().hex[:6]}"
    conn = await trio.to_thread.run_sync(libvirt.open, libvirtd.uri)
    kind = "kvm" if "<domain type='kvm'" in conn.getCapabilities() else "qemu"
    dom = conn.defineXML(SERIAL_DOMAIN.format(kind=kind, name=name))
    try:
        dom.create()
        await page.open(f"/ui/vms/{name}/console")
        await page.login(ADMIN)
        await page.find("#serial")
        text = await page.until(
            lambda d: d.execute_script(
                "const t = document.querySelector('#serial-out').textContent;"
                "return t.includes('SeaBIOS') || t.includes('Booting') ? t : false"
            ),
            within=60,
        )
        assert "Boot" in text or "SeaBIOS" in text
        # No graphics: no VNC, the screenshot stands in.
        assert "no graphical console" in await page.text("#console-status")
        await page.shot("serial")
    finally:
        if dom.isActive():
            dom.destroy()
        dom.undefine()
        conn.close()
