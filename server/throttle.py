"""Throttling of failed secret guesses (staff login, staff Bearer, stream keys).

Failures are counted per client IP and per account in Redis, so every server process on
one Redis shares them. After ``free`` consecutive failures each further failure locks the
key for an exponentially growing time (``base`` s, doubling, at most ``cap`` s), and at
most ``per_hour`` failures are evaluated per hour. While locked, every attempt is
answered 429 without looking at the secret, right or wrong: the answer never tells a
guesser whether a guess was good.

An IP that recently logged in to an account is exempt from that account's lock (not
from its own IP lock), so a guesser hammering an account from elsewhere cannot lock out
the staff or the show's camera.

Verdicts are one Lua script per attempt: concurrent guesses cannot slip past the lock
between a check and the failure count.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from dataclasses import dataclass, field

from aiohttp import web

from checkout.scripts import Script
from server.events import CHANNEL_PREFIX

log = logging.getLogger("showroom.throttle")

# KEYS: ip hash, account hash, known marker (account, ip)
# ARGV: now (s), ok (0/1), ip policy (free, base, cap, per_hour), account policy (same),
#       known ttl, channel for lock events
_ATTEMPT = Script(
    """
local now = tonumber(ARGV[1])
local function wait_of(key)
  local u = tonumber(redis.call('HGET', key, 'until') or '0') or 0
  if u > now then return u - now end
  return 0
end
local wait = wait_of(KEYS[1])
if redis.call('EXISTS', KEYS[3]) == 0 then wait = math.max(wait, wait_of(KEYS[2])) end
if wait > 0 then return {2, tostring(wait)} end
if ARGV[2] == '1' then
  for i = 1, 2 do
    if redis.call('EXISTS', KEYS[i]) == 1 then redis.call('HSET', KEYS[i], 'n', 0, 'until', 0) end
  end
  redis.call('SET', KEYS[3], 1, 'EX', tonumber(ARGV[11]))
  return {0, '0'}
end
local worst = 0
for i = 1, 2 do
  local o = 3 + (i - 1) * 4
  local free, base = tonumber(ARGV[o]), tonumber(ARGV[o + 1])
  local cap, per_hour = tonumber(ARGV[o + 2]), tonumber(ARGV[o + 3])
  local h = redis.call('HMGET', KEYS[i], 'n', 'w', 'c')
  local n, w, c = tonumber(h[1]) or 0, tonumber(h[2]) or 0, tonumber(h[3]) or 0
  if now - w >= 3600 then w = now; c = 0 end
  n = n + 1
  c = c + 1
  local lock = 0
  if n > free then lock = math.min(base * 2 ^ (n - free - 1), cap) end
  if c >= per_hour then lock = math.max(lock, w + 3600 - now) end
  redis.call('HSET', KEYS[i], 'n', n, 'w', w, 'c', c, 'until', now + lock)
  redis.call('EXPIRE', KEYS[i], math.ceil(math.max(w + 3600 - now, lock)) + 1)
  if lock > 0 then
    redis.call('PUBLISH', ARGV[12], cmsgpack.pack({type = 'lock', key = KEYS[i], ['until'] = now + lock}))
  end
  worst = math.max(worst, lock)
end
return {1, tostring(worst)}
"""
)

ALLOWED, FAILED, LOCKED = 0, 1, 2
PREFIX = "showroom:throttle:"
LOCK_EVENTS = "_throttle"  # the event bus "show" that carries lock events


@dataclass(frozen=True)
class Policy:
    free: int  # consecutive failures before any lock
    base_s: float  # first lock; doubles with each further failure
    cap_s: float  # longest lock from backoff
    per_hour: int  # failures evaluated per hour, at most

    def args(self) -> list:
        return [self.free, self.base_s, self.cap_s, self.per_hour]


@dataclass(frozen=True)
class Limits:
    ip: Policy = Policy(free=10, base_s=1, cap_s=60, per_hour=200)
    account: Policy = Policy(free=5, base_s=1, cap_s=60, per_hour=100)
    known_ip_s: int = 12 * 3600  # how long a successful login exempts its IP


@dataclass(frozen=True)
class Verdict:
    status: int  # ALLOWED, FAILED or LOCKED
    retry_after_s: float  # how long until the next attempt is evaluated (0: now)

    @property
    def locked(self) -> bool:
        return self.status == LOCKED

    @property
    def retry_after(self) -> str:
        """The Retry-After header value: whole seconds, at least 1."""
        return str(max(1, math.ceil(self.retry_after_s)))


def _keys(ip: str, account: str) -> list[str]:
    # One hash tag for all: the attempt script reads and writes all three (one Cluster
    # slot; logins are few, so one slot takes them all).
    return [
        f"{PREFIX}{{login}}:ip:{ip}",
        f"{PREFIX}{{login}}:acct:{account}",
        f"{PREFIX}{{login}}:known:{account}:{ip}",
    ]


@dataclass
class LockMirror:
    """This process's copy of the current locks (from its own verdicts and the lock
    events every process publishes), so a right secret needs no Redis round trip: staff
    API calls with a Bearer cost what they did before throttling. A wrong secret, or a
    right one while the mirror shows a lock (or before it has loaded), asks Redis."""

    until: dict[str, float] = field(default_factory=dict)
    ready: bool = False
    booked: dict[tuple[str, str], float] = field(default_factory=dict)

    def note(self, key: str, until: float) -> None:
        if until > time.time():
            self.until[key] = max(until, self.until.get(key, 0.0))
        if len(self.until) > 100_000:  # an attack from many addresses: forget what expired
            now = time.time()
            self.until = {k: u for k, u in self.until.items() if u > now}

    def locked(self, key: str, now: float) -> bool:
        return self.until.get(key, 0.0) > now

    def on_event(self, _show: str, event: dict) -> None:
        if event.get("type") == "lock":
            key = event.get("key")
            key = key.decode() if isinstance(key, bytes) else key
            with contextlib.suppress(TypeError, ValueError):
                self.note(str(key), float(event.get("until", 0)))

    def due_for_bookkeeping(self, ip: str, account: str, now: float) -> bool:
        """Whether to record a success in Redis (reset counters, mark the address known):
        at most once a minute per address and account."""
        if len(self.booked) > 10_000:
            self.booked.clear()
        if now - self.booked.get((ip, account), 0.0) < 60:
            return False
        self.booked[(ip, account)] = now
        return True


MIRROR: web.AppKey[LockMirror] = web.AppKey("throttle_mirror")


async def _load_locks(redis, mirror: LockMirror) -> None:
    """Locks set before this process started (it heard none of their events)."""
    try:
        now = time.time()
        async for key in redis.scan_iter(match=f"{PREFIX}*", count=1000):
            name = key.decode() if isinstance(key, bytes) else key
            if name.startswith(f"{PREFIX}known:"):
                continue
            until = await redis.hget(name, "until")
            if until and float(until) > now:
                mirror.note(name, float(until))
        mirror.ready = True
    except Exception as exc:  # Redis away: every right secret keeps asking Redis
        log.warning("could not load throttle locks (%s); checking each attempt in Redis", exc)


async def watch_locks(app: web.Application, redis, bus) -> asyncio.Task:
    """Keep ``app[MIRROR]`` current: lock events from the bus, then the existing locks."""
    mirror = app[MIRROR] = LockMirror()
    bus.add_listener(LOCK_EVENTS, mirror.on_event)
    return asyncio.get_running_loop().create_task(_load_locks(redis, mirror))


async def attempt(
    redis,
    limits: Limits,
    ip: str,
    account: str,
    ok: bool,
    now: float | None = None,
    mirror: LockMirror | None = None,
) -> Verdict:
    """Record one attempt with a secret that was (``ok``) or was not right.

    LOCKED: the attempt was not evaluated; answer 429 whatever the secret was.
    FAILED: a wrong secret, counted. ALLOWED: right secret, counters reset."""
    now = time.time() if now is None else now
    keys = _keys(ip, account)
    if ok and mirror is not None and mirror.ready:
        if not (mirror.locked(keys[0], now) or mirror.locked(keys[1], now)):
            if mirror.due_for_bookkeeping(ip, account, now):
                asyncio.get_running_loop().create_task(
                    _attempt(redis, limits, keys, True, now, mirror)
                )
            return Verdict(ALLOWED, 0.0)
    return await _attempt(redis, limits, keys, ok, now, mirror)


async def _attempt(
    redis, limits: Limits, keys: list[str], ok: bool, now: float, mirror: LockMirror | None
) -> Verdict:
    status, wait = await _ATTEMPT(
        redis,
        keys,
        [
            f"{now:.3f}",
            1 if ok else 0,
            *limits.ip.args(),
            *limits.account.args(),
            limits.known_ip_s,
            CHANNEL_PREFIX + LOCK_EVENTS,
        ],
    )
    verdict = Verdict(int(status), float(wait))
    if mirror is not None and verdict.retry_after_s > 0:
        # Which of the two is locked is not said: marking both only sends the next right
        # secret from here to Redis, which knows.
        for key in keys[:2]:
            mirror.note(key, now + verdict.retry_after_s)
    return verdict
