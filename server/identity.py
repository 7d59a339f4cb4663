"""Viewer identity beyond the cookie: the display name chosen for chat and bids.

Kept in Redis under the viewer id, so every process (and every device sharing the
cookie) sees the same name.
"""

from __future__ import annotations

PROFILE_TTL_S = 90 * 86400  # a name outlives the 30-day cookie refreshes comfortably


def profile_key(viewer_id: str) -> str:
    return f"viewer:{viewer_id}:profile"


async def get_name(redis, viewer_id: str | None) -> str | None:
    if viewer_id is None:
        return None
    raw = await redis.hget(profile_key(viewer_id), "name")
    return raw.decode() if raw else None


async def set_name(redis, viewer_id: str, name: str) -> None:
    async with redis.pipeline(transaction=True) as pipe:
        pipe.hset(profile_key(viewer_id), "name", name)
        pipe.expire(profile_key(viewer_id), PROFILE_TTL_S)
        await pipe.execute()
