"""Staff APIs (orders, reprint, fulfil, printers, parked print jobs) and the print
worker's lifecycle inside ``showroom serve``.

- ``GET /api/orders?status=&show=&limit=`` -> ``{"orders": [...]}`` newest first
- ``POST /api/orders/{id}/reprint`` -> 202 (a reprint job; the order's status stays)
- ``POST /api/orders/{id}/ready`` -> 200 order (``ready``: packed, waiting at the counter)
- ``POST /api/orders/{id}/fulfil`` -> 200 order (``fulfilled``; repeating it is harmless)
- ``GET /api/orders/{id}/label.png[?printer=]`` -> the label's PNG preview
- ``GET /api/printers`` -> ``{"printers": [{"name", "online", "last_error", "queued", "printed", "parked"}]}``
- ``GET /api/print-jobs?state=parked`` -> ``{"jobs": [...]}``
- ``POST /api/print-jobs/{id}/retry`` and ``POST /api/printers/{name}/retry`` -> 202
"""

from __future__ import annotations

import asyncio
import re

from aiohttp import web

from checkout.keys import ORDER_ID_MAX, orders_index
from checkout.orders import (
    Order,
    Status,
    TransitionError,
    enqueue_reprint,
    load_order,
    order_key,
    print_stream,
    transition,
)
from devices import store
from devices.label import render_png
from devices.routing import preview_label
from devices.worker import PrintWorker, WorkerOptions
from server import audit, keys
from server.auth import require_staff
from server.errors import ApiError, bad_request, conflict, not_found

ORDER_ID = re.compile(rf"^[A-Za-z0-9_-]{{1,{ORDER_ID_MAX}}}$")
ENTRY_ID = re.compile(r"^[a-z0-9][a-z0-9-]{0,63}\.\d{1,20}-\d{1,20}$")  # {show}.{entry}
MAX_LIST = 500
PRINTABLE = {Status.PAID, Status.PRINTED, Status.READY, Status.FULFILLED}


async def _staff_order(request: web.Request) -> Order:
    """The order in the URL, for staff of its show: 401 first, then 404."""
    require_staff(request)
    order_id = request.match_info["order_id"]
    if not ORDER_ID.match(order_id):
        raise not_found("No such order.")
    order = await load_order(request.app[keys.REDIS], order_id)
    if order is None:
        raise not_found("No such order.")
    require_staff(request, order.show)
    return order


async def _publish_order(app: web.Application, order: Order, status: Status) -> None:
    await app[keys.BUS].publish(order.show, order.event(status))


async def list_orders(request: web.Request) -> web.Response:
    allowed = require_staff(request)
    q = request.query
    shows = allowed
    if q.get("show"):
        if q["show"] not in request.app[keys.SHOWS]:
            raise not_found(f"No show called {q['show']!r}.")
        require_staff(request, q["show"])
        shows = [q["show"]]
    statuses: set[str] | None = None
    if q.get("status"):
        statuses = set(q["status"].split(","))
        unknown = statuses - {s.value for s in Status}
        if unknown:
            raise bad_request(f"Unknown status {sorted(unknown)[0]!r}.")
    try:
        limit = int(q.get("limit", "200"))
    except ValueError:
        raise bad_request("limit must be a number.") from None
    if not 1 <= limit <= MAX_LIST:
        raise bad_request(f"limit must be from 1 to {MAX_LIST}.")
    redis = request.app[keys.REDIS]
    orders: list[Order] = []
    for show_id in shows:
        # Newest first; read more than the limit when filtering by status.
        ids = await redis.zrevrange(orders_index(show_id), 0, limit * 4 - 1)
        pipe = redis.pipeline(transaction=False)
        for oid in ids:
            pipe.hgetall(order_key(oid.decode() if isinstance(oid, bytes) else oid))
        for raw in await pipe.execute() if ids else []:
            if not raw:
                continue
            order = Order.from_redis(raw)
            if statuses is None or str(order.status) in statuses:
                orders.append(order)
    orders.sort(key=lambda o: o.created_at, reverse=True)
    return web.json_response({"orders": [o.public() for o in orders[:limit]]})


async def reprint(request: web.Request) -> web.Response:
    order = await _staff_order(request)
    if order.status not in PRINTABLE:
        raise conflict("conflict", f"Order is {order.status}; only paid orders have a label.")
    show = request.app[keys.SHOWS].get(order.show)
    if show is None or not show.printers:
        raise conflict("conflict", "This show has no printer to print the label on.")
    await enqueue_reprint(request.app[keys.REDIS], order)
    await audit.log(request, order.show, "reprint", f"#{order.number}")
    return web.json_response(
        {"order_id": order.order_id, "number": order.number, "reprint": "queued"}, status=202
    )


async def _move(request: web.Request, status: Status, verb: str) -> web.Response:
    """Staff move an order forward; repeating the same move is harmless."""
    order = await _staff_order(request)
    redis = request.app[keys.REDIS]
    if order.status != status:
        try:
            await transition(redis, order.order_id, status)
        except TransitionError as exc:
            if exc.current != status:  # a concurrent identical move is fine
                raise conflict(
                    "conflict", f"Order is {exc.current}; it cannot be {verb}."
                ) from None
        else:
            await _publish_order(request.app, order, status)
            await audit.log(request, order.show, str(status), f"#{order.number}")
    fresh = await load_order(redis, order.order_id)
    return web.json_response(fresh.public() if fresh else order.public())


async def fulfil(request: web.Request) -> web.Response:
    return await _move(request, Status.FULFILLED, "fulfilled")


async def ready(request: web.Request) -> web.Response:
    return await _move(request, Status.READY, "marked ready")


async def label_png(request: web.Request) -> web.Response:
    order = await _staff_order(request)
    show = request.app[keys.SHOWS].get(order.show)
    settings = request.app[keys.SETTINGS]
    label = (
        preview_label(order, show, settings.base_url, request.query.get("printer"))
        if show
        else None
    )
    if label is None:
        raise not_found("This show has no printer, so the order has no label.")
    png = await asyncio.to_thread(render_png, label)
    return web.Response(body=png, content_type="image/png", headers={"Cache-Control": "no-store"})


def _printers_for(app: web.Application, show_ids: list[str]) -> dict[str, list[str]]:
    """Printer name -> the shows (of these) that use it."""
    out: dict[str, list[str]] = {}
    for show_id in show_ids:
        for printer in app[keys.SHOWS][show_id].printers:
            out.setdefault(printer.name, []).append(show_id)
    return out


async def list_printers(request: web.Request) -> web.Response:
    allowed = require_staff(request)
    redis = request.app[keys.REDIS]
    parked = await store.parked_jobs(redis)
    printers = []
    for name, shows in _printers_for(request.app, allowed).items():
        status = await store.read_status(redis, name)
        printers.append(
            {
                **status.public(),
                "shows": shows,
                "parked": [j.public() for j in parked if j.printer == name and j.show in allowed],
            }
        )
    return web.json_response({"printers": printers})


async def list_jobs(request: web.Request) -> web.Response:
    allowed = require_staff(request)
    state = request.query.get("state", "parked")
    if state != "parked":
        raise bad_request("Only state=parked is listed; see /metrics for counts.")
    jobs = [
        j.public() for j in await store.parked_jobs(request.app[keys.REDIS]) if j.show in allowed
    ]
    return web.json_response({"jobs": jobs})


async def retry_job(request: web.Request) -> web.Response:
    allowed = require_staff(request)
    entry_id = request.match_info["job_id"]
    redis = request.app[keys.REDIS]
    raw = await redis.hget(store.PARKED, entry_id) if ENTRY_ID.match(entry_id) else None
    if raw is None:
        raise not_found("No parked print job with that id (it may have printed already).")
    job = store.ParkedJob.unpack(raw)
    if job.show not in allowed:
        raise ApiError(401, "unauthorized", "Staff login for this show is required.")
    await store.request_retry(redis, job.printer)
    return web.json_response(
        {"id": entry_id, "printer": job.printer, "retry": "requested"}, status=202
    )


async def retry_printer(request: web.Request) -> web.Response:
    allowed = require_staff(request)
    name = request.match_info["name"]
    if name not in _printers_for(request.app, allowed):
        raise not_found(f"No printer called {name!r}.")
    await store.request_retry(request.app[keys.REDIS], name)
    return web.json_response({"printer": name, "retry": "requested"}, status=202)


# --- lifecycle and metrics ----------------------------------------------------------


async def _worker_ctx(app: web.Application):
    settings = app[keys.SETTINGS]
    worker = None
    if settings.print_worker and any(s.printers for s in app[keys.SHOWS].values()):
        worker = PrintWorker(
            app[keys.REDIS],
            app[keys.SHOWS],
            base_url=settings.base_url,
            publish=app[keys.BUS].publish,
            metrics=app[keys.METRICS],
            options=app[keys.EXTRA].get("print_options") or WorkerOptions.from_env(),
        )
        await worker.start()
        app[keys.EXTRA]["print_worker"] = worker
    yield
    if worker is not None:
        await worker.stop()


def _metrics_hook(app: web.Application):
    async def refresh() -> None:
        redis = app[keys.REDIS]
        metrics = app[keys.METRICS]
        streams = [print_stream(show_id) for show_id in app[keys.SHOWS]]
        for state, n in (await store.job_counts(redis, streams)).items():
            metrics.print_jobs.labels(state).set(n)
        for name in _printers_for(app, list(app[keys.SHOWS])):
            status = await store.read_status(redis, name)
            metrics.printer_online.labels(name).set(1 if status.online else 0)

    return refresh


def setup(app: web.Application) -> None:
    r = app.router
    r.add_get("/api/orders", list_orders)
    r.add_post("/api/orders/{order_id}/reprint", reprint)
    r.add_post("/api/orders/{order_id}/fulfil", fulfil)
    r.add_post("/api/orders/{order_id}/ready", ready)
    r.add_get("/api/orders/{order_id}/label.png", label_png)
    r.add_get("/api/printers", list_printers)
    r.add_post("/api/printers/{name}/retry", retry_printer)
    r.add_get("/api/print-jobs", list_jobs)
    r.add_post("/api/print-jobs/{job_id}/retry", retry_job)
    app.cleanup_ctx.append(_worker_ctx)
    app[keys.METRICS].before_scrape.append(_metrics_hook(app))
