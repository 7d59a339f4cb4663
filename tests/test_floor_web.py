"""The host's run of show and preflight, and the floor's pick list, check-in and undo,
in Chromium against the real app (screenshots in tests/artifacts/)."""

from __future__ import annotations

import pytest

from tests.conftest import manifest_text
from tests.test_cues import CUES
from tests.test_floor import PRODUCTS, sell
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

pytestmark = pytest.mark.timeout(120)


async def test_host_steps_through_the_run_of_show_with_the_keyboard(make_app, tmp_path, artifacts):
    path = tmp_path / "demo.toml"
    path.write_text(manifest_text("demo") + CUES)
    app = await make_app([path])
    errors = JsErrors()
    async with chromium(app) as browser:
        _, page = await new_page(browser, errors, "host", DESKTOP)
        await staff_login(page, app.url, "/shows/demo/host")
        await page.locator("#cue-next-label", has_text="Feature Stoneware mug").wait_for()
        await page.locator("#preflight li").first.wait_for()
        names = [n.strip() for n in await page.locator("#preflight li strong").all_inner_texts()]
        assert {"publisher:", "stripe:", "redis:", "disk:", "clock:"} <= set(names)
        for label in ("Tee drop", "Ticker: Free shipping tonight", "the end of the run of show"):
            await page.keyboard.press("n")
            await page.locator("#cue-next-label", has_text=label).wait_for()
        assert await page.locator("#cue-list li.done").count() == 3
        assert await page.locator("#cue-next").is_disabled()
        await page.screenshot(path=artifacts / "host_run_of_show.png", full_page=True)
    async with app.session.get("/api/shows/demo", headers=app.auth()) as r:
        state = await r.json()
    assert state["featured"] == "MUG-01" and state["drop"]["sku"] == "TEE-02"
    assert state["ticker"] == "Free shipping tonight"
    assert errors.unexpected() == []


async def test_pick_list_check_in_and_undo_on_the_staff_pages(make_app, tmp_path, artifacts):
    printer = await PrinterSocket().start()
    path = tmp_path / "demo.toml"
    path.write_text(manifest_text("demo", products=PRODUCTS, printers=printer_toml(printer.url)))
    app = await make_app([path], print_worker=False)
    s = app.session
    orders = []
    for i in range(10):
        items = [{"sku": "MUG-01", "quantity": 1}]
        if i % 3 == 0:
            items.append({"sku": "TEE-02", "quantity": 1})
        status, order = await sell(s, items, name=f"Buyer {i}")
        assert status == 201
        orders.append(order)
    errors = JsErrors()
    try:
        async with chromium(app) as browser:
            _, page = await new_page(browser, errors, "staff", PHONE)
            await staff_login(page, app.url, "/staff")
            await page.locator(".pick-rows li", has_text="10 × Stoneware mug").wait_for()
            await page.locator(".pick-rows li", has_text="4 × Crewneck tee").wait_for()
            await page.get_by_role("button", name="Print pick ticket").click()
            await page.locator("#checkin-result", has_text="Pick ticket sent to counter").wait_for()
            await page.get_by_label("Order number").fill(str(orders[3]["number"]))
            await page.get_by_role("button", name="Find").click()
            await page.locator("#checkin-result", has_text="Buyer 3").wait_for()
            await page.screenshot(path=artifacts / "staff_pick_list.png", full_page=True)

            await page.goto(f"{app.url}/staff/orders/{orders[0]['order_id']}")
            await page.locator("#ready").click()
            await page.locator("#status", has_text="ready").wait_for()
            await page.locator("#undo").click()
            await page.locator("#status", has_text="paid").wait_for()
            await page.locator("#fulfil").click()
            await page.locator("#status", has_text="fulfilled").wait_for()
            await page.locator("#undo").click()
            await page.locator("#status", has_text="paid").wait_for()
            # The pick list follows: order 0 is back on it, packed ones leave it.
            await page.goto(f"{app.url}/staff")
            await page.locator(".pick-rows li", has_text="10 × Stoneware mug").wait_for()
        assert b"PICK LIST" in printer.received and b"10 x Stoneware mug" in printer.received
        assert errors.unexpected() == []
    finally:
        await printer.stop()
