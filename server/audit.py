"""The audit log: who did what to a show, and when (staff actions only).

A capped Redis list per show (newest first), so every process writes to and reads the
same log; ``GET /api/shows/{show}/audit`` and the host page show it.
"""

from __future__ import annotations

import json
import time

from aiohttp import web

ACTOR: web.RequestKey[str] = web.RequestKey("actor")  # set by login: the member's name

KEEP = 2000


def key(show_id: str) -> str:
    return f"audit:{show_id}"


async def record(redis, show_id: str, who: str, action: str, target: str = "") -> None:
    entry = {"ts": int(time.time() * 1000), "who": who, "action": action, "target": target}
    async with redis.pipeline(transaction=True) as pipe:
        pipe.lpush(key(show_id), json.dumps(entry, separators=(",", ":")))
        pipe.ltrim(key(show_id), 0, KEEP - 1)
        await pipe.execute()


async def entries(redis, show_id: str, limit: int = 200) -> list[dict]:
    return [json.loads(raw) for raw in await redis.lrange(key(show_id), 0, limit - 1)]


def actor(request) -> str:
    """Who is acting: the staff member's name once login has set it, else the owner
    (the show's shared staff password or its stream key)."""
    return request.get(ACTOR, "owner")


async def log(request, show_id: str, action: str, target: str = "") -> None:
    from server import keys  # the app's Redis

    await record(request.app[keys.REDIS], show_id, actor(request), action, target)
