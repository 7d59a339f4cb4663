"""The whole show in real browsers: the host goes live from Chromium's fake camera, a
phone-sized viewer watches over WHEP, buys in one tap, pays with sandbox test cards
(localstripe), the label arrives at a loopback printer socket, staff fulfil the order."""

from __future__ import annotations

import re

import pytest
from playwright.async_api import Page, expect

from media.client import WhipPublisher
from media.testsrc import TestPatternTrack
from tests.conftest import STREAM_KEY, wait_until
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

# Mean colour of the top-right area of the picture, where the composed product card sits.
CARD_REGION_JS = """
() => {
  const v = document.getElementById('video');
  const c = document.createElement('canvas');
  c.width = v.videoWidth; c.height = v.videoHeight;
  const g = c.getContext('2d');
  g.drawImage(v, 0, 0);
  const x = Math.round(c.width * 0.72), y = Math.round(c.height * 0.12);
  const w = Math.round(c.width * 0.18), h = Math.round(c.height * 0.3);
  const d = g.getImageData(x, y, w, h).data;
  const sum = [0, 0, 0];
  for (let i = 0; i < d.length; i += 4) { sum[0] += d[i]; sum[1] += d[i + 1]; sum[2] += d[i + 2]; }
  const n = d.length / 4;
  return sum.map((s) => s / n);
}
"""


def colour_distance(a: list[float], b: list[float]) -> float:
    return sum(abs(x - y) for x, y in zip(a, b, strict=True))


async def picture_card(page: Page) -> list[float]:
    return await page.evaluate(CARD_REGION_JS)


async def wait_for_picture_change(page: Page, before: list[float], within_s: float = 8.0) -> None:
    async def changed() -> bool:
        return colour_distance(await picture_card(page), before) > 40

    await wait_until(changed, timeout=within_s, interval=0.2)


async def expect_tally(host: Page, value: str) -> None:
    """The host's add-to-cart tally shows ``value``; if not, the failure says what the
    host page's own request for it answered (a rare CI failure left only "0")."""
    try:
        await expect(host.locator("#n-adds")).to_have_text(value, timeout=15000)
    except AssertionError:
        answer = await host.evaluate(
            # Bounded: a fetch queued behind the page's own open streams would otherwise
            # hang the test until its timeout instead of failing with this message.
            "fetch('/api/shows/demo/stats', {credentials: 'same-origin',"
            " signal: AbortSignal.timeout(5000)})"
            ".then(async (r) => r.status + ' ' + (await r.text()), (e) => String(e))"
        )
        shown = await host.locator("#n-adds").text_content()
        raise AssertionError(f"host tally {shown!r}, not {value!r}; GET stats: {answer}") from None


@pytest.mark.timeout(240)
async def test_watch_buy_pay_print_fulfil(make_app, write_manifest, stripe_sandbox, artifacts):
    printer = await PrinterSocket().start()
    try:
        manifest = write_manifest("demo", printers=printer_toml(printer.url))
        app = await make_app([manifest], stripe_api_base=stripe_sandbox.url)
        errors = JsErrors()
        async with chromium(app) as browser:
            await run_show(app, browser, errors, printer, artifacts)
        # The only errors: the browser's own log line for the declined card's 402 answer.
        assert errors.unexpected("status of 402") == []
    finally:
        await printer.stop()


async def run_show(app, browser, errors: JsErrors, printer: PrinterSocket, artifacts) -> None:
    _, host = await new_page(browser, errors, "host", DESKTOP)
    await staff_login(host, app.url, "/shows/demo/host")
    await host.get_by_role("button", name="Go live from this camera").click()
    await expect(host.locator("#video-status")).to_have_text(re.compile("live"), timeout=20000)

    _, viewer = await new_page(browser, errors, "viewer", PHONE, is_mobile=True, has_touch=True)
    await viewer.goto(f"{app.url}/shows/demo")
    await expect(viewer.locator("#live-badge")).to_have_text("Live", timeout=15000)
    await viewer.wait_for_function(
        "() => { const v = document.getElementById('video');"
        " return v.videoWidth > 0 && v.currentTime > 0.5; }",
        timeout=30000,
    )
    assert await viewer.locator("#video").evaluate("v => v.muted") is True
    await expect(viewer.locator("#stage-state")).to_be_hidden()
    await viewer.get_by_role("button", name=re.compile("tap to unmute")).tap()
    assert await viewer.locator("#video").evaluate("v => v.muted") is False
    await expect(viewer.locator("#featured")).to_be_hidden()

    # The host features a product: the viewer's card appears and the composed picture
    # shows the product card too; featuring another switches both.
    before = await picture_card(viewer)
    await host.get_by_role("button", name="Feature Stoneware mug").click()
    await expect(viewer.locator("#f-name")).to_have_text("Stoneware mug", timeout=8000)
    await wait_for_picture_change(viewer, before)
    await viewer.screenshot(path=artifacts / "web_viewer_featured_mug.png")
    mug = await picture_card(viewer)
    await host.get_by_role("button", name="Feature Crewneck tee").click()
    await expect(viewer.locator("#f-name")).to_have_text("Crewneck tee", timeout=8000)
    await wait_for_picture_change(viewer, mug)

    # The host's ticker message reaches the viewer page.
    await host.get_by_label("Message on the video").fill("Free gift wrap tonight")
    await host.get_by_role("button", name="Show message").click()
    await expect(host.locator("#ticker-current")).to_have_text("Free gift wrap tonight")
    await expect(viewer.locator("#ticker")).to_have_text("Free gift wrap tonight")
    await expect(host.get_by_role("button", name="Unfeature Crewneck tee")).to_have_attribute(
        "aria-pressed", "true"
    )

    # A drop: the countdown shows on both pages.
    await host.get_by_label("Product", exact=True).select_option("TEE-02")
    await host.get_by_label("Quantity").fill("3")
    await host.get_by_label("Duration (s)").fill("120")
    await host.get_by_label("Per buyer").fill("1")
    await host.get_by_label(re.compile("Drop price")).fill("25")
    await host.get_by_role("button", name="Start drop").click()
    await expect(host.locator("#drop-status")).to_contain_text(
        re.compile(r"Crewneck tee at \$25\.00: 3 left · ends in (1:5\d|2:00)")
    )
    await expect(viewer.locator("#drop")).to_be_visible(timeout=8000)
    await expect(viewer.locator("#drop-time")).to_have_text(re.compile(r"^[12]:\d\d$"))
    await expect(viewer.locator("#f-buy")).to_have_text("Buy · $25.00")
    await expect(viewer.locator("#f-was")).to_have_text("$32.00")  # the regular price, struck
    await host.screenshot(path=artifacts / "web_host_live_drop.png", full_page=True)

    # One tap: the featured product is held in the cart with a timer.
    await viewer.locator("#f-buy").tap()
    item = viewer.locator(".cart-item")
    await expect(item).to_contain_text("1 × Crewneck tee")
    # A drop's units are held for the drop hold (2 min), not the usual 10.
    await expect(item.locator(".hold")).to_have_text(re.compile(r"Held for you · (2:00|1:\d\d)"))
    await expect(viewer.locator("#drop-left")).to_have_text("2", timeout=8000)
    await expect_tally(host, "1")
    # The tally is the server's: another host page (or a reload) shows the same number.
    second_host = await host.context.new_page()
    await second_host.goto(host.url)
    await expect_tally(second_host, "1")
    await second_host.close()
    await viewer.screenshot(path=artifacts / "web_viewer_drop_cart.png", full_page=True)

    # Checkout in the page: a declined test card first, then the good one.
    await viewer.get_by_role("button", name="View cart").tap()
    await viewer.get_by_role("button", name="Checkout").tap()
    await viewer.get_by_label("Name (for pickup)").fill("Ada Lovelace")
    await viewer.get_by_label("Email (for your receipt)").fill("ada@example.com")
    await viewer.get_by_role("button", name="Continue to payment").tap()
    await expect(viewer.locator(".test-banner")).to_contain_text("TEST MODE")
    await viewer.get_by_label("Test card number").fill("4000 0000 0000 0002")
    await viewer.get_by_label("Expiry (MM/YY)").fill("12/34")
    await viewer.get_by_label("CVC").fill("123")
    await viewer.locator("#card-pay").tap()
    await expect(viewer.locator("#card-error")).to_contain_text("Payment declined", timeout=15000)
    await viewer.screenshot(path=artifacts / "web_viewer_declined.png", full_page=True)
    assert b"Ada Lovelace" not in printer.received  # status probes only, no label

    await viewer.get_by_label("Test card number").fill("4242 4242 4242 4242")
    await viewer.locator("#card-pay").tap()
    status = viewer.locator("#order-status")
    await expect(status).to_have_attribute("data-status", "printed", timeout=30000)
    # Printed is not ready: only staff say when it is packed and at the counter.
    await expect(status).to_contain_text("Label printed")
    number = (await viewer.locator("#order-number").text_content()).strip()
    assert re.fullmatch(r"#\d+", number)
    await wait_until(lambda: b"Ada Lovelace" in printer.received, timeout=10)
    assert number.encode() in printer.received
    await viewer.screenshot(path=artifacts / "web_viewer_printed.png", full_page=True)
    await expect(host.locator("#n-orders")).to_have_text("1", timeout=20000)
    await expect(host.locator("#n-revenue")).to_have_text("$25.00")
    # Conversion of the segment the order was paid in: 1 order from 1 viewer.
    segment = host.locator("#segments tr").first
    await expect(segment).to_contain_text("Crewneck tee (now)")
    await expect(segment.locator("td").nth(3)).to_have_text("1")
    await expect(segment.locator("td").nth(4)).to_have_text("100.0%", timeout=10000)
    await expect(host.locator("#segments tr").nth(1)).to_contain_text("Stoneware mug")
    # The segments are the server's: a host page reloaded with nothing kept in the
    # browser (another device) shows the same table.
    await host.evaluate("localStorage.clear()")
    await host.reload()
    segment = host.locator("#segments tr").first
    await expect(segment).to_contain_text("Crewneck tee (now)", timeout=10000)
    await expect(segment.locator("td").nth(4)).to_have_text("100.0%", timeout=10000)
    await expect(host.locator("#segments tr").nth(1)).to_contain_text("Stoneware mug")

    # Staff pack it and mark it ready, then hand it over; the viewer sees each step live.
    await host.goto(f"{app.url}/staff")
    card = host.locator("#q-printed .order-card")
    await expect(card).to_contain_text(number)
    await expect(card).to_contain_text("Ada Lovelace")
    await card.get_by_role("button", name=re.compile("Mark order .* ready for pickup")).click()
    card = host.locator("#q-ready .order-card")
    await expect(card).to_contain_text(number)
    await expect(status).to_have_attribute("data-status", "ready", timeout=10000)
    await expect(status).to_have_text("Ready for pickup")
    await viewer.screenshot(path=artifacts / "web_viewer_ready.png", full_page=True)
    await host.screenshot(path=artifacts / "web_staff_ready.png", full_page=True)
    await card.get_by_role("button", name=re.compile("Mark order .* fulfilled")).click()
    await expect(host.locator("#q-fulfilled .order-card")).to_contain_text(number)
    await expect(status).to_have_attribute("data-status", "fulfilled", timeout=10000)
    await expect(status).to_contain_text("Fulfilled")
    await viewer.screenshot(path=artifacts / "web_viewer_fulfilled.png", full_page=True)


@pytest.mark.timeout(90)
async def test_host_previews_the_composed_output_of_a_pocketcam(
    make_app, write_manifest, artifacts
):
    app = await make_app([write_manifest("demo", width=320, height=180, fps=15)])
    publisher = WhipPublisher(f"{app.url}/whip/demo", STREAM_KEY, TestPatternTrack(320, 180, 15))
    await publisher.start(app.session)
    errors = JsErrors()
    try:
        async with chromium(app) as browser:
            _, host = await new_page(browser, errors, "host", DESKTOP)
            await staff_login(host, app.url, "/shows/demo/host")
            await expect(host.locator("#live-badge")).to_have_text("Live", timeout=15000)
            preview = host.get_by_role("button", name="Preview the show output")
            await preview.click()
            await host.wait_for_function(
                "() => { const v = document.getElementById('preview');"
                " return v.videoWidth === 320 && v.currentTime > 0.3; }",
                timeout=20000,
            )
            await expect(host.locator("#video-status")).to_have_text("Previewing what viewers see.")
            await host.screenshot(path=artifacts / "web_host_preview.png")
            await host.get_by_role("button", name="Stop the preview").click()
            await expect(host.locator("#video-status")).to_have_text(
                "Not broadcasting from this browser."
            )
    finally:
        await publisher.close(app.session)
    assert errors.unexpected() == []
