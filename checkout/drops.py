"""Drops: a limited quantity of one product, for a limited time, maybe at a drop price.

Starting a drop moves ``quantity`` units from the product's stock into the drop (one Lua
step); while it runs only drop units sell for that sku; when it ends the unsold units go
back to the product in the same step that deletes the drop, so exactly once.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

from checkout import keys, scripts
from checkout.orders import cents_str


@dataclass(frozen=True)
class DropRequest:
    sku: str
    quantity: int
    duration_s: float
    per_buyer_limit: int
    price_cents: int | None = None


class DropError(Exception):
    def __init__(self, code: str, available: int = 0) -> None:
        super().__init__(code)
        self.code, self.available = code, available


def drop_keys(show_id: str) -> list[str]:
    """The keys of the start and end scripts (pure: tests check they share one slot)."""
    return [keys.stock(show_id), keys.drop(show_id)]


async def start_drop(redis, show_id: str, req: DropRequest, now_ms: int | None = None) -> dict:
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    ends_at = now_ms + int(req.duration_s * 1000)
    result, available = await scripts.start_drop(
        redis,
        drop_keys(show_id),
        [
            req.sku,
            req.quantity,
            ends_at,
            "" if req.price_cents is None else req.price_cents,
            req.per_buyer_limit,
            uuid.uuid4().hex[:12],
            now_ms,
        ],
    )
    result = result.decode()
    if result != "ok":
        raise DropError(result, int(available))
    drop = await current_drop(redis, show_id, now_ms)
    assert drop is not None
    return drop


def drop_view(raw: dict[bytes, bytes], product_price_cents: int | None = None) -> dict:
    d = {k.decode(): v.decode() for k, v in raw.items()}
    price = int(d["price"]) if d.get("price") else product_price_cents
    return {
        "id": d["id"],
        "sku": d["sku"],
        "remaining": int(d["remaining"]),
        "quantity": int(d["quantity"]),
        "ends_at": int(d["ends_at"]),
        "per_buyer_limit": int(d["limit"]),
        "price": cents_str(price) if price is not None else None,
    }


async def current_drop(redis, show_id: str, now_ms: int | None = None) -> dict | None:
    """The running drop of a show: {"id","sku","remaining","quantity","ends_at","price",...}."""
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    raw = await redis.hgetall(keys.drop(show_id))
    if not raw or int(raw[b"ends_at"]) <= now_ms:
        return None
    return drop_view(raw)


async def end_due_drop(redis, show_id: str, now_ms: int | None = None) -> str | None:
    """End the show's drop if its time is up; returns its sku (whose stock changed)."""
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    sku = await scripts.end_drop(redis, drop_keys(show_id), [now_ms])
    return sku.decode() if sku else None
