"""Editing a template in the host view (PUT /templates/NAME): a row's Edit fills the
form with the template, Save replaces it; what the form does not show (folder, icon,
graphics, a second disk) is kept, a refusal is shown and the edit stays open."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest

from agent.service.daemon import Agent
from tests.http_helpers import ADMIN, http_of
from tests.ui.browser import Page

pytestmark = pytest.mark.slow  # a browser and an agent


async def test_edit_a_template_from_its_row(ui_agent: Agent, page: Page) -> None:
    name = f"tpl-{uuid.uuid4().hex[:6]}"
    original: dict[str, Any] = {
        "name": name,
        "folder": ["web"],
        "icon": "debian",
        "os_distro": "debian",
        "os_version": "12",
        "cpus": 1,
        "memory": 128,
        "disks": [{"index": 0, "size": 1}, {"index": 1, "size": 2, "format": "raw"}],
        "storagepool": "default-pool",
        "networks": ["default"],
        "graphics": "none",
    }
    async with httpx.AsyncClient(
        base_url=http_of(ui_agent).url + "/api/v1", headers={"Authorization": f"Bearer {ADMIN}"}
    ) as http:
        assert (await http.post("/templates", json=original)).status_code == 201
        await page.open("/ui/host")
        await page.login(ADMIN)
        row = f'#templates tr[data-template="{name}"]'
        await page.click(f'{row} button[data-edit="{name}"]')
        form = "#template-form"
        await page.until(
            lambda d: (
                d.execute_script(f"return document.querySelector('{form}').dataset.editing") == name
            )
        )
        # The form shows the template as it is, its name fixed.
        shown = await page.js(
            f"const f = document.querySelector('{form}').elements;"
            "return [f.name.value, f.name.readOnly, f.memory.value, f.disk.value,"
            " f.os_version.value]"
        )
        assert shown == [name, True, "128", "1", "12"]
        assert await page.text(f"{form} button[type=submit]") == "Save template"
        await page.shot("template-editing")

        # A refusal is shown, and the edit stays open.
        await page.type(f"{form} [name=networks]", "not a network!")
        await page.click(f"{form} button[type=submit]")
        refused = await page.text("#template-result .error")
        assert refused.startswith("400 ")
        assert "[body.network]" in refused
        assert await page.js(f"return document.querySelector('{form}').dataset.editing") == name

        await page.type(f"{form} [name=networks]", "default")
        await page.type(f"{form} [name=memory]", "256")
        await page.type(f"{form} [name=cpus]", "2")
        await page.type(f"{form} [name=disk]", "3")
        await page.type(f"{form} [name=os_distro]", "ubuntu")
        await page.click(f"{form} button[type=submit]")
        assert f"saved {name}" in await page.text("#template-result .ok")
        # The list shows the new figures; the form is back to adding.
        await page.until(lambda d: "256 MiB" in d.find_element("css selector", row).text)
        assert "ubuntu 12" in await page.text(row)
        assert await page.text(f"{form} button[type=submit]") == "Add template"
        await page.shot("template-edited")

        saved = (await http.get(f"/templates/{name}")).json()["data"]
        assert (saved["memory"], saved["cpus"], saved["os_distro"]) == (256, 2, "ubuntu")
        assert saved["disks"] == [
            {"index": 0, "size": 3, "volume": None, "format": "qcow2"},
            {"index": 1, "size": 2, "volume": None, "format": "raw"},
        ]
        kept = {key: saved[key] for key in ("folder", "icon", "graphics", "storagepool")}
        assert kept == {
            "folder": ["web"],
            "icon": "debian",
            "graphics": "none",
            "storagepool": "default-pool",
        }
        await http.delete(f"/templates/{name}")
