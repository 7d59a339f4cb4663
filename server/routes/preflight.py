"""``GET /api/shows/{show}/preflight`` for the host: red/amber/green before going live."""

from __future__ import annotations

import asyncio

from aiohttp import web

from devices.store import read_status
from server import keys, preflight, presence
from server.auth import get_show, require_host
from server.config import ShowConfig


async def checks_for(app: web.Application, show: ShowConfig) -> list[preflight.Check]:
    settings = app[keys.SETTINGS]
    redis = app[keys.REDIS]
    appendonly, appendfsync, skew = await preflight.redis_figures(redis)
    live, _ = await presence.read(redis, show.id)
    runtime = app[keys.EXTRA].get("media", {}).get(show.id)
    publisher = getattr(runtime, "publisher", None)
    fps = kbps = None
    if live and publisher is not None:
        fps, kbps = await preflight.publisher_figures(publisher)
    free = await asyncio.to_thread(preflight.disk_free, settings.data_dir)
    checks = [
        preflight.grade_publisher(live, fps, kbps, show),
        preflight.grade_stripe(
            settings.sandbox, bool(settings.stripe_webhook_secret), settings.base_url
        ),
        preflight.grade_persistence(appendonly, appendfsync),
        preflight.grade_disk(free, str(settings.data_dir)),
        preflight.grade_clock(skew),
    ]
    for printer in show.printers:
        status = await read_status(redis, printer.name)
        online = status.online if status.checked_at else None
        checks.append(preflight.grade_printer(printer.name, online, status.last_error))
    if not show.printers:
        checks.append(
            preflight.Check("printers", preflight.AMBER, "No printer: labels will not print.")
        )
    return checks


async def get_preflight(request: web.Request) -> web.Response:
    show = get_show(request)
    require_host(request, show)
    checks = await checks_for(request.app, show)
    return web.json_response(
        {"overall": preflight.overall(checks), "checks": [c.public() for c in checks]},
        headers={"Cache-Control": "no-store"},
    )


def setup(app: web.Application) -> None:
    app.router.add_get("/api/shows/{show}/preflight", get_preflight)
