"""Featured segments are kept by the server: the host's conversion table survives a reload
and agrees across devices and server processes."""

from __future__ import annotations

import redis.asyncio as aioredis

from server import segments
from tests.conftest import STREAM_KEY

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
        for n in (5, 2, 4):
            await segments.viewers_seen(redis, "s", n)
        await segments.featured_changed(redis, "s", None, 9_000, viewers=0)
        await segments.viewers_seen(redis, "s", 50)  # nothing on screen: no segment grows
        assert await segments.load(redis, "s") == [segments.Segment("MUG-01", 1_000, 9_000, 5)]
        for i in range(segments.KEEP + 5):
            await segments.featured_changed(redis, "s", f"P{i % 2}", 10_000 + i, viewers=0)
        assert len(await segments.load(redis, "s")) == segments.KEEP
    finally:
        await redis.aclose()
