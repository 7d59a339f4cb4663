"""Restreams (API.md "Restreams (host)"): the composed show sent on to other services.

Only the process that composes a show (its origin) runs its restreams
(``media.restream``). What the host asked for lives in Redis, so start/stop work on any
worker and survive the origin moving to another one:

- ``show:{show}:restreams:want``: hash, destination name -> "1" while it should run;
- ``show:{show}:restreams:status``: hash, name -> JSON state, written by the origin about
  four times a second and expiring with it (a dead origin's "live" does not linger).

The origin watches the ``want`` hash (``POLL_S``) and starts or stops destinations to
match; destinations with ``autostart`` are asked for when the show goes live.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time

from aiohttp import web

from media import tasks
from media.restream import Destination, Restreams
from server import keys
from server.auth import get_show, require_host
from server.config import ShowConfig
from server.errors import not_found

log = logging.getLogger("showroom.restream")

POLL_S = 0.25
STATUS_TTL_MS = 3000
ANSWER_WAIT_S = 1.5  # start/stop on a worker that is not the origin: wait this long for it


def want_key(show_id: str) -> str:
    return f"show:{show_id}:restreams:want"


def status_key(show_id: str) -> str:
    return f"show:{show_id}:restreams:status"


def _off(dest: Destination) -> dict:
    return {
        "name": dest.name,
        "kind": dest.kind,
        "target": dest.target,
        "state": "off",
        "since": None,
        "last_error": None,
        "kbps": 0.0,
        "dropped": 0,
        "autostart": dest.autostart,
    }


class ShowRestreams:
    """One show's restreams on this process: runs them while it is the show's origin."""

    def __init__(self, app: web.Application, show: ShowConfig, runtime) -> None:
        self.app = app
        self.show = show
        self.runtime = runtime
        self.hub = Restreams(runtime, show.restreams)
        runtime.restream = self.hub
        self._was_live = False
        self._task: asyncio.Task | None = None
        # Reading the wanted set and acting on it is one step: a start or stop from the
        # API never interleaves with the watcher acting on an older read.
        self._lock = asyncio.Lock()

    @property
    def redis(self):
        return self.app[keys.REDIS]

    def start(self) -> None:
        self._task = asyncio.create_task(self._watch(), name=f"restreams-{self.show.id}")

    async def close(self) -> None:
        await tasks.stop(self._task)
        await self.hub.aclose()
        self.runtime.restream = None
        if self.runtime.origin:
            with contextlib.suppress(Exception):
                await self.redis.delete(status_key(self.show.id))

    async def _watch(self) -> None:
        while True:
            try:
                await self.sync()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis away: keep what runs, try again
                log.warning("show %s: restreams: %s", self.show.id, exc)
            await asyncio.sleep(POLL_S)

    async def sync(self) -> None:
        async with self._lock:
            await self._sync()

    async def _sync(self) -> None:
        runtime = self.runtime
        if not runtime.origin:
            self._was_live = False
            if self.hub.active:  # the new origin runs them from here on
                await self.hub.aclose()
            return
        if runtime.live and not self._was_live:
            auto = {d.name: 1 for d in self.show.restreams if d.autostart}
            if auto:
                await self.redis.hset(want_key(self.show.id), mapping=auto)
        self._was_live = runtime.live
        wanted = {k.decode() for k in await self.redis.hkeys(want_key(self.show.id))}
        for name, sender in self.hub.senders.items():
            if name in wanted and not sender.running:
                sender.start()
            elif name not in wanted and sender.running:
                await sender.stop()
        await self.publish()

    async def publish(self) -> None:
        statuses = self.hub.status()
        if not statuses:
            return
        key = status_key(self.show.id)
        await self.redis.hset(key, mapping={s["name"]: json.dumps(s) for s in statuses})
        await self.redis.pexpire(key, STATUS_TTL_MS)

    async def statuses(self) -> list[dict]:
        """Every destination's state as the host sees it, from whichever process runs them."""
        if self.runtime.origin:
            return self.hub.status()
        raw = await self.redis.hgetall(status_key(self.show.id))
        wanted = {k.decode() for k in await self.redis.hkeys(want_key(self.show.id))}
        out = []
        for dest in self.show.restreams:
            entry = _off(dest)
            data = raw.get(dest.name.encode())
            if data:
                entry.update(json.loads(data))
            if dest.name in wanted and entry["state"] == "off":
                entry["state"] = "connecting"  # asked for; the origin has not taken it up yet
            out.append(entry)
        return out

    async def set_wanted(self, name: str, on: bool) -> dict:
        key = want_key(self.show.id)
        async with self._lock:
            if on:
                await self.redis.hset(key, name, 1)
            else:
                await self.redis.hdel(key, name)
            if self.runtime.origin:
                sender = self.hub.senders[name]
                if on:
                    sender.start()
                else:
                    await sender.stop()
                with contextlib.suppress(Exception):
                    await self.publish()
                return sender.status()
        deadline = time.monotonic() + ANSWER_WAIT_S
        while True:
            entry = next(e for e in await self.statuses() if e["name"] == name)
            settled = (entry["state"] == "off") != on
            if settled or time.monotonic() >= deadline:
                return entry
            await asyncio.sleep(POLL_S / 2)


def _restreams(request: web.Request) -> tuple[ShowConfig, ShowRestreams]:
    show = get_show(request)
    require_host(request, show)
    local = request.app[keys.EXTRA].get("restreams", {}).get(show.id)
    if local is None:
        raise not_found("This show has no restreams.")
    return show, local


def _named(show: ShowConfig, name: str) -> Destination:
    for dest in show.restreams:
        if dest.name == name:
            return dest
    raise not_found(f"No restream named {name!r} in this show.")


async def list_restreams(request: web.Request) -> web.Response:
    show = get_show(request)
    require_host(request, show)
    local = request.app[keys.EXTRA].get("restreams", {}).get(show.id)
    return web.json_response({"restreams": await local.statuses() if local else []})


async def start_restream(request: web.Request) -> web.Response:
    show, local = _restreams(request)
    dest = _named(show, request.match_info["name"])
    return web.json_response(await local.set_wanted(dest.name, True))


async def stop_restream(request: web.Request) -> web.Response:
    show, local = _restreams(request)
    dest = _named(show, request.match_info["name"])
    return web.json_response(await local.set_wanted(dest.name, False))


async def _state_hook(app: web.Application, show: ShowConfig, state: dict) -> None:
    # Viewers may play from another WHEP service; cart, chat and card sync stay here.
    state["playback_whep_url"] = show.playback_whep_url


def setup(app: web.Application) -> None:
    from server.routes.shows import add_state_hook

    async def restreams_ctx(app: web.Application):
        # After the media runtimes (and the cluster, which decides the origin); stopped
        # before them.
        local: dict[str, ShowRestreams] = {}
        app[keys.EXTRA]["restreams"] = local
        for show_id, runtime in app[keys.EXTRA].get("media", {}).items():
            show = app[keys.SHOWS][show_id]
            if show.restreams:
                local[show_id] = ShowRestreams(app, show, runtime)
                local[show_id].start()
        yield
        for item in local.values():
            try:
                await item.close()
            except Exception:
                log.exception("show %s: stopping restreams failed", item.show.id)

    app.cleanup_ctx.append(restreams_ctx)
    add_state_hook(app, _state_hook)
    r = app.router
    r.add_get("/api/shows/{show}/restreams", list_restreams)
    r.add_post("/api/shows/{show}/restreams/{name}/start", start_restream)
    r.add_post("/api/shows/{show}/restreams/{name}/stop", stop_restream)
