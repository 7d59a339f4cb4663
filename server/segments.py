"""Featured segments: which product was on screen when, and the most viewers it had.

The host page's conversion table (orders paid per segment, per peak viewer) is built
from these. They live in Redis, not in the host's browser, so a reload, a second host
device or a restarted server shows the same history. Each change is one Lua script, so
two server processes cannot both close or open a segment.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from checkout.scripts import Script

KEEP = 50  # segments kept per show

# KEYS: segments list; ARGV: sku ('' = nothing featured), at_ms, viewers now, keep
_FEATURE = Script(
    """
local last = redis.call('LINDEX', KEYS[1], -1)
if last then
  local seg = cjson.decode(last)
  if seg.end_ms == nil then
    if seg.sku == ARGV[1] then return 0 end
    seg.end_ms = tonumber(ARGV[2])
    redis.call('LSET', KEYS[1], -1, cjson.encode(seg))
  end
end
if ARGV[1] ~= '' then
  local seg = {sku = ARGV[1], start_ms = tonumber(ARGV[2]), peak_viewers = tonumber(ARGV[3])}
  redis.call('RPUSH', KEYS[1], cjson.encode(seg))
  redis.call('LTRIM', KEYS[1], -tonumber(ARGV[4]), -1)
end
return 1
"""
)

# KEYS: segments list; ARGV: viewers now
_PEAK = Script(
    """
local last = redis.call('LINDEX', KEYS[1], -1)
if not last then return 0 end
local seg = cjson.decode(last)
if seg.end_ms ~= nil or tonumber(ARGV[1]) <= seg.peak_viewers then return 0 end
seg.peak_viewers = tonumber(ARGV[1])
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

    def public(self) -> dict:
        return asdict(self)


def key(show_id: str) -> str:
    return f"show:{show_id}:segments"


async def featured_changed(redis, show_id: str, sku: str | None, at_ms: int, viewers: int) -> None:
    """Close the open segment (unless the same product stays on) and open one for sku."""
    await _FEATURE(redis, [key(show_id)], [sku or "", at_ms, viewers, KEEP])


async def viewers_seen(redis, show_id: str, viewers: int) -> None:
    await _PEAK(redis, [key(show_id)], [viewers])


def parse(raw: bytes) -> Segment:
    data = json.loads(raw)
    end = data.get("end_ms")
    return Segment(
        str(data["sku"]),
        int(data["start_ms"]),
        None if end is None else int(end),
        int(data["peak_viewers"]),
    )


async def load(redis, show_id: str) -> list[Segment]:
    return [parse(raw) for raw in await redis.lrange(key(show_id), 0, -1)]
