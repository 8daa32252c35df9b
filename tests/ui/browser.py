"""Debian's headless Chromium driven by selenium through Debian's chromedriver (no
downloaded browser), from trio tests: every blocking call runs in a worker thread."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import trio
from selenium import webdriver
from selenium.common.exceptions import (
    JavascriptException,
    StaleElementReferenceException,
    TimeoutException,
)
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import WebDriverWait

T = TypeVar("T")
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
_PASSING = (JavascriptException, StaleElementReferenceException)


def start_chromium() -> webdriver.Chrome:
    assert shutil.which("chromium"), "Debian's chromium is a test dependency (make test)"
    assert shutil.which("chromedriver"), "Debian's chromium-driver is a test dependency"
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1400,1000",
        # Nothing but the agent: a CDN fetch would fail, not silently succeed.
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
    ):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


class Page:
    """One browser tab, with waits that poll the page (WebDriverWait) in a thread."""

    def __init__(self, driver: webdriver.Chrome, base: str, shots: Path) -> None:
        self.driver = driver
        self.base = base
        self.shots = shots

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        return await trio.to_thread.run_sync(fn, *args)

    async def open(self, path: str) -> None:
        await self.run(self.driver.get, self.base + path)

    async def js(self, script: str, *args: Any) -> Any:
        return await self.run(lambda: self.driver.execute_script(script, *args))

    async def until(self, condition: Callable[[webdriver.Chrome], T], within: float = 60) -> T:
        """The first truthy value of `condition(driver)`; after `within` seconds, a
        TimeoutException that shows the page (and a screenshot, timeout.png)."""
        try:
            # A view being replaced meanwhile: look again.
            wait = WebDriverWait(self.driver, within, 0.05, ignored_exceptions=_PASSING)
            return await self.run(wait.until, condition)
        except TimeoutException as exc:
            await self.shot("timeout")
            html = await self.js("return document.querySelector('main').outerHTML")
            raise TimeoutException(f"waited {within} s; the page: {html[:4000]}") from exc

    async def find(self, css: str, within: float = 60) -> WebElement:
        def found(driver: webdriver.Chrome) -> WebElement | bool:
            elements = driver.find_elements(By.CSS_SELECTOR, css)
            return elements[0] if elements and elements[0].is_displayed() else False

        return await self.until(found, within)

    async def text(self, css: str, within: float = 60) -> str:
        element = await self.find(css, within)
        return await self.run(lambda: element.text)

    async def click(self, css: str) -> None:
        """Find and click in one go (again if the page replaced the element meanwhile)."""

        def clicked(driver: webdriver.Chrome) -> bool:
            elements = driver.find_elements(By.CSS_SELECTOR, css)
            if not elements or not elements[0].is_displayed():
                return False
            elements[0].click()
            return True

        await self.until(clicked)

    async def type(self, css: str, text: str) -> None:
        element = await self.find(css)
        await self.run(element.clear)
        await self.run(element.send_keys, text)

    async def shot(self, name: str) -> Path:
        path = self.shots / f"{name}.png"
        await self.run(self.driver.save_screenshot, str(path))
        return path

    async def login(self, token: str) -> None:
        await self.type("#login-token", token)
        await self.click("#login button[type=submit]")
