"""Redis SIGKILLed mid-run and restarted from its AOF: no paid order is lost.

This test runs Redis with ``appendfsync always``: every write is on disk before Redis
answers it, so every webhook answered 200 survives. With the default ``everysec`` a
crash of the machine can lose up to about one second of writes that were already
answered; Stripe does not redeliver a webhook it got a 200 for, so such a payment would
need a manual reconciliation. Deployments that cannot afford that select ``always``.
(A crash of the Redis process alone loses nothing with either setting: the kernel still
holds the written AOF pages.)
"""

from __future__ import annotations

import asyncio
import signal

import aiohttp
import pytest
import redis.asyncio as aioredis

from checkout.orders import PrintJob, order_key, print_stream
from server.embedded import EmbeddedRedis
from tests.conftest import buyer_session, manifest_text, start_app, wait_until
from tests.stripe_helpers import event, signed

SECRET = "whsec_durability_test"
PRODUCTS = """
[[products]]
sku = "BAG-07"
name = "Canvas tote"
price = "25.00"
stock = 100
"""
ORDERS = 40
AMOUNT = 2500  # cents: one BAG-07


@pytest.mark.timeout(120)
async def test_no_paid_order_lost_when_redis_is_killed(tmp_path, stripe_sandbox):
    server = EmbeddedRedis(tmp_path / "redis", appendfsync="always")
    server.start()
    manifest = tmp_path / "demo.toml"
    manifest.write_text(manifest_text("demo", products=PRODUCTS))
    app = await start_app(
        [manifest],
        server.url,
        tmp_path,
        stripe_api_base=stripe_sandbox.url,
        stripe_webhook_secret=SECRET,
        print_worker=False,
        buyers_per_ip=0,  # 40 buyers, all on 127.0.0.1
    )
    try:
        # 40 buyers check out; their payments then arrive as one burst of webhooks.
        orders: list[tuple[str, str]] = []
        for _ in range(ORDERS):
            async with buyer_session(app.url) as s:
                async with s.post(
                    "/api/cart/items", json={"show": "demo", "sku": "BAG-07", "quantity": 1}
                ) as r:
                    assert r.status == 200
                async with s.post(
                    "/api/checkout", json={"name": "B", "email": "b@example.com"}
                ) as r:
                    assert r.status == 201
                    body = await r.json()
            pi = body["payment"]["client_secret"].split("_secret_")[0]
            orders.append((body["order_id"], pi))

        events = {
            oid: event(
                "payment_intent.succeeded",
                {"id": pi, "amount": AMOUNT, "currency": "usd", "metadata": {"order_id": oid}},
            )
            for oid, pi in orders
        }
        acked: set[str] = set()
        killed = asyncio.Event()

        lanes = asyncio.Semaphore(4)  # a steady stream rather than one instant burst

        async def deliver(session, oid):
            payload, headers = signed(events[oid], SECRET)
            try:
                async with lanes:
                    async with session.post(
                        f"{app.url}/webhooks/stripe", data=payload, headers=headers
                    ) as r:
                        if r.status == 200:
                            acked.add(oid)
                        await asyncio.sleep(0.005)
            except aiohttp.ClientError:
                pass

        async def killer():
            while len(acked) < 8:
                await asyncio.sleep(0.001)
            server.kill(signal.SIGKILL)
            killed.set()

        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as session:
            kill_task = asyncio.create_task(killer())
            await asyncio.gather(*(deliver(session, oid) for oid, _ in orders))
            await asyncio.wait_for(kill_task, 20)
            acked_before_restart = set(acked)
            assert 8 <= len(acked_before_restart) < ORDERS  # killed mid-burst
            server.start()  # same port, same folder: replays the AOF

            # Nothing acknowledged was lost.
            check = aioredis.Redis.from_url(server.url)
            for oid in acked_before_restart:
                assert await check.hget(order_key(oid), "status") == b"paid", oid
            # Stripe redelivers what was not acknowledged; every order ends paid, once.
            for _ in range(50):
                missing = [oid for oid, _ in orders if oid not in acked]
                if not missing:
                    break
                await asyncio.gather(*(deliver(session, oid) for oid in missing))
                await asyncio.sleep(0.1)
            assert len(acked) == ORDERS
        statuses = [await check.hget(order_key(oid), "status") for oid, _ in orders]
        assert statuses == [b"paid"] * ORDERS
        jobs = [
            PrintJob.unpack(e[b"job"]).order_id for _, e in await check.xrange(print_stream("demo"))
        ]
        assert sorted(jobs) == sorted(oid for oid, _ in orders)  # exactly one job each
        await check.aclose()
    finally:
        await app.stop()
        server.stop()


@pytest.mark.timeout(120)
async def test_while_redis_is_down_buyers_get_503_and_it_recovers_by_itself(tmp_path):
    """A Redis restart at the wrong moment: buyers get a clear "try again" (503 with
    Retry-After, the JSON error shape), never a 500; once Redis is back the same server
    process sells again without a restart."""
    server = EmbeddedRedis(tmp_path / "redis")
    server.start()
    manifest = tmp_path / "demo.toml"
    manifest.write_text(manifest_text("demo", products=PRODUCTS))
    app = await start_app([manifest], server.url, tmp_path)
    add = {"show": "demo", "sku": "BAG-07", "quantity": 1}
    try:
        async with buyer_session(app.url) as buyer:
            async with buyer.post("/api/cart/items", json=add) as r:
                assert r.status == 200
            server.kill(signal.SIGKILL)
            for method, path, body in (
                ("POST", "/api/cart/items", add),
                ("GET", "/api/cart", None),
                ("GET", "/api/shows/demo", None),
            ):
                async with buyer.request(method, path, json=body) as r:
                    assert r.status == 503, (path, r.status, await r.text())
                    assert r.headers.get("Retry-After") == "1"
                    assert (await r.json())["error"] == "unavailable"
            server.start()  # the AOF brings back the first hold

            async def sells_again() -> bool:
                async with buyer.post("/api/cart/items", json=add) as r:
                    return r.status == 200 and (await r.json())["items"][0]["quantity"] == 2

            assert await wait_until(sells_again, timeout=20, interval=0.5)
    finally:
        await app.stop()
        server.stop()
