"""Live stock and order events (coalesced), and the commerce metrics."""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp
import pytest

from tests.conftest import buyer_session

pytestmark = pytest.mark.timeout(60)


async def read_events(resp, into: list[dict], stop: asyncio.Event) -> None:
    while not stop.is_set():
        try:
            line = await asyncio.wait_for(resp.content.readline(), 0.2)
        except TimeoutError:
            continue
        if line.startswith(b"data: "):
            into.append(json.loads(line[6:]))


async def test_stock_events_are_coalesced_and_end_on_the_true_value(make_app):
    app = await make_app(buyers_per_ip=0)  # 40 buyers, all on 127.0.0.1
    events: list[dict] = []
    stop = asyncio.Event()
    async with app.session.get("/api/shows/demo/events") as sse:
        await sse.content.readline()
        reader = asyncio.create_task(read_events(sse, events, stop))
        connector = aiohttp.TCPConnector(limit=50)
        sessions = [buyer_session(app.url, connector) for _ in range(40)]

        async def buy(s):
            async with s.post(
                "/api/cart/items", json={"show": "demo", "sku": "MUG-01", "quantity": 1}
            ) as r:
                return r.status

        started = time.monotonic()
        statuses = await asyncio.gather(*(buy(s) for s in sessions))
        took = time.monotonic() - started
        assert statuses.count(200) == 40
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            mugs = [e for e in events if e["type"] == "stock" and e["sku"] == "MUG-01"]
            if mugs and mugs[-1]["available"] == 0:
                break
            await asyncio.sleep(0.05)
        stop.set()
        await reader
        for s in sessions:
            await s.close()
        await connector.close()
    mugs = [e for e in events if e["type"] == "stock" and e["sku"] == "MUG-01"]
    assert mugs and mugs[-1]["available"] == 0  # 40 in stock, 40 held
    # 40 changes, but at most ~4 events a second (plus the first and last).
    assert len(mugs) <= 4 * (took + 1) + 2, (len(mugs), took)


async def test_order_events_and_metrics(make_app, stripe_sandbox):
    app = await make_app(stripe_api_base=stripe_sandbox.url, print_worker=False)
    s = app.session
    events: list[dict] = []
    stop = asyncio.Event()
    async with s.get("/api/shows/demo/events") as sse:
        await sse.content.readline()
        reader = asyncio.create_task(read_events(sse, events, stop))
        async with s.post(
            "/api/cart/items", json={"show": "demo", "sku": "TEE-02", "quantity": 9}
        ) as r:
            assert r.status == 409
        async with s.post(
            "/api/cart/items", json={"show": "demo", "sku": "TEE-02", "quantity": 1}
        ) as r:
            assert r.status == 200
        async with s.post("/api/checkout", json={"name": "Ada", "email": "a@example.com"}) as r:
            order = await r.json()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not any(e["type"] == "order" for e in events):
            await asyncio.sleep(0.05)
        stop.set()
        await reader
    [ev] = [e for e in events if e["type"] == "order"]
    assert ev == {
        "type": "order",
        "order_id": order["order_id"],
        "number": order["number"],
        "status": "pending_payment",
        "show": "demo",
        "ts": ev["ts"],
    }
    async with s.get("/metrics", headers=app.auth()) as r:
        text = await r.text()
    assert 'showroom_cart_operations_total{op="add",result="ok"} 1.0' in text
    assert 'showroom_cart_operations_total{op="add",result="sold_out"} 1.0' in text
    assert 'showroom_orders{status="pending_payment"} 1.0' in text
    assert "showroom_cart_seconds_count 2.0" in text
