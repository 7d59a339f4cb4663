"""A show's life around the live part: listed and scheduled, reminders by email when it
goes live (exactly once), receipts with a link that works on any device, an outbox that
survives an SMTP outage. Email goes to a real SMTP server process (aiosmtpd) that keeps
what it receives in a Maildir.
"""

from __future__ import annotations

import asyncio
import email
import mailbox
import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import pytest

from media.client import WhipPublisher
from media.testsrc import TestPatternTrack
from server.embedded import free_port
from tests.conftest import STREAM_KEY, manifest_text, wait_until
from tests.test_checkout_payments import add, checkout, pay
from tests.test_web_support import PHONE, JsErrors, chromium, new_page

pytestmark = pytest.mark.timeout(90)


class SmtpServer:
    """``python -m aiosmtpd`` with the Mailbox handler: every message lands in a Maildir."""

    def __init__(self, folder: Path, port: int | None = None) -> None:
        self.folder, self.port = folder, port or free_port()
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "aiosmtpd",
                "-n",
                "-l",
                f"127.0.0.1:{self.port}",
                "-c",
                "aiosmtpd.handlers.Mailbox",
                str(self.folder),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    async def wait_ready(self) -> None:
        async def accepting() -> bool:
            try:
                _, w = await asyncio.open_connection("127.0.0.1", self.port)
            except OSError:
                return False
            w.close()
            return True

        await wait_until(accepting, timeout=10)

    def stop(self) -> None:
        if self.proc:
            self.proc.terminate()
            self.proc.wait(5)

    def messages(self) -> list[email.message.Message]:
        if not self.folder.exists():
            return []
        return [email.message_from_bytes(m.as_bytes()) for m in mailbox.Maildir(self.folder)]

    def to(self, address: str) -> list[email.message.Message]:
        return [m for m in self.messages() if m["To"] == address]


@pytest.fixture
async def smtp(tmp_path):
    server = SmtpServer(tmp_path / "maildir")
    server.start()
    await server.wait_ready()
    yield server
    server.stop()


def write_show(tmp_path: Path, smtp_port: int, extra_show: str = "") -> Path:
    text = manifest_text("demo", width=320, height=180, fps=15, extra_show=extra_show)
    text += f'\n[email]\nhost = "127.0.0.1"\nport = {smtp_port}\nfrom = "shop@example.com"\nstarttls = false\n'
    path = tmp_path / "demo.toml"
    path.write_text(text)
    return path


def body(msg: email.message.Message) -> str:
    return msg.get_payload(decode=True).decode()


async def test_upcoming_show_is_listed_with_a_countdown_and_a_calendar_file(make_app, tmp_path):
    starts = (datetime.now(UTC) + timedelta(days=2)).replace(microsecond=0)
    path = write_show(
        tmp_path,
        free_port(),
        extra_show=f"starts_at = {starts.isoformat().replace('+00:00', 'Z')}\n"
        'description = "Winter mugs, first look"',
    )
    app = await make_app([path])
    s = app.session
    async with s.get("/api/shows") as r:
        shows = (await r.json())["shows"]
    assert [(x["id"], x["live"], x["phase"]) for x in shows] == [("demo", False, "upcoming")]
    assert shows[0]["starts_at"] == starts.isoformat().replace("+00:00", "Z")
    async with s.get("/") as r:
        html = await r.text()
    assert "Upcoming" in html and "/shows/demo/soon" in html and "Winter mugs" in html
    assert f'datetime="{shows[0]["starts_at"]}"' in html
    async with s.get("/shows/demo/soon") as r:
        assert r.status == 200
        assert "Email me when it goes live" in await r.text()
    async with s.get("/shows/demo/calendar.ics") as r:
        assert r.status == 200 and r.content_type == "text/calendar"
        ics = await r.text()
    assert f"DTSTART:{starts.strftime('%Y%m%dT%H%M%SZ')}" in ics
    assert "SUMMARY:Test Show demo" in ics and f"URL:{app.url}/shows/demo" in ics


async def test_bad_or_duplicate_reminders_are_400_and_change_nothing(make_app, tmp_path, redis_url):
    import redis.asyncio as aioredis

    app = await make_app([write_show(tmp_path, free_port())])
    s = app.session
    for bad in ["", "not-an-email", "a@b", "ana@example.com\r\nBcc: x@y.z", 42, None]:
        async with s.post("/api/shows/demo/reminders", json={"email": bad}) as r:
            assert r.status == 400, bad
            assert (await r.json())["error"] == "bad_request"
    r = aioredis.Redis.from_url(redis_url)
    assert await r.hlen("reminders:{demo}") == 0
    async with s.post("/api/shows/demo/reminders", json={"email": "Ana@Example.com"}) as resp:
        assert resp.status == 202
    async with s.post("/api/shows/demo/reminders", json={"email": "ana@example.com"}) as resp:
        assert resp.status == 400 and "already" in (await resp.json())["detail"]
    async with s.post("/api/shows/nope/reminders", json={"email": "ana@example.com"}) as resp:
        assert resp.status == 404
    assert await r.hgetall("reminders:{demo}") == {b"ana@example.com": b"pending"}
    await r.aclose()


async def test_reminder_is_sent_once_when_the_show_goes_live(make_app, tmp_path, smtp):
    app = await make_app([write_show(tmp_path, smtp.port)])
    s = app.session
    for address in ("ana@example.com", "bo@example.com"):
        async with s.post("/api/shows/demo/reminders", json={"email": address}) as r:
            assert r.status == 202
    await asyncio.sleep(2.5)  # not live: nothing is sent
    assert smtp.messages() == []

    async def go_live() -> WhipPublisher:
        pub = WhipPublisher(f"{app.url}/whip/demo", STREAM_KEY, TestPatternTrack(320, 180, 15))
        await pub.start(s)
        return pub

    async def live() -> bool:
        async with s.get("/api/shows/demo") as r:
            return (await r.json())["live"]

    pub = await go_live()
    try:
        await wait_until(live, timeout=15)
        await wait_until(lambda: len(smtp.messages()) == 2, timeout=15)
        # The publisher drops and comes back: the show goes live again, no second email.
        await pub.close(s)
        pub = await go_live()
        await wait_until(live, timeout=15)
        await asyncio.sleep(3)
    finally:
        await pub.close(s)
    for address in ("ana@example.com", "bo@example.com"):
        [msg] = smtp.to(address)
        assert msg["Subject"] == "Live now: Test Show demo"
        assert f"{app.url}/shows/demo" in body(msg)
        assert msg["List-Unsubscribe"]
    # The unsubscribe link works without cookies and only with its token.
    link = re.search(r"(http://\S+/reminders/unsubscribe\S+)", body(smtp.to("ana@example.com")[0]))[
        1
    ]
    async with aiohttp.ClientSession() as fresh:
        async with fresh.get(link.replace("&t=", "&t=x")) as r:
            assert r.status == 404
        async with fresh.post(link) as r:
            assert r.status == 200 and "will not get a reminder" in await r.text()


async def test_receipt_email_links_to_the_order_on_any_device(
    make_app, tmp_path, smtp, stripe_sandbox, artifacts
):
    app = await make_app(
        [write_show(tmp_path, smtp.port)], stripe_api_base=stripe_sandbox.url, print_worker=False
    )
    s = app.session
    await add(s, quantity=2)
    order = await checkout(s)
    status, _ = await pay(s, order["order_id"])
    assert status == 200
    await wait_until(lambda: smtp.to("ada@example.com"), timeout=20)
    [msg] = smtp.to("ada@example.com")
    assert msg["From"] == "shop@example.com"
    text = body(msg)
    assert "2 x Stoneware mug" in text and "36.00 USD" in text
    assert "Pick up at the counter" in text and "test payment" in text
    link = re.search(r"(http://\S+/orders/\S+)", text)[1]
    async with aiohttp.ClientSession() as other_device:  # no cookies at all
        async with other_device.get(link) as r:
            assert r.status == 200
            page = await r.text()
        assert "Order #" in page and "Stoneware mug" in page
        api = link.replace("/orders/", "/api/orders/")
        async with other_device.get(api) as r:
            assert r.status == 200 and (await r.json())["status"] in ("paid", "printed")
        async with other_device.get(api.split("?")[0]) as r:
            assert r.status == 404  # without the token the order stays private
        async with other_device.get(link[:-2] + "xx") as r:
            assert r.status == 404
        # Staff pack it: the buyer gets "ready for pickup", and the same link says so.
        async with s.post(f"/api/orders/{order['order_id']}/ready", headers=app.auth()) as r:
            assert r.status == 200, await r.text()
        await wait_until(lambda: len(smtp.to("ada@example.com")) == 2, timeout=20)
        ready = [m for m in smtp.to("ada@example.com") if "ready for pickup" in m["Subject"]]
        assert len(ready) == 1 and link in body(ready[0])
        async with other_device.get(api) as r:
            assert (await r.json())["status"] == "ready"
    # The same link in a fresh browser (no cookies, no storage): the order and its step.
    async with chromium(app) as browser:
        errors = JsErrors()
        _, page = await new_page(browser, errors, "order-link", PHONE)
        await page.goto(link)
        await page.locator("#order-status").filter(has_text="Ready for pickup").wait_for()
        await page.locator("#order-steps li.current", has_text="Ready for pickup").wait_for()
        assert "Stoneware mug" in await page.content()
        await page.screenshot(path=artifacts / "order_link_fresh_browser.png", full_page=True)
        assert errors.unexpected() == []


async def test_emails_wait_in_the_outbox_while_smtp_is_down(make_app, tmp_path, stripe_sandbox):
    smtp = SmtpServer(tmp_path / "late-maildir")  # not started yet: connections refused
    app = await make_app(
        [write_show(tmp_path, smtp.port)], stripe_api_base=stripe_sandbox.url, print_worker=False
    )
    s = app.session
    await add(s, quantity=1)
    order = await checkout(s)
    assert (await pay(s, order["order_id"]))[0] == 200
    await asyncio.sleep(4)  # the first try fails and is scheduled again
    smtp.start()
    try:
        await smtp.wait_ready()
        await wait_until(lambda: smtp.to("ada@example.com"), timeout=30)
        assert len(smtp.to("ada@example.com")) == 1
    finally:
        smtp.stop()


async def test_without_smtp_settings_emails_are_written_to_files(
    make_app, tmp_path, stripe_sandbox
):
    path = tmp_path / "demo.toml"
    path.write_text(manifest_text("demo"))
    app = await make_app([path], stripe_api_base=stripe_sandbox.url, print_worker=False)
    s = app.session
    await add(s, quantity=1)
    order = await checkout(s)
    assert (await pay(s, order["order_id"]))[0] == 200
    folder = app.settings.data_dir / "mail"
    files = await wait_until(lambda: list(folder.glob("*.eml")), timeout=20)
    msg = email.message_from_bytes(files[0].read_bytes())
    assert msg["To"] == "ada@example.com" and "Your order" in msg["Subject"]


async def test_refund_notice_reaches_the_buyer(make_app, tmp_path, smtp, stripe_sandbox):
    app = await make_app(
        [write_show(tmp_path, smtp.port)], stripe_api_base=stripe_sandbox.url, print_worker=False
    )
    s = app.session
    await add(s, quantity=1)
    order = await checkout(s)
    assert (await pay(s, order["order_id"]))[0] == 200
    await wait_until(lambda: smtp.to("ada@example.com"), timeout=20)  # the receipt
    async with s.post(f"/api/orders/{order['order_id']}/refund", headers=app.auth()) as r:
        assert r.status == 200, await r.text()
    await wait_until(lambda: len(smtp.to("ada@example.com")) == 2, timeout=20)
    [notice] = [m for m in smtp.to("ada@example.com") if m["Subject"].startswith("Refund")]
    assert "18.00 USD" in body(notice)
