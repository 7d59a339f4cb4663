"""Flash drops: thousands of buyers, a few dozen units, nobody sold what does not exist."""

from __future__ import annotations

import asyncio
import json
import subprocess
import threading
import time

import aiohttp
import pytest
import redis as redis_sync
import redis.asyncio as aioredis

from tests.conftest import STREAM_KEY, buyer_session, start_server_process

PRODUCTS = """
[[products]]
sku = "BAG-07"
name = "Canvas tote"
price = "25.00"
stock = 100

[[products]]
sku = "MUG-01"
name = "Stoneware mug"
price = "18.00"
stock = 40
per_buyer_limit = 2
"""

BUYERS = 2000
UNITS = 50


class StockSampler:
    """Reads the drop's remaining units and the product stock as fast as it can, from
    its own thread (so the race on the event loop cannot starve it)."""

    def __init__(self, redis_url: str) -> None:
        self.redis = redis_sync.Redis.from_url(redis_url)
        self.samples: list[tuple[int, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            pipe = self.redis.pipeline(transaction=False)
            pipe.hget("drop:{demo}", "remaining")
            pipe.hget("stock:{demo}", "BAG-07")
            remaining, stock = pipe.execute()
            self.samples.append((int(remaining or 0), int(stock or 0)))

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.redis.close()


async def race(urls: list[str], buyers: int) -> tuple[list[tuple[int, str | None]], list]:
    """Every buyer (own cookie jar) presses Buy once, all at the same time."""
    connectors = {u: aiohttp.TCPConnector(limit=300) for u in urls}
    sessions = [
        buyer_session(
            urls[i % len(urls)],
            connectors[urls[i % len(urls)]],
            timeout=aiohttp.ClientTimeout(total=60),
        )
        for i in range(buyers)
    ]
    start = asyncio.Event()

    async def buy(s: aiohttp.ClientSession) -> tuple[int, str | None]:
        await start.wait()
        async with s.post(
            "/api/cart/items", json={"show": "demo", "sku": "BAG-07", "quantity": 1}
        ) as r:
            return r.status, (await r.json()).get("error")

    tasks = [asyncio.create_task(buy(s)) for s in sessions]
    await asyncio.sleep(0)
    start.set()
    results = await asyncio.gather(*tasks)
    return results, [sessions, connectors]


async def close_all(handles) -> None:
    sessions, connectors = handles
    for s in sessions:
        await s.close()
    for c in connectors.values():
        await c.close()


async def start_drop(base: str, **overrides) -> dict:
    body = {"sku": "BAG-07", "quantity": UNITS, "duration_s": 120, "per_buyer_limit": 1}
    body.update(overrides)
    async with (
        aiohttp.ClientSession() as s,
        s.post(
            f"{base}/api/shows/demo/drops",
            json=body,
            headers={"Authorization": f"Bearer {STREAM_KEY}"},
        ) as r,
    ):
        assert r.status == 201, await r.text()
        return (await r.json())["drop"]


async def check_race(urls, redis_url):
    sampler = StockSampler(redis_url)
    sampler.start()
    results, handles = await race(urls, BUYERS)
    sampler.stop()
    try:
        ok = [r for r in results if r[0] == 200]
        assert len(ok) == UNITS
        assert sum(1 for r in results if r == (409, "sold_out")) == BUYERS - UNITS
        assert len(sampler.samples) > 50
        assert min(s[0] for s in sampler.samples) >= 0  # never negative at any moment
        assert {s[1] for s in sampler.samples} == {100 - UNITS}  # only drop units sold
        r = aioredis.Redis.from_url(redis_url)
        assert int(await r.hget("drop:{demo}", "remaining")) == 0
        assert await r.zcard("holds:expiry:{demo}") == UNITS
        await r.aclose()
        # Per-buyer limit (1 in this drop): the winners cannot take a second unit, and the
        # answer is limit_reached, not sold_out.
        winners = [s for s, res in zip(handles[0], results, strict=True) if res[0] == 200]
        again = await asyncio.gather(*(_add(s) for s in winners[:20]))
        assert set(again) == {(409, "limit_reached")}
        carts = await asyncio.gather(*(_cart(s) for s in winners))
        assert all(c == [("BAG-07", 1)] for c in carts)
    finally:
        await close_all(handles)


async def _add(s):
    async with s.post(
        "/api/cart/items", json={"show": "demo", "sku": "BAG-07", "quantity": 1}
    ) as r:
        return r.status, (await r.json()).get("error")


async def _cart(s):
    async with s.get("/api/cart") as r:
        return [(i["sku"], i["quantity"]) for i in (await r.json())["items"]]


@pytest.mark.timeout(120)
async def test_flash_drop_2000_buyers_50_units(make_app, write_manifest, redis_url):
    # Every simulated buyer is on 127.0.0.1: no per-IP limits here.
    app = await make_app([write_manifest("demo", products=PRODUCTS)], buyers_per_ip=0)
    drop = await start_drop(app.url)
    assert drop["remaining"] == UNITS and drop["price"] == "25.00"
    await check_race([app.url], redis_url)


@pytest.mark.timeout(180)
async def test_flash_drop_on_two_server_processes(
    write_manifest, redis_url, stripe_sandbox, tmp_path
):
    manifest = write_manifest("demo", products=PRODUCTS)
    env = {"STRIPE_API_BASE": stripe_sandbox.url, "SHOWROOM_BUYERS_PER_IP": "0"}
    procs: list[subprocess.Popen] = []
    urls: list[str] = []
    try:
        for i in range(2):
            proc, url = start_server_process([manifest], redis_url, tmp_path / f"p{i}", env=env)
            procs.append(proc)
            urls.append(url)
        # Live events cross processes: a drop started on one reaches the other's SSE.
        async with aiohttp.ClientSession() as s, s.get(f"{urls[1]}/api/shows/demo/events") as sse:
            await sse.content.readline()  # retry line: subscribed
            await start_drop(urls[0])
            event = await _next_event(sse, "drop", within=10)
        assert event["drop"]["sku"] == "BAG-07" and event["drop"]["remaining"] == UNITS
        await check_race(urls, redis_url)
        async with aiohttp.ClientSession() as s:
            for u in urls:
                async with s.get(f"{u}/api/shows/demo") as r:
                    st = await r.json()
                assert st["drop"]["remaining"] == 0
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(15)


async def _next_event(resp, kind: str, within: float) -> dict:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        line = await asyncio.wait_for(resp.content.readline(), deadline - time.monotonic())
        if line.startswith(b"data: "):
            event = json.loads(line[6:])
            if event.get("type") == kind:
                return event
    raise TimeoutError(kind)


@pytest.mark.timeout(60)
async def test_drop_price_countdown_and_unsold_units_return_once(
    make_app, write_manifest, redis_url
):
    app = await make_app(
        [write_manifest("demo", products=PRODUCTS)], hold_seconds=600, buyers_per_ip=0
    )
    s = app.session
    async with s.get("/api/shows/demo/events") as sse:
        await sse.content.readline()
        drop = await start_drop(app.url, quantity=5, duration_s=2, per_buyer_limit=1, price="9.00")
        ev = await _next_event(sse, "drop", within=5)
        assert ev["drop"]["price"] == "9.00" and ev["drop"]["remaining"] == 5
        assert drop["ends_at"] > time.time() * 1000
        async with s.post(
            "/api/cart/items", json={"show": "demo", "sku": "BAG-07", "quantity": 1}
        ) as r:
            assert r.status == 200
            cart = await r.json()
        assert cart["items"][0]["unit_price"] == "9.00" and cart["total"] == "9.00"
        async with s.get("/api/shows/demo") as r:
            st = await r.json()
        assert st["drop"]["remaining"] == 4 and st["drop"]["ends_at"] == drop["ends_at"]
        assert next(p for p in st["products"] if p["sku"] == "BAG-07")["available"] == 4
        # A second drop while one runs is refused.
        async with s.post(
            "/api/shows/demo/drops",
            json={"sku": "BAG-07", "quantity": 1, "duration_s": 5},
            headers=app.auth(STREAM_KEY),
        ) as r:
            assert r.status == 409
        ended = await _next_event(sse, "drop", within=6)
        while ended["drop"] is not None:
            ended = await _next_event(sse, "drop", within=6)
    r = aioredis.Redis.from_url(redis_url)
    try:
        # 100 - 5 into the drop, 4 unsold back: 99 (the held unit is still in the cart).
        assert int(await r.hget("stock:{demo}", "BAG-07")) == 99
        async with s.get("/api/shows/demo") as resp:
            st = await resp.json()
        assert st["drop"] is None
        assert next(p for p in st["products"] if p["sku"] == "BAG-07")["available"] == 99
        # The held drop unit goes back to the product when released after the drop.
        async with s.delete("/api/cart/items/BAG-07") as resp:
            assert resp.status == 200
        assert int(await r.hget("stock:{demo}", "BAG-07")) == 100
        await asyncio.sleep(0.6)  # reapers run again: nothing is returned twice
        assert int(await r.hget("stock:{demo}", "BAG-07")) == 100
    finally:
        await r.aclose()
