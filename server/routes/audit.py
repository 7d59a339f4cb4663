"""``GET /api/shows/{show}/audit`` (host): the show's staff actions, newest first."""

from __future__ import annotations

from aiohttp import web

from server import audit, keys
from server.auth import get_show, require_host


async def get_audit(request: web.Request) -> web.Response:
    show = get_show(request)
    require_host(request, show)
    entries = await audit.entries(request.app[keys.REDIS], show.id)
    return web.json_response({"entries": entries}, headers={"Cache-Control": "no-store"})


def setup(app: web.Application) -> None:
    app.router.add_get("/api/shows/{show}/audit", get_audit)
