"""Viewer slots: the per-show viewer cap and the per-IP session cap, over every process.

Each WHEP session holds a slot, a member of ``show:{id}:viewer_slots`` (and of
``whep:ip:{ip}`` when the per-IP cap is on) scored with the time its lease ends. Taking
one is one Lua script: purge expired leases, compare with the caps, add, all atomic, so
sixty concurrent offers against a cap of five get exactly five places, whichever
processes they land on. The process holding a session renews its lease every
``RENEW_S``; a process that dies stops renewing and its slots free up within
``LEASE_MS``. Slots are released when their session closes (at once on DELETE, within a
second otherwise).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from checkout.keys import tag

LEASE_MS = 10_000
RENEW_S = 3.0

# KEYS: show slots, ip slots; ARGV: now ms, lease end ms, session, show cap, ip cap (0 = none)
# -> 1 taken, 0 the show is full, -1 this address holds too many sessions
_TAKE = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[4]) then return 0 end
local ip_cap = tonumber(ARGV[5])
if ip_cap > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[1])
  if redis.call('ZCARD', KEYS[2]) >= ip_cap then return -1 end
  redis.call('ZADD', KEYS[2], ARGV[2], ARGV[3])
  redis.call('PEXPIREAT', KEYS[2], ARGV[2])
end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[3])
return 1
"""

TAKEN, SHOW_FULL, IP_FULL = 1, 0, -1


def show_key(show_id: str) -> str:
    return f"show:{tag(show_id)}:viewer_slots"


def ip_key(show_id: str, ip: str) -> str:
    """One IP's sessions in one show (in the show's slot: taken in one script with it)."""
    return f"whep:ip:{tag(show_id)}:{ip}"


@dataclass
class Held:
    show_id: str
    ip: str
    session: Any = None  # the viewer once created; its slot goes when it leaves the show


class ViewerSlots:
    """This process's side: take, renew and release the slots of its own sessions."""

    def __init__(self, redis) -> None:
        self.redis = redis
        self._take = redis.register_script(_TAKE)
        self.held: dict[str, Held] = {}
        self._renewed = 0.0

    async def take(self, show_id: str, session_id: str, ip: str, cap: int, ip_cap: int) -> int:
        now = int(time.time() * 1000)
        result = int(
            await self._take(
                keys=[show_key(show_id), ip_key(show_id, ip)],
                args=[now, now + LEASE_MS, session_id, cap, ip_cap],
            )
        )
        if result == TAKEN:
            self.held[session_id] = Held(show_id, ip)
        return result

    async def release(self, session_id: str) -> None:
        held = self.held.pop(session_id, None)
        if held is None:
            return
        pipe = self.redis.pipeline(transaction=False)
        pipe.zrem(show_key(held.show_id), session_id)
        pipe.zrem(ip_key(held.show_id, held.ip), session_id)
        await pipe.execute()

    async def tend(self, is_live) -> None:
        """Release slots whose session is gone (``is_live(held) -> bool``) and, every
        ``RENEW_S``, renew the leases of the rest in one pipeline."""
        for session_id, held in list(self.held.items()):
            if held.session is not None and not is_live(held):
                await self.release(session_id)
        now = time.monotonic()
        if now - self._renewed < RENEW_S or not self.held:
            return
        self._renewed = now
        ends = int(time.time() * 1000) + LEASE_MS
        pipe = self.redis.pipeline(transaction=False)
        for session_id, held in self.held.items():
            pipe.zadd(show_key(held.show_id), {session_id: ends}, xx=True)
            pipe.zadd(ip_key(held.show_id, held.ip), {session_id: ends}, xx=True)
            pipe.pexpireat(ip_key(held.show_id, held.ip), ends)
        await pipe.execute()

    async def release_all(self) -> None:
        for session_id in list(self.held):
            await self.release(session_id)
