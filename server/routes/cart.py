"""Cart, checkout, orders, Stripe webhooks, drops and stock (API.md "Cart and checkout").

Parsing and authorisation only; the rules live in ``checkout``.
"""

from __future__ import annotations

import logging
import time
from decimal import Decimal, InvalidOperation
from typing import Any

from aiohttp import web

from checkout import carts, drops
from checkout.catalog import set_stock
from checkout.keys import ORDER_ID_MAX
from checkout.keys import payment_intent as payment_intent_key
from checkout.live import availability
from checkout.ordering import CheckoutRefused, expire_order_now, place_order, restore_cart
from checkout.orders import (
    Status,
    TransitionError,
    cents_str,
    load_order,
    order_key,
    transition,
)
from checkout.payments import Card, PaymentDeclined, PaymentUnavailable
from checkout.service import Commerce
from checkout.webhooks import BadEvent, BadSignature, handle_event, verify
from server import audit, keys, links, segments
from server.auth import (
    ensure_viewer,
    get_show,
    require_host,
    require_role,
    staff_shows,
    viewer_id,
)
from server.config import SKU, ShowConfig
from server.errors import (
    ApiError,
    bad_request,
    check_text,
    conflict,
    not_found,
    read_body,
    read_json,
)

log = logging.getLogger("showroom.checkout")

MAX_QUANTITY = 99
WEBHOOK_MAX_BYTES = 512 * 1024


def commerce(app: web.Application) -> Commerce:
    return app[keys.EXTRA]["commerce"]


def _redis(app: web.Application):
    return commerce(app).redis


# --- input checks ---------------------------------------------------------------------


def _int(body: dict, name: str, lo: int, hi: int, default: int | None = None) -> int:
    value = body.get(name, default)
    if value is None:
        raise bad_request(f"{name} is required.")
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise bad_request(f"{name} must be a whole number from {lo} to {hi}.")
    return value


def _str(body: dict, name: str, max_len: int = 200) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not value.strip():
        raise bad_request(f"{name} is required and must be a non-empty string.")
    if len(value) > max_len:
        raise bad_request(f"{name} is longer than {max_len} characters.")
    return check_text(value.strip(), name)


def _product(show: ShowConfig, sku: Any):
    if not isinstance(sku, str) or not sku:
        raise bad_request("sku is required and must be a string.")
    product = show.product(sku) if SKU.match(sku) else None
    if product is None:
        raise not_found(f"No product {sku!r} in show {show.id!r}.")
    return product


def _price_cents(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise bad_request('price must be a decimal string like "12.00".')
    try:
        price = Decimal(str(value))
    except InvalidOperation:
        raise bad_request('price must be a decimal string like "12.00".') from None
    if not price.is_finite() or price <= 0 or price != price.quantize(Decimal("0.01")):
        raise bad_request("price must be a positive amount with at most 2 decimals.")
    if price > Decimal("999999.99"):
        raise bad_request("price is too large.")
    return int(price * 100)


# --- cart -----------------------------------------------------------------------------


async def cart_view(
    request: web.Request, viewer: str, lines: list[carts.CartLine] | None = None
) -> dict:
    shows = request.app[keys.SHOWS]
    if lines is None:
        lines = await carts.read_cart(_redis(request.app), viewer, shows)
    items = []
    for line in lines:
        show = shows.get(line.show)
        product = show.product(line.sku) if show else None
        items.append(
            {
                "show": line.show,
                "sku": line.sku,
                "name": product.name if product else line.sku,
                "quantity": line.quantity,
                "unit_price": cents_str(line.unit_price_cents),
                "hold_expires_at": line.hold_expires_at,
                "drop": bool(line.drop_id),
            }
        )
    currency = None
    if lines and lines[0].show in shows:
        currency = shows[lines[0].show].currency
    elif len(shows) == 1:
        currency = next(iter(shows.values())).currency
    total = sum(line.quantity * line.unit_price_cents for line in lines)
    return {"items": items, "total": cents_str(total), "currency": currency}


async def get_cart(request: web.Request) -> web.Response:
    viewer = ensure_viewer(request)
    return web.json_response(await cart_view(request, viewer))


_ADD_ERRORS = {
    "sold_out": (409, "sold_out", "Sold out: there are not enough units left."),
    "not_found": (404, "not_found", "This product is not on sale."),
    "other_show": (
        409,
        "conflict",
        "Your cart holds items from another show; check out or empty it first.",
    ),
    "source_changed": (
        409,
        "conflict",
        "A drop changed this product's price; remove it from your cart and add it again.",
    ),
}


async def add_item(request: web.Request) -> web.Response:
    started = time.perf_counter()
    metrics = request.app[keys.METRICS]
    result = "bad_request"
    try:
        viewer = ensure_viewer(request)
        body = await read_json(request)
        show_id = body.get("show")
        if not isinstance(show_id, str):
            raise bad_request("show is required and must be a string.")
        show = get_show(request, show_id)
        product = _product(show, body.get("sku"))
        quantity = _int(body, "quantity", 1, MAX_QUANTITY, default=1)
        redis = _redis(request.app)
        settings = request.app[keys.SETTINGS]
        added = await carts.add_item(
            redis,
            viewer,
            show.id,
            product.sku,
            quantity,
            price_cents=product.price_cents,
            per_buyer_limit=product.per_buyer_limit,
            hold_seconds=settings.hold_seconds,
            drop_hold_seconds=settings.drop_hold_seconds,
            ip=client_ip(request),
            buyers_per_ip=settings.buyers_per_ip,
            other_shows=request.app[keys.SHOWS],
        )
        result = added.result
        if added.result == "limit_reached":
            raise conflict(
                "limit_reached",
                f"You can buy at most {added.available} of this product.",
            )
        if added.result == "ip_limit":
            raise conflict(
                "limit_reached",
                f"Buyers on your network have already reserved the most this product allows "
                f"({added.available} each).",
            )
        if added.result != "ok":
            status, code, detail = _ADD_ERRORS.get(
                added.result, (409, "conflict", "Could not add this item.")
            )
            raise ApiError(status, code, detail)
        commerce(request.app).notifier.touch(show.id, product.sku)
        for hook in request.app[keys.EXTRA].get("cart_add_hooks", []):
            try:  # e.g. a clip's add-to-cart count; never fails the add itself
                await hook(request, viewer, show, product.sku, body)
            except Exception:
                log.exception("add-to-cart hook failed")
        return web.json_response(await cart_view(request, viewer, added.cart))
    except ApiError as exc:
        if result == "bad_request":
            result = exc.code
        raise
    finally:
        metrics.cart_ops.labels("add", result).inc()
        metrics.cart_latency.observe(time.perf_counter() - started)


async def remove_item(request: web.Request) -> web.Response:
    viewer = ensure_viewer(request)
    sku = request.match_info["sku"]
    redis = _redis(request.app)
    shows = request.app[keys.SHOWS]
    show_id = request.query.get("show") or await carts.cart_line_show(redis, viewer, sku, shows)
    if show_id not in shows:
        show_id = None
    released = await carts.remove_item(redis, viewer, show_id, sku) if show_id else 0
    request.app[keys.METRICS].cart_ops.labels("remove", "ok" if released else "not_found").inc()
    if not released:
        raise not_found(f"{sku!r} is not in your cart.")
    commerce(request.app).notifier.touch(show_id, sku)
    return web.json_response(await cart_view(request, viewer))


# --- checkout and orders ----------------------------------------------------------------


async def checkout(request: web.Request) -> web.Response:
    viewer = ensure_viewer(request)
    body = await read_json(request)
    name = _str(body, "name")
    email = _str(body, "email", 254)
    if "@" not in email or email.startswith("@") or email.endswith("@") or " " in email:
        raise bad_request("email must be an email address.")
    app = request.app
    com = commerce(app)
    if com.gateway is None:
        raise ApiError(503, "unavailable", "Payments are not configured on this server.")
    shows = app[keys.SHOWS]

    def product_name(show_id: str, sku: str) -> str:
        product = shows[show_id].product(sku) if show_id in shows else None
        return product.name if product else sku

    redis = _redis(app)
    # When each product went into the cart: the host's conversion counts the order for
    # the segment that featured it then (server/segments.py).
    lines = await carts.read_cart(redis, viewer, shows)
    # A cart holds one show at a time (an add refuses a second one).
    show_id = lines[0].show if lines else await carts.cart_show(redis, viewer, shows)
    if show_id is None:
        app[keys.METRICS].cart_ops.labels("checkout", "cart_empty").inc()
        raise conflict("cart_empty", "Your cart is empty (or its holds have expired).")
    settings = app[keys.SETTINGS]
    limits = {
        f"{s.id}|{p.sku}": p.per_buyer_limit
        for s in shows.values()
        for p in s.products
        if p.per_buyer_limit
    }
    try:
        order = await place_order(
            redis,
            viewer,
            show_id,
            product_name=product_name,
            currency_of=lambda s: shows[s].currency if s in shows else "usd",
            buyer_name=name,
            buyer_email=email,
            payment_timeout_s=settings.payment_timeout_s,
            sandbox=com.gateway.sandbox,
            limits=limits,
            max_pending=settings.max_pending_orders,
            ip=client_ip(request),
            buyers_per_ip=settings.buyers_per_ip,
        )
    except CheckoutRefused as exc:
        app[keys.METRICS].cart_ops.labels("checkout", exc.code).inc()
        raise _refusal(exc) from None
    app[keys.METRICS].cart_ops.labels("checkout", "ok" if order else "cart_empty").inc()
    if order is None:
        raise conflict("cart_empty", "Your cart is empty (or its holds have expired).")
    try:
        intent = await com.gateway.create_intent(
            order.order_id, order.amount_cents, order.currency, order.show
        )
    except PaymentUnavailable as exc:
        # The buyer keeps what they held: the units go back into the cart, held again.
        for back_show, sku in await restore_cart(
            redis, order, settings.hold_seconds, settings.drop_hold_seconds, shows
        ):
            com.notifier.touch(back_show, sku)
        raise ApiError(
            503,
            "unavailable",
            f"The payment provider is unavailable ({exc}); your items are still in your "
            "cart, try again in a moment.",
            {"Retry-After": "5"},
        ) from None
    added = segments.added_times(
        lines, int(settings.hold_seconds * 1000), int(settings.drop_hold_seconds * 1000)
    )
    # One round trip, not a transaction: the intent's index is outside the order's slot
    # (a refund event names only the PaymentIntent); if that write is lost the webhook
    # finds the order by its metadata, checked against the payment_intent kept here.
    pipe = redis.pipeline(transaction=False)
    pipe.hset(
        order_key(order.order_id),
        mapping={"payment_intent": intent.id, segments.ADDED_FIELD: added},
    )
    pipe.set(payment_intent_key(intent.id), order.order_id, ex=30 * 86400)
    await pipe.execute()
    await com.publish_order(order)
    return web.json_response(
        {
            "order_id": order.order_id,
            "number": order.number,
            "amount": cents_str(order.amount_cents),
            "currency": order.currency,
            "items": order.public()["items"],
            "pay_by": int((order.created_at + app[keys.SETTINGS].payment_timeout_s) * 1000),
            "payment": {
                "provider": "stripe",
                "client_secret": intent.client_secret,
                "publishable_key": com.gateway.publishable_key,
                "sandbox": com.gateway.sandbox,
            },
        },
        status=201,
    )


def client_ip(request: web.Request) -> str:
    """The address per-IP limits count against (the TCP peer)."""
    return request.remote or "unknown"


def _refusal(exc: CheckoutRefused) -> ApiError:
    if exc.code == "email_limit":
        return conflict(
            "limit_reached",
            f"Orders with this email already have the most of {exc.sku} one buyer may buy "
            f"({exc.limit}).",
        )
    who = "You have" if exc.code == "pending" else "Buyers on your network have"
    return conflict(
        "limit_reached",
        f"{who} {exc.count} unpaid orders; pay for one or let it expire before ordering again.",
    )


async def _own_order(request: web.Request):
    order_id = request.match_info["order_id"]
    order = (
        await load_order(_redis(request.app), order_id) if len(order_id) <= ORDER_ID_MAX else None
    )
    if order is None:
        raise not_found("No such order.")
    vid = viewer_id(request)
    # The signed link of the receipt email opens the order on any device.
    by_link = links.check_order_token(
        request.app[keys.SECRET], order.order_id, request.query.get("t")
    )
    if vid != order.viewer and not by_link and order.show not in staff_shows(request):
        raise not_found("No such order.")  # someone else's order is not disclosed
    return order


async def get_order(request: web.Request) -> web.Response:
    order = await _own_order(request)
    return web.json_response(order.public())


async def sandbox_pay(request: web.Request) -> web.Response:
    com = commerce(request.app)
    if com.gateway is None or not com.gateway.sandbox:
        raise not_found("Test-card payments exist only in sandbox mode.")
    order = await _own_order(request)
    body = await read_json(request)
    number = body.get("card_number")
    if not isinstance(number, str):
        raise bad_request("card_number is required and must be a string.")
    number = number.replace(" ", "").replace("-", "")
    if not number.isdigit() or not 12 <= len(number) <= 19:
        raise bad_request("card_number must be 12 to 19 digits.")
    exp_month = _int(body, "exp_month", 1, 12)
    exp_year = _int(body, "exp_year", 0, 2100)
    if exp_year < 100:
        exp_year += 2000
    cvc = body.get("cvc")
    if not isinstance(cvc, str) or not cvc.isdigit() or len(cvc) not in (3, 4):
        raise bad_request("cvc must be 3 or 4 digits.")
    if order.status not in (Status.PENDING_PAYMENT, Status.PAYMENT_FAILED):
        raise conflict("conflict", f"This order is {order.status}; it cannot be paid now.")
    if not order.payment_intent:
        raise conflict("conflict", "This order has no payment yet.")
    redis = _redis(request.app)
    try:
        status = await com.gateway.pay_with_card(
            order.payment_intent, Card(number, exp_month, exp_year, cvc)
        )
    except PaymentDeclined as exc:
        try:
            await transition(redis, order.order_id, Status.PAYMENT_FAILED)
        except TransitionError:
            pass
        else:
            await com.publish_order(await load_order(redis, order.order_id))
        raise ApiError(402, "card_declined", exc.message) from None
    except PaymentUnavailable as exc:
        raise ApiError(
            503,
            "unavailable",
            f"The payment provider is unavailable ({exc}); try again in a moment.",
            {"Retry-After": "5"},
        ) from None
    current = await load_order(redis, order.order_id)
    return web.json_response(
        {"order_id": order.order_id, "status": str(current.status), "payment_status": status}
    )


async def cancel_order(request: web.Request) -> web.Response:
    """The buyer gives up before paying: the order expires now, its units go back on sale."""
    order = await _own_order(request)
    if order.status not in (Status.PENDING_PAYMENT, Status.PAYMENT_FAILED):
        raise conflict("conflict", f"This order is {order.status}; it cannot be cancelled.")
    redis = _redis(request.app)
    com = commerce(request.app)
    _, changed = await expire_order_now(redis, order.show, order.order_id)
    for show_id, sku in changed:
        com.notifier.touch(show_id, sku)
    current = await load_order(redis, order.order_id) or order
    await com.publish_order(current)
    return web.json_response(current.public())


async def stripe_webhook(request: web.Request) -> web.Response:
    com = commerce(request.app)
    payload = await read_body(request, WEBHOOK_MAX_BYTES)
    if not com.webhook_secret:
        raise bad_request("No webhook secret is configured (STRIPE_WEBHOOK_SECRET).")
    try:
        event = verify(payload, request.headers.get("Stripe-Signature"), com.webhook_secret)
    except BadSignature as exc:
        raise bad_request(f"Signature check failed: {exc}") from None
    redis = _redis(request.app)
    refund = com.gateway.refund if com.gateway else None
    try:
        outcome = await handle_event(redis, event, refund)
    except BadEvent as exc:
        raise bad_request(f"Not a Stripe event we understand: {exc}") from None
    if outcome.changed and outcome.order_id:
        order = await load_order(redis, outcome.order_id)
        if order is not None:
            await com.publish_order(order)
    answer = {"received": True, "duplicate": outcome.duplicate}
    if outcome.ignored:
        answer["ignored"] = outcome.ignored
    return web.json_response(answer)


# --- host: drops and stock ----------------------------------------------------------------


async def start_drop(request: web.Request) -> web.Response:
    show = get_show(request)
    require_host(request, show)
    body = await read_json(request)
    product = _product(show, body.get("sku"))
    quantity = _int(body, "quantity", 1, 1_000_000)
    duration = body.get("duration_s")
    if (
        isinstance(duration, bool)
        or not isinstance(duration, int | float)
        or not 1 <= duration <= 86400
    ):
        raise bad_request("duration_s must be a number of seconds from 1 to 86400.")
    limit = _int(body, "per_buyer_limit", 0, MAX_QUANTITY, default=0)
    price = _price_cents(body["price"]) if body.get("price") is not None else None
    req = drops.DropRequest(product.sku, quantity, float(duration), limit, price)
    view = await run_drop(request.app, show, req)
    await audit.log(request, show.id, "drop", f"{req.sku} x{req.quantity}")
    return web.json_response({"drop": view}, status=201)


async def run_drop(app: web.Application, show: ShowConfig, req: drops.DropRequest) -> dict:
    """Start a drop (by hand or from the run of show); its live event view."""
    try:
        drop = await drops.start_drop(_redis(app), show.id, req)
    except drops.DropError as exc:
        if exc.code == "drop_active":
            raise conflict("conflict", "A drop is already running in this show.") from None
        if exc.code == "insufficient":
            raise conflict(
                "sold_out", f"Only {exc.available} units of {req.sku} are in stock."
            ) from None
        raise not_found(f"No stock for {req.sku!r}.") from None
    com = commerce(app)
    view = com.drop_event_view(show.id, drop)
    await app[keys.BUS].publish(show.id, {"type": "drop", "drop": view})
    com.notifier.touch(show.id, req.sku)
    return view


async def get_drop(request: web.Request) -> web.Response:
    show = get_show(request)
    drop = await drops.current_drop(_redis(request.app), show.id)
    return web.json_response({"drop": commerce(request.app).drop_event_view(show.id, drop)})


async def put_stock(request: web.Request) -> web.Response:
    """A stock count: the host, or a cashier who counted the shelf (audited)."""
    show = require_role(request, "stock")
    body = await read_json(request)
    product = _product(show, body.get("sku"))
    available = _int(body, "available", 0, 10_000_000)
    await set_stock(_redis(request.app), show.id, product.sku, available)
    commerce(request.app).notifier.touch(show.id, product.sku)
    await audit.log(request, show.id, "stock", f"{product.sku}={available}")
    return web.json_response({"sku": product.sku, "available": available})


# --- wiring -----------------------------------------------------------------------------


def add_cart_hook(app: web.Application, hook) -> None:
    """``await hook(request, viewer, show, sku, body)`` after each successful add."""
    app[keys.EXTRA].setdefault("cart_add_hooks", []).append(hook)


async def _state_hook(app: web.Application, show: ShowConfig, state: dict) -> None:
    levels, drop = await availability(_redis(app), show.id)
    for product in state.get("products", []):
        if product["sku"] in levels:
            product["available"] = levels[product["sku"]]
    state["drop"] = commerce(app).drop_event_view(show.id, drop)


# Answers with a buyer's cart, orders, name or email: never kept by a browser or proxy
# cache (a shared computer, a caching proxy on the venue's wifi).
PERSONAL_PREFIXES = ("/api/cart", "/api/checkout", "/api/orders", "/api/me", "/api/print-jobs")


async def _no_store(request: web.Request, response: web.StreamResponse) -> None:
    if request.path.startswith(PERSONAL_PREFIXES):
        response.headers["Cache-Control"] = "no-store"


def setup(app: web.Application) -> None:
    from server.routes.shows import add_state_hook

    app.on_response_prepare.append(_no_store)

    async def commerce_ctx(app: web.Application):
        bus = app[keys.BUS]
        redis = app[keys.REDIS]
        com = Commerce(redis, app[keys.SHOWS], app[keys.SETTINGS], bus.publish)
        app[keys.EXTRA]["commerce"] = com
        await com.start()

        async def order_gauge() -> None:
            for status, n in (await com.order_counts()).items():
                app[keys.METRICS].orders.labels(status).set(n)

        app[keys.METRICS].before_scrape.append(order_gauge)
        yield
        await com.stop()
        await redis.aclose()

    app.cleanup_ctx.append(commerce_ctx)
    add_state_hook(app, _state_hook)
    r = app.router
    r.add_get("/api/cart", get_cart)
    r.add_post("/api/cart/items", add_item)
    r.add_delete("/api/cart/items/{sku}", remove_item)
    r.add_post("/api/checkout", checkout)
    r.add_get("/api/orders/{order_id}", get_order)
    r.add_post("/api/orders/{order_id}/sandbox-pay", sandbox_pay)
    r.add_post("/api/orders/{order_id}/cancel", cancel_order)
    r.add_post("/webhooks/stripe", stripe_webhook)
    r.add_post("/api/shows/{show}/drops", start_drop)
    r.add_get("/api/shows/{show}/drop", get_drop)
    r.add_post("/api/shows/{show}/stock", put_stock)
