"""Featured segments are kept by the server: the host's conversion table survives a reload
and agrees across devices and server processes."""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis

from media.client import WhepPlayer
from server import segments
from tests.conftest import STREAM_KEY, buyer_session, wait_until

HOST = {"Authorization": f"Bearer {STREAM_KEY}"}


async def feature(app, sku: str | None) -> None:
    async with app.session.post("/api/shows/demo/feature", json={"sku": sku}, headers=HOST) as r:
        assert r.status == 200, await r.text()


async def host_stats(app) -> dict:
    async with app.session.get("/api/shows/demo/stats", headers=HOST) as r:
        assert r.status == 200
        return await r.json()


async def test_featuring_opens_and_closes_segments_for_the_host_only(app):
    await feature(app, "MUG-01")
    await feature(app, "TEE-02")
    await feature(app, "TEE-02")  # the same product stays on: still one segment
    first = (await host_stats(app))["segments"]
    assert [(s["sku"], s["end_ms"]) for s in first] == [
        ("MUG-01", first[1]["start_ms"]),
        ("TEE-02", None),
    ]
    await feature(app, None)
    done = (await host_stats(app))["segments"]
    assert [s["sku"] for s in done] == ["MUG-01", "TEE-02"]
    assert all(s["end_ms"] is not None and s["end_ms"] >= s["start_ms"] for s in done)
    async with app.session.get("/api/shows/demo/stats") as r:  # a viewer
        assert "segments" not in await r.json()


async def test_peak_viewers_only_rise_and_only_while_the_segment_is_open(redis_url):
    redis = aioredis.Redis.from_url(redis_url)
    try:
        await segments.featured_changed(redis, "s", "MUG-01", 1_000, viewers=3)
        for n, at in ((5, 3_000), (2, 5_000), (4, 7_000)):
            await segments.viewers_seen(redis, "s", n, now_ms=at)
        await segments.featured_changed(redis, "s", None, 9_000, viewers=0)
        await segments.viewers_seen(redis, "s", 50)  # nothing on screen: no segment grows
        [seg] = await segments.load(redis, "s")
        assert seg.public() == segments.Segment("MUG-01", 1_000, 9_000, 5).public()
        # Time-weighted: 3 viewers for 2 s, 5 for 2 s, 2 for 2 s, 4 for 2 s.
        assert seg.average_viewers(now_ms=99_000) == 3.5
        assert seg.cart_adds == 0
        for i in range(segments.KEEP + 5):
            await segments.featured_changed(redis, "s", f"P{i % 2}", 10_000 + i, viewers=0)
        assert len(await segments.load(redis, "s")) == segments.KEEP
    finally:
        await redis.aclose()


def test_a_sale_counts_for_the_segment_that_featured_its_product_when_it_was_added():
    segs = [
        segments.Segment("MUG-01", 1_000, 2_000, 2),
        segments.Segment("TEE-02", 2_000, 3_000, 2),
        segments.Segment("MUG-01", 3_000, None, 2),
    ]
    sales = [
        segments.Sale("o1", "ann", "MUG-01", 1_500, 1800),  # added under the mug, paid later
        segments.Sale("o2", "ann", "MUG-01", 1_600, 1800),  # the same buyer again
        segments.Sale("o3", "bob", "MUG-01", 2_500, 1800),  # added while the tee was on
        segments.Sale("o4", "bob", "TEE-02", 2_100, 3200),
        segments.Sale("o5", "cy", "MUG-01", 3_100, 1800),  # the open segment
    ]
    got = segments.attribute(segs, sales, now_ms=4_000)
    assert got == [
        segments.SegmentSales(2, 1, 3600),
        segments.SegmentSales(1, 1, 3200),
        segments.SegmentSales(1, 1, 1800),
    ]


async def test_conversion_counts_the_product_bought_by_when_it_was_added(
    make_app, write_manifest, stripe_sandbox
):
    """A mug added while the mug was on screen and paid after the tee came on counts for
    the mug's segment, not the tee's (the old table counted it for whatever was on)."""
    app = await make_app([write_manifest("demo")], stripe_api_base=stripe_sandbox.url)
    card = {"card_number": "4242424242424242", "exp_month": 12, "exp_year": 2034, "cvc": "123"}

    async def buy(session, sku: str, pay: bool = True) -> str:
        async with session.post("/api/cart/items", json={"show": "demo", "sku": sku}) as r:
            assert r.status == 200, await r.text()
        if not pay:
            return ""
        async with session.post("/api/checkout", json={"name": "B", "email": "b@x.io"}) as r:
            assert r.status == 201, await r.text()
            order = (await r.json())["order_id"]
        async with session.post(f"/api/orders/{order}/sandbox-pay", json=card) as r:
            assert r.status == 200, await r.text()
        return order

    await feature(app, "MUG-01")
    async with buyer_session(app.url) as ann, buyer_session(app.url) as bob:
        await buy(ann, "MUG-01", pay=False)
        await feature(app, "TEE-02")
        async with ann.post("/api/checkout", json={"name": "Ann", "email": "a@x.io"}) as r:
            order = (await r.json())["order_id"]
        async with ann.post(f"/api/orders/{order}/sandbox-pay", json=card) as r:
            assert r.status == 200
        await buy(bob, "TEE-02")
        await buy(bob, "MUG-01")  # a mug while the tee is on: counts for no segment

    async def settled() -> list[dict] | None:
        segs = (await host_stats(app))["segments"]
        return segs if sum(s["orders"] for s in segs) == 2 else None

    segs = await wait_until(settled, timeout=15)
    assert [(s["sku"], s["orders"], s["buyers"], s["revenue"]) for s in segs] == [
        ("MUG-01", 1, 1, "18.00"),
        ("TEE-02", 1, 1, "32.00"),
    ]


async def test_the_hosts_own_preview_is_not_a_viewer(make_app, write_manifest):
    app = await make_app([write_manifest("demo", width=320, height=180, fps=15)])

    async def viewers() -> int:
        async with app.session.get("/api/shows/demo") as r:
            return (await r.json())["viewers"]

    async with buyer_session(app.url, headers=HOST) as host:
        preview = WhepPlayer(f"{app.url}/whep/demo?preview=1", audio=False)
        await preview.start(host)
        stranger = WhepPlayer(f"{app.url}/whep/demo?preview=1", audio=False)  # no host login
        try:
            await asyncio.sleep(2.5)  # presence is reported about once a second
            assert await viewers() == 0
            await stranger.start(app.session)
            assert await wait_until(lambda: viewers(), timeout=5) == 1
        finally:
            await stranger.close(app.session)
            await preview.close(host)
