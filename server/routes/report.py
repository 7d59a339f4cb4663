"""The show report for its host: ``GET /api/shows/{show}/report`` (JSON, or CSV with
``?format=csv``) and the page ``/shows/{show}/report``."""

from __future__ import annotations

import json
import time

from aiohttp import web

from checkout.keys import orders_index
from checkout.orders import Order, order_key
from server import keys, report, segments
from server.auth import get_show, is_host, require_host, staff_shows
from server.config import ShowConfig
from server.routes.pages import login_redirect, page_show, render, role_page
from server.routes.recordings import clip_counts, clips_key, load_clip


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else (value or "")


async def load_facts(redis, show_id: str) -> list[report.OrderFacts]:
    ids = await redis.zrange(orders_index(show_id), 0, -1)
    if not ids:
        return []
    pipe = redis.pipeline(transaction=False)
    for oid in ids:
        pipe.hgetall(order_key(_text(oid)))
    facts = []
    for raw in await pipe.execute():
        if not raw:
            continue  # expired from Redis
        order = Order.from_redis(raw)
        added = _text(raw.get(segments.ADDED_FIELD.encode()) or raw.get(segments.ADDED_FIELD))
        facts.append(
            report.OrderFacts(
                order_id=order.order_id,
                status=str(order.status),
                channel=_text(raw.get(b"channel") or raw.get("channel")) or "online",
                amount_cents=order.amount_cents,
                lines=tuple(report.Line(i.sku, i.quantity, i.total_cents) for i in order.items),
                added_ms={k: int(v) for k, v in (json.loads(added) if added else {}).items()},
                created_ms=int(order.created_at * 1000),
            )
        )
    return facts


async def load_clips(redis, show_id: str) -> list[report.ClipFacts]:
    out = []
    for raw_id in await redis.zrange(clips_key(show_id), 0, -1):
        clip = await load_clip(redis, _text(raw_id))
        if clip is not None:
            counts = await clip_counts(redis, clip.id)
            out.append(
                report.ClipFacts(
                    clip.id,
                    clip.sku,
                    counts.get("views", 0),
                    counts.get("add_to_carts", 0),
                    counts.get("orders", 0),
                )
            )
    return out


async def show_report(app: web.Application, show: ShowConfig) -> dict:
    redis = app[keys.REDIS]
    return report.build(
        show,
        await segments.load(redis, show.id),
        await load_facts(redis, show.id),
        await load_clips(redis, show.id),
        int(time.time() * 1000),
    )


async def get_report(request: web.Request) -> web.Response:
    show = get_show(request)
    require_host(request, show)
    data = await show_report(request.app, show)
    headers = {"Cache-Control": "no-store"}
    if request.query.get("format") == "csv":
        headers["Content-Disposition"] = f'attachment; filename="{show.id}-report.csv"'
        return web.Response(
            text=report.to_csv(data), content_type="text/csv", charset="utf-8", headers=headers
        )
    return web.json_response(data, headers=headers)


async def report_page(request: web.Request) -> web.Response:
    show = page_show(request)
    if show.id not in staff_shows(request):
        raise login_redirect(request)
    if not is_host(request, show):
        return role_page(request, "the show report", "host")
    return render(request, "report.html", show=show, report=await show_report(request.app, show))


def setup(app: web.Application) -> None:
    app.router.add_get("/api/shows/{show}/report", get_report)
    app.router.add_get("/shows/{show}/report", report_page)
