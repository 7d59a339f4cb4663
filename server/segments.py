"""Featured segments: which product was on screen when, and the most viewers it had.

The host page's conversion table (orders paid per segment, per peak viewer) is built
from these. They live in Redis, not in the host's browser, so a reload, a second host
device or a restarted server shows the same history. Each change is one Lua script, so
two server processes cannot both close or open a segment.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

from checkout.keys import cart_adds as cart_adds_key
from checkout.keys import order as order_key
from checkout.keys import tag
from checkout.scripts import Script

KEEP = 50  # segments kept per show

# KEYS: segments list, the show's add-to-cart tally; ARGV: sku ('' = nothing featured),
# at_ms, viewers now, keep. A segment also keeps what the report needs: its viewer-ms
# (for the time-weighted average audience) and its product's add-to-carts while on air
# (the tally at the start and at the end), so add-to-cart itself pays nothing for it.
_FEATURE = Script(
    """
local now = tonumber(ARGV[2])
local last = redis.call('LINDEX', KEYS[1], -1)
if last then
  local seg = cjson.decode(last)
  if seg.end_ms == nil then
    if seg.sku == ARGV[1] then return 0 end
    seg.end_ms = now
    if seg.last_ms ~= nil then
      seg.vms = seg.vms + seg.last_v * math.max(0, now - seg.last_ms)
      seg.adds = tonumber(redis.call('HGET', KEYS[2], seg.sku) or '0') - seg.adds0
    end
    redis.call('LSET', KEYS[1], -1, cjson.encode(seg))
  end
end
if ARGV[1] ~= '' then
  local v = tonumber(ARGV[3])
  local seg = {sku = ARGV[1], start_ms = now, peak_viewers = v, vms = 0, last_ms = now,
               last_v = v, adds0 = tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '0')}
  redis.call('RPUSH', KEYS[1], cjson.encode(seg))
  redis.call('LTRIM', KEYS[1], -tonumber(ARGV[4]), -1)
end
return 1
"""
)

# KEYS: segments list; ARGV: viewers now, now_ms
_PEAK = Script(
    """
local last = redis.call('LINDEX', KEYS[1], -1)
if not last then return 0 end
local seg = cjson.decode(last)
if seg.end_ms ~= nil then return 0 end
local v, now = tonumber(ARGV[1]), tonumber(ARGV[2])
if seg.last_ms ~= nil then
  seg.vms = seg.vms + seg.last_v * math.max(0, now - seg.last_ms)
  seg.last_ms, seg.last_v = now, v
end
if v > seg.peak_viewers then seg.peak_viewers = v end
redis.call('LSET', KEYS[1], -1, cjson.encode(seg))
return 1
"""
)


@dataclass(frozen=True)
class Segment:
    sku: str
    start_ms: int
    end_ms: int | None  # None: still on screen
    peak_viewers: int
    viewer_ms: int = 0  # viewers x milliseconds on air, up to the last change
    last_ms: int | None = None  # when the audience last changed (open segment)
    last_viewers: int = 0
    cart_adds: int | None = None  # its product's add-to-carts while on air (when closed)
    cart_adds_at_start: int = 0

    def public(self) -> dict:
        return {
            "sku": self.sku,
            "start_ms": self.start_ms,
            "end_ms": self.end_ms,
            "peak_viewers": self.peak_viewers,
        }

    def average_viewers(self, now_ms: int) -> float:
        """Time-weighted audience while on air (open segments up to now)."""
        end = now_ms if self.end_ms is None else self.end_ms
        total = self.viewer_ms
        if self.end_ms is None and self.last_ms is not None:
            total += self.last_viewers * max(0, now_ms - self.last_ms)
        return total / (end - self.start_ms) if end > self.start_ms else float(self.peak_viewers)


def key(show_id: str) -> str:
    # The show's hash tag: _FEATURE reads the show's cart-add tally in the same script.
    return f"show:{tag(show_id)}:segments"


async def featured_changed(redis, show_id: str, sku: str | None, at_ms: int, viewers: int) -> None:
    """Close the open segment (unless the same product stays on) and open one for sku."""
    await _FEATURE(redis, [key(show_id), cart_adds_key(show_id)], [sku or "", at_ms, viewers, KEEP])


async def viewers_seen(redis, show_id: str, viewers: int, now_ms: int | None = None) -> None:
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    await _PEAK(redis, [key(show_id)], [viewers, now_ms])


def parse(raw: bytes) -> Segment:
    data = json.loads(raw)
    end = data.get("end_ms")
    last_ms = data.get("last_ms")
    adds = data.get("adds")
    return Segment(
        str(data["sku"]),
        int(data["start_ms"]),
        None if end is None else int(end),
        int(data["peak_viewers"]),
        viewer_ms=int(data.get("vms") or 0),
        last_ms=None if last_ms is None else int(last_ms),
        last_viewers=int(data.get("last_v") or 0),
        cart_adds=None if adds is None else int(adds),
        cart_adds_at_start=int(data.get("adds0") or 0),
    )


async def load(redis, show_id: str) -> list[Segment]:
    return [parse(raw) for raw in await redis.lrange(key(show_id), 0, -1)]


# --- sales per segment ------------------------------------------------------------------

ADDED_FIELD = "added_ms"  # on the order hash: {sku: ms it was last added to the cart}
SOLD = ("paid", "printed", "ready", "fulfilled")


@dataclass(frozen=True)
class Sale:
    """One paid order's line, with the time its product went into the cart."""

    order_id: str
    buyer: str
    sku: str
    added_ms: int
    cents: int


@dataclass(frozen=True)
class SegmentSales:
    orders: int
    buyers: int
    revenue_cents: int


def segment_of(segs: list[Segment], sku: str, added_ms: int, now_ms: int) -> int | None:
    """Pure: the index of the segment that featured ``sku`` when it was added to a cart."""
    for i, seg in enumerate(segs):
        end = now_ms if seg.end_ms is None else seg.end_ms
        if seg.sku == sku and seg.start_ms <= added_ms < max(end, seg.start_ms + 1):
            return i
    return None


def attribute(segs: list[Segment], sales: list[Sale], now_ms: int) -> list[SegmentSales]:
    """Pure: each sale counts for the segment that featured *its* product when it was
    added to the cart (not for whatever was on screen when it was paid)."""
    orders: list[set[str]] = [set() for _ in segs]
    buyers: list[set[str]] = [set() for _ in segs]
    revenue = [0] * len(segs)
    for sale in sales:
        i = segment_of(segs, sale.sku, sale.added_ms, now_ms)
        if i is not None:
            orders[i].add(sale.order_id)
            buyers[i].add(sale.buyer)
            revenue[i] += sale.cents
    return [
        SegmentSales(len(o), len(b), r) for o, b, r in zip(orders, buyers, revenue, strict=True)
    ]


def added_times(lines, hold_ms: int, drop_hold_ms: int | None = None) -> str:
    """The ``added_ms`` field for an order from the cart lines it was made of (a hold
    runs for ``hold_ms`` from the last add, ``drop_hold_ms`` for a drop's units, so its
    expiry tells when that was)."""
    drop_ms = hold_ms if drop_hold_ms is None else min(hold_ms, drop_hold_ms)
    return json.dumps(
        {
            line.sku: int(line.hold_expires_at) - (drop_ms if line.drop_id else hold_ms)
            for line in lines
        }
    )


async def sales_since(redis, show_id: str, since_ms: int, orders_index: str) -> list[Sale]:
    """The paid order lines of a show created since ``since_ms``."""
    ids = await redis.zrangebyscore(orders_index, since_ms / 1000, "+inf")
    if not ids:
        return []
    pipe = redis.pipeline(transaction=False)
    for oid in ids:
        oid = oid.decode() if isinstance(oid, bytes) else oid
        pipe.hmget(order_key(oid), "status", "items", ADDED_FIELD, "viewer", "created_at")
    sales: list[Sale] = []
    for oid, row in zip(ids, await pipe.execute(), strict=True):
        status, items, added, viewer, created = (
            v.decode() if isinstance(v, bytes) else v for v in row
        )
        if status not in SOLD or not items:
            continue
        added_map = json.loads(added) if added else {}
        fallback = int(float(created or 0) * 1000)
        for item in json.loads(items):
            sales.append(
                Sale(
                    oid.decode() if isinstance(oid, bytes) else oid,
                    viewer or "",
                    item["sku"],
                    int(added_map.get(item["sku"], fallback)),
                    int(item["quantity"]) * int(item["unit_price_cents"]),
                )
            )
    return sales
