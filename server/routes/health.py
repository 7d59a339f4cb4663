"""``/healthz`` and ``/metrics``."""

from __future__ import annotations

import asyncio

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from server import keys
from server.auth import METRICS_TOKEN_ENV, is_operator
from server.errors import error_response


async def healthz(request: web.Request) -> web.Response:
    try:
        await asyncio.wait_for(request.app[keys.REDIS].ping(), 2)
    except Exception as exc:
        return web.json_response(
            {"ok": False, "redis": f"error: {exc.__class__.__name__}"}, status=503
        )
    return web.json_response({"ok": True, "redis": "ok"})


async def metrics(request: web.Request) -> web.Response:
    if not is_operator(request):
        return error_response(
            401,
            "unauthorized",
            f"Send Authorization: Bearer ${METRICS_TOKEN_ENV}, or log in as staff.",
            {"WWW-Authenticate": 'Bearer realm="metrics"'},
        )
    body = await request.app[keys.METRICS].render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def setup(app: web.Application) -> None:
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
