"""Walk-in sales at the showroom's counter, from the same stock as the stream.

A sale goes through exactly the scripts an online buyer does: each line is an
add-to-cart (stock, a running drop and its per-buyer limit checked and taken in one Lua
step), the cart becomes an order (same checkout script), and the order is marked paid
with its print job (the receipt label) in one step. So the room and the stream can never
oversell each other. The sale's buyer is the sale itself (``pos:<id>``): per-buyer
limits apply per sale.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass

from checkout import carts
from checkout.ordering import place_order
from checkout.orders import Order, load_order, mark_paid, order_key

PAYMENTS = ("cash", "card_present")
HOLD_S = 120  # the few seconds between taking the units and marking them paid


@dataclass(frozen=True)
class SaleLine:
    sku: str
    quantity: int
    price_cents: int
    per_buyer_limit: int | None


class SaleRefused(Exception):
    """Nothing was sold and no stock moved. ``code``: sold_out | limit_reached | empty."""

    def __init__(self, code: str, sku: str = "", available: int = 0) -> None:
        super().__init__(code)
        self.code, self.sku, self.available = code, sku, available


async def sell(
    redis,
    show: str,
    lines: list[SaleLine],
    *,
    payment: str,
    buyer_name: str,
    cashier: str,
    product_name: Callable[[str, str], str],
    currency: str,
) -> Order:
    if payment not in PAYMENTS:
        raise ValueError(payment)
    if not lines:
        raise SaleRefused("empty")
    buyer = f"pos:{uuid.uuid4().hex[:16]}"
    taken: list[str] = []
    for line in lines:
        added = await carts.add_item(
            redis,
            buyer,
            show,
            line.sku,
            line.quantity,
            price_cents=line.price_cents,
            per_buyer_limit=line.per_buyer_limit,
            hold_seconds=HOLD_S,
        )
        if added.result != "ok":
            for sku in taken:  # all or nothing: give back what this sale already took
                await carts.remove_item(redis, buyer, show, sku)
            code = "limit_reached" if "limit" in added.result else "sold_out"
            raise SaleRefused(code, line.sku, added.available)
        taken.append(line.sku)
    order = await place_order(
        redis,
        buyer,
        show,
        product_name=product_name,
        currency_of=lambda _show: currency,
        buyer_name=buyer_name,
        buyer_email="",
        payment_timeout_s=HOLD_S,
    )
    if order is None:  # the holds lapsed in between (a stalled process): nothing sold
        raise SaleRefused("sold_out")
    await redis.hset(
        order_key(order.order_id),
        mapping={"channel": "in_person", "payment_method": payment, "cashier": cashier},
    )
    await mark_paid(redis, order.order_id)
    paid = await load_order(redis, order.order_id)
    assert paid is not None
    return paid
