"""From cart to order, and back to stock when payment never comes.

``place_order`` converts the viewer's live holds into a pending order in one Lua step
(the units stay reserved for the order) and writes the order record; amounts are the
prices recorded on the holds, which came from the catalog or the drop, never the client.
``expire_due_orders`` expires unpaid orders past their deadline and returns their units,
exactly once, in the same step that checks the order is still unpaid (so a payment that
lands at the same moment either wins entirely or finds the order expired).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

from checkout import keys, scripts
from checkout.orders import Order, OrderItem, Status, save_new_order


def new_order_id() -> str:
    return "ord_" + uuid.uuid4().hex[:20]


async def place_order(
    redis,
    viewer: str,
    *,
    product_name: Callable[[str, str], str],
    currency_of: Callable[[str], str],
    buyer_name: str,
    buyer_email: str,
    payment_timeout_s: float,
    now: float | None = None,
) -> Order | None:
    """The viewer's holds become a ``pending_payment`` order; None when nothing is held."""
    now = time.time() if now is None else now
    order_id = new_order_id()
    deadline_ms = int((now + payment_timeout_s) * 1000)
    out = await scripts.checkout(
        redis,
        [keys.cart(viewer), keys.HOLDS_EXPIRY, keys.order_stock(order_id), keys.ORDERS_PENDING],
        [viewer, int(now * 1000), order_id, deadline_ms],
    )
    if not out:
        return None
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
    )
    await save_new_order(redis, order)
    return order


async def expire_due_orders(
    redis, batch: int = 200, now_ms: int | None = None
) -> tuple[list[str], list[tuple[str, str]]]:
    """Expire unpaid orders past their deadline; returns (order ids, (show, sku) changed)."""
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    out = await scripts.expire_orders(redis, [keys.ORDERS_PENDING], [now_ms, batch])
    orders, changed = [], []
    for item in out:
        text = item.decode()
        if "|" in text:
            changed.append(tuple(text.split("|", 1)))
        else:
            orders.append(text)
    return orders, changed  # type: ignore[return-value]


async def expire_order_now(redis, order_id: str) -> tuple[list[str], list[tuple[str, str]]]:
    """Expire one unpaid order at once (e.g. the payment provider refused to create it)."""
    await redis.zadd(keys.ORDERS_PENDING, {order_id: 0})
    return await expire_due_orders(redis, now_ms=int(time.time() * 1000))
