"""The viewer page on a phone: clear messages when buying fails, the show's states as the
publisher comes and goes, and leaving the page ends the WHEP session."""

from __future__ import annotations

import re

import pytest
from playwright.async_api import expect

from media.client import WhipPublisher
from media.testsrc import TestPatternTrack
from tests.conftest import STREAM_KEY, buyer_session, wait_until
from tests.test_web_support import PHONE, JsErrors, chromium, new_page

PRODUCTS = """
[[products]]
sku = "MUG-01"
name = "Stoneware mug"
price = "18.00"
stock = 40
per_buyer_limit = 1

[[products]]
sku = "LAST-1"
name = "Last lamp"
price = "90.00"
stock = 1
"""


@pytest.mark.timeout(90)
async def test_sold_out_limit_and_expired_hold_are_explained(make_app, write_manifest, artifacts):
    app = await make_app([write_manifest("demo", products=PRODUCTS)], hold_seconds=5)
    errors = JsErrors()
    async with chromium(app) as browser:
        ctx, page = await new_page(browser, errors, "viewer", PHONE, is_mobile=True, has_touch=True)
        # This phone's live events are lost (a flaky connection), so its page still
        # offers the lamp after someone else took the last one.
        await ctx.route("**/api/shows/demo/events", lambda route: route.abort())
        await page.goto(f"{app.url}/shows/demo?sku=LAST-1")
        # A link to one product opens the product list at it.
        lamp = page.locator("#product-LAST-1")
        await expect(lamp).to_be_visible()
        await expect(lamp).to_have_class(re.compile("highlight"))
        await expect(lamp).to_have_attribute("aria-current", "true")

        await page.get_by_role("button", name="Add Stoneware mug to cart").tap()
        notice = page.locator("#notice")
        await expect(notice).to_contain_text("Added Stoneware mug")
        # The limit (1 per buyer) shows on the button before anyone taps it again.
        await expect(page.locator("#product-MUG-01 button")).to_have_text("Limit reached")
        await expect(page.locator("#product-MUG-01 button")).to_be_disabled()
        # The hold timer sits in the cart bar and warns in the hold's last minute.
        bar_hold = page.locator("#cart-bar-hold")
        await expect(bar_hold).to_have_class(re.compile("soon"))
        await expect(bar_hold).to_have_text(re.compile(r"Hurry · 0:0\d"))
        await page.get_by_role("button", name="Close the product list").tap()
        await page.get_by_role("button", name="View cart").tap()
        await page.get_by_role("button", name="Add one more Stoneware mug").tap()
        await expect(notice).to_contain_text("Limit reached: You can buy at most 1")
        await expect(page.locator(".cart-item")).to_have_count(1)

        async with buyer_session(app.url) as other:
            async with other.post(
                "/api/cart/items", json={"show": "demo", "sku": "LAST-1", "quantity": 1}
            ) as r:
                assert r.status == 200
        await page.get_by_role("button", name="Close the cart").tap()
        await page.get_by_role("button", name="Products").tap()
        await page.get_by_role("button", name="Add Last lamp to cart").tap()
        await expect(notice).to_contain_text("just sold out")
        await expect(lamp.get_by_role("button")).to_be_disabled()
        await expect(lamp).to_contain_text("Sold out")
        await page.screenshot(path=artifacts / "web_viewer_sold_out.png", full_page=True)
        await page.get_by_role("button", name="Close the product list").tap()
        await page.get_by_role("button", name="View cart").tap()

        # The mug's hold runs out: the page says so and the cart empties.
        await expect(page.locator(".cart-item .hold")).to_have_text(
            re.compile(r"Held for you · 0:0\d")
        )
        await expect(notice).to_contain_text("Your hold expired", timeout=10000)
        await expect(page.locator(".cart-item")).to_have_count(0, timeout=10000)
        await expect(page.locator("#cart-empty")).to_be_visible()
    assert errors.unexpected("status of 409", "ERR_FAILED") == []


@pytest.mark.timeout(120)
async def test_show_states_follow_the_publisher_and_leaving_ends_the_session(
    make_app, write_manifest, artifacts
):
    app = await make_app([write_manifest("demo", width=320, height=180, fps=15)])
    errors = JsErrors()

    async def viewers() -> int:
        async with app.session.get("/api/shows/demo") as r:
            return (await r.json())["viewers"]

    async def no_viewers() -> bool:
        return await viewers() == 0

    async with chromium(app) as browser:
        _, page = await new_page(browser, errors, "viewer", PHONE, is_mobile=True)
        # Remember (in storage that outlives the page) each DELETE the page sends.
        await page.add_init_script(
            "const f = window.fetch; window.fetch = (u, o) => {"
            " if (o && o.method === 'DELETE') localStorage.setItem('sr-delete',"
            " String(u) + ' keepalive=' + Boolean(o.keepalive)); return f(u, o); };"
        )
        await page.goto(f"{app.url}/shows/demo")
        title = page.locator("#stage-title")
        await expect(title).to_have_text("Starting soon")
        await expect(page.locator("#live-badge")).to_have_text("Offline")

        publisher = WhipPublisher(
            f"{app.url}/whip/demo", STREAM_KEY, TestPatternTrack(320, 180, 15)
        )
        await publisher.start(app.session)
        try:
            await expect(page.locator("#live-badge")).to_have_text("Live", timeout=15000)
            await page.wait_for_function(
                "() => document.getElementById('video').currentTime > 0.3", timeout=20000
            )
            await expect(page.locator("#stage-state")).to_be_hidden()
            await page.screenshot(path=artifacts / "web_viewer_live.png")
        finally:
            await publisher.close(app.session)
        await expect(title).to_have_text("We'll be right back", timeout=15000)
        await expect(page.locator("#live-badge")).to_have_text("Offline")
        # The server's slate keeps playing and says it: one break screen, ours is only
        # announced to screen readers (no banner over the slate).
        await expect(page.locator("#stage-state")).to_have_class(re.compile("on-slate"))
        state_box = await page.locator("#stage-state").bounding_box()
        assert state_box is None or state_box["width"] * state_box["height"] <= 4, state_box
        await page.screenshot(path=artifacts / "web_viewer_right_back.png")

        assert await wait_until(lambda: viewers(), timeout=10) == 1
        await page.goto("about:blank")  # leaving: pagehide sends the WHEP DELETE
        await wait_until(no_viewers, timeout=10)
        await page.goto(f"{app.url}/")
        sent = await page.evaluate("localStorage.getItem('sr-delete')")
        assert re.search(r"/whep/demo/[^/ ]+ keepalive=true$", sent or ""), sent
    assert errors.unexpected() == []


@pytest.mark.timeout(90)
async def test_reload_mid_checkout_resumes_the_test_card_payment(
    make_app, write_manifest, stripe_sandbox, artifacts
):
    app = await make_app([write_manifest("demo")], stripe_api_base=stripe_sandbox.url)
    errors = JsErrors()
    async with chromium(app) as browser:
        _, page = await new_page(browser, errors, "viewer", PHONE, is_mobile=True, has_touch=True)
        await page.goto(f"{app.url}/shows/demo")
        await page.get_by_role("button", name="Products").tap()
        await page.get_by_role("button", name="Add Crewneck tee to cart").tap()
        await page.get_by_role("button", name="Close the product list").tap()
        await page.get_by_role("button", name="View cart").tap()
        await page.get_by_role("button", name="Checkout").tap()
        await page.get_by_label("Name (for pickup)").fill("Reload Rita")
        await page.get_by_label("Email (for your receipt)").fill("rita@example.com")
        await page.get_by_role("button", name="Continue to payment").tap()
        await expect(page.get_by_label("Test card number")).to_be_visible()

        await page.reload()
        await expect(page.get_by_label("Test card number")).to_be_visible()
        await expect(page.locator("#card-pay")).to_have_text("Pay $32.00 (test)")
        await page.get_by_label("Test card number").fill("4242424242424242")
        await page.get_by_label("Expiry (MM/YY)").fill("1/2034")
        await page.get_by_label("CVC").fill("123")
        await page.locator("#card-pay").tap()
        status = page.locator("#order-status")
        await expect(status).to_have_attribute("data-status", "paid", timeout=20000)
        await expect(status).to_contain_text("Paid")
        await expect(page.locator("#checkout")).to_be_hidden()
        await page.screenshot(path=artifacts / "web_viewer_resumed_paid.png", full_page=True)
    assert errors.unexpected() == []


@pytest.mark.timeout(120)
async def test_full_show_retries_and_plays_when_a_seat_frees(make_app, write_manifest, artifacts):
    app = await make_app(
        [write_manifest("demo", width=320, height=180, fps=15)], max_viewers_per_show=1
    )
    publisher = WhipPublisher(f"{app.url}/whip/demo", STREAM_KEY, TestPatternTrack(320, 180, 15))
    await publisher.start(app.session)
    errors = JsErrors()
    playing = "() => document.getElementById('video').currentTime > 0.3"
    try:
        async with chromium(app) as browser:
            _, first = await new_page(browser, errors, "first", PHONE)
            # The first page's WHEP requests: a reconnect frees its seat (DELETE, then a
            # new offer once its ICE gathering is done, which can come later).
            offers: list[str] = []
            first.on(
                "request",
                lambda r: (
                    offers.append(f"{r.method} {r.url}")
                    if r.method in ("POST", "DELETE") and "/whep/" in r.url
                    else None
                ),
            )
            await first.goto(f"{app.url}/shows/demo")
            await first.wait_for_function(playing, timeout=20000)

            _, second = await new_page(browser, errors, "second", PHONE)
            await second.goto(f"{app.url}/shows/demo")
            # The show is at capacity (503): the page says it is connecting and retries.
            await expect(second.locator("#stage-title")).to_have_text("Connecting…")
            await second.wait_for_timeout(2500)
            # Unless the first page lost its connection and gave its seat up (free for a
            # moment: on a starved CI machine), the second never played.
            second_time = await second.locator("#video").evaluate("v => v.currentTime")
            assert second_time == 0 or len(offers) > 1, (second_time, offers)

            await first.goto("about:blank")  # a seat frees up
            await second.wait_for_function(playing, timeout=30000)
            await expect(second.locator("#stage-state")).to_be_hidden()
            await second.screenshot(path=artifacts / "web_viewer_after_retry.png")
    finally:
        await publisher.close(app.session)
    assert errors.unexpected("status of 503") == []


@pytest.mark.timeout(90)
async def test_a_drop_on_a_product_not_on_screen_counts_down_in_the_list(
    make_app, write_manifest, artifacts
):
    """The host may run a drop on a product that is not the featured one: the phone still
    shows its countdown, remaining units and drop price where the product is listed."""
    app = await make_app([write_manifest("demo", products=PRODUCTS)])
    errors = JsErrors()
    async with chromium(app) as browser:
        _, page = await new_page(browser, errors, "viewer", PHONE, is_mobile=True, has_touch=True)
        await page.goto(f"{app.url}/shows/demo")
        mug = page.locator("#product-MUG-01")
        await expect(mug).to_contain_text("18.00")
        await expect(page.locator("#pdrop-MUG-01")).to_have_count(0)

        drop = {"sku": "MUG-01", "quantity": 5, "duration_s": 90, "price": "12.00"}
        async with app.session.post(
            "/api/shows/demo/drops", json=drop, headers={"Authorization": f"Bearer {STREAM_KEY}"}
        ) as r:
            assert r.status == 201, await r.text()
        line = page.locator("#pdrop-MUG-01")
        await expect(line).to_contain_text("5 left")
        await expect(mug).to_contain_text("12.00")
        await expect(page.locator("#featured")).to_be_hidden()
        clock = line.locator("time")
        await expect(clock).to_have_text(re.compile(r"^1:[23]\d$"))
        first = await clock.text_content()
        await expect(clock).not_to_have_text(first or "", timeout=3000)  # it ticks

        await page.get_by_role("button", name="Products").tap()
        await mug.get_by_role("button", name="Add Stoneware mug to cart").tap()
        await expect(page.locator(".cart-item")).to_have_count(1)
        await expect(page.locator("#cart-total")).to_contain_text("12.00")  # the drop price
        await expect(line).to_contain_text("4 left", timeout=8000)
        await page.screenshot(path=artifacts / "web_viewer_drop_in_list.png", full_page=True)
    assert errors.unexpected() == []
