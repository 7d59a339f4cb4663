"""Hoarding stock (issue 16, item 3): a fresh cookie is not a fresh buyer.

Per-IP limits on add-to-cart and checkout, the per-buyer limit also per email, a cap on
unpaid orders, shorter holds during a drop. Real app, Redis and localstripe; a second
client address comes from 127.0.0.2 (the whole 127/8 is loopback on Linux).
"""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest

from tests.conftest import buyer_session, manifest_text

pytestmark = pytest.mark.timeout(60)

PRODUCTS = """
[[products]]
sku = "LIM-1"
name = "Signed print"
price = "40.00"
stock = 30
per_buyer_limit = 1

[[products]]
sku = "BIG"
name = "Sticker"
price = "1.00"
stock = 1000
"""


@pytest.fixture
async def make_shop(make_app, stripe_sandbox, tmp_path):
    async def make(**settings):
        path = tmp_path / "demo.toml"
        path.write_text(manifest_text("demo", products=PRODUCTS))
        return await make_app([path], stripe_api_base=stripe_sandbox.url, **settings)

    return make


def cookieless(url: str, source_ip: str = "127.0.0.1") -> aiohttp.ClientSession:
    """A client that keeps no cookie: every request is a brand-new viewer."""
    connector = aiohttp.TCPConnector(local_addr=(source_ip, 0))
    return aiohttp.ClientSession(url, connector=connector, cookie_jar=aiohttp.DummyCookieJar())


async def add(s, sku="LIM-1", quantity=1):
    async with s.post(
        "/api/cart/items", json={"show": "demo", "sku": sku, "quantity": quantity}
    ) as r:
        return r.status, await r.json()


async def checkout(s, email="ada@example.com"):
    async with s.post("/api/checkout", json={"name": "Ada", "email": email}) as r:
        return r.status, await r.json()


async def available(s, sku):
    async with s.get("/api/shows/demo") as r:
        return next(p for p in (await r.json())["products"] if p["sku"] == sku)["available"]


async def test_cookieless_requests_from_one_ip_cannot_hold_a_limited_product(make_shop):
    app = await make_shop()  # default: an IP stands for up to 4 buyers
    async with cookieless(app.url) as s:
        answers = [await add(s) for _ in range(12)]
        ok = [a for st, a in answers if st == 200]
        refused = [a for st, a in answers if st == 409]
        assert len(ok) == 4 and len(refused) == 8
        assert {a["error"] for a in refused} == {"limit_reached"}
        assert "network" in refused[0]["detail"]
        assert await available(s, "LIM-1") == 30 - 4
    # Another address is not held back by this one.
    async with cookieless(app.url, "127.0.0.2") as other:
        assert (await add(other))[0] == 200
        assert await available(other, "LIM-1") == 30 - 5


async def test_per_ip_allowance_is_configurable_and_released_units_count_again(make_shop):
    app = await make_shop(buyers_per_ip=1)
    async with buyer_session(app.url) as a, buyer_session(app.url) as b:
        assert (await add(a))[0] == 200
        status, err = await add(b)  # a second cookie on the same IP
        assert status == 409 and err["error"] == "limit_reached"
        async with a.delete("/api/cart/items/LIM-1") as r:
            assert r.status == 200
        assert (await add(b))[0] == 200  # the IP's unit was given back
    app_off = await make_shop(buyers_per_ip=0)  # load tests: many buyers on 127.0.0.1
    async with cookieless(app_off.url) as s:
        assert [(await add(s))[0] for _ in range(6)] == [200] * 6


async def test_per_buyer_limit_is_also_checked_per_email_at_checkout(make_shop):
    app = await make_shop(buyers_per_ip=10)
    async with buyer_session(app.url) as a, buyer_session(app.url) as b:
        assert (await add(a))[0] == 200
        assert (await checkout(a, "Ada@Example.com"))[0] == 201
        assert (await add(b))[0] == 200  # a new cookie: the cart allows it...
        status, err = await checkout(b, " ada@example.COM")  # ...the same email does not
        assert status == 409 and err["error"] == "limit_reached" and "email" in err["detail"]
        async with b.get("/api/cart") as r:  # refused, nothing changed: still held
            assert [i["sku"] for i in (await r.json())["items"]] == ["LIM-1"]
        assert (await checkout(b, "grace@example.com"))[0] == 201


async def test_unpaid_orders_per_buyer_and_per_ip_are_capped(make_shop):
    app = await make_shop()  # 2 unpaid orders per buyer, 4 buyers per IP
    async with buyer_session(app.url) as s:
        results = []
        for _ in range(10):
            assert (await add(s, "BIG", 99))[0] == 200
            results.append(await checkout(s))
            if results[-1][0] != 201:
                async with s.delete("/api/cart/items/BIG") as r:
                    assert r.status == 200
        assert [st for st, _ in results] == [201, 201] + [409] * 8
        assert results[2][1]["error"] == "limit_reached" and "unpaid" in results[2][1]["detail"]
        assert await available(s, "BIG") == 1000 - 2 * 99

    # Fresh cookies on the same IP: at most 2 x 4 unpaid orders in all.
    placed = 2
    for _ in range(10):
        async with buyer_session(app.url) as fresh:
            assert (await add(fresh, "BIG", 50))[0] == 200
            status, _ = await checkout(fresh)
            placed += status == 201
    assert placed == 8
    async with buyer_session(app.url) as s:
        assert await available(s, "BIG") >= 1000 - 2 * 99 - 6 * 50 - 4 * 50  # holds in carts
    # A buyer elsewhere still checks out.
    async with aiohttp.ClientSession(
        app.url,
        connector=aiohttp.TCPConnector(local_addr=("127.0.0.2", 0)),
        cookie_jar=aiohttp.CookieJar(unsafe=True),
    ) as other:
        assert (await add(other, "BIG", 1))[0] == 200
        assert (await checkout(other))[0] == 201


async def test_drop_units_are_held_for_the_shorter_drop_hold(make_shop):
    app = await make_shop(hold_seconds=600, drop_hold_seconds=2, buyers_per_ip=0)
    async with app.session.post(
        "/api/shows/demo/drops",
        json={"sku": "BIG", "quantity": 10, "duration_s": 60, "per_buyer_limit": 5},
        headers=app.auth(),
    ) as r:
        assert r.status == 201
    async with buyer_session(app.url) as s:
        now_ms = time.time() * 1000
        status, cart = await add(s, "BIG", 2)
        assert status == 200
        assert cart["items"][0]["hold_expires_at"] - now_ms < 3000
        status, cart = await add(s, "LIM-1", 1)  # not the drop's product: the normal hold
        line = next(i for i in cart["items"] if i["sku"] == "LIM-1")
        assert line["hold_expires_at"] - now_ms > 590_000
        async with s.get("/api/shows/demo/drop") as r:
            assert (await r.json())["drop"]["remaining"] == 8
        deadline = time.monotonic() + 6
        while time.monotonic() < deadline:
            async with s.get("/api/shows/demo/drop") as r:
                if (await r.json())["drop"]["remaining"] == 10:
                    break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("the drop's units were not released after the drop hold")
