"""Carts: per-viewer holds in Redis, taken and released by single Lua scripts.

A viewer has one cart per show (``cart:{show}:viewer``, in the show's slot); the API's
cart is all of them together, and an add refuses a second show while another show's
cart holds something (``other_show``), as a cart of one show at a time always did.
The carts are in different slots, so that check is a read before the add: two adds of
one viewer to two shows at the same instant can both pass, and checkout then takes the
first show's cart, leaving the other in the cart (nothing is sold twice or lost).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
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
    other_shows: Iterable[str] = (),
    now: int | None = None,
) -> AddResult:
    """Hold ``quantity`` units for the viewer. With an ``ip`` and ``buyers_per_ip`` > 0,
    the buyers whose first add came from that IP may together hold or order at most
    ``buyers_per_ip`` times the per-buyer limit (a fresh cookie is not a fresh buyer).
    A running drop's units are held for ``drop_hold_seconds`` when that is shorter.
    ``other_shows``: the shows whose carts must be empty for this add (``other_show``)."""
    now = now_ms() if now is None else now
    if await cart_show(redis, viewer, [s for s in other_shows if s != show]):
        return AddResult("other_show", 0)
    drop_hold = hold_seconds if drop_hold_seconds is None else min(hold_seconds, drop_hold_seconds)
    out = await scripts.add_to_cart(
        redis,
        add_keys(show, viewer),
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


# --- the keys of each script call (pure: tests check they share one slot) -----------


def add_keys(show: str, viewer: str) -> list[str]:
    return [
        keys.stock(show),
        keys.drop(show),
        keys.cart(show, viewer),
        keys.holds_expiry(show),
        keys.bought(show),
        keys.cart_adds(show),
        keys.buyer_ip(show, viewer),
        keys.ip_units(show),
    ]


def remove_keys(show: str, viewer: str) -> list[str]:
    return [
        keys.cart(show, viewer),
        keys.holds_expiry(show),
        keys.stock(show),
        keys.drop(show),
        keys.buyer_ip(show, viewer),
        keys.ip_units(show),
    ]


def reap_keys(show: str, viewers: list[str]) -> list[str]:
    out = [keys.holds_expiry(show), keys.stock(show), keys.drop(show), keys.ip_units(show)]
    for viewer in viewers:
        out += [keys.cart(show, viewer), keys.buyer_ip(show, viewer)]
    return out


async def remove_item(redis, viewer: str, show: str, sku: str) -> int:
    """Release a cart line; returns the units released (0 if there was none)."""
    released = await scripts.remove_from_cart(
        redis, remove_keys(show, viewer), [viewer, f"{show}|{sku}", now_ms()]
    )
    return int(released)


async def cart_show(redis, viewer: str, shows: Iterable[str]) -> str | None:
    """The first of ``shows`` in which the viewer's cart holds something."""
    shows = list(shows)
    if not shows:
        return None
    pipe = redis.pipeline(transaction=False)
    for show in shows:
        pipe.exists(keys.cart(show, viewer))
    for show, found in zip(shows, await pipe.execute(), strict=True):
        if found:
            return show
    return None


async def read_cart(
    redis, viewer: str, shows: Iterable[str], now: int | None = None
) -> list[CartLine]:
    """The viewer's carts in ``shows``, live lines only: a line past its expiry is
    already gone for the buyer (the reaper returns its stock within a moment)."""
    now = now_ms() if now is None else now
    shows = list(shows)
    pipe = redis.pipeline(transaction=False)
    for show in shows:
        pipe.hgetall(keys.cart(show, viewer))
    carts = [(s, raw) for s, raw in zip(shows, await pipe.execute(), strict=True) if raw]
    if not carts:
        return []
    pipe = redis.pipeline(transaction=False)
    for show, raw in carts:
        for f in sorted(raw):
            pipe.zscore(keys.holds_expiry(show), f"{viewer}|".encode() + f)
    scores = iter(await pipe.execute())
    lines = []
    for _show, raw in carts:
        for f in sorted(raw):
            score = next(scores)
            if score is not None and score > now:
                lines.append(_line(f, raw[f], score))
    return sorted(lines, key=lambda x: (x.show, x.sku))


async def cart_adds(redis, show: str) -> dict[str, int]:
    """Units added to carts in this show, per sku (released holds are not taken back)."""
    raw = await redis.hgetall(keys.cart_adds(show))
    return {k.decode(): int(v) for k, v in sorted(raw.items())}


async def cart_line_show(redis, viewer: str, sku: str, shows: Iterable[str]) -> str | None:
    """The first of ``shows`` (by name) whose cart holds ``sku`` for the viewer: one round
    trip (the line's field, not the whole cart and its expiries)."""
    shows = sorted(shows)
    pipe = redis.pipeline(transaction=False)
    for show in shows:
        pipe.hexists(keys.cart(show, viewer), f"{show}|{sku}")
    return next((s for s, held in zip(shows, await pipe.execute(), strict=True) if held), None)


async def reap_expired_holds(
    redis, show: str, batch: int = 500, now: int | None = None
) -> list[tuple[str, str]]:
    """Return the show's expired holds' stock (safe to run in every process at once)."""
    now = now_ms() if now is None else now
    due = await redis.zrangebyscore(keys.holds_expiry(show), "-inf", now, start=0, num=batch)
    if not due:
        return []
    members = [m.decode() for m in due]
    viewers = [m.split("|", 1)[0] for m in members]
    changed = await scripts.reap_holds(redis, reap_keys(show, viewers), [now, *members])
    return [tuple(c.decode().split("|", 1)) for c in changed]  # type: ignore[misc]
