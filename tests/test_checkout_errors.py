"""Every bad input of the cart/checkout/orders API answers its 4xx with the JSON error
shape, and changes nothing."""

from __future__ import annotations

import aiohttp
import pytest
import redis.asyncio as aioredis

from tests.conftest import STREAM_KEY

pytestmark = pytest.mark.timeout(60)


async def call(session, method, path, expect, code, **kwargs):
    async with session.request(method, path, **kwargs) as r:
        body = await r.json()
        assert r.status == expect, (method, path, kwargs, r.status, body)
        assert set(body) == {"error", "detail"} and body["detail"], body
        assert body["error"] == code, (method, path, kwargs, body)
        assert r.content_type == "application/json"


async def snapshot(redis_url) -> dict:
    r = aioredis.Redis.from_url(redis_url)
    try:
        keys = sorted(
            k for k in await r.keys("*") if not k.startswith(b"showroom:") and b"presence" not in k
        )
        out = {}
        for k in keys:
            t = (await r.type(k)).decode()
            if t == "hash":
                out[k] = await r.hgetall(k)
            elif t == "zset":
                out[k] = await r.zrange(k, 0, -1, withscores=True)
            elif t == "string":
                out[k] = await r.get(k)
        return out
    finally:
        await r.aclose()


ADD = "/api/cart/items"


async def test_bad_cart_inputs(make_app, stripe_sandbox, redis_url):
    app = await make_app(stripe_api_base=stripe_sandbox.url)
    s = app.session
    async with s.post(ADD, json={"show": "demo", "sku": "MUG-01", "quantity": 1}) as r:
        assert r.status == 200
    before = await snapshot(redis_url)
    cases = [
        (
            {"data": b"not json", "headers": {"Content-Type": "application/json"}},
            400,
            "bad_request",
        ),
        ({"json": [1, 2]}, 400, "bad_request"),
        ({"json": {"sku": "MUG-01", "quantity": 1}}, 400, "bad_request"),
        ({"json": {"show": 7, "sku": "MUG-01", "quantity": 1}}, 400, "bad_request"),
        ({"json": {"show": "nope", "sku": "MUG-01", "quantity": 1}}, 404, "not_found"),
        ({"json": {"show": "demo", "quantity": 1}}, 400, "bad_request"),
        ({"json": {"show": "demo", "sku": ["MUG-01"], "quantity": 1}}, 400, "bad_request"),
        ({"json": {"show": "demo", "sku": "NOPE-9", "quantity": 1}}, 404, "not_found"),
        ({"json": {"show": "demo", "sku": "../../x", "quantity": 1}}, 404, "not_found"),
        ({"json": {"show": "demo", "sku": "MUG-01", "quantity": 0}}, 400, "bad_request"),
        ({"json": {"show": "demo", "sku": "MUG-01", "quantity": -3}}, 400, "bad_request"),
        ({"json": {"show": "demo", "sku": "MUG-01", "quantity": 1.5}}, 400, "bad_request"),
        ({"json": {"show": "demo", "sku": "MUG-01", "quantity": "1"}}, 400, "bad_request"),
        ({"json": {"show": "demo", "sku": "MUG-01", "quantity": True}}, 400, "bad_request"),
        ({"json": {"show": "demo", "sku": "MUG-01", "quantity": 10**30}}, 400, "bad_request"),
        ({"json": {"show": "demo", "sku": "MUG-01", "quantity": None}}, 400, "bad_request"),
        ({"json": {"show": "demo", "sku": "MUG-01", "quantity": 5}}, 409, "limit_reached"),
        ({"json": {"show": "demo", "sku": "TEE-02", "quantity": 6}}, 409, "sold_out"),
        (
            {
                "data": b'{"show": "' + b"x" * 20000 + b'"}',
                "headers": {"Content-Type": "application/json"},
            },
            413,
            "too_large",
        ),
    ]
    for kwargs, status, code in cases:
        await call(s, "POST", ADD, status, code, **kwargs)
    await call(s, "DELETE", "/api/cart/items/TEE-02", 404, "not_found")
    await call(s, "DELETE", "/api/cart/items/NOPE-9", 404, "not_found")
    assert await snapshot(redis_url) == before


async def test_bad_checkout_and_order_inputs(make_app, stripe_sandbox, redis_url):
    app = await make_app(stripe_api_base=stripe_sandbox.url)
    s = app.session
    await call(s, "POST", "/api/checkout", 409, "cart_empty", json={"name": "A", "email": "a@b.co"})
    async with s.post(ADD, json={"show": "demo", "sku": "MUG-01", "quantity": 1}) as r:
        assert r.status == 200
    before = await snapshot(redis_url)
    for body in [
        {},
        {"name": "Ada"},
        {"email": "ada@example.com"},
        {"name": "", "email": "ada@example.com"},
        {"name": "Ada", "email": "not-an-email"},
        {"name": "Ada", "email": 5},
        {"name": ["Ada"], "email": "ada@example.com"},
        {"name": "A" * 500, "email": "ada@example.com"},
    ]:
        await call(s, "POST", "/api/checkout", 400, "bad_request", json=body)
    await call(
        s,
        "POST",
        "/api/checkout",
        400,
        "bad_request",
        data=b"{",
        headers={"Content-Type": "application/json"},
    )
    await call(s, "GET", "/api/orders/ord_doesnotexist", 404, "not_found")
    await call(s, "GET", "/api/orders/" + "x" * 200, 404, "not_found")
    await call(
        s,
        "POST",
        "/api/orders/ord_nope/sandbox-pay",
        404,
        "not_found",
        json={"card_number": "4242424242424242", "exp_month": 1, "exp_year": 30, "cvc": "123"},
    )
    assert await snapshot(redis_url) == before

    async with s.post("/api/checkout", json={"name": "Ada", "email": "ada@example.com"}) as r:
        assert r.status == 201
        order_id = (await r.json())["order_id"]
    before = await snapshot(redis_url)
    path = f"/api/orders/{order_id}/sandbox-pay"
    good = {"card_number": "4242424242424242", "exp_month": 12, "exp_year": 2031, "cvc": "123"}
    for patch in [
        {"card_number": "4242"},
        {"card_number": 4242424242424242},
        {"card_number": "4242abcd42424242"},
        {"exp_month": 13},
        {"exp_month": "12"},
        {"exp_year": "2031"},
        {"cvc": "12"},
        {"cvc": 123},
    ]:
        await call(s, "POST", path, 400, "bad_request", json={**good, **patch})
    async with aiohttp.ClientSession(app.url) as stranger:
        await call(stranger, "POST", path, 404, "not_found", json=good)
    assert await snapshot(redis_url) == before


async def test_bad_drop_and_stock_inputs(app, redis_url):
    s = app.session
    host = app.auth(STREAM_KEY)
    before = await snapshot(redis_url)
    drops = "/api/shows/demo/drops"
    good = {"sku": "MUG-01", "quantity": 5, "duration_s": 60, "per_buyer_limit": 1}
    await call(s, "POST", drops, 401, "unauthorized", json=good)
    await call(s, "POST", drops, 401, "unauthorized", json=good, headers=app.auth("wrong-key"))
    await call(s, "POST", "/api/shows/nope/drops", 404, "not_found", json=good, headers=host)
    for patch, status, code in [
        ({"sku": "NOPE-9"}, 404, "not_found"),
        ({"sku": None}, 400, "bad_request"),
        ({"quantity": 0}, 400, "bad_request"),
        ({"quantity": "5"}, 400, "bad_request"),
        ({"duration_s": 0}, 400, "bad_request"),
        ({"duration_s": "60"}, 400, "bad_request"),
        ({"per_buyer_limit": -1}, 400, "bad_request"),
        ({"price": "free"}, 400, "bad_request"),
        ({"price": "-1.00"}, 400, "bad_request"),
        ({"price": "1.005"}, 400, "bad_request"),
        ({"quantity": 41}, 409, "sold_out"),
    ]:
        await call(s, "POST", drops, status, code, json={**good, **patch}, headers=host)
    stock = "/api/shows/demo/stock"
    await call(s, "POST", stock, 401, "unauthorized", json={"sku": "MUG-01", "available": 3})
    for body in [{"sku": "MUG-01"}, {"sku": "MUG-01", "available": -1}, {"available": 3}]:
        await call(s, "POST", stock, 400, "bad_request", json=body, headers=host)
    await call(
        s, "POST", stock, 404, "not_found", json={"sku": "X-1", "available": 3}, headers=host
    )
    assert await snapshot(redis_url) == before


async def test_checkout_without_a_payment_provider_is_503_and_keeps_the_cart(app, redis_url):
    async with app.session.post(ADD, json={"show": "demo", "sku": "MUG-01", "quantity": 1}) as r:
        assert r.status == 200
    before = await snapshot(redis_url)
    await call(
        app.session,
        "POST",
        "/api/checkout",
        503,
        "unavailable",
        json={"name": "Ada", "email": "ada@example.com"},
    )
    assert await snapshot(redis_url) == before
