"""The run of show: the manifest's ``[[cues]]`` stepped through with one "Next".

The position is kept in Redis (``show:{id}:cue``), so every host device and process
agrees on what comes next, and a press is claimed with a compare-and-set: two people
pressing Next for the same cue run it once (the second gets 409 and the new position).
A cue runs the same code as the host's buttons (feature, drop, ticker, pin); if it fails
(e.g. a drop is already running) the position goes back and the host sees why.
"""

from __future__ import annotations

import json
import time

from aiohttp import web

from checkout import drops
from server import audit, keys
from server.auth import get_show, require_host
from server.config import CueConfig, ShowConfig
from server.errors import ApiError, bad_request, read_json
from server.routes.cart import run_drop
from server.routes.chat import host_pins
from server.routes.scene import set_ticker
from server.routes.shows import set_featured


def pointer_key(show_id: str) -> str:
    return f"show:{show_id}:cue"


def log_key(show_id: str) -> str:
    return f"show:{show_id}:cues:log"


# KEYS[1] position; ARGV[1] the position the caller saw, ARGV[2] number of cues.
_CLAIM = """
local cur = tonumber(redis.call('GET', KEYS[1]) or '0')
if cur ~= tonumber(ARGV[1]) then return {'moved', cur} end
if cur >= tonumber(ARGV[2]) then return {'end', cur} end
redis.call('SET', KEYS[1], cur + 1)
return {'ok', cur}
"""

# Give a failed cue its place back, unless someone moved on meanwhile.
_UNCLAIM = """
if tonumber(redis.call('GET', KEYS[1]) or '0') == tonumber(ARGV[1]) + 1 then
  redis.call('SET', KEYS[1], ARGV[1])
end
return 1
"""


async def run_cue(app: web.Application, show: ShowConfig, cue: CueConfig) -> None:
    if cue.action == "feature":
        await set_featured(app, show, cue.sku)
    elif cue.action == "unfeature":
        await set_featured(app, show, None)
    elif cue.action == "drop":
        price = int(cue.price * 100) if cue.price is not None else None
        req = drops.DropRequest(
            cue.sku or "", cue.quantity, float(cue.duration_s), cue.per_buyer_limit, price
        )
        await run_drop(app, show, req)
    elif cue.action == "ticker":
        await set_ticker(app, show, cue.text)
    elif cue.action == "pin":
        await host_pins(app, show, cue.text or "")


async def position(redis, show_id: str) -> int:
    raw = await redis.get(pointer_key(show_id))
    return int(raw) if raw else 0


def cues_view(show: ShowConfig, nxt: int) -> dict:
    return {
        "cues": [{"index": i, **c.public()} for i, c in enumerate(show.cues)],
        "next": nxt,
        "done": nxt >= len(show.cues),
    }


async def get_cues(request: web.Request) -> web.Response:
    show = get_show(request)
    require_host(request, show)
    return web.json_response(cues_view(show, await position(request.app[keys.REDIS], show.id)))


def _index(body: dict, name: str, hi: int) -> int:
    value = body.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= hi:
        raise bad_request(f"{name} must be a cue number from 0 to {hi}.")
    return value


async def next_cue(request: web.Request) -> web.Response:
    show = get_show(request)
    require_host(request, show)
    body = await read_json(request) if request.can_read_body else {}
    redis = request.app[keys.REDIS]
    expect = (
        _index(body, "expect", len(show.cues))
        if "expect" in body
        else await position(redis, show.id)
    )
    outcome, at = await redis.eval(_CLAIM, 1, pointer_key(show.id), expect, len(show.cues))
    outcome = outcome.decode() if isinstance(outcome, bytes) else outcome
    if outcome == "end":
        raise ApiError(409, "conflict", "That was the last cue.")
    if outcome == "moved":
        raise ApiError(409, "conflict", f"Someone else moved the run of show: next is cue {at}.")
    cue = show.cues[int(at)]
    try:
        await run_cue(request.app, show, cue)
    except Exception:
        await redis.eval(_UNCLAIM, 1, pointer_key(show.id), int(at))
        raise
    entry = {"index": int(at), "label": cue.label, "at_ms": int(time.time() * 1000)}
    await redis.rpush(log_key(show.id), json.dumps(entry))
    await request.app[keys.BUS].publish(show.id, {"type": "cue", "next": int(at) + 1})
    await audit.log(request, show.id, "cue", cue.label)
    return web.json_response(
        {"ran": {"index": int(at), **cue.public()}, **cues_view(show, int(at) + 1)}
    )


async def goto_cue(request: web.Request) -> web.Response:
    show = get_show(request)
    require_host(request, show)
    index = _index(await read_json(request), "index", len(show.cues))
    await request.app[keys.REDIS].set(pointer_key(show.id), index)
    await request.app[keys.BUS].publish(show.id, {"type": "cue", "next": index})
    return web.json_response(cues_view(show, index))


def setup(app: web.Application) -> None:
    app.router.add_get("/api/shows/{show}/cues", get_cues)
    app.router.add_post("/api/shows/{show}/cues/next", next_cue)
    app.router.add_post("/api/shows/{show}/cues/goto", goto_cue)
