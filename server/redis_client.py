"""One way to make a Redis client from a URL: a single Redis or a Redis Cluster.

``redis://`` / ``rediss://`` (and ``unix://``) give a ``redis.asyncio.Redis``;
``redis+cluster://host:port`` / ``rediss+cluster://`` give a
``redis.asyncio.cluster.RedisCluster`` that finds the other nodes from that one; so does
a plain ``redis://`` URL whose server turns out to be a cluster node. With
``coalesce=True`` (the servers) the Lua script calls of one loop turn share a pipeline
on either (``server.redis_pipelining``).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisError

from server.redis_pipelining import CoalescingRedis, CoalescingRedisCluster

CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}


def is_cluster_url(url: str) -> bool:
    return url.split("://", 1)[0].lower() in CLUSTER_SCHEMES


def plain_url(url: str) -> str:
    """The URL redis-py understands (``redis+cluster://`` -> ``redis://``)."""
    scheme, _, rest = url.partition("://")
    return f"{CLUSTER_SCHEMES.get(scheme.lower(), scheme)}://{rest}"


async def connect(
    url: str,
    *,
    coalesce: bool = False,
    max_connections: int | None = None,
    wait_s: float | None = None,
    **kwargs: Any,
) -> aioredis.Redis | RedisCluster:
    """A client for ``url`` (bytes replies). ``max_connections`` caps the pool (per node
    on a cluster); with ``wait_s`` a single Redis's pool makes a caller wait that long
    for a free connection instead of failing at once. A cluster client has found the
    cluster's nodes when this returns: with redis-py 8.1 a MULTI pipeline that is the
    first thing a new cluster client sends fails ("attached to a different loop")."""
    kwargs.setdefault("decode_responses", False)
    if not is_cluster_url(url) and await _is_cluster_node(url, kwargs):
        # A redis:// URL of a cluster node: the cluster client, as if it said so.
        scheme, rest = url.split("://", 1)
        url = f"{scheme}+cluster://{rest}"
    if is_cluster_url(url):
        if urlsplit(url).path not in ("", "/", "/0"):
            raise ValueError(f"a Redis Cluster has only database 0: {url}")
        cls = CoalescingRedisCluster if coalesce else RedisCluster
        if max_connections:
            kwargs["max_connections"] = max_connections
        client = cls.from_url(plain_url(url), **kwargs)
        try:
            await client.initialize()
        except BaseException:
            await client.aclose()
            raise
        return client
    cls = CoalescingRedis if coalesce else aioredis.Redis
    if max_connections and wait_s is not None:
        pool = aioredis.BlockingConnectionPool.from_url(
            url, max_connections=max_connections, timeout=wait_s, **kwargs
        )
        return cls.from_pool(pool)
    if max_connections:
        kwargs["max_connections"] = max_connections
    return cls.from_url(url, **kwargs)


async def _is_cluster_node(url: str, kwargs: dict[str, Any]) -> bool:
    """Whether the server at ``url`` has cluster mode on (asked on a connection of its
    own); False when it cannot be asked now (the client connects when first used, as
    without this check)."""
    probe = aioredis.Redis.from_url(url, **kwargs)
    try:
        info = await probe.info("cluster")
    except (RedisError, OSError):
        return False
    finally:
        await probe.aclose()
    return str(info.get("cluster_enabled", 0)) == "1"


def cluster_of(redis: Any) -> bool:
    return isinstance(redis, RedisCluster)
