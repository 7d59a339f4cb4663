"""Show state, live events (SSE) and host controls (feature)."""

from __future__ import annotations

import asyncio
import contextlib
import time

from aiohttp import hdrs, web

from server import audit, keys, presence, segments
from server.auth import ensure_viewer, get_show, is_staff, require_host, viewer_cookie
from server.config import ShowConfig
from server.errors import not_found, read_json, string_or_null


def featured_key(show_id: str) -> str:
    return f"show:{show_id}:featured"


async def get_featured(redis, show_id: str) -> str | None:
    value = await redis.get(featured_key(show_id))
    return value.decode() if value else None


async def show_state(app: web.Application, show: ShowConfig) -> dict:
    redis = app[keys.REDIS]
    live, viewers = await presence.read(redis, show.id)
    state = {
        "id": show.id,
        "title": show.title,
        "live": live,
        "viewers": viewers,
        "featured": await get_featured(redis, show.id),
        "drop": None,
        "currency": show.currency,
        "products": [
            {
                "sku": p.sku,
                "name": p.name,
                "price": f"{p.price:.2f}",
                "currency": show.currency,
                "available": p.stock,
                "image_url": f"/media/products/{show.id}/{p.sku}.png",
                "per_buyer_limit": p.per_buyer_limit,
            }
            for p in show.products
        ],
    }
    for hook in app[keys.EXTRA].get("state_hooks", []):
        await hook(app, show, state)
    return state


def add_state_hook(app: web.Application, hook) -> None:
    """Let another area add to the show state (e.g. checkout: availability, drop)."""
    app[keys.EXTRA].setdefault("state_hooks", []).append(hook)


async def get_state(request: web.Request) -> web.Response:
    show = get_show(request)
    return web.json_response(await show_state(request.app, show))


async def feature(request: web.Request) -> web.Response:
    show = get_show(request)
    require_host(request, show)
    body = await read_json(request)
    sku = string_or_null(body, "sku", "<sku>")
    if sku is not None and show.product(sku) is None:
        raise not_found(f"No product {sku!r} in this show.")
    await set_featured(request.app, show, sku)
    await audit.log(request, show.id, "feature", sku or "(nothing)")
    return web.json_response(await show_state(request.app, show))


async def set_featured(app: web.Application, show: ShowConfig, sku: str | None) -> None:
    """Put a product on screen (or none): by hand or from the run of show."""
    redis = app[keys.REDIS]
    if sku is None:
        await redis.delete(featured_key(show.id))
    else:
        await redis.set(featured_key(show.id), sku)
    _, viewers = await presence.read(redis, show.id)
    await segments.featured_changed(redis, show.id, sku, int(time.time() * 1000), viewers)
    # e.g. the overlays render the card now, so the next composed frame already shows it
    for hook in app[keys.EXTRA].get("feature_hooks", []):
        await hook(app, show, sku)
    await app[keys.BUS].publish(show.id, {"type": "featured", "sku": sku})


async def events(request: web.Request) -> web.StreamResponse:
    show = get_show(request)
    streams = request.app[keys.BUS].streams
    resp = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",
        }
    )
    # Orders are personal: the buyer's own, all of them for the show's staff. A first
    # visit gets its viewer cookie here, so its own order events reach it later on.
    viewer, staff = ensure_viewer(request), is_staff(request, show)
    await viewer_cookie(request, _this(resp))  # sets that cookie before the stream starts
    if request.app[keys.EXTRA]["sse_closing"].is_set():
        raise web.HTTPServiceUnavailable(headers={"Retry-After": "2"})
    try:
        await resp.prepare(request)
        await resp.write(b"retry: 2000\n\n")  # also sends the headers
    except (ConnectionResetError, ConnectionError):
        return resp
    transport = request.transport
    if transport is None or transport.is_closing():
        return resp
    # From here the hub writes this stream's events (server.sse); the handler only waits
    # for the stream to end: the client left, fell behind, or the server is stopping.
    chunked = resp.headers.get(hdrs.TRANSFER_ENCODING, "").lower() == "chunked"
    client = streams.add(show.id, transport, viewer=viewer, staff=staff, chunked=chunked)
    try:
        await client.done
    finally:
        streams.remove(show.id, client)
    with contextlib.suppress(Exception):  # a stalled client must not hold up a shutdown
        await asyncio.wait_for(resp.write_eof(), 1.0)
    return resp


def _this(resp: web.StreamResponse):
    async def handler(_request: web.Request) -> web.StreamResponse:
        return resp

    return handler


async def _close_event_streams(app: web.Application) -> None:
    app[keys.EXTRA]["sse_closing"].set()
    await app[keys.BUS].streams.close()


def setup(app: web.Application) -> None:
    app[keys.EXTRA]["sse_closing"] = asyncio.Event()
    app.on_shutdown.append(_close_event_streams)
    app.router.add_get("/api/shows/{show}", get_state)
    app.router.add_get("/api/shows/{show}/events", events)
    app.router.add_post("/api/shows/{show}/feature", feature)
