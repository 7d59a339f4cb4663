"""One-shot move of Redis data from the first key layout to the show-tagged one.

The first layout had global keys (``holds:expiry``, ``orders:pending``, ``print:jobs``,
``notify:outbox``, one ``cart:{viewer}`` across shows) and untagged per-show keys
(``stock:demo``). The current one puts every key of a show's commerce in the show's hash
tag (``checkout.keys``). A server that starts on a Redis written by the first layout
moves the data across before anything reads it, so a restart loses no paid order:

- per-show keys are renamed (stock, drop, cart tally, order index and counters, chat,
  segments, reminders); per-buyer counters are folded into the show's hashes;
- carts, live holds and unpaid orders move to their show's keys (the reaper then
  expires them as usual); orders keep their hash (``order:{id}``: old ids name no show);
- print jobs and emails not yet handled move to their show's stream (a parked job's
  record goes: the job parks again under its new name if its printer is still down).

Not moved: a viewer's first-add IP and unpaid-order caps (they lapse within the payment
timeout), and a running auction's keys (upgrade between auctions). Only a single Redis
can hold the first layout; on a Redis Cluster this does nothing.
"""

from __future__ import annotations

import asyncio
import logging
import time

import msgpack
from redis.exceptions import ResponseError

from checkout import keys
from checkout.orders import (
    PrintJob,
    notify_stream,
    order_key,
    paid_count_key,
    print_stream,
)
from devices import store
from server import segments
from server.mail import outbox, reminders
from server.redis_client import cluster_of

log = logging.getLogger("showroom.migration")

LAYOUT_KEY = "showroom:layout"
LAYOUT = b"2"
LOCK_KEY = "showroom:layout:migrating"


def _s(v) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


async def ensure_layout(redis, shows: list[str], wait_s: float = 60.0) -> dict[str, int] | None:
    """Migrate once (one process does it; the others wait for it). Returns the counts
    moved, or None when there was nothing to do."""
    if cluster_of(redis) or await redis.get(LAYOUT_KEY) == LAYOUT:
        return None
    deadline = time.monotonic() + wait_s
    while not await redis.set(LOCK_KEY, "1", nx=True, px=int(wait_s * 1000)):
        if await redis.get(LAYOUT_KEY) == LAYOUT:
            return None
        if time.monotonic() > deadline:
            raise RuntimeError("another process is migrating the Redis key layout")
        await asyncio.sleep(0.1)
    try:
        if await redis.get(LAYOUT_KEY) == LAYOUT:
            return None
        counts = await migrate(redis, shows)
        await redis.set(LAYOUT_KEY, LAYOUT)
    finally:
        await redis.delete(LOCK_KEY)
    if any(counts.values()):
        log.warning("Redis data moved to the show-tagged key layout: %s", counts)
    return counts


async def _scan(redis, pattern: str) -> list[str]:
    return [_s(k) for k in [k async for k in redis.scan_iter(match=pattern, count=1000)]]


async def _rename(redis, old: str, new: str) -> int:
    try:
        if await redis.renamenx(old, new):  # one round trip: only if ``new`` is not there
            return 1
    except ResponseError:  # no such key: nothing to move
        return 0
    log.error("layout migration: both %s and %s exist; %s left as it is", old, new, old)
    return 0


async def _fold(redis, old: str, new: str, prefix: str) -> int:
    """hash field -> n into ``new`` as "{prefix}|{field}" -> n (added), then drop ``old``."""
    raw = await redis.hgetall(old)
    pipe = redis.pipeline(transaction=True)
    for field, n in raw.items():
        pipe.hincrby(new, f"{prefix}|{_s(field)}", int(n))
    pipe.delete(old)
    await pipe.execute()
    return 1


async def migrate(redis, shows: list[str]) -> dict[str, int]:
    counts = {"renamed": 0, "carts": 0, "holds": 0, "unpaid": 0, "print_jobs": 0, "emails": 0}
    for s in shows:
        pairs = [
            (f"stock:{s}", keys.stock(s)),
            (f"cartadds:{s}", keys.cart_adds(s)),
            (f"drop:{s}", keys.drop(s)),
            (f"orders:{s}", keys.orders_index(s)),
            (f"show:{s}:paid_orders", paid_count_key(s)),
            (f"show:{s}:order_seq", keys.order_seq(s)),
            (f"show:{s}:segments", segments.key(s)),
            (f"reminders:{s}", reminders.key(s)),
        ]
        for key in await _scan(redis, f"chat:{s}:*"):
            pairs.append((key, f"chat:{keys.tag(s)}:" + key[len(f"chat:{s}:") :]))
        for old, new in pairs:
            counts["renamed"] += await _rename(redis, old, new)
        for key in await _scan(redis, f"bought:{s}:*"):
            rest = key[len(f"bought:{s}:") :]
            if rest.startswith("email:"):
                counts["renamed"] += await _fold(
                    redis, key, keys.bought_by_email(s), rest[len("email:") :]
                )
            else:
                counts["renamed"] += await _fold(redis, key, keys.bought(s), rest)
        for key in await _scan(redis, f"ipunits:{s}:*"):
            counts["renamed"] += await _fold(redis, key, keys.ip_units(s), key.split(":", 2)[2])

    for key in await _scan(redis, "cart:*"):
        if "{" in key:
            continue  # already the show's
        viewer = key[len("cart:") :]
        raw = await redis.hgetall(key)
        pipe = redis.pipeline(transaction=True)
        for field, line in raw.items():
            pipe.hset(keys.cart(_s(field).split("|", 1)[0], viewer), _s(field), line)
        pipe.delete(key)
        await pipe.execute()
        counts["carts"] += 1

    pipe = redis.pipeline(transaction=False)
    for member, score in await redis.zrange("holds:expiry", 0, -1, withscores=True):
        show = _s(member).split("|", 2)[1]
        pipe.zadd(keys.holds_expiry(show), {member: score})
        counts["holds"] += 1
    await pipe.execute()
    for oid, score in await redis.zrange("orders:pending", 0, -1, withscores=True):
        oid = _s(oid)
        show = await redis.hget(keys.order_stock(oid), "_show") or await redis.hget(
            order_key(oid), "show"
        )
        if show:
            await redis.zadd(keys.orders_pending(_s(show)), {oid: score})
            counts["unpaid"] += 1
    await redis.delete("holds:expiry", "orders:pending", "drops:active")

    async def print_show(fields: dict) -> str | None:
        return PrintJob.unpack(fields[b"job"]).show

    async def mail_show(fields: dict) -> str | None:
        job = msgpack.unpackb(fields[b"job"])
        if job.get("show"):
            return job["show"]
        if job.get("order_id"):
            show = await redis.hget(order_key(job["order_id"]), "show")
            return _s(show) if show else None
        return None

    counts["print_jobs"] = await _move_stream(
        redis, "print:jobs", "printers", print_stream, print_show
    )
    # Parked jobs were named by their old entry id; their jobs were queued again above
    # (and park again under their new name if the printer is still down).
    old_parked = [f for f in await redis.hkeys(store.PARKED) if b"." not in f]
    if old_parked:
        await redis.hdel(store.PARKED, *old_parked)
    counts["emails"] = await _move_stream(
        redis, "notify:outbox", outbox.GROUP, notify_stream, mail_show
    )
    for job, due in await redis.zrange("mail:retry", 0, -1, withscores=True):
        show = await mail_show({b"job": job})
        if show:
            await redis.zadd(outbox.retry_key(show), {job: due})
    await redis.delete("mail:retry")
    return counts


async def _move_stream(redis, old: str, group: str, new_stream, show_of) -> int:
    """Entries the group has not acknowledged (pending or never read) go to their show's
    stream; then the old stream goes."""
    if not await redis.exists(old):
        return 0
    last, pending = None, set()
    for info in await redis.xinfo_groups(old):
        info = {_s(k): v for k, v in info.items()}
        if _s(info.get("name")) == group:
            last = _s(info.get("last-delivered-id"))
            for p in await redis.xpending_range(old, group, "-", "+", 100_000):
                pending.add(_s(p["message_id"]))

    def after(entry_id: str) -> bool:
        return last is None or tuple(map(int, entry_id.split("-"))) > tuple(
            map(int, last.split("-"))
        )

    moved = 0
    for entry_id, fields in await redis.xrange(old):
        entry_id = _s(entry_id)
        if entry_id not in pending and not after(entry_id):
            continue  # handled already
        show = await show_of(fields)
        if show is None:
            log.error("layout migration: %s entry %s names no show; dropped", old, entry_id)
            continue
        await redis.xadd(new_stream(show), fields)
        moved += 1
    await redis.delete(old)
    return moved
