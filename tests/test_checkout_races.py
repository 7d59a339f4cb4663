"""Races on the real Redis: expiry against checkout, and payment against order expiry.

Every unit must end up in exactly one place: back in stock, in an order, or sold.
"""

from __future__ import annotations

import asyncio
import random
import time

import pytest
import redis.asyncio as aioredis

from checkout import carts
from checkout.catalog import set_stock
from checkout.ordering import expire_due_orders, place_order
from checkout.orders import Status, TransitionError, load_order, mark_paid, print_stream

pytestmark = pytest.mark.timeout(60)

N = 300


@pytest.fixture
async def redis(redis_url):
    client = aioredis.Redis.from_url(redis_url, max_connections=400)
    yield client
    await client.aclose()


def _names(show: str, sku: str) -> str:
    return sku


async def _place(redis, viewer, timeout_s=600.0):
    return await place_order(
        redis,
        viewer,
        "demo",
        product_name=_names,
        currency_of=lambda s: "usd",
        buyer_name="B",
        buyer_email="b@example.com",
        payment_timeout_s=timeout_s,
    )


async def _held_by_orders(redis) -> int:
    total = 0
    for key in await redis.keys("orderstock:*"):
        for field, value in (await redis.hgetall(key)).items():
            if not field.startswith(b"_"):
                total += int(value.split(b"|")[0])
    return total


async def test_hold_expiry_racing_checkout_returns_each_unit_once(redis):
    await set_stock(redis, "demo", "MUG-01", N)
    viewers = [f"v{i:04d}" for i in range(N)]
    # Holds expire one after another over 3 s from t0; checkouts run across that window.
    t0_ms = int(time.time() * 1000) + 3000
    for i, v in enumerate(viewers):
        res = await carts.add_item(
            redis,
            v,
            "demo",
            "MUG-01",
            1,
            price_cents=1800,
            per_buyer_limit=None,
            hold_seconds=(t0_ms + i * 10) / 1000,
            now=0,
        )
        assert res.result == "ok"
    assert int(await redis.hget("stock:{demo}", "MUG-01")) == 0
    await asyncio.gather(*(redis.ping() for _ in range(N)))  # open the connections first
    await asyncio.sleep(max(0, t0_ms / 1000 + 1.5 - time.time()))

    async def reaper():
        for _ in range(40):
            await carts.reap_expired_holds(redis, "demo")
            await asyncio.sleep(0.005)

    results = await asyncio.gather(*(_place(redis, v) for v in viewers), reaper(), reaper())
    orders = [o for o in results[:N] if o is not None]
    await carts.reap_expired_holds(redis, "demo")
    stock = int(await redis.hget("stock:{demo}", "MUG-01"))
    in_orders = sum(o.items[0].quantity for o in orders)
    assert 0 < len(orders) < N, "the race should see both outcomes"
    assert in_orders == await _held_by_orders(redis)
    assert stock + in_orders == N  # every unit exactly once: back in stock or in an order
    assert await redis.zcard("holds:expiry:{demo}") == 0
    assert not await redis.keys("cart:*")
    # More reaping changes nothing.
    await carts.reap_expired_holds(redis, "demo")
    assert int(await redis.hget("stock:{demo}", "MUG-01")) == stock


async def test_payment_racing_order_expiry_is_paid_or_expired_never_both(redis):
    await set_stock(redis, "demo", "MUG-01", 100)
    orders = []
    viewers = [f"p{i:03d}" for i in range(100)]
    for v in viewers:
        assert (
            await carts.add_item(
                redis,
                v,
                "demo",
                "MUG-01",
                1,
                price_cents=1800,
                per_buyer_limit=1,
                hold_seconds=60,
            )
        ).result == "ok"
    # Deadlines 20 ms apart from base on, counted once the carts are ready (on a loaded
    # machine the adds alone can take seconds): about half are due when payments come.
    base = time.time() + 2
    for i, v in enumerate(viewers):
        orders.append(await _place(redis, v, timeout_s=base + i * 0.02 - time.time()))
    await asyncio.gather(*(redis.ping() for _ in range(100)))
    await asyncio.sleep(max(0, base + 1.0 - time.time()))

    async def pay(order):
        await asyncio.sleep(random.random() * 0.03)  # webhooks trickle in around the deadline
        try:
            await mark_paid(redis, order.order_id, "pi_x")
            return True
        except TransitionError:
            return False

    async def expirer():
        for _ in range(40):
            await expire_due_orders(redis, "demo")
            await asyncio.sleep(0.005)

    results = await asyncio.gather(expirer(), *(pay(o) for o in orders), expirer())
    paid = sum(1 for r in results[1:101] if r)
    await asyncio.sleep(0.3)
    await expire_due_orders(redis, "demo")
    statuses = [(await load_order(redis, o.order_id)).status for o in orders]
    assert statuses.count(Status.PAID) == paid
    assert statuses.count(Status.EXPIRED) == 100 - paid
    assert 0 < paid < 100, "the race should see both outcomes"
    # Paid units are sold; expired ones went back exactly once.
    assert int(await redis.hget("stock:{demo}", "MUG-01")) == 100 - paid
    assert await redis.xlen(print_stream("demo")) == paid
    # Expired buyers may buy again; paid ones are at their limit.
    for o, st in zip(orders, statuses, strict=True):
        count = int(await redis.hget("bought:{demo}", f"{o.viewer}|MUG-01") or 0)
        assert count == (1 if st == Status.PAID else 0)
