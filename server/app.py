"""The aiohttp application factory.

``create_app`` wires the shared pieces (settings, shows, Redis, event bus, metrics,
signing secret) and lets each route module add its routes and lifecycle hooks. Route
modules hold no business rules: they parse, authorise and call into ``media``,
``checkout``, ``devices`` and ``overlays``.
"""

from __future__ import annotations

import logging

from aiohttp import web

from media import tasks
from server import (
    auth,
    cluster,
    connections,
    edges,
    keys,
    layout_migration,
    nodes,
    security,
    throttle,
)
from server.config import Settings, ShowConfig
from server.errors import json_errors
from server.events import EventBus
from server.metrics import Metrics
from server.redis_client import connect
from server.routes import (
    auctions,
    audit,
    cart,
    chat,
    cues,
    floor,
    health,
    media,
    pages,
    preflight,
    recordings,
    report,
    restreams,
    scene,
    schedule,
    shows,
    staff,
    stats,
)

log = logging.getLogger("showroom")

# At most this many Redis connections per process; a request beyond them waits its turn
# (in a flash drop) and is answered 503 only after REDIS_WAIT_S without one.
REDIS_POOL_SIZE = 256
REDIS_WAIT_S = 5.0

# Order matters only for lifecycle hooks: later modules may use what earlier ones set up.
# cluster (worker processes) after media: it drives the media runtimes.
# recordings after media: it attaches recorders to the runtimes and finishes them first.
# restreams after cluster: only a show's origin runs them.
ROUTE_MODULES = (
    health,
    audit,
    shows,
    scene,
    cart,
    auctions,
    chat,
    staff,
    media,
    cluster,
    nodes,
    edges,
    stats,
    recordings,
    restreams,
    report,
    cues,
    floor,
    preflight,
    pages,
    schedule,
)


def create_app(
    settings: Settings, show_configs: dict[str, ShowConfig], redis_url: str
) -> web.Application:
    app = web.Application(
        middlewares=[
            connections.guard,
            json_errors,
            security.same_origin,
            auth.identify,
            auth.viewer_cookie,
        ],
        client_max_size=1024 * 1024,
        # Bodies are decoded by server.errors.read_body: a bad Content-Encoding is a 400
        # JSON answer there, not a parser error that drops the connection.
        handler_args={"auto_decompress": False},
    )
    app[keys.SETTINGS] = settings
    app[keys.SHOWS] = show_configs
    app[keys.METRICS] = Metrics()
    app[keys.EXTRA] = {}

    async def core_ctx(app: web.Application):
        # A flash drop puts hundreds of requests on Redis at once: redis-py's default pool
        # raises "Too many connections" past its size, the blocking one makes them queue.
        # Lua scripts (every stock change) share round trips: see redis_pipelining.
        redis = await connect(
            redis_url,
            coalesce=True,
            health_check_interval=10,
            max_connections=REDIS_POOL_SIZE,
            wait_s=REDIS_WAIT_S,
        )
        app[keys.REDIS] = redis
        # Data written by the first key layout moves to the show-tagged keys first.
        await layout_migration.ensure_layout(redis, list(show_configs))
        app[keys.SECRET] = await auth.load_secret(redis)
        bus = EventBus(redis)
        await bus.start()
        app[keys.BUS] = bus
        locks = await throttle.watch_locks(app, redis, bus)
        yield
        await tasks.stop(locks)
        await bus.stop()
        await redis.aclose()

    app.cleanup_ctx.append(core_ctx)
    security.setup(app)
    connections.setup(app)
    for module in ROUTE_MODULES:
        module.setup(app)
    return app
