"""Replays and clips in Chromium: a short live show with two featured products is
recorded, its replay page plays and the product card follows the playback position,
and Buy on a clip page adds to the cart and moves that clip's counts (orders too)."""

from __future__ import annotations

import asyncio
import re
import time

import aiohttp
import pytest
from playwright.async_api import expect

from media.client import WhipPublisher
from media.recording import RecordingConfig
from media.testsrc import TestPatternTrack, ToneTrack
from tests.conftest import STAFF_PASSWORD, STREAM_KEY, wait_until
from tests.test_web_support import PHONE, JsErrors, chromium, new_page, staff_login

pytestmark = pytest.mark.timeout(120)

HOST = {"Authorization": f"Bearer {STAFF_PASSWORD}"}


async def record_short_show(app) -> tuple[dict, list[dict]]:
    """~9 s live: MUG-01 from 1 s, TEE-02 from 4.5 s, nothing from 8 s; then off air."""
    s = app.session
    async with aiohttp.ClientSession() as http:
        pub = WhipPublisher(
            f"{app.url}/whip/demo", STREAM_KEY, TestPatternTrack(640, 360, 30), ToneTrack()
        )
        await pub.start(http)

        async def recording() -> bool:
            async with s.get("/api/shows/demo/recordings") as r:
                return bool((await r.json())["recordings"])

        await wait_until(recording, timeout=10)
        t0 = time.monotonic()
        for at, sku in ((1, "MUG-01"), (4.5, "TEE-02"), (8, None)):
            await asyncio.sleep(max(0, t0 + at - time.monotonic()))
            async with s.post("/api/shows/demo/feature", json={"sku": sku}, headers=HOST) as r:
                assert r.status == 200
        await asyncio.sleep(0.5)
        await pub.close(http)

    async def done():
        async with s.get("/api/shows/demo/recordings") as r:
            recs = (await r.json())["recordings"]
        async with s.get("/api/shows/demo/clips") as r:
            clips = (await r.json())["clips"]
        return (recs[0], clips) if recs[0]["ended_at"] and len(clips) == 2 else None

    return await wait_until(done, timeout=15, interval=0.2)


async def clip_counts(app, clip_id: str) -> dict:
    async with app.session.get("/api/shows/demo/clips") as r:
        clips = (await r.json())["clips"]
    return next(c for c in clips if c["id"] == clip_id)


async def test_replay_card_follows_playback_and_clip_page_sells(
    make_app, stripe_sandbox, artifacts
):
    app = await make_app(
        stripe_api_base=stripe_sandbox.url,
        print_worker=False,
        recording=RecordingConfig(idle_s=0.5),
    )
    rec, clips = await record_short_show(app)
    first, second = [c for c in rec["chapters"] if c["kind"] == "featured"]
    assert (first["sku"], second["sku"]) == ("MUG-01", "TEE-02")
    async with app.session.get("/api/shows/demo") as r:
        assert (await r.json())["latest_replay"]["page_url"] == rec["page_url"]
    async with app.session.get("/api/shows") as r:
        assert [s["replays"] for s in (await r.json())["shows"] if s["id"] == "demo"] == [1]

    errors = JsErrors()
    async with chromium(app) as browser:
        ctx, page = await new_page(browser, errors, "replay", PHONE)
        # The live page of an ended show points to its replay.
        await page.goto(f"{app.url}/shows/demo")
        link = page.locator("#replay-banner a")
        await expect(link).to_be_visible(timeout=10_000)
        assert await link.get_attribute("href") == rec["page_url"]
        await page.screenshot(path=str(artifacts / "live-page-ended-replay-link.png"))
        await page.goto(f"{app.url}{rec['page_url']}")
        await page.evaluate("document.getElementById('video').play()")
        await page.wait_for_function(
            "() => { const v = document.getElementById('video');"
            " return v.readyState >= 2 && v.currentTime > 0.3 && v.videoWidth === 640; }",
            timeout=10_000,
        )
        assert await page.evaluate("document.getElementById('video').duration") == pytest.approx(
            rec["duration_s"], abs=0.5
        )
        chapters = page.locator("#chapters li")
        await expect(chapters).to_have_count(2)
        await expect(chapters.nth(1)).to_contain_text("Crewneck tee")

        # Seeking into the second chapter switches the card to its product.
        await chapters.nth(1).get_by_role("button").click()
        await expect(page.locator("#featured")).to_have_attribute("data-sku", "TEE-02")
        await expect(page.locator("#f-name")).to_have_text("Crewneck tee")
        await expect(page.locator("#f-stock")).to_have_text("Only 5 left")  # live stock
        t = await page.evaluate("document.getElementById('video').currentTime")
        assert second["start_s"] <= t < second["end_s"]
        await page.screenshot(path=str(artifacts / "replay-phone.png"))
        # Live stock: the host sells out the tee, and the replay's card says so.
        async with app.session.post(
            "/api/shows/demo/stock", json={"sku": "TEE-02", "available": 0}, headers=HOST
        ) as r:
            assert r.status == 200, await r.text()
        await expect(page.locator("#f-buy")).to_be_disabled()
        await expect(page.locator("#f-buy")).to_have_text("Sold out")
        # ... and back into the first one.
        await page.evaluate(
            f"document.getElementById('video').currentTime = {first['start_s'] + 1}"
        )
        await expect(page.locator("#featured")).to_have_attribute("data-sku", "MUG-01")
        # Before the first feature nothing is on screen: no card.
        await page.evaluate("document.getElementById('video').currentTime = 0.2")
        await expect(page.locator("#featured")).to_be_hidden()

        # The clip page: Open Graph video tags, and Buy credits the clip.
        mug = next(c for c in clips if c["sku"] == "MUG-01")
        await page.goto(f"{app.url}{mug['page_url']}")
        og_video = await page.get_attribute('meta[property="og:video"]', "content")
        assert og_video == f"{app.settings.base_url}{mug['url']}"
        assert await page.get_attribute('meta[property="og:video:type"]', "content") == "video/mp4"
        assert (await page.input_value("#share-url")).endswith(mug["page_url"])
        await page.wait_for_function(
            "() => document.getElementById('video').readyState >= 2", timeout=10_000
        )
        await expect(page.locator("#f-name")).to_have_text("Stoneware mug")
        await page.locator("#f-buy").click()
        await expect(page.locator("#notice")).to_contain_text("Added Stoneware mug")
        await page.screenshot(path=str(artifacts / "clip-phone.png"))
        counts = await clip_counts(app, mug["id"])
        assert (counts["views"], counts["add_to_carts"], counts["orders"]) == (1, 1, 0)

        # That buyer checks out and pays: the order counts for the clip.
        resp = await page.request.post(
            f"{app.url}/api/checkout", data={"name": "Ada", "email": "ada@example.com"}
        )
        assert resp.status == 201, await resp.text()
        order_id = (await resp.json())["order_id"]
        resp = await page.request.post(
            f"{app.url}/api/orders/{order_id}/sandbox-pay",
            data={
                "card_number": "4242424242424242",
                "exp_month": 12,
                "exp_year": 2031,
                "cvc": "123",
            },
        )
        assert resp.status == 200, await resp.text()

        async def ordered():
            return (await clip_counts(app, mug["id"]))["orders"] == 1

        await wait_until(ordered, timeout=15, interval=0.3)
        other = next(c for c in clips if c["sku"] == "TEE-02")
        assert (await clip_counts(app, other["id"]))["orders"] == 0
        await ctx.close()

        # The host page lists the clips with those figures and links the latest replay.
        ctx, page = await new_page(browser, errors, "host")
        await staff_login(page, app.url, "/shows/demo/host")
        row = page.locator(f'#clips tr[data-clip="{mug["id"]}"]')
        await expect(row).to_contain_text("Stoneware mug")
        await expect(row.locator("td")).to_have_text(
            [re.compile("Stoneware mug"), re.compile(r"0:0\d"), "1", "1", "1"]
        )
        await expect(page.locator("#rec-latest-link")).to_have_attribute("href", rec["page_url"])
        await ctx.close()
    assert not errors.unexpected(), errors.errors


async def test_clip_and_replay_pages_404_and_cart_ignores_unknown_clips(app):
    async with app.session.get("/clips/nope") as r:
        assert r.status == 404
    async with app.session.get("/shows/demo/replays/nope") as r:
        assert r.status == 404
    async with app.session.get("/media/clips/nope.mp4") as r:
        assert r.status == 404
    # A made-up clip id does not stop the purchase, and counts nothing.
    body = {"show": "demo", "sku": "MUG-01", "quantity": 1, "clip": "made-up"}
    async with app.session.post("/api/cart/items", json=body) as r:
        assert r.status == 200
    async with app.session.get("/api/shows/demo/clips") as r:
        assert (await r.json())["clips"] == []
