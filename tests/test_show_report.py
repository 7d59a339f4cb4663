"""The show report: per featured segment, sales of the product bought counted by when it
went into the cart; totals that add up to the orders in Redis; CSV and the host's page."""

from __future__ import annotations

import csv
import io

import pytest

from tests.conftest import STAFF_PASSWORD, buyer_session, wait_until
from tests.test_checkout_payments import add, checkout, pay

pytestmark = pytest.mark.timeout(90)


async def feature(app, sku):
    async with app.session.post(
        "/api/shows/demo/feature", json={"sku": sku}, headers=app.auth()
    ) as r:
        assert r.status == 200


async def status(s, order_id):
    async with s.get(f"/api/orders/{order_id}") as r:
        return (await r.json())["status"]


async def test_report_totals_equal_the_orders_placed(make_app, stripe_sandbox):
    app = await make_app(stripe_api_base=stripe_sandbox.url, print_worker=False)
    ana, bo, cy = (buyer_session(app.url) for _ in range(3))
    try:
        await feature(app, "MUG-01")
        await add(ana, "MUG-01", 2)
        await add(cy, "MUG-01", 1)  # added under the mug, never paid
        await feature(app, "TEE-02")
        await add(bo, "TEE-02", 1)
        await add(bo, "MUG-01", 1)  # a mug added while the tee is on: no mug segment
        paid = []
        for s, email in ((ana, "ana@example.com"), (bo, "bo@example.com")):
            order = await checkout(s, email=email)
            assert (await pay(s, order["order_id"]))[0] == 200
            paid.append((s, order["order_id"]))
        await checkout(cy, email="cy@example.com")
        for s, oid in paid:
            await wait_until(lambda s=s, oid=oid: _paid(s, oid), timeout=20)
        await feature(app, None)

        async with app.session.get("/api/shows/demo/report") as r:
            assert r.status == 401  # revenue is the host's
        async with app.session.get("/api/shows/demo/report", headers=app.auth()) as r:
            assert r.status == 200
            rep = await r.json()
    finally:
        for s in (ana, bo, cy):
            await s.close()

    assert rep["totals"] == {
        "orders": 2,
        "units": 4,
        "revenue": "86.00",
        "not_from_a_segment": "18.00",
    }
    by_sku = {p["sku"]: (p["units"], p["orders"], p["revenue"]) for p in rep["top_products"]}
    assert by_sku == {"MUG-01": (3, 2, "54.00"), "TEE-02": (1, 1, "32.00")}
    assert [p["sku"] for p in rep["top_products"]] == ["MUG-01", "TEE-02"]  # by revenue
    mug, tee = rep["segments"]
    assert (mug["sku"], mug["add_to_carts"], mug["orders"], mug["units"], mug["revenue"]) == (
        "MUG-01",
        3,
        1,
        2,
        "36.00",
    )
    assert (tee["sku"], tee["add_to_carts"], tee["orders"], tee["units"], tee["revenue"]) == (
        "TEE-02",
        1,
        1,
        1,
        "32.00",
    )
    assert mug["on_air_s"] >= 0 and mug["end_ms"] is not None
    assert rep["channels"]["online"] == {"orders": 2, "revenue": "86.00"}
    assert rep["channels"]["in_person"] == {"orders": 0, "revenue": "0.00"}
    assert rep["refunds"] == {"orders": 0, "amount": "0.00"}

    async with app.session.get("/api/shows/demo/report?format=csv", headers=app.auth()) as r:
        assert r.status == 200 and r.content_type == "text/csv"
        rows = list(csv.DictReader(io.StringIO(await r.text())))
    [total] = [row for row in rows if row["section"] == "total"]
    assert (total["orders"], total["units"], total["revenue"]) == ("2", "4", "86.00")
    segs = [row for row in rows if row["section"] == "segment"]
    assert [(row["sku"], row["revenue"]) for row in segs] == [
        ("MUG-01", "36.00"),
        ("TEE-02", "32.00"),
    ]


async def _paid(s, oid) -> bool:
    return await status(s, oid) in ("paid", "printed")


async def test_report_page_is_for_the_shows_staff(make_app):
    app = await make_app()
    async with buyer_session(app.url) as stranger:
        async with stranger.get("/shows/demo/report", allow_redirects=False) as r:
            assert r.status == 302 and r.headers["Location"].startswith("/login")
    async with buyer_session(app.url) as staff:
        async with staff.get("/login") as r:
            form = await r.text()
        data = {"password": STAFF_PASSWORD, "next": "/shows/demo/report"}
        import re

        token = re.search(r'name="csrf"[^>]*value="([^"]+)"', form)
        if token:
            data["csrf"] = token[1]
        async with staff.post("/login", data=data) as r:
            assert r.status == 200
            html = await r.text()
        assert "Featured segments" in html and "Download CSV" in html
