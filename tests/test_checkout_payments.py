"""Checkout and payments through the stripe library against a real localstripe."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest
import redis.asyncio as aioredis

from checkout.orders import PrintJob, print_stream
from tests.conftest import STAFF_PASSWORD, wait_until
from tests.stripe_helpers import event, signed

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def shop(make_app, stripe_sandbox):
    return await make_app(stripe_api_base=stripe_sandbox.url, print_worker=False)


async def add(s, sku="MUG-01", quantity=2, **extra):
    async with s.post(
        "/api/cart/items", json={"show": "demo", "sku": sku, "quantity": quantity, **extra}
    ) as r:
        assert r.status == 200, await r.text()
        return await r.json()


async def checkout(s, **extra):
    async with s.post(
        "/api/checkout", json={"name": "Ada", "email": "ada@example.com", **extra}
    ) as r:
        assert r.status == 201, await r.text()
        return await r.json()


async def order_status(s, order_id):
    async with s.get(f"/api/orders/{order_id}") as r:
        assert r.status == 200
        return (await r.json())["status"]


async def pay(s, order_id, card="4242 4242 4242 4242"):
    async with s.post(
        f"/api/orders/{order_id}/sandbox-pay",
        json={"card_number": card, "exp_month": 12, "exp_year": 2031, "cvc": "123"},
    ) as r:
        return r.status, await r.json()


async def print_jobs(redis_url, order_id):
    r = aioredis.Redis.from_url(redis_url)
    try:
        entries = await r.xrange(print_stream("demo"))
    finally:
        await r.aclose()
    return [e for _, e in entries if PrintJob.unpack(e[b"job"]).order_id == order_id]


async def test_paid_order_has_one_print_job_and_replays_change_nothing(shop, redis_url):
    s = shop.session
    # A price sent by the client is ignored: amounts come from the catalog.
    await add(s, price="0.01", unit_price="0.01")
    body = await checkout(s, amount="0.01", price="0.01")
    assert body["amount"] == "36.00" and body["currency"] == "usd"
    pay_info = body["payment"]
    assert pay_info["provider"] == "stripe" and pay_info["sandbox"] is True
    assert pay_info["client_secret"].startswith("pi_")
    order_id = body["order_id"]
    assert await order_status(s, order_id) == "pending_payment"
    async with s.get("/api/cart") as r:
        assert (await r.json())["items"] == []  # the holds now belong to the order

    status, res = await pay(s, order_id)
    assert status == 200 and res["payment_status"] == "succeeded"
    # localstripe sends the signed webhook about a second later.
    await wait_until(lambda: _is(s, order_id, "paid"), timeout=15)
    assert len(await print_jobs(redis_url, order_id)) == 1

    # The same event delivered 5 more times (Stripe retries keep the event id).
    secret = await _secret(redis_url)
    pi = body["payment"]["client_secret"].split("_secret_")[0]
    evt = event(
        "payment_intent.succeeded",
        {
            "id": pi,
            "object": "payment_intent",
            "amount": 3600,
            "currency": "usd",
            "metadata": {"order_id": order_id},
        },
    )
    answers = []
    for _ in range(5):
        payload, headers = signed(evt, secret)
        async with aiohttp.ClientSession() as raw:
            async with raw.post(f"{shop.url}/webhooks/stripe", data=payload, headers=headers) as r:
                answers.append((r.status, (await r.json())["duplicate"]))
    assert answers[0] == (200, False) and answers[1:] == [(200, True)] * 4
    # A different event id for the same payment: the state machine refuses a second "paid".
    payload, headers = signed(event("payment_intent.succeeded", evt["data"]["object"]), secret)
    async with aiohttp.ClientSession() as raw:
        async with raw.post(f"{shop.url}/webhooks/stripe", data=payload, headers=headers) as r:
            assert r.status == 200
    assert len(await print_jobs(redis_url, order_id)) == 1
    assert await order_status(s, order_id) == "paid"

    # Paid units are sold: the hold is gone but the stock does not come back.
    async with s.get("/api/shows/demo") as r:
        mug = next(p for p in (await r.json())["products"] if p["sku"] == "MUG-01")
    assert mug["available"] == 38

    # A refund arrives as charge.refunded.
    payload, headers = signed(
        event("charge.refunded", {"id": "ch_x", "object": "charge", "payment_intent": pi}), secret
    )
    async with aiohttp.ClientSession() as raw:
        async with raw.post(f"{shop.url}/webhooks/stripe", data=payload, headers=headers) as r:
            assert r.status == 200
    assert await order_status(s, order_id) == "refunded"


async def _is(s, order_id, status):
    return await order_status(s, order_id) == status


async def _secret(redis_url) -> str:
    r = aioredis.Redis.from_url(redis_url)
    try:
        return (await r.get("stripe:sandbox:webhook_secret")).decode()
    finally:
        await r.aclose()


async def test_forged_stale_or_missing_signatures_are_refused(shop, redis_url):
    s = shop.session
    await add(s)
    body = await checkout(s)
    order_id = body["order_id"]
    pi = body["payment"]["client_secret"].split("_secret_")[0]
    evt = event(
        "payment_intent.succeeded",
        {"id": pi, "amount": 3600, "currency": "usd", "metadata": {"order_id": order_id}},
    )
    secret = await _secret(redis_url)

    cases = [
        signed(evt, "whsec_forged"),
        signed(evt, secret, ts=int(time.time()) - 400),  # outside the 300 s tolerance
        (signed(evt, secret)[0], {"Content-Type": "application/json"}),
        (b'{"id": "evt_x", "type": "payment_intent.succeeded"}', signed(evt, secret)[1]),
    ]
    async with aiohttp.ClientSession() as raw:
        for payload, headers in cases:
            async with raw.post(f"{shop.url}/webhooks/stripe", data=payload, headers=headers) as r:
                assert r.status == 400
                err = await r.json()
                assert err["error"] == "bad_request" and err["detail"]
    assert await order_status(s, order_id) == "pending_payment"
    assert await print_jobs(redis_url, order_id) == []
    # The genuine one still works afterwards (a refused event is not remembered as seen).
    payload, headers = signed(evt, secret)
    async with aiohttp.ClientSession() as raw:
        async with raw.post(f"{shop.url}/webhooks/stripe", data=payload, headers=headers) as r:
            assert r.status == 200
    assert await order_status(s, order_id) == "paid"


async def test_declined_card_then_retry(shop, redis_url):
    s = shop.session
    await add(s, sku="TEE-02", quantity=1)
    order_id = (await checkout(s))["order_id"]
    status, err = await pay(s, order_id, card="4000 0000 0000 0002")
    assert status == 402 and err["error"] == "card_declined" and "declined" in err["detail"]
    assert await order_status(s, order_id) == "payment_failed"
    status, _ = await pay(s, order_id)
    assert status == 200
    await wait_until(lambda: _is(s, order_id, "paid"), timeout=15)
    assert len(await print_jobs(redis_url, order_id)) == 1


async def test_order_is_private_to_its_buyer_and_staff(shop):
    await add(shop.session)
    order_id = (await checkout(shop.session))["order_id"]
    async with aiohttp.ClientSession(shop.url) as stranger:
        async with stranger.get(f"/api/orders/{order_id}") as r:
            assert r.status == 404 and (await r.json())["error"] == "not_found"
        async with stranger.get(
            f"/api/orders/{order_id}", headers={"Authorization": f"Bearer {STAFF_PASSWORD}"}
        ) as r:
            assert r.status == 200
            order = await r.json()
    assert order["amount"] == "36.00" and order["items"][0]["quantity"] == 2
    assert set(order) >= {
        "order_id",
        "status",
        "items",
        "amount",
        "currency",
        "created_at",
        "paid_at",
        "printed_at",
        "fulfilled_at",
    }


async def test_paid_at_stripe_without_a_webhook_is_paid_at_its_deadline_not_expired(
    make_app, stripe_sandbox, redis_url
):
    """The buyer paid, but no webhook ever applied it (lost on the way, or its ``paid``
    move lost in a Redis failover): when the order's payment time runs out, the server asks
    Stripe, marks it paid and its label prints, instead of putting its units back on sale."""
    from server import keys as app_keys

    app = await make_app(stripe_api_base=stripe_sandbox.url, payment_timeout_s=3)
    commerce = app.app[app_keys.EXTRA]["commerce"]
    # localstripe stops sending this server its events: the payment's webhook never comes.
    await commerce._register_sandbox_webhook(["showroom.disabled"])
    s = app.session
    await add(s, sku="TEE-02", quantity=2)
    order_id = (await checkout(s))["order_id"]
    status, body = await pay(s, order_id)
    assert status == 200, body
    await asyncio.sleep(1.0)
    assert await order_status(s, order_id) == "pending_payment", "no webhook: not paid yet"
    await wait_until(lambda: _is(s, order_id, "paid"), timeout=10)
    assert len(await print_jobs(redis_url, order_id)) == 1, "its label is queued"
    async with s.get("/api/shows/demo") as r:
        tee = next(p for p in (await r.json())["products"] if p["sku"] == "TEE-02")
    assert tee["available"] == 3, "its units stay sold"


async def test_unpaid_order_expires_and_releases_its_holds(make_app, stripe_sandbox, redis_url):
    app = await make_app(stripe_api_base=stripe_sandbox.url, payment_timeout_s=1)
    s = app.session
    await add(s, sku="TEE-02", quantity=2)
    order_id = (await checkout(s))["order_id"]
    await wait_until(lambda: _is(s, order_id, "expired"), timeout=10)
    async with s.get("/api/shows/demo") as r:
        tee = next(p for p in (await r.json())["products"] if p["sku"] == "TEE-02")
    assert tee["available"] == 5
    # A payment arriving after expiry does not resurrect the order.
    status, _ = await pay(s, order_id)
    assert status == 409
    await asyncio.sleep(0.5)
    assert await order_status(s, order_id) == "expired"
