"""What viewers feel: glass-to-glass latency and join time reported by viewers.

``POST /api/shows/{show}/stats`` takes one viewer's measurements, observes them
into the Prometheus histograms (``/metrics``) and keeps them in a short ring in
Redis, so every server process agrees on ``GET /api/shows/{show}/stats`` (the
current p50/p95 the host page shows). The host also gets the show's add-to-cart tally
and featured segments there (server/segments.py), kept in Redis, so they survive a
reload of the page.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from aiohttp import web

from checkout.carts import cart_adds
from checkout.keys import orders_index, tag
from checkout.orders import cents_str
from server import keys, segments
from server.auth import client_ip, ensure_viewer, get_show, is_host
from server.errors import ApiError, bad_request, read_json
from server.routes.chat import reactions_summary

FIELDS = ("glass_to_glass_ms", "join_ms")
MAX_MS = 60_000.0  # anything slower is a broken clock, not a measurement
RING = 200  # reports kept per show and figure
WINDOW_S = 120  # "current" = reported within the last two minutes
RING_TTL_S = 600
REPORTS_PER_VIEWER_PER_S = 5
# Per address as well: a fresh cookie per request must not get around the viewer limit.
# Generous, since a venue's viewers may share one public address.
REPORTS_PER_IP_PER_S = 50


def ring_key(show_id: str, field: str) -> str:
    return f"show:{tag(show_id)}:stats:{field}"  # one slot: written in one transaction


@dataclass(frozen=True)
class Summary:
    count: int
    p50: float | None
    p95: float | None

    def as_json(self) -> dict:
        return {"count": self.count, "p50": self.p50, "p95": self.p95}


def parse_report(body: dict) -> dict[str, float]:
    """The validated figures of one report (ms); raises 400 on anything else."""
    unknown = set(body) - set(FIELDS)
    if unknown:
        raise bad_request(f"Unknown field(s): {', '.join(sorted(unknown))}.")
    report: dict[str, float] = {}
    for field in FIELDS:
        value = body.get(field)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise bad_request(f"{field} must be a number of milliseconds.")
        value = float(value)
        if not math.isfinite(value) or not 0 <= value <= MAX_MS:
            raise bad_request(f"{field} must be between 0 and {MAX_MS:.0f} ms.")
        report[field] = value
    if not report:
        raise bad_request(f"Send at least one of {', '.join(FIELDS)}.")
    return report


def nearest_rank(values: list[float], q: float) -> float | None:
    """The q-th percentile by nearest rank (a value someone actually reported)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def summarise(entries: list[bytes], now_ms: int, window_s: float = WINDOW_S) -> Summary:
    """Percentiles of the ring entries (``b"<ts_ms>:<value>"``) inside the window."""
    cutoff = now_ms - window_s * 1000
    values = []
    for entry in entries:
        ts, _, value = entry.partition(b":")
        try:
            if int(ts) >= cutoff:
                values.append(float(value))
        except ValueError:
            continue
    return Summary(len(values), nearest_rank(values, 50), nearest_rank(values, 95))


async def _rate_limit(redis, show_id: str, viewer: str, ip: str) -> None:
    second = int(time.time())
    by_viewer = f"show:{tag(show_id)}:stats:rl:{viewer}:{second}"
    by_ip = f"show:{tag(show_id)}:stats:rl:ip:{ip}:{second}"
    async with redis.pipeline(transaction=True) as pipe:
        pipe.incr(by_ip)
        pipe.expire(by_ip, 2)
        pipe.incr(by_viewer)
        pipe.expire(by_viewer, 2)
        ip_count, _, count, _ = await pipe.execute()
    if count > REPORTS_PER_VIEWER_PER_S or ip_count > REPORTS_PER_IP_PER_S:
        raise ApiError(429, "rate_limited", "Too many reports; slow down.", {"Retry-After": "1"})


async def post_stats(request: web.Request) -> web.Response:
    show = get_show(request)
    report = parse_report(await read_json(request, max_bytes=1024))
    redis = request.app[keys.REDIS]
    await _rate_limit(redis, show.id, ensure_viewer(request), client_ip(request))
    metrics = request.app[keys.METRICS]
    now_ms = int(time.time() * 1000)
    async with redis.pipeline(transaction=True) as pipe:
        for field, value in report.items():
            key = ring_key(show.id, field)
            pipe.lpush(key, f"{now_ms}:{value:.3f}")
            pipe.ltrim(key, 0, RING - 1)
            pipe.expire(key, RING_TTL_S)
        await pipe.execute()
    if "glass_to_glass_ms" in report:
        metrics.glass_to_glass.labels(show.id).observe(report["glass_to_glass_ms"] / 1000)
    if "join_ms" in report:
        metrics.join_time.labels(show.id).observe(report["join_ms"] / 1000)
    return web.json_response({"accepted": sorted(report)}, status=202)


async def stats_summary(app: web.Application, show_id: str) -> dict:
    redis = app[keys.REDIS]
    now_ms = int(time.time() * 1000)
    async with redis.pipeline(transaction=False) as pipe:
        for field in FIELDS:
            pipe.lrange(ring_key(show_id, field), 0, RING - 1)
        rings = await pipe.execute()
    out: dict = {"show": show_id, "window_s": WINDOW_S}
    for field, entries in zip(FIELDS, rings, strict=True):
        out[field] = summarise(entries, now_ms).as_json()
    return out


async def get_stats(request: web.Request) -> web.Response:
    show = get_show(request)
    summary = await stats_summary(request.app, show.id)
    if is_host(request, show):  # sales figures are the host's, not every viewer's
        redis = request.app[keys.REDIS]
        by_sku = await cart_adds(redis, show.id)
        summary["cart_adds"] = {"total": sum(by_sku.values()), "by_sku": by_sku}
        segs = await segments.load(redis, show.id)
        sales = (
            await segments.sales_since(redis, show.id, segs[0].start_ms, orders_index(show.id))
            if segs
            else []
        )
        now_ms = int(time.time() * 1000)
        summary["segments"] = [
            {
                **seg.public(),
                "orders": sold.orders,
                "buyers": sold.buyers,
                "revenue": cents_str(sold.revenue_cents),
            }
            for seg, sold in zip(segs, segments.attribute(segs, sales, now_ms), strict=True)
        ]
        summary["reactions"] = await reactions_summary(request.app, show.id)
    return web.json_response(summary)


def setup(app: web.Application) -> None:
    app.router.add_post("/api/shows/{show}/stats", post_stats)
    app.router.add_get("/api/shows/{show}/stats", get_stats)
