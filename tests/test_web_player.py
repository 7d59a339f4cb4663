"""The phone-first player in a real browser: the picture keeps playing (with sound) while
the viewer adds to the cart, checks out in a sheet and follows the order; our overlays
never cover the product card burned into the video; notices never move the Buy button;
portrait, landscape and desktop layouts; one break screen; errors that clear themselves."""

from __future__ import annotations

import re
import signal

import pytest
from playwright.async_api import Page, expect

from media.client import WhipPublisher
from media.testsrc import TestPatternTrack
from server.embedded import EmbeddedRedis
from tests.conftest import STREAM_KEY, buyer_session, manifest_text, start_app, wait_until
from tests.test_web_support import (
    DESKTOP,
    PHONE,
    JsErrors,
    PrinterSocket,
    chromium,
    new_page,
    printer_toml,
)

LANDSCAPE = {"width": 844, "height": 390}

# The product card's (and QR code's) rectangles on screen, from the fractions the page
# got from the server, and how the picture sits inside the video element.
PICTURE_JS = """
() => {
  const v = document.getElementById('video');
  const r = v.getBoundingClientRect();
  const vw = v.videoWidth, vh = v.videoHeight;
  const s = Math.min(r.width / vw, r.height / vh);
  const w = vw * s, h = vh * s;
  const mode = document.getElementById('player').dataset.mode;
  const x = r.left + (r.width - w) / 2;
  const y = mode === 'portrait' ? r.top : r.top + (r.height - h) / 2;
  const cfg = JSON.parse(document.getElementById('page-data').textContent);
  const box = (b) => ({x: x + b.x * w, y: y + b.y * h, w: b.w * w, h: b.h * h});
  return {picture: {x, y, w, h}, card: box(cfg.picture.card), qr: box(cfg.picture.qr), mode,
          viewport: {w: innerWidth, h: innerHeight}};
}
"""


def overlaps(a: dict, b: dict) -> bool:
    return not (
        a["x"] + a["w"] <= b["x"] + 1
        or b["x"] + b["w"] <= a["x"] + 1
        or a["y"] + a["h"] <= b["y"] + 1
        or b["y"] + b["h"] <= a["y"] + 1
    )


async def box(page: Page, selector: str) -> dict | None:
    return await page.locator(selector).bounding_box()


async def assert_playing(page: Page, sound: bool = True) -> None:
    """The picture is on screen and moving: not paused, currentTime advancing."""
    before = await page.locator("#video").evaluate("v => v.currentTime")
    await page.wait_for_function(
        f"() => {{ const v = document.getElementById('video');"
        f" return !v.paused && v.currentTime > {before} + 0.3; }}",
        timeout=10000,
    )
    if sound:
        assert await page.locator("#video").evaluate("v => v.muted") is False
    geo = await page.evaluate(PICTURE_JS)
    pic, view = geo["picture"], geo["viewport"]
    visible_h = min(pic["y"] + pic["h"], view["h"]) - max(pic["y"], 0)
    assert visible_h > 0.5 * pic["h"], geo


async def assert_card_uncovered(page: Page, selectors: list[str]) -> None:
    """None of our overlays sits on the product card or QR code in the picture."""
    geo = await page.evaluate(PICTURE_JS)
    for sel in selectors:
        for loc in await page.locator(sel).all():
            if not await loc.is_visible():
                continue
            bb = await loc.bounding_box()
            if bb is None:  # gone meanwhile (a toast timing out)
                continue
            b = {"x": bb["x"], "y": bb["y"], "w": bb["width"], "h": bb["height"]}
            for name in ("card", "qr"):
                assert not overlaps(b, geo[name]), (sel, name, b, geo[name], geo["mode"])


async def start_show(app, width: int = 640, height: int = 360) -> WhipPublisher:
    publisher = WhipPublisher(
        f"{app.url}/whip/demo", STREAM_KEY, TestPatternTrack(width, height, 15)
    )
    await publisher.start(app.session)
    return publisher


async def feature(app, sku: str) -> None:
    async with app.session.post(
        "/api/shows/demo/feature", json={"sku": sku}, headers=app.auth()
    ) as r:
        assert r.status == 200, await r.text()


async def join(page: Page, url: str) -> None:
    await page.goto(f"{url}/shows/demo")
    await page.wait_for_function(
        "() => document.getElementById('video').currentTime > 0.3", timeout=30000
    )
    await page.get_by_role("button", name=re.compile("tap to unmute")).click()


OVERLAYS = ["#chat-list li", "#heart", "#featured", "#f-buy", ".dock", ".toast", ".viewer-bar"]


@pytest.mark.timeout(180)
@pytest.mark.parametrize(
    ("name", "viewport"),
    [("phone", PHONE), ("landscape", LANDSCAPE), ("desktop", DESKTOP)],
)
async def test_watch_while_buying_paying_and_following_the_order(
    make_app, write_manifest, stripe_sandbox, artifacts, name, viewport
):
    printer = await PrinterSocket().start()
    app = await make_app(
        [write_manifest("demo", printers=printer_toml(printer.url))],
        stripe_api_base=stripe_sandbox.url,
    )
    publisher = await start_show(app)
    errors = JsErrors()
    mobile = name != "desktop"
    try:
        await feature(app, "TEE-02")
        async with chromium(app) as browser:
            ctx, page = await new_page(
                browser, errors, name, viewport, is_mobile=mobile, has_touch=mobile
            )
            await ctx.grant_permissions(["clipboard-read", "clipboard-write"])
            await join(page, app.url)
            mode = {"phone": "portrait", "landscape": "landscape", "desktop": "desktop"}[name]
            await expect(page.locator("#player")).to_have_attribute("data-mode", mode)
            await expect(page.locator("#f-name")).to_have_text("Crewneck tee")
            await assert_playing(page)
            await assert_card_uncovered(page, OVERLAYS)
            geo = await page.evaluate(PICTURE_JS)
            pic = geo["picture"]
            if name == "landscape":  # the whole picture fits the screen
                assert pic["y"] >= -1 and pic["y"] + pic["h"] <= viewport["height"] + 1
                assert pic["h"] >= viewport["height"] - 2
            else:
                assert pic["w"] >= 0.6 * viewport["width"] or name == "desktop"
            await page.screenshot(path=artifacts / f"web_player_{name}_watching.png")

            # A notice appears (sharing copies the link): the Buy button stays put.
            buy = page.locator("#f-buy")
            before = await buy.bounding_box()
            await page.get_by_role("button", name="Share this show").click()
            await expect(page.locator("#notice")).to_contain_text("Link copied")
            assert await page.evaluate("navigator.clipboard.readText()") == f"{app.url}/shows/demo"
            assert await buy.bounding_box() == before
            await buy.click()
            await expect(page.locator("#notice")).to_contain_text("Added Crewneck tee")
            assert await buy.bounding_box() == before
            await expect(page.locator("#cart-bar-text")).to_contain_text("1 item")
            await expect(page.locator("#cart-bar-hold")).to_have_text(
                re.compile(r"Held (10:00|9:\d\d)")
            )
            await assert_card_uncovered(page, OVERLAYS)
            await page.screenshot(path=artifacts / f"web_player_{name}_added.png")

            # The cart opens as a sheet over the video, which keeps playing with sound.
            await page.get_by_role("button", name="View cart").click()
            cart = page.locator("#cart")
            await expect(cart).to_be_visible()
            await expect(cart.locator(".cart-item")).to_contain_text("1 × Crewneck tee")
            await assert_playing(page)
            await page.get_by_role("button", name="Checkout").click()
            checkout = page.locator("#checkout")
            await expect(checkout.locator("#summary-items")).to_contain_text("1 × Crewneck tee")
            await expect(checkout.locator("#summary-total")).to_have_text("$32.00")
            await checkout.get_by_role("button", name="Back to cart").click()
            await expect(cart).to_be_visible()
            await page.get_by_role("button", name="Checkout").click()
            await page.get_by_label("Name (for pickup)").fill("Pat Player")
            await page.get_by_label("Email (for your receipt)").fill("pat@example.com")
            await page.get_by_role("button", name="Continue to payment").click()
            await expect(page.get_by_label("Test card number")).to_be_visible()
            deadline = checkout.locator("#summary-deadline")
            await expect(deadline).to_contain_text(re.compile(r"Pay by .* (15:00|14:5\d) left"))
            await expect(checkout.get_by_role("button", name="Cancel this order")).to_be_visible()
            await assert_playing(page)
            await page.screenshot(path=artifacts / f"web_player_{name}_checkout.png")

            # A declined card keeps the items held for the order, and the cart shows them.
            await page.get_by_label("Test card number").fill("4000 0000 0000 0002")
            await page.get_by_label("Expiry (MM/YY)").fill("12/34")
            await page.get_by_label("CVC").fill("123")
            await page.locator("#card-pay").click()
            await expect(page.locator("#card-error")).to_contain_text(
                "Payment declined", timeout=15000
            )
            await checkout.get_by_role("button", name="Back", exact=True).click()
            await expect(cart.locator(".cart-item")).to_contain_text("1 × Crewneck tee")
            await expect(cart.locator(".hold")).to_contain_text("Held for your order")
            await page.get_by_role("button", name="Continue to payment").click()
            await page.get_by_label("Test card number").fill("4242 4242 4242 4242")
            await page.locator("#card-pay").click()

            # The order status, step by step, with the video still playing.
            status = page.locator("#order-status")
            await expect(status).to_have_attribute("data-status", "printed", timeout=30000)
            await expect(status).to_contain_text("Label printed")
            steps = page.locator("#order-steps li")
            await expect(steps.nth(1)).to_have_class(re.compile("done"))
            await expect(steps.nth(2)).not_to_have_class(re.compile("done"))
            await assert_playing(page)
            order_id = await page.evaluate("localStorage.getItem('showroom:order:demo')")
            async with app.session.post(f"/api/orders/{order_id}/ready", headers=app.auth()) as r:
                assert r.status == 200
            await expect(status).to_have_attribute("data-status", "ready", timeout=10000)
            await expect(status).to_have_text("Ready for pickup")
            await expect(steps.nth(2)).to_have_class(re.compile("done"))
            await expect(page.locator("#order-pickup")).to_contain_text("at the counter")
            await assert_playing(page)
            await page.screenshot(path=artifacts / f"web_player_{name}_ready.png")
        assert errors.unexpected("status of 402") == []
    finally:
        await publisher.close(app.session)
        await printer.stop()


@pytest.mark.timeout(90)
async def test_a_vertical_show_fills_a_portrait_phone(make_app, write_manifest, artifacts):
    app = await make_app([write_manifest("demo", width=360, height=640, fps=15)])
    publisher = await start_show(app, 360, 640)
    errors = JsErrors()
    try:
        await feature(app, "MUG-01")
        async with chromium(app) as browser:
            _, page = await new_page(
                browser, errors, "phone", PHONE, is_mobile=True, has_touch=True
            )
            await join(page, app.url)
            await expect(page.locator("#f-name")).to_have_text("Stoneware mug")
            await page.wait_for_function(
                "() => document.getElementById('video').videoHeight === 640"
            )
            await page.wait_for_timeout(300)  # the overlays follow the picture's size
            geo = await page.evaluate(PICTURE_JS)
            pic = geo["picture"]
            assert pic["w"] >= 0.95 * PHONE["width"], geo
            assert pic["h"] >= 0.8 * PHONE["height"], geo
            await assert_playing(page)
            await page.get_by_role("button", name=re.compile("Buy")).tap()  # a notice shows
            await expect(page.locator(".toast")).to_contain_text("Added Stoneware mug")
            await assert_card_uncovered(page, OVERLAYS)
            await page.screenshot(path=artifacts / "web_player_vertical_phone.png")
    finally:
        await publisher.close(app.session)
    assert errors.unexpected() == []


async def test_cancel_returns_the_items_to_sale_and_only_for_the_buyer(
    make_app, write_manifest, stripe_sandbox
):
    """Checkout's Cancel: the buyer's unpaid order expires now and its units go back on
    sale; nobody else can cancel it, and a paid order cannot be cancelled."""
    app = await make_app([write_manifest("demo")], stripe_api_base=stripe_sandbox.url)

    async def tees() -> int:
        async with app.session.get("/api/shows/demo") as r:
            return {p["sku"]: p["available"] for p in (await r.json())["products"]}["TEE-02"]

    async with buyer_session(app.url) as buyer, buyer_session(app.url) as other:
        async with buyer.post("/api/cart/items", json={"show": "demo", "sku": "TEE-02"}) as r:
            assert r.status == 200
        async with buyer.post("/api/checkout", json={"name": "C", "email": "c@x.io"}) as r:
            assert r.status == 201
            order = await r.json()
        assert order["pay_by"] > 0 and order["items"][0]["sku"] == "TEE-02"
        assert await tees() == 4
        async with other.post(f"/api/orders/{order['order_id']}/cancel") as r:
            assert r.status == 404
        async with buyer.post(f"/api/orders/{order['order_id']}/cancel") as r:
            assert r.status == 200 and (await r.json())["status"] == "expired"

        async def back_on_sale() -> bool:
            return await tees() == 5

        await wait_until(back_on_sale, timeout=5)
        async with buyer.post(f"/api/orders/{order['order_id']}/cancel") as r:
            assert r.status == 409


@pytest.mark.timeout(120)
async def test_briefly_unavailable_clears_by_itself_when_redis_is_back(tmp_path, artifacts):
    server = EmbeddedRedis(tmp_path / "redis")
    server.start()
    manifest = tmp_path / "demo.toml"
    manifest.write_text(manifest_text("demo"))
    app = await start_app([manifest], server.url, tmp_path)
    errors = JsErrors()
    try:
        async with chromium(app) as browser:
            _, page = await new_page(
                browser, errors, "phone", PHONE, is_mobile=True, has_touch=True
            )
            await page.goto(f"{app.url}/shows/demo")
            await page.get_by_role("button", name="Products").tap()
            await expect(page.locator("#product-MUG-01")).to_be_visible()
            server.kill(signal.SIGKILL)
            await page.get_by_role("button", name="Add Stoneware mug to cart").tap()
            away = page.locator(".toast", has_text="briefly unavailable")
            await expect(away).to_be_visible()
            await page.screenshot(path=artifacts / "web_player_unavailable.png")
            server.start()
            await expect(away).to_have_count(0, timeout=20000)  # nobody had to tap anything
            await page.get_by_role("button", name="Add Stoneware mug to cart").tap()
            await expect(page.locator("#notice")).to_contain_text("Added Stoneware mug")
    finally:
        await app.stop()
        server.stop()
    assert errors.unexpected("status of 503", "ERR_") == []


async def test_show_page_has_share_tags(make_app, write_manifest):
    app = await make_app([write_manifest("demo")])
    async with app.session.get("/shows/demo") as r:
        html = await r.text()
    base = app.settings.base_url.rstrip("/")
    for tag in (
        '<meta property="og:title" content="Test Show demo">',
        f'<meta property="og:url" content="{base}/shows/demo">',
        f'<meta property="og:image" content="{base}/media/products/demo/MUG-01.png">',
        '<meta name="twitter:card" content="summary_large_image">',
        '<meta name="twitter:title" content="Test Show demo">',
    ):
        assert tag in html, tag
    assert "Live shopping show" in html
    publisher = await start_show(app)
    try:

        async def live() -> bool:
            async with app.session.get("/api/shows/demo") as r:
                return (await r.json())["live"]

        await wait_until(live, timeout=10)
        async with app.session.get("/shows/demo") as r:
            html = await r.text()
        assert '<meta property="og:title" content="LIVE · Test Show demo">' in html
        assert "Live now" in html
    finally:
        await publisher.close(app.session)
