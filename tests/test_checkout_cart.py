"""Carts and holds over HTTP against the running app, on a real Redis."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
import redis.asyncio as aioredis

from tests.conftest import STREAM_KEY, buyer_session, wait_until


async def stock_of(redis_url: str, sku: str, show: str = "demo") -> int:
    r = aioredis.Redis.from_url(redis_url)
    try:
        return int(await r.hget(f"stock:{{{show}}}", sku))
    finally:
        await r.aclose()


async def state(app) -> dict:
    async with app.session.get("/api/shows/demo") as resp:
        return await resp.json()


def available(st: dict, sku: str) -> int:
    return next(p["available"] for p in st["products"] if p["sku"] == sku)


async def test_add_holds_stock_and_remove_releases(app, redis_url):
    s = app.session
    async with s.post(
        "/api/cart/items", json={"show": "demo", "sku": "MUG-01", "quantity": 2}
    ) as r:
        assert r.status == 200
        cart = await r.json()
    assert cart["total"] == "36.00" and cart["currency"] == "usd"
    [item] = cart["items"]
    assert item["sku"] == "MUG-01" and item["quantity"] == 2 and item["unit_price"] == "18.00"
    assert item["hold_expires_at"] > 0
    assert available(await state(app), "MUG-01") == 38
    async with s.get("/api/cart") as r:
        assert (await r.json())["items"][0]["quantity"] == 2
    async with s.delete("/api/cart/items/MUG-01") as r:
        assert r.status == 200
        assert (await r.json())["items"] == []
    assert available(await state(app), "MUG-01") == 40
    async with s.delete("/api/cart/items/MUG-01") as r:
        assert r.status == 404
        assert (await r.json())["error"] == "not_found"
    assert await stock_of(redis_url, "MUG-01") == 40


async def test_per_buyer_limit_and_sold_out(app):
    s = app.session
    async with s.post(
        "/api/cart/items", json={"show": "demo", "sku": "MUG-01", "quantity": 2}
    ) as r:
        assert r.status == 200
    async with s.post(
        "/api/cart/items", json={"show": "demo", "sku": "MUG-01", "quantity": 1}
    ) as r:
        assert r.status == 409
        assert (await r.json())["error"] == "limit_reached"
    async with s.post(
        "/api/cart/items", json={"show": "demo", "sku": "TEE-02", "quantity": 6}
    ) as r:
        assert r.status == 409
        assert (await r.json())["error"] == "sold_out"
    async with s.post(
        "/api/cart/items", json={"show": "demo", "sku": "TEE-02", "quantity": 5}
    ) as r:
        assert r.status == 200
    async with buyer_session(app.url) as other:
        async with other.post(
            "/api/cart/items", json={"show": "demo", "sku": "TEE-02", "quantity": 1}
        ) as r:
            assert r.status == 409
            assert (await r.json())["error"] == "sold_out"
    st = await state(app)
    assert available(st, "TEE-02") == 0 and available(st, "MUG-01") == 38


async def test_concurrent_adds_of_one_buyer_respect_the_limit(make_app, redis_url):
    """20 buyers each fire 5 adds at once; limit 2 each: exactly 2 held per buyer."""
    app = await make_app(buyers_per_ip=0)  # 20 buyers, all on 127.0.0.1
    connector = aiohttp.TCPConnector(limit=100)
    sessions = [buyer_session(app.url, connector) for _ in range(20)]
    try:
        # First call gives each buyer its cookie.
        for s in sessions:
            async with s.get("/api/cart") as r:
                assert r.status == 200

        async def add(s):
            async with s.post(
                "/api/cart/items", json={"show": "demo", "sku": "MUG-01", "quantity": 1}
            ) as r:
                return r.status, (await r.json()).get("error")

        results = await asyncio.gather(*(add(s) for s in sessions for _ in range(5)))
        assert sum(1 for st, _ in results if st == 200) == 40
        assert {e for st, e in results if st != 200} == {"limit_reached"}
        for s in sessions:
            async with s.get("/api/cart") as r:
                assert (await r.json())["items"][0]["quantity"] == 2
        assert await stock_of(redis_url, "MUG-01") == 0
    finally:
        for s in sessions:
            await s.close()
        await connector.close()


@pytest.mark.timeout(30)
async def test_expired_hold_returns_stock_once(make_app, redis_url):
    app = await make_app(hold_seconds=1)
    s = app.session
    async with s.post(
        "/api/cart/items", json={"show": "demo", "sku": "TEE-02", "quantity": 3}
    ) as r:
        assert r.status == 200
    assert await stock_of(redis_url, "TEE-02") == 2
    await wait_until(lambda: stock_of_eq(redis_url, "TEE-02", 5), timeout=5)
    async with s.get("/api/cart") as r:
        assert (await r.json())["items"] == []
    # Removing the (already expired) line releases nothing more.
    async with s.delete("/api/cart/items/TEE-02") as r:
        assert r.status == 404
    await asyncio.sleep(0.6)
    assert await stock_of(redis_url, "TEE-02") == 5


async def stock_of_eq(redis_url, sku, n):
    return await stock_of(redis_url, sku) == n


async def test_stock_survives_restart_and_host_can_set_it(make_app, redis_url):
    app = await make_app()
    async with app.session.post(
        "/api/cart/items", json={"show": "demo", "sku": "TEE-02", "quantity": 2}
    ) as r:
        assert r.status == 200
    await app.stop()
    app2 = await make_app()  # a restart reloads the manifest (stock 5) but keeps Redis' 3
    assert available(await state(app2), "TEE-02") == 3
    async with app2.session.post(
        "/api/shows/demo/stock", json={"sku": "TEE-02", "available": 9}
    ) as r:
        assert r.status == 401
    async with app2.session.post(
        "/api/shows/demo/stock",
        json={"sku": "TEE-02", "available": 9},
        headers=app2.auth(STREAM_KEY),
    ) as r:
        assert r.status == 200
    assert available(await state(app2), "TEE-02") == 9


def test_stock_command_sets_available_stock(write_manifest, redis_url):
    import subprocess
    import sys

    import redis as redis_sync

    manifest = write_manifest("demo")
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "server.cli",
            "stock",
            "--manifest",
            str(manifest),
            "--sku",
            "TEE-02",
            "--set",
            "12",
            "--redis",
            redis_url,
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert run.returncode == 0, run.stderr
    client = redis_sync.Redis.from_url(redis_url)
    assert int(client.hget("stock:{demo}", "TEE-02")) == 12
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "server.cli",
            "stock",
            "--manifest",
            str(manifest),
            "--sku",
            "NOPE",
            "--set",
            "1",
            "--redis",
            redis_url,
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert bad.returncode == 2 and "no product" in bad.stderr
    assert int(client.hget("stock:{demo}", "TEE-02")) == 12
    client.close()
