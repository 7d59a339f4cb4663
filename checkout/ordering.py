"""From cart to order, and back to stock when payment never comes.

``place_order`` converts the viewer's live holds into a pending order in one Lua step
(the units stay reserved for the order) and writes the order record; amounts are the
prices recorded on the holds, which came from the catalog or the drop, never the client.
``expire_due_orders`` expires unpaid orders past their deadline and returns their units,
exactly once, in the same step that checks the order is still unpaid (so a payment that
lands at the same moment either wins entirely or finds the order expired).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterable

from checkout import keys, scripts
from checkout.carts import cart_show
from checkout.orders import Order, OrderItem, Status, retention_s, save_new_order


class CheckoutRefused(Exception):
    """The buyer may not check out now; nothing changed (the cart keeps its holds).

    ``code``: ``pending`` (this buyer has too many unpaid orders), ``pending_ip`` (the
    buyers of this IP have), ``email_limit`` (``sku``'s per-buyer limit is already
    reached by orders with this email)."""

    def __init__(self, code: str, count: int = 0, sku: str = "", limit: int = 0) -> None:
        super().__init__(code)
        self.code, self.count, self.sku, self.limit = code, count, sku, limit


def email_token(email: str) -> str:
    """The key part for per-email limits (case-insensitive; no address stored in keys)."""
    return hashlib.sha256(email.strip().lower().encode()).hexdigest()[:24]


# --- the keys of each script call (pure: tests check they share one slot) -----------


def checkout_keys(
    show: str, viewer: str, order_id: str, ip: str, unpaid: Iterable[str] = ()
) -> list[str]:
    return [
        keys.cart(show, viewer),
        keys.holds_expiry(show),
        keys.order_stock(order_id),
        keys.orders_pending(show),
        keys.pending_orders(show, viewer),
        keys.pending_ip(show, ip),
        keys.stock(show),
        keys.drop(show),
        keys.bought(show),
        keys.bought_by_email(show),
        keys.ip_units(show),
        keys.buyer_ip(show, viewer),
        *(keys.order(oid) for oid in unpaid),
    ]


def _release_keys(show: str) -> list[str]:
    return [
        keys.stock(show),
        keys.drop(show),
        keys.bought(show),
        keys.bought_by_email(show),
        keys.ip_units(show),
    ]


def expire_keys(show: str, order_ids: Iterable[str]) -> list[str]:
    out = [keys.orders_pending(show), *_release_keys(show)]
    for oid in order_ids:
        out += [keys.order(oid), keys.order_stock(oid)]
    return out


def restore_keys(show: str, viewer: str, order_id: str) -> list[str]:
    return [
        keys.order_stock(order_id),
        keys.cart(show, viewer),
        keys.holds_expiry(show),
        keys.orders_pending(show),
        keys.order(order_id),
        *_release_keys(show),
    ]


async def place_order(
    redis,
    viewer: str,
    show: str,
    *,
    product_name: Callable[[str, str], str],
    currency_of: Callable[[str], str],
    buyer_name: str,
    buyer_email: str,
    payment_timeout_s: float,
    sandbox: bool = False,
    limits: dict[str, int] | None = None,
    max_pending: int = 0,
    ip: str | None = None,
    buyers_per_ip: int = 0,
    now: float | None = None,
) -> Order | None:
    """The viewer's holds in ``show`` become a ``pending_payment`` order; None when
    nothing is held there.

    ``limits`` ("{show}|{sku}" -> per-buyer limit) are checked against earlier orders
    with the same email; ``max_pending`` caps the buyer's unpaid orders (and, with an
    ``ip``, ``max_pending * buyers_per_ip`` those of the IP). Raises CheckoutRefused."""
    now = time.time() if now is None else now
    order_id = keys.new_order_id(show)
    deadline_ms = int((now + payment_timeout_s) * 1000)
    pairs = [x for key, limit in (limits or {}).items() if limit > 0 for x in (key, limit)]
    unpaid: list[str] = []
    if max_pending > 0:
        # The script checks these orders' status: it may only touch keys it is given.
        pipe = redis.pipeline(transaction=False)
        pipe.zrange(keys.pending_orders(show, viewer), 0, -1)
        if ip and buyers_per_ip:  # the IP's unpaid orders count only under a per-IP cap
            pipe.zrange(keys.pending_ip(show, ip), 0, -1)
        unpaid = sorted({m.decode() for ids in await pipe.execute() for m in ids})
    out = await scripts.checkout(
        redis,
        checkout_keys(show, viewer, order_id, ip or "", unpaid),
        [
            viewer,
            int(now * 1000),
            order_id,
            deadline_ms,
            email_token(buyer_email) if limits is not None else "",
            max_pending,
            buyers_per_ip if ip else 0,
            ip or "",
            show,
            len(unpaid),
            *unpaid,
            *pairs,
        ],
    )
    if not out:
        return None
    first = out[0].decode()
    if first.startswith("!"):
        code = first[1:]
        if code == "email_limit":
            raise CheckoutRefused(code, sku=out[1].decode(), limit=int(out[2]))
        raise CheckoutRefused(code, count=int(out[1]))
    show = out[0].decode()
    items = []
    for i in range(1, len(out), 4):
        sku = out[i].decode()
        items.append(
            OrderItem(
                sku=sku,
                name=product_name(show, sku),
                quantity=int(out[i + 1]),
                unit_price_cents=int(out[i + 2]),
            )
        )
    number = await redis.incr(keys.order_seq(show))
    order = Order(
        order_id=order_id,
        show=show,
        viewer=viewer,
        status=Status.PENDING_PAYMENT,
        items=items,
        amount_cents=sum(i.total_cents for i in items),
        currency=currency_of(show),
        buyer_name=buyer_name,
        buyer_email=buyer_email,
        created_at=now,
        number=int(number),
        sandbox=sandbox,
    )
    await save_new_order(redis, order)
    return order


async def expire_due_orders(
    redis, show: str, batch: int = 200, now_ms: int | None = None
) -> tuple[list[str], list[tuple[str, str]]]:
    """Expire the show's unpaid orders past their deadline; returns (order ids,
    (show, sku) changed). The reaper does it in two steps (``due_orders``, its last
    look at Stripe, ``expire_orders``); this is both at once, for tools and tests."""
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    return await expire_orders(redis, show, await due_orders(redis, show, batch, now_ms), now_ms)


async def due_orders(redis, show: str, batch: int = 200, now_ms: int | None = None) -> list[str]:
    """The show's unpaid orders past their payment deadline (at most ``batch``)."""
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    due = await redis.zrangebyscore(keys.orders_pending(show), "-inf", now_ms, start=0, num=batch)
    return [d.decode() for d in due]


async def expire_orders(
    redis, show: str, ids: list[str], now_ms: int | None = None
) -> tuple[list[str], list[tuple[str, str]]]:
    """Expire those of ``ids`` still unpaid and due (the script checks each again)."""
    if not ids:
        return [], []
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    out = await scripts.expire_orders(redis, expire_keys(show, ids), [now_ms, retention_s(), *ids])
    return _expired(out)


def _expired(out: list[bytes]) -> tuple[list[str], list[tuple[str, str]]]:
    orders, changed = [], []
    for item in out:
        text = item.decode()
        if "|" in text:
            changed.append(tuple(text.split("|", 1)))
        else:
            orders.append(text)
    return orders, changed  # type: ignore[return-value]


async def expire_order_now(
    redis, show: str, order_id: str
) -> tuple[list[str], list[tuple[str, str]]]:
    """Expire one unpaid order at once (e.g. the buyer cancelled it): due now."""
    await redis.zadd(keys.orders_pending(show), {order_id: 0})
    return await expire_orders(redis, show, [order_id])


async def restore_cart(
    redis,
    order: Order,
    hold_seconds: float,
    drop_hold_seconds: float | None = None,
    other_shows: Iterable[str] = (),
) -> list[tuple[str, str]]:
    """Put a pending order's units back in its buyer's cart, held again (the payment
    could not be created: the buyer retries without losing them); the order expires.
    Returns the (show, sku) whose units went back to stock instead."""
    now = int(time.time() * 1000)
    drop_hold = hold_seconds if drop_hold_seconds is None else min(hold_seconds, drop_hold_seconds)
    prices = [x for item in order.items for x in (item.sku, item.unit_price_cents)]
    elsewhere = await cart_show(redis, order.viewer, [s for s in other_shows if s != order.show])
    out = await scripts.restore_cart(
        redis,
        restore_keys(order.show, order.viewer, order.order_id),
        [
            order.order_id,
            now,
            now + int(hold_seconds * 1000),
            now + int(drop_hold * 1000),
            retention_s(),
            "1" if elsewhere else "0",
            *prices,
        ],
    )
    return [tuple(x.decode().split("|", 1)) for x in out]  # type: ignore[misc]
