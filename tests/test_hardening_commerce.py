"""Hardening of the commerce and printing paths (issue 16), tried as an attacker would:
on a real app, Redis, localstripe and a loopback TCP printer."""

from __future__ import annotations

import gzip
import hashlib
import hmac
import logging
import time

import aiohttp
import pytest
import redis.asyncio as aioredis

from checkout.orders import OrderItem, Status, load_order
from tests.conftest import manifest_text, wait_until
from tests.stripe_helpers import event, signed
from tests.test_printing_worker import TcpPrinter, has_status, one_printer, paid_order

pytestmark = pytest.mark.timeout(60)

# What a hostile buyer name carries: open the cash drawer, cut, printer setup mode,
# feed 127 lines (metres of paper).
ESC_P = b"\x1bp\x00\x19\xfa"
GS_V = b"\x1dV\x00"
GS_E = b"\x1d(E\x03\x00\x01IN"
ESC_D = b"\x1bd\x7f"
INJECTIONS = (ESC_P, GS_V, GS_E, ESC_D)


@pytest.fixture
async def shop(make_app, stripe_sandbox, redis_url, tmp_path):
    printer = TcpPrinter()
    path = tmp_path / "demo.toml"
    path.write_text(manifest_text("demo", printers=one_printer(printer.url)))
    app = await make_app([path], stripe_api_base=stripe_sandbox.url)
    redis = aioredis.Redis.from_url(redis_url)
    yield app, printer, redis
    await redis.aclose()
    printer.close()


async def add(s, sku="MUG-01", quantity=1):
    async with s.post(
        "/api/cart/items", json={"show": "demo", "sku": sku, "quantity": quantity}
    ) as r:
        assert r.status == 200, await r.text()
        return await r.json()


async def checkout(s, name="Ada", email="ada@example.com"):
    async with s.post("/api/checkout", json={"name": name, "email": email}) as r:
        assert r.status == 201, await r.text()
        return await r.json()


# --- 1. printer command injection ---------------------------------------------------


async def test_control_characters_in_names_are_refused_and_never_reach_the_printer(shop):
    app, printer, redis = shop
    s = app.session
    await add(s)
    for seq in INJECTIONS:
        name = "Eve" + seq.decode("latin-1") + "Smith"
        for body in ({"name": name, "email": "eve@example.com"}, {"name": "Eve", "email": name}):
            async with s.post("/api/checkout", json=body) as r:
                assert r.status == 400, await r.text()
                err = await r.json()
                assert err["error"] == "bad_request" and "control" in err["detail"]
    for sneaky in (
        "Eve\u202emoc.live",
        "Eve\u2066x\u2069",
        "Eve\u200b",
        "Eve\ufeff",
        "A\u2028B",
        "Ada\nPAID IN CASH",
    ):
        async with s.post("/api/checkout", json={"name": sneaky, "email": "e@example.com"}) as r:
            assert r.status == 400, sneaky
    async with s.get("/api/cart") as r:  # nothing changed: the hold is still in the cart
        assert [i["sku"] for i in (await r.json())["items"]] == ["MUG-01"]

    # A name stored before the check existed is stripped when its label is built.
    stored = "Eve" + "".join(seq.decode("latin-1") for seq in INJECTIONS) + "Smith"
    order = await paid_order(redis, buyer=stored)
    await wait_until(lambda: has_status(redis, order.order_id, Status.PRINTED), 15)
    # And a normal order (Unicode, spaces, a ZWJ emoji) prints as usual.
    fine = await paid_order(
        redis, buyer="Zoë O'Brien-Núñez", items=[OrderItem("TEE-02", "Crewneck tee", 1, 3200)]
    )
    await wait_until(lambda: has_status(redis, fine.order_id, Status.PRINTED), 15)
    labels = printer.labels()
    assert len(labels) == 2
    data = b"".join(labels)
    for seq in (ESC_P, GS_E, ESC_D, b"\x1bp", b"\x1d(E"):
        assert seq not in data, seq
    # The printer's own feed and cut end each label; none in the middle.
    for label in labels:
        assert label.count(b"\x1bd") == 1 and label.count(b"\x1dV") == 1
        assert label.endswith(b"\x1bd\x06\x1dV\x00")
    assert b"EvepSmith" in labels[0] or b"Eve" in labels[0] and b"Smith" in labels[0]
    assert "Zoë".encode("cp437") in labels[1] or b"Zo" in labels[1]


async def test_host_text_with_control_characters_is_refused(shop):
    app, _, redis = shop
    s = app.session
    async with s.post("/api/shows/demo/ticker", json={"text": "Sale"}, headers=app.auth()) as r:
        assert r.status == 200
    for text in ("Sale\x1bp\x00", "Sale \u202eevil", "Sale\x07", "a\ud800"):
        async with s.post("/api/shows/demo/ticker", json={"text": text}, headers=app.auth()) as r:
            assert r.status == 400, text
            assert (await r.json())["error"] == "bad_request"
    async with s.post(
        "/api/shows/demo/feature", json={"sku": "MUG\x1b-01"}, headers=app.auth()
    ) as r:
        assert r.status == 400
    async with s.get("/api/shows/demo") as r:
        assert (await r.json())["ticker"] == "Sale"


# --- 6. webhooks ---------------------------------------------------------------------


async def _secret(redis) -> str:
    return (await redis.get("stripe:sandbox:webhook_secret")).decode()


async def _post(url, payload, headers):
    async with aiohttp.ClientSession() as raw:
        async with raw.post(f"{url}/webhooks/stripe", data=payload, headers=headers) as r:
            return r.status, await r.json()


async def test_signed_webhook_for_another_payment_does_not_mark_the_order_paid(shop):
    app, _, redis = shop
    s = app.session
    await add(s, quantity=2)
    body = await checkout(s)
    order_id = body["order_id"]
    pi = body["payment"]["client_secret"].split("_secret_")[0]
    secret = await _secret(redis)
    genuine = {
        "id": pi,
        "object": "payment_intent",
        "amount": 3600,
        "currency": "usd",
        "metadata": {"order_id": order_id, "show": "demo"},
    }
    forged = [
        {**genuine, "id": "pi_attacker000000000001"},  # another payment (1 cent, eur)
        {**genuine, "id": "pi_attacker000000000002", "amount": 1, "currency": "eur"},
        {**genuine, "amount": 1},
        {**genuine, "currency": "eur"},
        {**genuine, "metadata": {"order_id": order_id, "show": "other"}},
    ]
    for obj in forged:
        status, answer = await _post(
            app.url, *signed(event("payment_intent.succeeded", obj), secret)
        )
        assert status == 200 and answer.get("ignored"), (obj, answer)
    order = await load_order(redis, order_id)
    assert order.status == Status.PENDING_PAYMENT and order.payment_intent == pi
    assert await redis.xlen("print:jobs") == 0
    # A refund or a failure for someone else's payment does not touch it either.
    other = {"id": "ch_x", "object": "charge", "payment_intent": "pi_attacker000000000001"}
    await _post(app.url, *signed(event("charge.refunded", other), secret))
    failed = {**genuine, "id": "pi_attacker000000000003"}
    await _post(app.url, *signed(event("payment_intent.payment_failed", failed), secret))
    assert (await load_order(redis, order_id)).status == Status.PENDING_PAYMENT

    # Odd shapes, correctly signed: 400 JSON, never a 500, nothing changes.
    odd = [
        {"id": "evt_odd1", "type": "payment_intent.succeeded", "data": []},
        {"id": "evt_odd2", "type": "payment_intent.succeeded", "data": {"object": "pi"}},
        {
            "id": "evt_odd3",
            "type": "payment_intent.succeeded",
            "data": {"object": {**genuine, "amount": "3600"}},
        },
        {
            "id": "evt_odd4",
            "type": "payment_intent.succeeded",
            "data": {"object": {**genuine, "metadata": []}},
        },
        {
            "id": "evt_odd5",
            "type": "payment_intent.succeeded",
            "data": {"object": {**genuine, "id": 7}},
        },
        {"id": "evt_odd6", "type": 5, "data": {"object": genuine}},
        {
            "id": "evt_odd7",
            "type": "charge.refunded",
            "data": {"object": {"payment_intent": ["x"]}},
        },
        {
            "id": "evt_odd8",
            "type": "payment_intent.succeeded",
            "data": {"object": {**genuine, "metadata": {"order_id": 5}}},
        },
    ]
    for evt in odd:
        status, answer = await _post(app.url, *signed(evt, secret))
        assert status == 400 and answer["error"] == "bad_request", (evt, answer)
    assert (await load_order(redis, order_id)).status == Status.PENDING_PAYMENT

    # The genuine event still works.
    status, answer = await _post(
        app.url, *signed(event("payment_intent.succeeded", genuine), secret)
    )
    assert status == 200 and "ignored" not in answer
    order = await load_order(redis, order_id)
    assert order.status in (Status.PAID, Status.PRINTED) and order.payment_intent == pi


# --- 11. bodies that used to be 500s ---------------------------------------------------


async def test_nested_json_and_bad_content_encoding_are_400_json(shop, caplog):
    app, _, _ = shop
    caplog.set_level(logging.INFO)
    cases = [
        ({}, b"[" * 5000),
        ({}, b'{"a":' * 2000 + b"1" + b"}" * 2000),
        ({}, b'{"show": "demo", "sku": "MUG-01", "x": ' + b"[" * 100 + b"]" * 100 + b"}"),
        ({"Content-Encoding": "gzip"}, b'{"show": "demo", "sku": "MUG-01"}'),
        ({"Content-Encoding": "deflate"}, b'{"show": "demo", "sku": "MUG-01"}'),
        ({"Content-Encoding": "br"}, b"{}"),
        ({"Content-Encoding": "zstd"}, b"{}"),
        ({"Content-Encoding": "bogus, gzip"}, b"{}"),
        ({"Content-Encoding": "gzip"}, gzip.compress(b'{"show": "demo"}')[:-6]),  # cut short
    ]
    async with aiohttp.ClientSession() as raw:
        for path in ("/api/cart/items", "/webhooks/stripe", "/api/checkout"):
            for headers, body in cases:
                headers = {"Content-Type": "application/json", **headers}
                async with raw.post(f"{app.url}{path}", data=body, headers=headers) as r:
                    assert r.status == 400, (path, headers, body[:20], await r.text())
                    assert (await r.json())["error"] == "bad_request"
        # A correctly signed webhook whose body is 5,000 brackets deep.
        secret = (await shop[2].get("stripe:sandbox:webhook_secret")).decode()
        ts = int(time.time())
        deep = b"[" * 5000
        mac = hmac.new(secret.encode(), b"%d.%s" % (ts, deep), hashlib.sha256).hexdigest()
        headers = {"Stripe-Signature": f"t={ts},v1={mac}", "Content-Type": "application/json"}
        async with raw.post(f"{app.url}/webhooks/stripe", data=deep, headers=headers) as r:
            assert r.status == 400 and (await r.json())["error"] == "bad_request"
        # A bomb: 16 KiB allowed, a few hundred bytes of gzip that inflate to 10 MB.
        bomb = gzip.compress(b'{"a": "' + b"x" * 10_000_000 + b'"}')
        gzipped = {"Content-Encoding": "gzip", "Content-Type": "application/json"}
        async with raw.post(f"{app.url}/api/cart/items", data=bomb, headers=gzipped) as r:
            assert r.status == 413 and (await r.json())["error"] == "too_large"
        # A well-formed gzip body is still understood.
        good = gzip.compress(b'{"show": "demo", "sku": "MUG-01", "quantity": 1}')
        async with raw.post(f"{app.url}/api/cart/items", data=good, headers=gzipped) as r:
            assert r.status == 200, await r.text()
    assert not [rec for rec in caplog.records if rec.exc_info], "a traceback was logged"
    assert not [rec for rec in caplog.records if "unhandled" in rec.getMessage()]


def test_manifest_text_with_control_characters_is_refused(tmp_path):
    from server.config import ManifestError, load_manifest
    from tests.conftest import manifest_text

    for needle, bad in (
        ('name = "Stoneware mug"', 'name = "Stoneware mug\\u001bp\\u0000"'),
        ('title = "Test Show demo"', 'title = "Test \\u202eShow"'),
    ):
        text = manifest_text("demo")
        assert needle in text
        path = tmp_path / "bad.toml"
        path.write_text(text.replace(needle, bad))
        with pytest.raises(ManifestError, match="control or formatting"):
            load_manifest(path, {})
