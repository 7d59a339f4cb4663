"""Edge nodes in Redis, and the origin's choice of one for a new viewer.

- **Registration.** Each edge (``showroom edge``, ``server.edge_app``) writes
  ``edge:{id}`` (JSON: id, role, url, viewers, cpu, shows, at) with a ``TTL_MS`` expiry
  about once a second and keeps its id in the set ``edges``. A dead edge's key expires
  within ``TTL_MS`` of its last beat, so it leaves the choice and ``/api/nodes`` then;
  its id is pruned from the set on the next read.
- **The choice** (``choose``, pure). The origin keeps a viewer itself while its own
  viewers are under ``--origin-share`` of the show's audience (0 by default: every
  viewer goes to an edge while one is healthy); otherwise it answers the WHEP POST with
  ``307`` to the least-loaded edge: fewest viewers, counting the viewers this process
  sent there since that edge's last beat (a burst of joins spreads instead of piling
  on the edge that looked emptiest a second ago), then least CPU. An edge above
  ``MAX_CPU`` of a core takes no new viewers.
- **Edge pulls.** An edge's own WHEP session at the origin carries
  ``X-Showroom-Edge: <token>`` (signed with the shared secret, ``auth.issue_token``
  kind ``edge``): it is never redirected, takes no viewer slot and is not counted in
  the audience.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections import deque
from collections.abc import Iterable
from urllib.parse import urlsplit

from aiohttp import web

from media import tasks
from server import auth, keys, presence

log = logging.getLogger("showroom.edges")

SET = "edges"
TTL_MS = 3000
MAX_CPU = 0.9
EDGE_HEADER = "X-Showroom-Edge"
TOKEN_KIND = "edge"
TOKEN_TTL_S = 3600  # issued afresh for each pull session


def record_key(edge_id: str) -> str:
    return f"edge:{edge_id}"


async def beat(redis, record: dict) -> None:
    pipe = redis.pipeline(transaction=False)
    pipe.set(record_key(record["id"]), json.dumps(record), px=TTL_MS)
    pipe.sadd(SET, record["id"])
    await pipe.execute()


async def leave(redis, edge_id: str) -> None:
    pipe = redis.pipeline(transaction=False)
    pipe.delete(record_key(edge_id))
    pipe.srem(SET, edge_id)
    await pipe.execute()


def _s(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


async def live_edges(redis) -> list[dict]:
    """The edges whose heartbeat has not expired (sorted by id)."""
    ids = sorted(_s(i) for i in await redis.smembers(SET))
    if not ids:
        return []
    # One GET each (a pipeline), not MGET: on a Redis Cluster the records are in many slots.
    pipe = redis.pipeline(transaction=False)
    for i in ids:
        pipe.get(record_key(i))
    raws = await pipe.execute()
    out, gone = [], []
    for edge_id, raw in zip(ids, raws, strict=True):
        if raw is None:
            gone.append(edge_id)
            continue
        try:
            out.append(json.loads(raw))
        except ValueError:
            gone.append(edge_id)
    if gone:
        await redis.srem(SET, *gone)
    return out


def choose(
    edges: Iterable[dict],
    sent: dict[str, Iterable[float]],
    own_viewers: int,
    audience: int,
    share: float,
    show_id: str = "",
) -> dict | None:
    """Pure: the edge to send a new viewer to, or None to keep the viewer here.

    ``sent``: per edge id, when this process last sent viewers there (seconds, the
    clock of the records' ``at``); ``own_viewers``/``audience``: the show's viewers at
    the origin and in all; ``share``: the part of the audience the origin keeps. An edge
    whose pull of this show is failing (``retrying``: it cannot reach this origin) gets
    no new viewers of it."""
    if own_viewers < share * (audience + 1):
        return None
    best, best_key = None, None
    for edge in edges:
        if float(edge.get("cpu", 0)) >= MAX_CPU:
            continue
        if edge.get("pulls", {}).get(show_id) == "retrying":
            continue
        since = float(edge.get("at", 0))
        pending = sum(1 for t in sent.get(edge["id"], ()) if t > since)
        key = (int(edge.get("viewers", 0)) + pending, float(edge.get("cpu", 0)), edge["id"])
        if best_key is None or key < best_key:
            best, best_key = edge, key
    return best


def edge_of(request: web.Request) -> str | None:
    """The edge id of a pull session's request (a valid signed token), else None."""
    token = request.headers.get(EDGE_HEADER)
    if not token:
        return None
    return auth.read_token(request.app[keys.SECRET], TOKEN_KIND, token)


async def redirect_for(request: web.Request, show_id: str) -> str | None:
    """Where to send this viewer's WHEP POST (an edge's WHEP URL), or None: serve here.

    ``?direct=1`` is served here: the viewer page asks so after a failed attempt (an edge
    that just died, or one its page may not connect to), so it never loops on edges."""
    if request.query.get("direct") == "1":
        return None
    redis = request.app[keys.REDIS]
    edges = await live_edges(redis)
    if not edges:
        return None
    settings = request.app[keys.SETTINGS]
    share = settings.origin_share
    audience = own = 0
    if share > 0:  # the origin's own viewers: the audience less the edges' viewers
        audience = (await presence.read(redis, show_id))[1]
        at_edges = sum(int(e.get("shows", {}).get(show_id, 0)) for e in edges)
        own = max(0, audience - at_edges)
    sent: dict[str, deque[float]] = request.app[keys.EXTRA].setdefault("edge_sent", {})
    edge = choose(edges, sent, own, audience, share, show_id)
    if edge is None:
        return None
    sent.setdefault(edge["id"], deque(maxlen=256)).append(time.time())
    return f"{edge['url'].rstrip('/')}/whep/{show_id}"


# --- the pages' Content-Security-Policy ---------------------------------------------------

_ORIGIN = re.compile(r"^https?://[A-Za-z0-9.:\[\]-]+$")
REFRESH_S = 1.0


def web_origin(url: str) -> str | None:
    """Pure: ``scheme://host[:port]`` of an edge URL, or None if it is not a plain one
    (it goes into a header: nothing but an origin may pass)."""
    parts = urlsplit(url)
    origin = f"{parts.scheme}://{parts.netloc}"
    return origin if _ORIGIN.match(origin) else None


def connect_sources(app: web.Application) -> list[str]:
    """The live edges' origins, for the pages' ``connect-src`` (their WHEP POST may be
    redirected there); refreshed every ``REFRESH_S`` by ``setup``'s task."""
    return app[keys.EXTRA].get("edge_origins", [])


async def _refresh(app: web.Application) -> None:
    while True:
        try:
            found = {web_origin(e.get("url", "")) for e in await live_edges(app[keys.REDIS])}
            app[keys.EXTRA]["edge_origins"] = sorted(o for o in found if o)
            # The picture's viewer badge: the origin's own viewers are not the audience
            # while edges have some; it follows the total ("viewers" live event) then.
            local_only = not found and app[keys.EXTRA].get("cluster") is None
            for runtime in app[keys.EXTRA].get("media", {}).values():
                runtime.badge_counts_local_viewers = local_only
        except Exception as exc:  # Redis away: keep the last list
            log.debug("edge list: %s", exc)
        await asyncio.sleep(REFRESH_S)


def setup(app: web.Application) -> None:
    async def edges_ctx(app: web.Application):
        task = asyncio.create_task(_refresh(app), name="edge-origins")
        yield
        await tasks.stop(task)

    app.cleanup_ctx.append(edges_ctx)
