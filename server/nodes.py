"""``GET /api/nodes`` (staff): the server processes on this Redis and their load.

Each process (a single ``serve``, or each worker of ``serve --workers N``) writes a
heartbeat about once a second into the hash ``nodes``: its id, role (``origin`` while it
composes some show, else ``worker``), URL, viewers, CPU (share of one core since the
previous beat), whether it runs the print worker, and the time it expires. A process that stops beating is reported
``healthy: false`` for a minute, then dropped. Edge nodes (``showroom edge``) are listed
from their own heartbeat keys (``server.edges``) and leave the list when those expire.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time

from aiohttp import web

from media import tasks
from server import edges, keys, presence
from server.auth import require_staff

log = logging.getLogger("showroom.nodes")

KEY = "nodes"
BEAT_S = 1.0
STALE_S = 4.0
FORGET_S = 60.0


def node_id(app: web.Application) -> str:
    index = app[keys.SETTINGS].worker_index
    return presence.PROCESS_ID if index is None else f"{presence.PROCESS_ID}-w{index}"


def _cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


async def _beat(app: web.Application) -> None:
    redis, settings = app[keys.REDIS], app[keys.SETTINGS]
    me = node_id(app)
    last_wall, last_cpu = time.monotonic(), _cpu_seconds()
    while True:
        await asyncio.sleep(BEAT_S)
        now, cpu = time.monotonic(), _cpu_seconds()
        share = (cpu - last_cpu) / max(1e-6, now - last_wall)
        last_wall, last_cpu = now, cpu
        runtimes = app[keys.EXTRA].get("media", {})
        record = {
            "id": me,
            "role": "origin"
            if any(r.origin and (r.watched or r.publisher) for r in runtimes.values())
            else "worker",
            "url": settings.base_url,
            "viewers": sum(len(r.viewers) for r in runtimes.values()),
            "cpu": round(share, 3),
            "print_worker": app[keys.EXTRA].get("print_worker") is not None,
            "expires": time.time() + STALE_S,
        }
        try:
            await redis.hset(KEY, me, json.dumps(record))
        except Exception as exc:  # Redis away: the next beat tries again
            log.debug("node heartbeat: %s", exc)


async def list_nodes(request: web.Request) -> web.Response:
    require_staff(request)
    redis = request.app[keys.REDIS]
    now = time.time()
    nodes, gone = [], []
    for field, raw in (await redis.hgetall(KEY)).items():
        try:
            record = json.loads(raw)
            expires = float(record.pop("expires"))
        except (ValueError, KeyError, TypeError):
            gone.append(field)
            continue
        if expires < now - FORGET_S:
            gone.append(field)
            continue
        nodes.append({**record, "healthy": expires >= now, "last_heartbeat": expires - STALE_S})
    if gone:
        await redis.hdel(KEY, *gone)
    # Edge nodes: listed while their heartbeat key lives (TTL edges.TTL_MS).
    for edge in await edges.live_edges(redis):
        nodes.append({**edge, "healthy": True, "last_heartbeat": edge.get("at")})
    nodes.sort(key=lambda n: n["id"])
    return web.json_response({"nodes": nodes})


def setup(app: web.Application) -> None:
    app.router.add_get("/api/nodes", list_nodes)

    async def nodes_ctx(app: web.Application):
        task = asyncio.create_task(_beat(app), name="node-heartbeat")
        yield
        await tasks.stop(task)
        with contextlib.suppress(Exception):
            await app[keys.REDIS].hdel(KEY, node_id(app))

    app.cleanup_ctx.append(nodes_ctx)
