"""A Redis written by the first key layout (global zsets, untagged per-show keys, one
print stream) is moved to the show-tagged layout when a server starts on it: stock,
holds, unpaid orders, paid orders and their pending label survive."""

from __future__ import annotations

import time

import pytest
import redis.asyncio as aioredis

from checkout import carts, keys
from checkout.ordering import expire_due_orders
from checkout.orders import (
    Order,
    OrderItem,
    PrintJob,
    Status,
    load_order,
    print_stream,
)
from server import layout_migration

pytestmark = pytest.mark.timeout(60)


def _order(oid: str, status: Status) -> Order:
    return Order(
        order_id=oid,
        show="demo",
        viewer="v9",
        status=status,
        items=[OrderItem("MUG-01", "Mug", 1, 1800)],
        amount_cents=1800,
        currency="usd",
        number=7,
    )


async def _write_first_layout(r) -> None:
    now = int(time.time() * 1000)
    await r.hset("stock:demo", mapping={"MUG-01": 10})
    await r.set("show:demo:order_seq", 7)
    # A hold that has expired (its units must come back) and one still live.
    await r.hset("cart:v1", "demo|MUG-01", "2|1800|")
    await r.hset("cart:v2", "demo|MUG-01", "1|1800|")
    await r.zadd("holds:expiry", {"v1|demo|MUG-01": now - 1000, "v2|demo|MUG-01": now + 600_000})
    # An unpaid order past its deadline, holding 3 units.
    await r.hset(
        "order:ord_aaaaaaaaaaaaaaaaaaaa",
        mapping=_order("ord_aaaaaaaaaaaaaaaaaaaa", Status.PENDING_PAYMENT).to_redis(),
    )
    await r.hset(
        "orderstock:ord_aaaaaaaaaaaaaaaaaaaa",
        mapping={"MUG-01": "3|", "_show": "demo", "_viewer": "v8"},
    )
    await r.hset("bought:demo:v8", "MUG-01", 3)
    await r.zadd("orders:pending", {"ord_aaaaaaaaaaaaaaaaaaaa": now - 1000})
    # A paid order whose label is not printed yet: its job waits in the old stream.
    paid = _order("ord_bbbbbbbbbbbbbbbbbbbb", Status.PAID)
    await r.hset("order:ord_bbbbbbbbbbbbbbbbbbbb", mapping=paid.to_redis())
    await r.zadd("orders:demo", {paid.order_id: paid.created_at})
    await r.xgroup_create("print:jobs", "printers", id="0", mkstream=True)
    await r.xadd("print:jobs", {"job": PrintJob("ord_done", "demo").pack()})
    await r.xreadgroup("printers", "w1", {"print:jobs": ">"}, count=1)
    await r.xack("print:jobs", "printers", (await r.xrange("print:jobs"))[0][0])
    entry = await r.xadd("print:jobs", {"job": PrintJob(paid.order_id, "demo").pack()})
    await r.hset("print:parked", entry, b"record of a job parked under its old name")


async def test_first_layout_data_moves_and_keeps_working(redis_url):
    r = aioredis.Redis.from_url(redis_url)
    try:
        await _write_first_layout(r)
        counts = await layout_migration.ensure_layout(r, ["demo"])
        assert counts is not None and counts["print_jobs"] == 1 and counts["holds"] == 2
        assert await layout_migration.ensure_layout(r, ["demo"]) is None  # once
        assert not await r.exists("holds:expiry", "orders:pending", "print:jobs", "stock:demo")

        # The paid order is listed and its label job (only the unprinted one) is queued.
        paid = await load_order(r, "ord_bbbbbbbbbbbbbbbbbbbb")
        assert paid is not None and paid.status == Status.PAID
        assert await r.zscore(keys.orders_index("demo"), paid.order_id) is not None
        jobs = [PrintJob.unpack(e[b"job"]) for _, e in await r.xrange(print_stream("demo"))]
        assert [j.order_id for j in jobs] == [paid.order_id]
        assert not await r.exists("print:parked")
        assert int(await r.get(keys.order_seq("demo"))) == 7  # numbers go on, not from 1

        # The reaper of the new layout returns the expired hold and the lapsed order.
        assert await carts.reap_expired_holds(r, "demo") == [("demo", "MUG-01")]
        expired, _ = await expire_due_orders(r, "demo")
        assert expired == ["ord_aaaaaaaaaaaaaaaaaaaa"]
        assert int(await r.hget(keys.stock("demo"), "MUG-01")) == 10 + 2 + 3
        assert await r.hget(keys.bought("demo"), "v8|MUG-01") is None  # the limit is freed
        # The live hold is still the buyer's, in the show's cart.
        lines = await carts.read_cart(r, "v2", ["demo"])
        assert [(x.sku, x.quantity) for x in lines] == [("MUG-01", 1)]
    finally:
        await r.aclose()
