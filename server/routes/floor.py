"""The showroom floor: walk-in sales at the counter (``/shows/{show}/pos``) and refunds.

A walk-in sale takes stock through the same scripts as the stream (``checkout.pos``),
so the room and the stream share one pool; its order is ``paid`` with
``channel: in_person`` and its receipt label prints like any paid order. A refund gives
an online buyer's money back through Stripe (idempotent per payment) and returns the
units to stock once (``checkout.orders.refund_order``), whichever of the staff's button
and Stripe's webhook comes first.
"""

from __future__ import annotations

import asyncio
import logging
import time

from aiohttp import web

from checkout import pos
from checkout.keys import orders_index
from checkout.orders import (
    Order,
    Status,
    TransitionError,
    UndoTooLate,
    load_order,
    order_key,
    refund_order,
    undo_move,
)
from checkout.payments import PaymentUnavailable
from devices import picklist
from devices.connections import PrinterError, open_connection
from devices.label import render_escpos
from server import audit, keys
from server.auth import require_role
from server.errors import ApiError, bad_request, check_text, conflict, read_json
from server.routes.cart import MAX_QUANTITY, _int, _product, commerce
from server.routes.pages import login_redirect, page_show, render, show_summary
from server.routes.staff import _publish_order, _staff_order

log = logging.getLogger("showroom.floor")

MAX_LINES = 50
NAME_MAX = 80


def parse_sale(show, body: dict) -> tuple[list[pos.SaleLine], str, str]:
    """The validated lines, payment and buyer name of a sale; 400/404 otherwise."""
    items = body.get("items")
    if not isinstance(items, list) or not 1 <= len(items) <= MAX_LINES:
        raise bad_request(f'items must be a list of 1 to {MAX_LINES} {{"sku", "quantity"}}.')
    quantities: dict[str, int] = {}
    for item in items:
        if not isinstance(item, dict):
            raise bad_request('Each item is {"sku": "MUG-01", "quantity": 1}.')
        product = _product(show, item.get("sku"))
        quantities[product.sku] = quantities.get(product.sku, 0) + _int(
            item, "quantity", 1, MAX_QUANTITY
        )
    payment = body.get("payment")
    if payment not in pos.PAYMENTS:
        raise bad_request('payment must be "cash" or "card_present".')
    name = body.get("name") or ""
    if not isinstance(name, str) or len(name) > NAME_MAX:
        raise bad_request(f"name must be text of at most {NAME_MAX} characters.")
    name = check_text(name.strip(), "name")
    lines = []
    for sku, qty in quantities.items():
        if qty > MAX_QUANTITY:
            raise bad_request(f"At most {MAX_QUANTITY} of {sku} in one sale.")
        product = show.product(sku)
        lines.append(pos.SaleLine(sku, qty, product.price_cents, product.per_buyer_limit))
    return lines, payment, name


async def post_sale(request: web.Request) -> web.Response:
    show = require_role(request, "pos")
    lines, payment, name = parse_sale(show, await read_json(request))
    redis = request.app[keys.REDIS]
    try:
        order = await pos.sell(
            redis,
            show.id,
            lines,
            payment=payment,
            buyer_name=name or "Walk-in",
            cashier="staff",
            product_name=lambda _show, sku: show.product(sku).name,
            currency=show.currency,
        )
    except pos.SaleRefused as exc:
        if exc.code == "limit_reached":
            raise conflict("limit_reached", f"{exc.sku}: more than one buyer may take.") from None
        left = f"only {exc.available} left" if exc.available > 0 else "sold out"
        raise conflict("sold_out", f"{exc.sku or 'An item'} is {left}.") from None
    com = commerce(request.app)
    for line in lines:  # the stream's card and the viewer page follow within a second
        com.notifier.touch(show.id, line.sku)
    await _publish_order(request.app, order, Status.PAID)
    await audit.log(request, show.id, "sale", f"#{order.number} {payment}")
    return web.json_response(order.public(), status=201)


async def refund(request: web.Request) -> web.Response:
    order = await _staff_order(request)
    require_role(request, "refund", show_id=order.show)
    if order.status == Status.REFUNDED:
        return web.json_response(order.public())  # pressing twice is harmless
    if order.status not in (Status.PAID, Status.PRINTED, Status.READY, Status.FULFILLED):
        raise conflict("conflict", f"Order is {order.status}; only paid orders can be refunded.")
    redis = request.app[keys.REDIS]
    if order.channel == "online" and order.payment_intent:
        gateway = commerce(request.app).gateway
        if gateway is None:
            raise ApiError(503, "unavailable", "Payments are not configured; try again later.")
        try:
            await gateway.refund(order.payment_intent, strict=True)
        except PaymentUnavailable as exc:
            raise ApiError(
                503, "unavailable", f"Stripe did not take the refund: {exc}", {"Retry-After": "5"}
            ) from None
    try:
        await refund_order(redis, order.order_id)
    except TransitionError as exc:
        if exc.current != Status.REFUNDED:  # the webhook got there first: that is fine
            raise conflict("conflict", f"Order is {exc.current}; it cannot be refunded.") from None
    else:
        await _publish_order(request.app, order, Status.REFUNDED)
        await audit.log(request, order.show, "refund", f"#{order.number}")
        for item in order.items:
            commerce(request.app).notifier.touch(order.show, item.sku)
    fresh: Order | None = await load_order(redis, order.order_id)
    return web.json_response((fresh or order).public())


# --- fulfilment ---------------------------------------------------------------------

RECENT_ORDERS = 2000  # how far back the pick list and check-in look


async def recent_orders(redis, show_id: str) -> list[Order]:
    ids = await redis.zrevrange(orders_index(show_id), 0, RECENT_ORDERS - 1)
    if not ids:
        return []
    pipe = redis.pipeline(transaction=False)
    for oid in ids:
        pipe.hgetall(order_key(oid.decode() if isinstance(oid, bytes) else oid))
    return [Order.from_redis(raw) for raw in await pipe.execute() if raw]


async def get_picklist(request: web.Request) -> web.Response:
    show = require_role(request, "floor")
    orders = await recent_orders(request.app[keys.REDIS], show.id)
    waiting = [o for o in orders if str(o.status) in picklist.WAITING]
    waiting.sort(key=lambda o: o.paid_at or o.created_at)
    return web.json_response(
        {
            "products": [row.public() for row in picklist.group(waiting)],
            "orders": [o.public() for o in waiting],
        },
        headers={"Cache-Control": "no-store"},
    )


async def print_picklist(request: web.Request) -> web.Response:
    show = require_role(request, "floor")
    printer = show.default_printer
    if printer is None:
        raise conflict("conflict", "This show has no printer for the pick list.")
    orders = await recent_orders(request.app[keys.REDIS], show.id)
    rows = picklist.group(orders)
    ticket = picklist.build_ticket(
        rows,
        show_title=show.title,
        staff_url=f"{request.app[keys.SETTINGS].base_url}/staff",
        paper_mm=printer.paper_mm,
    )

    def send() -> None:  # blocking socket/device I/O: off the event loop
        open_connection(printer.connection).send(render_escpos(ticket, printer.profile), 10)

    try:
        await asyncio.to_thread(send)
    except (PrinterError, OSError) as exc:
        raise ApiError(
            503,
            "unavailable",
            f"The printer {printer.name!r} did not take it: {exc}",
            {"Retry-After": "5"},
        ) from None
    return web.json_response(
        {"printer": printer.name, "products": [r.public() for r in rows]}, status=202
    )


async def undo(request: web.Request) -> web.Response:
    order = await _staff_order(request)
    require_role(request, "floor", show_id=order.show)
    redis = request.app[keys.REDIS]
    try:
        back = await undo_move(redis, order.order_id)
    except UndoTooLate as exc:
        raise conflict("conflict", f"It was {exc} more than a minute ago; it stays.") from None
    except TransitionError as exc:
        raise conflict("conflict", f"Order is {exc.current}: nothing to undo.") from None
    await _publish_order(request.app, order, back)
    await audit.log(request, order.show, "undo", f"#{order.number} back to {back}")
    fresh = await load_order(redis, order.order_id)
    return web.json_response((fresh or order).public())


async def checkin(request: web.Request) -> web.Response:
    """ "Customer is here": find the order by the number on their receipt."""
    show = require_role(request, "floor")
    body = await read_json(request)
    number = _int(body, "number", 1, 10_000_000)
    redis = request.app[keys.REDIS]
    match = next((o for o in await recent_orders(redis, show.id) if o.number == number), None)
    if match is None:
        raise ApiError(404, "not_found", f"No order #{number} in this show.")
    await redis.hset(order_key(match.order_id), "checked_in_at", repr(time.time()))
    await request.app[keys.BUS].publish(show.id, match.event(checked_in=True))
    return web.json_response({**match.public(), "checked_in": True})


async def pos_page(request: web.Request) -> web.Response:
    show = page_show(request)
    try:
        require_role(request, "pos", show_id=show.id)
    except ApiError:
        raise login_redirect(request) from None
    data = {
        **show_summary(show),
        "products": [
            {"sku": p.sku, "name": p.name, "price": f"{p.price:.2f}", "barcode": p.barcode}
            for p in show.products
        ],
    }
    return render(request, "pos.html", show=show, data=data)


def setup(app: web.Application) -> None:
    app.router.add_post("/api/shows/{show}/pos/sales", post_sale)
    app.router.add_post("/api/orders/{order_id}/refund", refund)
    app.router.add_get("/shows/{show}/pos", pos_page)
    app.router.add_get("/api/shows/{show}/picklist", get_picklist)
    app.router.add_post("/api/shows/{show}/picklist/print", print_picklist)
    app.router.add_post("/api/orders/{order_id}/undo", undo)
    app.router.add_post("/api/shows/{show}/checkin", checkin)
