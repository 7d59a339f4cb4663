"""The outbox: a Redis stream every email goes through, read by a consumer group.

A request (or a Lua script, for order emails) only appends a small job; a worker in
every server process reads the stream (``XREADGROUP``), sends, then acknowledges and
deletes the entry. A failed send goes to a retry set with exponential backoff and comes
back into the stream when due; after ``MAX_ATTEMPTS`` it is parked in ``mail:dead`` with
its error. A worker that dies mid-send leaves its entry pending; another claims it after
``CLAIM_IDLE_MS`` (``XAUTOCLAIM``). So an email is sent at least once and nothing is lost
across a restart (the stream is in Redis, with the rest of the commerce state).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import msgpack

from checkout.orders import NOTIFY_STREAM

log = logging.getLogger("showroom.mail")

GROUP = "mailers"
RETRY = "mail:retry"  # zset: packed job -> due (ms)
DEAD = "mail:dead"  # list of packed {"job", "error", "at"}
MAX_ATTEMPTS = 12  # 5 s doubling, capped at an hour: about 8 hours of trying
CLAIM_IDLE_MS = 60_000

Job = dict[str, Any]


class Skip(Exception):
    """Nothing to send for this job (no address, unsubscribed, no such order)."""


def backoff_s(attempts: int) -> float:
    """Pure: seconds before try number ``attempts + 1``."""
    return float(min(5 * 2 ** (attempts - 1), 3600))


def pack(job: Job) -> bytes:
    return msgpack.packb(job)


async def enqueue(redis, job: Job) -> None:
    await redis.xadd(NOTIFY_STREAM, {"job": pack(job)})


# Due retries back into the stream, atomically (no job lost or doubled between the two).
_REQUEUE_LUA = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, 50)
for _, job in ipairs(due) do
  redis.call('ZREM', KEYS[1], job)
  redis.call('XADD', KEYS[2], '*', 'job', job)
end
return #due
"""


@dataclass
class Outbox:
    redis: Any
    deliver: Callable[[Job], Awaitable[None]]
    consumer: str
    block_ms: int = 1000
    on_idle: Callable[[], Awaitable[None]] | None = None  # e.g. release due reminders

    async def ensure_group(self) -> None:
        with contextlib.suppress(Exception):  # BUSYGROUP: it exists already
            await self.redis.xgroup_create(NOTIFY_STREAM, GROUP, id="0", mkstream=True)

    async def run(self) -> None:
        await self.ensure_group()
        last_claim = 0.0
        while True:
            try:
                if self.on_idle is not None:
                    await self.on_idle()
                await self.redis.eval(
                    _REQUEUE_LUA, 2, RETRY, NOTIFY_STREAM, int(time.time() * 1000)
                )
                if time.monotonic() - last_claim > 10:
                    last_claim = time.monotonic()
                    await self._claim_stale()
                reply = await self.redis.xreadgroup(
                    GROUP, self.consumer, {NOTIFY_STREAM: ">"}, count=16, block=self.block_ms
                )
                for _stream, entries in reply or []:
                    for entry_id, fields in entries:
                        await self.handle(entry_id, fields)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if "NOGROUP" in str(exc):  # the stream was deleted (e.g. FLUSHALL)
                    await self.ensure_group()
                    continue
                log.warning("mail outbox: %s; retrying in 1 s", exc)
                await asyncio.sleep(1)

    async def _claim_stale(self) -> None:
        reply = await self.redis.xautoclaim(
            NOTIFY_STREAM, GROUP, self.consumer, CLAIM_IDLE_MS, start_id="0-0", count=16
        )
        for entry_id, fields in reply[1] if reply else []:
            if fields:  # a deleted entry comes back empty
                await self.handle(entry_id, fields)

    async def handle(self, entry_id, fields: dict) -> None:
        raw = fields.get(b"job") or fields.get("job")
        try:
            job = msgpack.unpackb(raw)
            await self.deliver(job)
        except Skip as why:
            log.debug("mail job %s skipped: %s", entry_id, why)
        except Exception as exc:
            await self._fail(entry_id, raw, exc)
            return
        await self._done(entry_id)

    async def _done(self, entry_id) -> None:
        pipe = self.redis.pipeline(transaction=True)
        pipe.xack(NOTIFY_STREAM, GROUP, entry_id)
        pipe.xdel(NOTIFY_STREAM, entry_id)
        await pipe.execute()

    async def _fail(self, entry_id, raw: bytes | None, exc: Exception) -> None:
        try:
            job = msgpack.unpackb(raw) if raw else {}
        except Exception:
            job = {}
        attempts = int(job.get("attempts", 0)) + 1
        job["attempts"] = attempts
        pipe = self.redis.pipeline(transaction=True)
        if attempts >= MAX_ATTEMPTS or not job:
            log.error("mail job %s parked after %d tries: %s", job.get("kind"), attempts, exc)
            pipe.lpush(DEAD, pack({"job": job, "error": str(exc)[:500], "at": time.time()}))
        else:
            delay = backoff_s(attempts)
            log.warning(
                "mail %s failed (%s); try %d in %.0f s", job.get("kind"), exc, attempts + 1, delay
            )
            pipe.zadd(RETRY, {pack(job): int((time.time() + delay) * 1000)})
        pipe.xack(NOTIFY_STREAM, GROUP, entry_id)
        pipe.xdel(NOTIFY_STREAM, entry_id)
        await pipe.execute()
