"""Reactions (hearts): taps counted in Redis, published at most four times a second.

A tap is one Lua script: it counts against the viewer's and the IP's per-second limits
(over them the tap is dropped quietly: the page keeps its hearts, the show's count does
not grow) and adds one to the show's pending counts, shared by every process.

Publishing: whichever process has seen taps asks Redis for the pending counts at most
every ``WINDOW_MS``. The script hands them out (and clears them) only if ``WINDOW_MS``
have passed since the last hand-out by *any* process, measured on Redis's own clock, and
otherwise says how long to wait. So there is one publisher per window across all
processes without a leader to elect or hand over: a process that dies simply stops
asking, and events are at least ``WINDOW_MS`` apart whatever the tap rate or the number
of processes. (Each process publishing its own deltas would send one event per process
per window, which breaks "at most 4 a second" as soon as there are two.)
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from checkout.keys import tag
from checkout.scripts import Script
from media import tasks
from server.chat.rules import bad

log = logging.getLogger("showroom.reactions")

KINDS = ("heart", "fire", "clap", "laugh")
# Events are at least this far apart on Redis's clock: 3.85 a second, so that even with
# a few tens of ms of delivery jitter no second of any viewer's stream holds five.
WINDOW_MS = 260
VIEWER_PER_S = 8  # taps counted per viewer per second (a fast thumb does ~8)
RATE_WINDOW_S = 10  # the host's "reactions per second" is averaged over this
RECENT_KEEP = 4 * RATE_WINDOW_S + 8

# KEYS: viewer counter, IP counter, pending hash
# ARGV: kind, viewer limit, IP limit (0 = none), second (for the counters' names only)
_TAP = Script(
    """
local v = redis.call('INCR', KEYS[1])
if v == 1 then redis.call('EXPIRE', KEYS[1], 2) end
local i = redis.call('INCR', KEYS[2])
if i == 1 then redis.call('EXPIRE', KEYS[2], 2) end
if v > tonumber(ARGV[2]) or (tonumber(ARGV[3]) > 0 and i > tonumber(ARGV[3])) then
  return 0
end
redis.call('HINCRBY', KEYS[3], ARGV[1], 1)
redis.call('EXPIRE', KEYS[3], 60)
return 1
"""
)

# KEYS: pending hash, next-allowed key, recent list, totals hash
# ARGV: window ms, recent entries kept
# -> {wait_ms} when too early, else {0, now_ms, kind, n, kind, n, ...} (nothing: {0})
_TAKE = Script(
    """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local nxt = tonumber(redis.call('GET', KEYS[2]) or '0')
if now < nxt then return {nxt - now} end
local counts = redis.call('HGETALL', KEYS[1])
if #counts == 0 then return {0} end
redis.call('DEL', KEYS[1])
redis.call('SET', KEYS[2], now + tonumber(ARGV[1]), 'PX', 60000)
local n = 0
for i = 1, #counts, 2 do
  n = n + tonumber(counts[i + 1])
  redis.call('HINCRBY', KEYS[4], counts[i], counts[i + 1])
end
redis.call('LPUSH', KEYS[3], now .. ':' .. n)
redis.call('LTRIM', KEYS[3], 0, tonumber(ARGV[2]) - 1)
redis.call('EXPIRE', KEYS[3], 3600)
local out = {0, now}
for i = 1, #counts do out[#out + 1] = counts[i] end
return out
"""
)


def clean_kind(body: dict) -> str:
    kind = body.get("kind")
    if kind not in KINDS:
        raise bad(f"kind must be one of {', '.join(KINDS)}.")
    return kind


def _key(show_id: str, *parts: str) -> str:
    # The show as hash tag: the tap and take scripts touch several (one Cluster slot).
    return ":".join(("react", tag(show_id), *parts))


def _s(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def parse_take(reply: list) -> tuple[int, int | None, dict[str, int]]:
    """(wait_ms, Redis time of the take, counts) from the take script's reply."""
    wait = int(reply[0])
    if len(reply) < 2:
        return wait, None, {}
    pairs = reply[2:]
    counts = {_s(pairs[i]): int(pairs[i + 1]) for i in range(0, len(pairs), 2)}
    return wait, int(reply[1]), counts


def rate_per_s(recent: list, now_ms: int, window_s: int = RATE_WINDOW_S) -> float:
    """Reactions a second over the last window_s, from ``b"<ts_ms>:<n>"`` entries."""
    total = 0
    for entry in recent:
        ts, _, n = _s(entry).partition(":")
        if ts.isdigit() and n.isdigit() and int(ts) > now_ms - window_s * 1000:
            total += int(n)
    return round(total / window_s, 2)


Publish = Callable[[str, dict[str, Any]], Awaitable[None]]


class Reactions:
    """One process's side: count taps, and ask for the pending counts while it has seen
    taps that may not have been published yet."""

    def __init__(self, redis, publish: Publish, *, ip_per_s: int) -> None:
        self.redis = redis
        self.publish = publish
        self.ip_per_s = ip_per_s
        self._flushing: dict[str, asyncio.Task] = {}
        self._dirty: set[str] = set()
        self.published = 0

    async def tap(self, show_id: str, kind: str, viewer: str, ip_hash: str, second: int) -> bool:
        counted = await _TAP(
            self.redis,
            [
                _key(show_id, "v", viewer, str(second)),
                _key(show_id, "ip", ip_hash, str(second)),
                _key(show_id, "pending"),
            ],
            [kind, VIEWER_PER_S, self.ip_per_s, second],
        )
        if counted:
            self._dirty.add(show_id)
            if show_id not in self._flushing:
                self._flushing[show_id] = asyncio.create_task(self._flush_loop(show_id))
        return bool(counted)

    async def _flush_loop(self, show_id: str) -> None:
        try:
            await asyncio.sleep(WINDOW_MS / 1000)
            while show_id in self._dirty:
                self._dirty.discard(show_id)
                try:
                    wait, at, counts = parse_take(
                        await _TAKE(
                            self.redis,
                            [
                                _key(show_id, "pending"),
                                _key(show_id, "next"),
                                _key(show_id, "recent"),
                                _key(show_id, "totals"),
                            ],
                            [WINDOW_MS, RECENT_KEEP],
                        )
                    )
                except Exception as exc:  # Redis away: the counts wait in Redis
                    log.warning("show %s: could not take reactions (%s)", show_id, exc)
                    self._dirty.add(show_id)
                    await asyncio.sleep(1.0)
                    continue
                if wait:  # another process published just now; ours go in the next one
                    self._dirty.add(show_id)
                    await asyncio.sleep(wait / 1000)
                    continue
                if counts:
                    self.published += 1
                    # "at": when Redis handed these counts out (events are WINDOW_MS apart
                    # on that clock, whichever process sent them)
                    await self.publish(show_id, {"type": "reactions", "counts": counts, "at": at})
                if show_id in self._dirty:  # taps came in meanwhile: next window
                    await asyncio.sleep(WINDOW_MS / 1000)
        finally:
            self._flushing.pop(show_id, None)

    async def summary(self, show_id: str, now_ms: int) -> dict:
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.lrange(_key(show_id, "recent"), 0, -1)
            pipe.hgetall(_key(show_id, "totals"))
            recent, totals = await pipe.execute()
        return {
            "per_s": rate_per_s(recent, now_ms),
            "window_s": RATE_WINDOW_S,
            "totals": {_s(k): int(v) for k, v in totals.items()},
        }

    async def close(self) -> None:
        await tasks.stop(*self._flushing.values())
