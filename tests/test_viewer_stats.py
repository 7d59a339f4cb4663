"""Viewer-reported latency: validated, exported on /metrics, summarised for the host."""

from __future__ import annotations

import re

import aiohttp
import pytest

from server.routes.stats import nearest_rank, summarise
from tests.conftest import STREAM_KEY, buyer_session


async def post(app, body, session=None):
    session = session or app.session
    async with session.post("/api/shows/demo/stats", json=body) as resp:
        return resp.status, await resp.json()


async def summary(app) -> dict:
    async with app.session.get("/api/shows/demo/stats") as resp:
        assert resp.status == 200
        return await resp.json()


def histogram_count(text: str, name: str, show: str = "demo") -> float:
    m = re.search(rf'^{name}_count{{show="{show}"}} (\S+)$', text, re.M)
    return float(m.group(1)) if m else 0.0


async def test_reports_show_up_as_percentiles_and_on_metrics(app):
    empty = await summary(app)
    assert empty["glass_to_glass_ms"] == {"count": 0, "p50": None, "p95": None}
    # Several viewers (own cookies), each reporting a few figures.
    values = [80, 90, 100, 110, 120, 130, 140, 150, 160, 400]
    for i, v in enumerate(values):
        async with aiohttp.ClientSession(app.url) as viewer:
            status, body = await post(app, {"glass_to_glass_ms": v, "join_ms": 200 + i}, viewer)
            assert status == 202, body
    got = await summary(app)
    assert got["glass_to_glass_ms"] == {"count": 10, "p50": 120.0, "p95": 400.0}
    assert got["join_ms"]["count"] == 10
    assert got["join_ms"]["p50"] == 204.0
    async with app.session.get("/metrics", headers=app.auth()) as resp:
        text = await resp.text()
    assert histogram_count(text, "showroom_viewer_latency_seconds") == 10
    assert histogram_count(text, "showroom_join_seconds") == 10
    # 0.15 s bucket holds the eight reports at or under 150 ms.
    assert re.search(r'showroom_viewer_latency_seconds_bucket\{le="0.15",show="demo"\} 8.0', text)


async def test_one_figure_alone_is_fine(app):
    status, _ = await post(app, {"join_ms": 321.5})
    assert status == 202
    got = await summary(app)
    assert got["join_ms"]["p50"] == 321.5
    assert got["glass_to_glass_ms"]["count"] == 0


@pytest.mark.parametrize(
    "raw",
    [
        b"{}",
        b'{"glass_to_glass_ms": null}',
        b'{"glass_to_glass_ms": -1}',
        b'{"glass_to_glass_ms": 1e9}',
        b'{"glass_to_glass_ms": "120"}',
        b'{"glass_to_glass_ms": true}',
        b'{"join_ms": Infinity}',
        b'{"join_ms": NaN}',
        b'{"join_ms": 100, "bogus": 1}',
        b"[100]",
    ],
)
async def test_bad_reports_are_400_and_change_nothing(app, raw):
    async with app.session.post(
        "/api/shows/demo/stats", data=raw, headers={"Content-Type": "application/json"}
    ) as resp:
        assert resp.status == 400
        err = await resp.json()
    assert err["error"] == "bad_request" and err["detail"]
    got = await summary(app)
    assert got["glass_to_glass_ms"]["count"] == 0 and got["join_ms"]["count"] == 0


async def test_not_json_unknown_show_and_too_large(app):
    as_json = {"Content-Type": "application/json"}
    async with app.session.post("/api/shows/demo/stats", data=b"not json", headers=as_json) as resp:
        assert resp.status == 400
    async with app.session.post("/api/shows/nope/stats", json={"join_ms": 1}) as resp:
        assert resp.status == 404
        assert (await resp.json())["error"] == "not_found"
    async with app.session.get("/api/shows/nope/stats") as resp:
        assert resp.status == 404
    async with app.session.post(
        "/api/shows/demo/stats", data=b'{"join_ms": 1' + b" " * 4096 + b"}", headers=as_json
    ) as resp:
        assert resp.status == 413


async def test_a_viewer_flooding_reports_is_rate_limited(app):
    statuses = [(await post(app, {"join_ms": 10}))[0] for _ in range(12)]
    assert statuses.count(429) >= 1
    assert statuses[0] == 202
    got = await summary(app)
    assert got["join_ms"]["count"] == statuses.count(202) <= 10


async def test_every_process_sees_the_same_figures(make_app):
    a = await make_app()
    b = await make_app(a.settings.manifests)
    assert (await post(a, {"glass_to_glass_ms": 70}))[0] == 202
    assert (await summary(b))["glass_to_glass_ms"] == {"count": 1, "p50": 70.0, "p95": 70.0}


def test_summary_keeps_only_the_recent_window():
    now = 1_000_000_000
    entries = [f"{now - 1000}:100.0".encode(), f"{now - 500_000}:900.0".encode(), b"garbage"]
    s = summarise(entries, now, window_s=120)
    assert (s.count, s.p50, s.p95) == (1, 100.0, 100.0)
    assert nearest_rank([], 50) is None
    assert nearest_rank([1, 2, 3, 4], 50) == 2


async def test_host_sees_the_add_to_cart_tally_viewers_do_not(app):
    """Every unit added to a cart counts once, kept in Redis (so a reloaded host page and
    every server process agree); refused adds do not count; viewers never see it."""
    for quantity in (1, 2):  # two buyers: 1 mug, then 2 mugs
        async with buyer_session(app.url) as buyer:
            async with buyer.post(
                "/api/cart/items", json={"show": "demo", "sku": "MUG-01", "quantity": quantity}
            ) as r:
                assert r.status == 200, await r.text()
            async with buyer.post(
                "/api/cart/items", json={"show": "demo", "sku": "MUG-01", "quantity": 5}
            ) as r:
                assert r.status == 409  # over the per-buyer limit: not an add-to-cart
    assert "cart_adds" not in await summary(app)
    auth = {"Authorization": f"Bearer {STREAM_KEY}"}
    async with app.session.get("/api/shows/demo/stats", headers=auth) as r:
        assert r.status == 200
        tally = (await r.json())["cart_adds"]
    assert tally == {"total": 3, "by_sku": {"MUG-01": 3}}
