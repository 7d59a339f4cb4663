"""The staff page on the floor: a paid order whose printer is down shows up as needing
attention with the error, the printer shows offline, and once the printer is back a
retry prints it and the order moves to "ready to pick"; the label's QR page fulfils it."""

from __future__ import annotations

import re

import pytest
from playwright.async_api import expect

from server.embedded import free_port
from tests.conftest import wait_until
from tests.test_web_support import (
    DESKTOP,
    PHONE,
    JsErrors,
    PrinterSocket,
    chromium,
    new_page,
    printer_toml,
    staff_login,
)


async def buy_and_pay(app, name: str) -> dict:
    """A buyer's whole purchase over the API (the viewer page is tested elsewhere)."""
    s = app.session
    async with s.post("/api/cart/items", json={"show": "demo", "sku": "MUG-01"}) as r:
        assert r.status == 200
    async with s.post("/api/checkout", json={"name": name, "email": "b@example.com"}) as r:
        assert r.status == 201
        order = await r.json()
    card = {"card_number": "4242424242424242", "exp_month": 12, "exp_year": 2034, "cvc": "123"}
    async with s.post(f"/api/orders/{order['order_id']}/sandbox-pay", json=card) as r:
        assert r.status == 200
    return order


@pytest.mark.timeout(120)
async def test_printer_down_order_needs_attention_then_prints_and_is_fulfilled(
    make_app, write_manifest, stripe_sandbox, artifacts
):
    port = free_port()  # nothing listens here yet: the printer is switched off
    manifest = write_manifest("demo", printers=printer_toml(f"tcp://127.0.0.1:{port}"))
    app = await make_app([manifest], stripe_api_base=stripe_sandbox.url)
    errors = JsErrors()
    printer = PrinterSocket()
    async with chromium(app) as browser:
        _, staff = await new_page(browser, errors, "staff", DESKTOP)
        await staff_login(staff, app.url, "/staff")
        order = await buy_and_pay(app, "Linus Floor")
        number = f"#{order['number']}"

        problem = staff.locator("#q-problem .order-card")
        await expect(problem).to_contain_text(number, timeout=30000)
        await expect(problem).to_contain_text("Linus Floor")
        await expect(problem.locator(".badge.test")).to_have_text("TEST")  # a sandbox payment
        await expect(problem.locator(".error")).to_contain_text("Printer:")
        await expect(staff.locator('[data-printer="counter"] .badge')).to_have_text(
            "Offline", timeout=15000
        )
        await staff.screenshot(path=artifacts / "web_staff_printer_down.png", full_page=True)

        # The printer is switched back on; staff ask for a retry.
        await printer.start(port)
        await problem.get_by_role("button", name=re.compile("Retry printing")).click()
        ready = staff.locator("#q-printed .order-card")
        await expect(ready).to_contain_text(number, timeout=30000)
        await expect(staff.locator("#q-problem .order-card")).to_have_count(0)
        await wait_until(lambda: b"Linus Floor" in printer.received, timeout=10)
        await expect(staff.locator('[data-printer="counter"] .badge')).to_have_text(
            "Online", timeout=15000
        )

        # The label's QR opens the order page on a phone; the big button fulfils it.
        _, phone = await new_page(browser, errors, "qr", PHONE, has_touch=True)
        await staff_login(phone, app.url, f"/staff/orders/{order['order_id']}")
        await expect(phone.locator("#order-h")).to_have_text(number)
        await phone.get_by_role("button", name=re.compile("Fulfil")).tap()
        await expect(phone.locator("#status")).to_have_text("fulfilled")
        await expect(phone.locator("#fulfil")).to_be_disabled()
        await phone.screenshot(path=artifacts / "web_staff_order_fulfilled.png", full_page=True)
        # ...and the queue on the counter's screen follows by itself.
        await expect(staff.locator("#q-fulfilled .order-card")).to_contain_text(number)
        await (
            staff.locator(".order-card", has_text=number)
            .get_by_role("button", name=re.compile("Reprint"))
            .click()
        )
        await expect(staff.locator("#notice")).to_contain_text(
            f"Reprinting the label of order {number}"
        )
    await printer.stop()
    assert errors.unexpected() == []


@pytest.mark.timeout(90)
async def test_ready_button_and_an_honest_connection_badge(
    make_app, write_manifest, stripe_sandbox, artifacts
):
    """Staff mark a printed order ready (it moves to its own lane); the badge says
    "Live" only while the page really receives events, "Offline" when it does not."""
    printer = await PrinterSocket().start()
    app = await make_app(
        [write_manifest("demo", printers=printer_toml(printer.url))],
        stripe_api_base=stripe_sandbox.url,
    )
    errors = JsErrors()
    async with chromium(app) as browser:
        ctx, staff = await new_page(browser, errors, "staff", PHONE, has_touch=True)
        await staff_login(staff, app.url, "/staff")
        conn = staff.locator("#conn")
        await expect(conn).to_have_text("Live")
        order = await buy_and_pay(app, "Rita Ready")
        number = f"#{order['number']}"
        printed = staff.locator("#q-printed .order-card", has_text=number)
        await expect(printed).to_be_visible(timeout=30000)
        await printed.get_by_role(
            "button", name=f"Mark order {order['number']} ready for pickup"
        ).tap()
        ready = staff.locator("#q-ready .order-card", has_text=number)
        await expect(ready).to_be_visible()
        await expect(staff.locator("#q-printed .order-card")).to_have_count(0)
        async with app.session.get(f"/api/orders/{order['order_id']}") as r:
            assert (await r.json())["status"] == "ready"
        width = await staff.evaluate("document.documentElement.scrollWidth")
        assert width <= PHONE["width"], width
        await staff.screenshot(path=artifacts / "web_staff_ready_lane.png", full_page=True)

        await ctx.set_offline(True)
        await expect(conn).to_have_text("Offline", timeout=10000)
        await expect(conn).to_have_class(re.compile("bad"))
        await staff.screenshot(path=artifacts / "web_staff_offline.png")
        await ctx.set_offline(False)
        await expect(conn).to_have_text("Live", timeout=15000)
        await ready.get_by_role("button", name=re.compile("fulfilled")).tap()
        await expect(staff.locator("#q-fulfilled .order-card", has_text=number)).to_be_visible()
    await printer.stop()
    assert errors.unexpected("ERR_INTERNET_DISCONNECTED", "ERR_NETWORK_CHANGED") == []
