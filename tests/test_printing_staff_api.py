"""Staff APIs around printing, on the real app with its built-in print worker."""

from __future__ import annotations

import io

import pytest
import redis.asyncio as aioredis
from PIL import Image

from checkout.orders import Status, load_order
from devices import store
from tests.conftest import STAFF_PASSWORD, manifest_text, wait_until
from tests.test_printing_worker import TcpPrinter, has_status, one_printer, paid_order


@pytest.fixture
async def setup(make_app, redis_url, tmp_path):
    printer, other_printer = TcpPrinter(), TcpPrinter()
    path = tmp_path / "demo.toml"
    path.write_text(manifest_text("demo", printers=one_printer(printer.url)))
    other = tmp_path / "other.toml"  # a second show with another staff password
    other.write_text(
        manifest_text("other").replace(STAFF_PASSWORD, "other-staff-pw")
        + one_printer(other_printer.url, name="other-printer")
    )
    app = await make_app([path, other], public_url="https://shop.example")
    redis = aioredis.Redis.from_url(redis_url)
    yield app, printer, redis
    await redis.aclose()
    printer.close()
    other_printer.close()


@pytest.mark.timeout(60)
async def test_reprint_and_fulfil_need_staff_and_do_what_they_say(setup):
    app, printer, redis = setup
    order = await paid_order(redis, buyer="Staff Test")
    await wait_until(lambda: has_status(redis, order.order_id, Status.PRINTED), 10)
    assert len(printer.labels()) == 1
    assert f"https://shop.example/staff/orders/{order.order_id}".encode() in printer.labels()[0]
    s = app.session
    for path in (f"/api/orders/{order.order_id}/reprint", f"/api/orders/{order.order_id}/fulfil"):
        async with s.post(path) as r:
            assert r.status == 401 and (await r.json())["error"] == "unauthorized"
        async with s.post(path, headers=app.auth("wrong-password")) as r:
            assert r.status == 401
        async with s.post(path, headers=app.auth("other-staff-pw")) as r:  # other show's staff
            assert r.status == 401
    assert len(printer.labels()) == 1
    assert (await load_order(redis, order.order_id)).status == Status.PRINTED

    async with s.post(f"/api/orders/{order.order_id}/reprint", headers=app.auth()) as r:
        assert r.status == 202
    await wait_until(lambda: len(printer.labels()) == 2, 10)
    assert b"REPRINT" in printer.labels()[1] and b"Staff Test" in printer.labels()[1]
    assert (await load_order(redis, order.order_id)).status == Status.PRINTED

    async with s.post(f"/api/orders/{order.order_id}/fulfil", headers=app.auth()) as r:
        assert r.status == 200
        body = await r.json()
    assert body["status"] == "fulfilled" and body["fulfilled_at"]
    assert (await load_order(redis, order.order_id)).status == Status.FULFILLED
    async with s.post(f"/api/orders/{order.order_id}/fulfil", headers=app.auth()) as r:
        assert r.status == 200 and (await r.json())["status"] == "fulfilled"
    async with s.post("/api/orders/nope/fulfil", headers=app.auth()) as r:
        assert r.status == 404 and (await r.json())["error"] == "not_found"
    async with s.post("/api/orders/bad id!/reprint", headers=app.auth()) as r:
        assert r.status == 404


@pytest.mark.timeout(60)
async def test_ready_sits_between_printed_and_fulfilled_and_is_announced(setup):
    """Staff mark a printed order packed: `ready` (with its time), announced on the show's
    events; it can then be fulfilled but never goes back to ready."""
    app, printer, redis = setup
    order = await paid_order(redis, buyer="Ready Rae")
    await wait_until(lambda: has_status(redis, order.order_id, Status.PRINTED), 10)
    s = app.session
    path = f"/api/orders/{order.order_id}/ready"
    async with s.post(path) as r:
        assert r.status == 401
    async with s.post(path, headers=app.auth("other-staff-pw")) as r:
        assert r.status == 401
    assert (await load_order(redis, order.order_id)).status == Status.PRINTED

    # Order events go to the show's staff (and each buyer's own), not to everyone.
    async with s.get("/api/shows/demo/events", headers=app.auth()) as events:
        async with app.session.post(path, headers=app.auth()) as r:
            assert r.status == 200
            body = await r.json()
        assert body["status"] == "ready" and body["ready_at"] and not body["fulfilled_at"]
        seen = []
        async for line in events.content:
            if line.startswith(b"data:") and b'"order"' in line:
                seen.append(line)
                break
    assert b'"status": "ready"' in seen[0] or b'"status":"ready"' in seen[0]
    async with s.post(path, headers=app.auth()) as r:  # repeating it is harmless
        assert r.status == 200 and (await r.json())["status"] == "ready"
    async with s.get("/api/orders?show=demo&status=ready", headers=app.auth()) as r:
        assert [o["order_id"] for o in (await r.json())["orders"]] == [order.order_id]
    async with s.post(f"/api/orders/{order.order_id}/fulfil", headers=app.auth()) as r:
        assert r.status == 200 and (await r.json())["status"] == "fulfilled"
    async with s.post(path, headers=app.auth()) as r:
        assert r.status == 409 and (await r.json())["error"] == "conflict"
    assert (await load_order(redis, order.order_id)).status == Status.FULFILLED
    assert len(printer.labels()) == 1


@pytest.mark.timeout(60)
async def test_unpaid_order_cannot_be_fulfilled_or_reprinted(setup):
    app, printer, redis = setup
    from checkout.orders import Order, OrderItem, save_new_order

    order = Order(
        "unpaid123",
        "demo",
        "v",
        Status.PENDING_PAYMENT,
        [OrderItem("MUG-01", "Mug", 1, 1800)],
        1800,
        "usd",
        number=7,
    )
    await save_new_order(redis, order)
    for action in ("reprint", "fulfil", "ready"):
        async with app.session.post(f"/api/orders/unpaid123/{action}", headers=app.auth()) as r:
            assert r.status == 409 and (await r.json())["error"] == "conflict"
    assert (await load_order(redis, "unpaid123")).status == Status.PENDING_PAYMENT
    assert printer.labels() == []


@pytest.mark.timeout(60)
async def test_order_list_printers_metrics_and_label_preview(setup):
    app, printer, redis = setup
    s = app.session
    first = await paid_order(redis, buyer="First")
    second = await paid_order(redis, buyer="Second")
    await wait_until(lambda: has_status(redis, second.order_id, Status.PRINTED), 10)
    async with s.post(f"/api/orders/{first.order_id}/fulfil", headers=app.auth()) as r:
        assert r.status == 200

    async with s.get("/api/orders?show=demo") as r:
        assert r.status == 401
    async with s.get("/api/orders?show=demo", headers=app.auth()) as r:
        orders = (await r.json())["orders"]
    assert [o["order_id"] for o in orders] == [second.order_id, first.order_id]
    async with s.get("/api/orders?show=demo&status=printed", headers=app.auth()) as r:
        assert [o["buyer_name"] for o in (await r.json())["orders"]] == ["Second"]
    async with s.get("/api/orders?status=bogus", headers=app.auth()) as r:
        assert r.status == 400 and (await r.json())["error"] == "bad_request"
    async with s.get("/api/orders?show=other", headers=app.auth()) as r:
        assert r.status == 401

    async with s.get("/api/printers") as r:
        assert r.status == 401
    async with s.get("/api/printers", headers=app.auth()) as r:
        printers = (await r.json())["printers"]
    assert [p["name"] for p in printers] == ["counter"]  # only this staff's show
    [counter] = printers
    assert counter["online"] is True and counter["last_error"] is None
    assert counter["printed"] == 2 and counter["queued"] == 0 and counter["parked"] == []

    async with s.get("/metrics", headers=app.auth()) as r:
        text = await r.text()
    assert 'showroom_printer_online{printer="counter"} 1.0' in text
    assert 'showroom_print_jobs{state="printed"} 2.0' in text
    assert 'showroom_print_jobs{state="parked"} 0.0' in text
    assert "showroom_label_seconds_count 2.0" in text

    async with s.get(f"/api/orders/{second.order_id}/label.png") as r:
        assert r.status == 401
    async with s.get(f"/api/orders/{second.order_id}/label.png", headers=app.auth()) as r:
        assert r.status == 200 and r.content_type == "image/png"
        img = Image.open(io.BytesIO(await r.read()))
    assert img.width == 42 * 12 + 32  # TM-T88V: 42 columns of 12 dots, plus margins
    assert img.height > img.width


@pytest.mark.timeout(60)
async def test_parked_job_is_listed_and_retried_on_demand(
    make_app, redis_url, tmp_path, monkeypatch
):
    monkeypatch.setenv("SHOWROOM_PRINT_PARK_AFTER", "2")
    monkeypatch.setenv("SHOWROOM_PRINT_BACKOFF_MAX_S", "0.2")
    monkeypatch.setenv("SHOWROOM_PRINT_PROBE_S", "30")  # only staff's retry wakes it early
    printer = TcpPrinter()
    printer.refuse()
    path = tmp_path / "demo.toml"
    path.write_text(manifest_text("demo", printers=one_printer(printer.url)))
    app = await make_app([path])
    redis = aioredis.Redis.from_url(redis_url)
    try:
        order = await paid_order(redis, buyer="Parked")
        jobs = await wait_until(lambda: store.parked_jobs(redis), 10)
        s = app.session
        async with s.get("/api/print-jobs?state=parked", headers=app.auth()) as r:
            [job] = (await r.json())["jobs"]
        assert job["order_id"] == order.order_id and job["printer"] == "counter"
        assert "cannot connect" in job["error"] and job["id"] == jobs[0].entry_id
        async with s.get("/api/printers", headers=app.auth()) as r:
            [counter] = (await r.json())["printers"]
        assert counter["online"] is False and "cannot connect" in counter["last_error"]
        assert counter["parked"][0]["order_id"] == order.order_id
        async with s.get(f"/api/orders/{order.order_id}", headers=app.auth()) as r:
            assert "cannot connect" in (await r.json())["print_error"]

        async with s.post(f"/api/print-jobs/{job['id']}/retry") as r:
            assert r.status == 401
        async with s.post("/api/print-jobs/1-1/retry", headers=app.auth()) as r:
            assert r.status == 404
        printer.accept()
        async with s.post(f"/api/print-jobs/{job['id']}/retry", headers=app.auth()) as r:
            assert r.status == 202
        await wait_until(lambda: has_status(redis, order.order_id, Status.PRINTED), 5)
        assert printer.numbers() == [order.number]
        assert await store.parked_jobs(redis) == []
        assert (await load_order(redis, order.order_id)).print_error is None
    finally:
        await redis.aclose()
        printer.close()
