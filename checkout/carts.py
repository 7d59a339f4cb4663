"""Carts: per-viewer holds in Redis, taken and released by single Lua scripts."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from checkout import keys, scripts


@dataclass(frozen=True)
class CartLine:
    show: str
    sku: str
    quantity: int
    unit_price_cents: int
    drop_id: str
    hold_expires_at: int  # epoch ms


@dataclass(frozen=True)
class AddResult:
    # ok | sold_out | limit_reached | ip_limit | not_found | other_show | source_changed
    result: str
    available: int
    cart: list[CartLine] = field(default_factory=list)  # on success: the live cart


def _line(f: bytes, value: bytes, score: float) -> CartLine:
    show, sku = f.decode().split("|", 1)
    qty, price, drop_id = value.decode().split("|", 2)
    return CartLine(show, sku, int(qty), int(price), drop_id, int(score))


def now_ms() -> int:
    return int(time.time() * 1000)


async def add_item(
    redis,
    viewer: str,
    show: str,
    sku: str,
    quantity: int,
    *,
    price_cents: int,
    per_buyer_limit: int | None,
    hold_seconds: float,
    drop_hold_seconds: float | None = None,
    ip: str | None = None,
    buyers_per_ip: int = 0,
    ip_memory_s: int = 30 * 86400,
    now: int | None = None,
) -> AddResult:
    """Hold ``quantity`` units for the viewer. With an ``ip`` and ``buyers_per_ip`` > 0,
    the buyers whose first add came from that IP may together hold or order at most
    ``buyers_per_ip`` times the per-buyer limit (a fresh cookie is not a fresh buyer).
    A running drop's units are held for ``drop_hold_seconds`` when that is shorter."""
    now = now_ms() if now is None else now
    drop_hold = hold_seconds if drop_hold_seconds is None else min(hold_seconds, drop_hold_seconds)
    out = await scripts.add_to_cart(
        redis,
        [
            keys.stock(show),
            keys.drop(show),
            keys.cart(viewer),
            keys.HOLDS_EXPIRY,
            keys.bought(show, viewer),
            keys.cart_adds(show),
            keys.buyer_ip(viewer),
        ],
        [
            show,
            sku,
            quantity,
            now,
            now + int(hold_seconds * 1000),
            per_buyer_limit or 0,
            price_cents,
            viewer,
            ip or "",
            buyers_per_ip if ip else 0,
            now + int(drop_hold * 1000),
            ip_memory_s,
        ],
    )
    lines = [
        _line(out[i], out[i + 1], float(out[i + 2]))
        for i in range(2, len(out), 3)
        if float(out[i + 2]) > now
    ]
    return AddResult(out[0].decode(), int(out[1]), sorted(lines, key=lambda x: (x.show, x.sku)))


async def remove_item(redis, viewer: str, show: str, sku: str) -> int:
    """Release a cart line; returns the units released (0 if there was none)."""
    released = await scripts.remove_from_cart(
        redis, [keys.cart(viewer), keys.HOLDS_EXPIRY], [viewer, f"{show}|{sku}", now_ms()]
    )
    return int(released)


async def read_cart(redis, viewer: str, now: int | None = None) -> list[CartLine]:
    """Live lines only: a line past its expiry is already gone for the buyer (the
    reaper returns its stock within a moment)."""
    now = now_ms() if now is None else now
    raw = await redis.hgetall(keys.cart(viewer))
    if not raw:
        return []
    fields = sorted(raw)
    pipe = redis.pipeline(transaction=False)
    for f in fields:
        pipe.zscore(keys.HOLDS_EXPIRY, f"{viewer}|".encode() + f)
    scores = await pipe.execute()
    lines = []
    for f, score in zip(fields, scores, strict=True):
        if score is not None and score > now:
            lines.append(_line(f, raw[f], score))
    return lines


async def cart_adds(redis, show: str) -> dict[str, int]:
    """Units added to carts in this show, per sku (released holds are not taken back)."""
    raw = await redis.hgetall(keys.cart_adds(show))
    return {k.decode(): int(v) for k, v in sorted(raw.items())}


async def cart_line_show(redis, viewer: str, sku: str) -> str | None:
    for f in await redis.hkeys(keys.cart(viewer)):
        show, line_sku = f.decode().split("|", 1)
        if line_sku == sku:
            return show
    return None


async def reap_expired_holds(
    redis, batch: int = 500, now: int | None = None
) -> list[tuple[str, str]]:
    """Return expired holds' stock (safe to run in every process at once)."""
    now = now_ms() if now is None else now
    changed = await scripts.reap_holds(redis, [keys.HOLDS_EXPIRY], [now, batch])
    return [tuple(c.decode().split("|", 1)) for c in changed]  # type: ignore[misc]
