"""Live presence of a show across processes: is a publisher live, how many viewers.

Kept in Redis so every process answers the same ``GET /api/shows/{show}``:
``show:{id}:presence`` is a hash of ``{process_id}:live`` / ``{process_id}:viewers`` ->
``value:expires_ms``. Each process refreshes its own fields about once a second;
a crashed process's fields simply expire.
"""

from __future__ import annotations

import os
import socket
import time
import uuid

PROCESS_ID = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
TTL_MS = 4000


def key(show_id: str) -> str:
    return f"show:{show_id}:presence"


async def report(redis, show_id: str, *, live: bool, viewers: int) -> None:
    expires = int(time.time() * 1000) + TTL_MS
    await redis.hset(
        key(show_id),
        mapping={
            f"{PROCESS_ID}:live": f"{int(live)}:{expires}",
            f"{PROCESS_ID}:viewers": f"{viewers}:{expires}",
        },
    )


async def clear(redis, show_id: str) -> None:
    await redis.hdel(key(show_id), f"{PROCESS_ID}:live", f"{PROCESS_ID}:viewers")


def summarise(fields: dict, now_ms: int | None = None) -> tuple[bool, int]:
    """Pure: (live, viewers) from the presence hash, ignoring expired fields."""
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    live, viewers = False, 0
    for field, value in fields.items():
        field = field.decode() if isinstance(field, bytes) else field
        value = value.decode() if isinstance(value, bytes) else value
        number, _, expires = value.partition(":")
        if not expires.isdigit() or int(expires) < now_ms:
            continue
        if field.endswith(":live"):
            live = live or number == "1"
        elif field.endswith(":viewers") and number.isdigit():
            viewers += int(number)
    return live, viewers


async def read(redis, show_id: str) -> tuple[bool, int]:
    return summarise(await redis.hgetall(key(show_id)))
