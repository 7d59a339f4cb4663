"""The outbox: a Redis stream per show every email goes through, read by a consumer group.

A request (or a Lua script, for order emails) only appends a small job; a worker in
every server process reads the stream (``XREADGROUP``), sends, then acknowledges and
deletes the entry. A failed send goes to a retry set with exponential backoff and comes
back into the stream when due; after ``MAX_ATTEMPTS`` it is parked in the show's
``mail:dead:{show}`` with its error. A show's stream, retry set and dead list share the
show's hash tag (one Redis Cluster slot, with the order moves that append to it). A worker that dies mid-send leaves its entry pending; another claims it after
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

from checkout.keys import tag
from checkout.orders import notify_stream

log = logging.getLogger("showroom.mail")

GROUP = "mailers"


def retry_key(show: str) -> str:
    """zset: packed job -> due (ms)."""
    return f"mail:retry:{tag(show)}"


def dead_key(show: str) -> str:
    """list of packed {"job", "error", "at"}."""
    return f"mail:dead:{tag(show)}"


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
    shows: list[str]  # one stream each (a reader per stream: on a cluster, one per node)
    block_ms: int = 1000
    on_idle: Callable[[], Awaitable[None]] | None = None  # e.g. release due reminders

    async def ensure_group(self, show: str) -> None:
        with contextlib.suppress(Exception):  # BUSYGROUP: it exists already
            await self.redis.xgroup_create(notify_stream(show), GROUP, id="0", mkstream=True)

    async def run(self) -> None:
        readers = [self._run_stream(show, first=i == 0) for i, show in enumerate(self.shows)]
        await asyncio.gather(*readers)

    async def _run_stream(self, show: str, first: bool) -> None:
        stream = notify_stream(show)
        await self.ensure_group(show)
        last_claim = 0.0
        while True:
            try:
                if first and self.on_idle is not None:
                    await self.on_idle()
                await self.redis.eval(
                    _REQUEUE_LUA, 2, retry_key(show), stream, int(time.time() * 1000)
                )
                if time.monotonic() - last_claim > 10:
                    last_claim = time.monotonic()
                    await self._claim_stale(show)
                reply = await self.redis.xreadgroup(
                    GROUP, self.consumer, {stream: ">"}, count=16, block=self.block_ms
                )
                for _stream, entries in reply or []:
                    for entry_id, fields in entries:
                        await self.handle(show, entry_id, fields)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if "NOGROUP" in str(exc):  # the stream was deleted (e.g. FLUSHALL)
                    await self.ensure_group(show)
                    continue
                log.warning("mail outbox: %s; retrying in 1 s", exc)
                await asyncio.sleep(1)

    async def _claim_stale(self, show: str) -> None:
        reply = await self.redis.xautoclaim(
            notify_stream(show), GROUP, self.consumer, CLAIM_IDLE_MS, start_id="0-0", count=16
        )
        for entry_id, fields in reply[1] if reply else []:
            if fields:  # a deleted entry comes back empty
                await self.handle(show, entry_id, fields)

    async def handle(self, show: str, entry_id, fields: dict) -> None:
        raw = fields.get(b"job") or fields.get("job")
        try:
            job = msgpack.unpackb(raw)
            await self.deliver(job)
        except Skip as why:
            log.debug("mail job %s skipped: %s", entry_id, why)
        except Exception as exc:
            await self._fail(show, entry_id, raw, exc)
            return
        await self._done(show, entry_id)

    async def _done(self, show: str, entry_id) -> None:
        pipe = self.redis.pipeline(transaction=True)
        pipe.xack(notify_stream(show), GROUP, entry_id)
        pipe.xdel(notify_stream(show), entry_id)
        await pipe.execute()

    async def _fail(self, show: str, entry_id, raw: bytes | None, exc: Exception) -> None:
        try:
            job = msgpack.unpackb(raw) if raw else {}
        except Exception:
            job = {}
        attempts = int(job.get("attempts", 0)) + 1
        job["attempts"] = attempts
        pipe = self.redis.pipeline(transaction=True)
        if attempts >= MAX_ATTEMPTS or not job:
            log.error("mail job %s parked after %d tries: %s", job.get("kind"), attempts, exc)
            pipe.lpush(
                dead_key(show), pack({"job": job, "error": str(exc)[:500], "at": time.time()})
            )
        else:
            delay = backoff_s(attempts)
            log.warning(
                "mail %s failed (%s); try %d in %.0f s", job.get("kind"), exc, attempts + 1, delay
            )
            pipe.zadd(retry_key(show), {pack(job): int((time.time() + delay) * 1000)})
        pipe.xack(notify_stream(show), GROUP, entry_id)
        pipe.xdel(notify_stream(show), entry_id)
        await pipe.execute()
