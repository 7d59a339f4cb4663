"""Shared pieces for the web page tests (no tests here): Debian's headless Chromium via
Playwright, a watcher that records JavaScript errors, staff login, and a loopback TCP
"printer" that keeps the ESC/POS bytes it receives."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from playwright.async_api import Browser, BrowserContext, Page, async_playwright

from load_tests.chromium import CHROMIUM, CHROMIUM_ARGS
from server import keys
from tests.conftest import STAFF_PASSWORD

PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1280, "height": 900}


@contextlib.asynccontextmanager
async def chromium(app=None, extra_args: tuple[str, ...] = ()) -> AsyncIterator[Browser]:
    """Chromium for one test. With the test's app: once the browser is gone, one event
    goes to every show so the server's event streams notice their closed clients now
    (a stream only learns that when it next writes) and the app stops without waiting."""
    async with async_playwright() as pw:
        args = [*CHROMIUM_ARGS, *extra_args]
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=args)
        try:
            yield browser
        finally:
            await browser.close()
            if app is not None:
                for show_id in app.app[keys.SHOWS]:
                    await app.app[keys.BUS].publish(show_id, {"type": "closing"})


@dataclass
class JsErrors:
    """Uncaught exceptions and console errors of every page it watches."""

    errors: list[str] = field(default_factory=list)

    def watch(self, page: Page, name: str) -> Page:
        page.on("pageerror", lambda exc: self.errors.append(f"{name}: uncaught {exc}"))
        page.on(
            "console",
            lambda msg: msg.type == "error" and self.errors.append(f"{name}: console {msg.text}"),
        )
        return page

    def unexpected(self, *allowed: str) -> list[str]:
        """Errors other than those containing one of the allowed fragments."""
        return [e for e in self.errors if not any(a in e for a in allowed)]


async def new_page(
    browser: Browser, errors: JsErrors, name: str, viewport: dict = DESKTOP, **ctx_kwargs
) -> tuple[BrowserContext, Page]:
    context = await browser.new_context(viewport=viewport, **ctx_kwargs)
    page = await context.new_page()
    errors.watch(page, name)
    return context, page


async def staff_login(page: Page, base_url: str, next_path: str) -> None:
    await page.goto(f"{base_url}{next_path}")
    assert "/login" in page.url, page.url
    await page.get_by_label("Password").fill(STAFF_PASSWORD)
    await page.get_by_role("button", name="Log in").click()
    await page.wait_for_url(f"{base_url}{next_path}")


class PrinterSocket:
    """A printer on the showroom floor as far as the server can tell: a TCP port that
    accepts ESC/POS bytes. Keeps everything it received."""

    def __init__(self) -> None:
        self.received = bytearray()
        self.connections = 0
        self.server: asyncio.base_events.Server | None = None
        self.port = 0

    async def start(self, port: int = 0) -> PrinterSocket:
        self.server = await asyncio.start_server(self._client, "127.0.0.1", port)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while data := await reader.read(65536):
                self.received.extend(data)
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 2)

    @property
    def url(self) -> str:
        return f"tcp://127.0.0.1:{self.port}"


def printer_toml(url: str, name: str = "counter") -> str:
    return f"""
    [[printers]]
    name = "{name}"
    connection = "{url}"
    profile = "TM-T88V"
    paper_mm = 80
    default = true
    """
