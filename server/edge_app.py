"""``showroom edge --origin URL --redis URL``: a WHEP server for viewers, fed by the origin.

An edge holds no manifest. It serves ``/whep/{show}`` for any show the origin knows
(``GET {origin}/api/shows/{show}``): the first viewer of a show opens one WHEP pull
session at the origin (``media.pull``), every viewer of that show on this edge is sent
its packets by the lean path, and the pull closes ``--linger`` seconds after the last
viewer leaves. The viewer page and live events stay at the origin (the page's WHEP POST
is redirected here with 307; cross-origin, so CORS is open on ``/whep`` and no cookie is
needed or read).

About once a second the edge writes its heartbeat (``server.edges``: URL, viewers, CPU,
per-show viewers and pull state, TTL 3 s) and its viewers into the shows' presence (so
``GET /api/shows/{show}`` counts them). Viewer slots (the per-show and per-IP caps) are
taken in the same Redis as the origin's. ``/metrics`` (Bearer
``$SHOWROOM_METRICS_TOKEN``) and ``/healthz`` are served as on any node.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import os
import time
from dataclasses import dataclass

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Gauge, generate_latest

from media import fastsend, tasks
from media.egress import Viewer
from media.ice import advertise_address, link_headers
from media.pull import EdgeShow, WhepPull
from media.sdp import SdpError, choose_view_codec, parse_offer
from server import auth, edges, keys, presence, viewer_slots
from server.config import Settings
from server.errors import ApiError, error_response, json_errors, not_found
from server.redis_client import connect
from server.routes import media as whep

log = logging.getLogger("showroom.edge")

BEAT_S = 1.0
SHOW_KNOWN_S = 30.0  # how long the origin's "this show exists" is trusted
EDGE = web.AppKey("edge", object)


@dataclass
class EdgeConfig:
    origin: str  # the origin's base URL
    linger_s: float = 10.0


class Edge:
    """The edge's state: its shows (``EdgeShow`` each) and its place in Redis."""

    def __init__(self, app: web.Application, config: EdgeConfig) -> None:
        self.app = app
        self.config = config
        self.origin = config.origin.rstrip("/")
        self.id = f"edge-{presence.PROCESS_ID}".replace(".", "-")[:64]
        self.shows: dict[str, EdgeShow] = app[keys.EXTRA]["media"]
        self.known: dict[str, float] = {}  # show id -> monotonic time the origin confirmed it
        self.http: aiohttp.ClientSession | None = None
        self.secret = b""  # the shared signing secret (Redis or $SHOWROOM_SECRET)

    @property
    def url(self) -> str:
        return self.app[keys.SETTINGS].base_url

    async def known_show(self, show_id: str) -> None:
        """404 unless the origin has this show (asked at most every ``SHOW_KNOWN_S``)."""
        confirmed = self.known.get(show_id)
        if confirmed is not None and time.monotonic() - confirmed < SHOW_KNOWN_S:
            return
        assert self.http is not None
        try:
            async with self.http.get(
                f"{self.origin}/api/shows/{show_id}", timeout=aiohttp.ClientTimeout(total=5)
            ) as r:
                status = r.status
        except (aiohttp.ClientError, TimeoutError):
            if show_id in self.shows:  # the origin is restarting: keep serving what we had
                return
            raise ApiError(
                503, "unavailable", "The origin cannot be reached.", {"Retry-After": "2"}
            ) from None
        if status == 404:
            raise not_found(f"No show called {show_id!r}.")
        if status != 200:
            raise ApiError(
                503, "unavailable", f"The origin answered {status}.", {"Retry-After": "2"}
            )
        self.known[show_id] = time.monotonic()

    def show(self, show_id: str) -> EdgeShow:
        show = self.shows.get(show_id)
        if show is None:
            show = self.shows[show_id] = EdgeShow(show_id, self._pull, self.config.linger_s)
        return show

    def _pull(self, show: EdgeShow) -> WhepPull:
        assert self.http is not None
        url = f"{self.origin}/whep/{show.show.id}"
        return WhepPull(show, url, self.http, self.pull_headers)

    def pull_headers(self) -> dict[str, str]:
        """A fresh token for each pull session (a long-lived edge never sends a stale one)."""
        token = auth.issue_token(self.secret, edges.TOKEN_KIND, self.id, edges.TOKEN_TTL_S)
        return {edges.EDGE_HEADER: token}

    def record(self, cpu: float) -> dict:
        return {
            "id": self.id,
            "role": "edge",
            "url": self.url,
            "origin": self.origin,
            "viewers": sum(s.audience for s in self.shows.values()),
            "cpu": round(cpu, 3),
            "shows": {sid: s.audience for sid, s in self.shows.items() if s.audience},
            "pulls": {sid: s.pull.state for sid, s in self.shows.items() if s.pull is not None},
            "at": time.time(),
        }

    async def run_heartbeat(self) -> None:
        redis = self.app[keys.REDIS]
        last_wall, last_cpu = time.monotonic(), _cpu_seconds()
        cpu = 0.0
        while True:
            try:
                await edges.beat(redis, self.record(cpu))
                for show_id, show in self.shows.items():
                    await presence.report(redis, show_id, live=False, viewers=show.audience)
                await whep._slots(self.app).tend(self._session_live)
            except Exception as exc:  # Redis away: the next beat tries again
                log.warning("edge heartbeat: %s", exc)
            await asyncio.sleep(BEAT_S)
            now, total = time.monotonic(), _cpu_seconds()
            cpu = (total - last_cpu) / max(1e-6, now - last_wall)
            last_wall, last_cpu = now, total

    def _session_live(self, held: viewer_slots.Held) -> bool:
        show = self.shows.get(held.show_id)
        return show is not None and show.viewers.get(held.session.id) is held.session


def _cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


def _edge(request: web.Request) -> Edge:
    return request.app[EDGE]


# --- WHEP -------------------------------------------------------------------------------


# The origin's own WHEP helpers (``server.routes.media``: SDP checks, candidate screening,
# trickle limits, CORS), so an edge refuses exactly what the origin refuses.


async def whep_post(request: web.Request) -> web.Response:
    edge = _edge(request)
    show_id = request.match_info["show"]
    text = await whep._read_sdp(request)
    whep._refuse_candidate_floods(text)
    try:
        offer = parse_offer(text)
        codec = choose_view_codec(offer)
    except SdpError as exc:
        raise whep._sdp_error(exc) from None
    if codec != "H264":  # the edge relays the origin's H.264 only; the origin encodes VP8
        return web.Response(status=307, headers={"Location": f"{edge.origin}/whep/{show_id}"})
    await edge.known_show(show_id)
    text, offered = whep._screened_offer(request, text)
    settings = request.app[keys.SETTINGS]
    slots = whep._slots(request.app)
    slot = await whep.take_viewer_slot(request, slots, show_id)
    show = edge.show(show_id)
    viewer, answer = await whep.open_viewer(
        lambda: Viewer(show, codec),  # type: ignore[arg-type]  (an EdgeShow, not a ShowRuntime)
        text,
        offer,
        offered,
        slots,
        slot,
        settings,
    )
    if settings.public_ip:
        answer = advertise_address(answer, settings.public_ip)
    # An absolute Location: the client came here by a redirect from the origin.
    location = f"{edge.url}/whep/{show_id}/{viewer.id}"
    headers = CIMultiDict({"Location": location, "ETag": viewer.etag, "Accept-Patch": whep.SDPFRAG})
    for link in link_headers(show.ice_servers):  # the origin's [ice], from its pull answer
        headers.add("Link", link)
    return web.Response(status=201, text=answer, content_type=whep.SDP, headers=headers)


def _viewer(request: web.Request) -> Viewer:
    show = _edge(request).shows.get(request.match_info["show"])
    viewer = show.viewers.get(request.match_info["session"]) if show is not None else None
    if viewer is None:
        raise not_found("No such WHEP session.")
    return viewer


async def whep_patch(request: web.Request) -> web.StreamResponse:
    return await whep._trickle(request, _viewer(request))


async def whep_delete(request: web.Request) -> web.StreamResponse:
    await whep.close_viewer(request.app, _viewer(request))
    return web.Response(status=200)


async def options(request: web.Request) -> web.Response:
    return web.Response(status=204, headers={"Accept-Post": whep.SDP, "Accept-Patch": whep.SDPFRAG})


# --- operations -------------------------------------------------------------------------


async def healthz(request: web.Request) -> web.Response:
    try:
        await asyncio.wait_for(request.app[keys.REDIS].ping(), 2)
    except Exception as exc:
        return web.json_response({"ok": False, "redis": f"error: {type(exc).__name__}"}, status=503)
    return web.json_response({"ok": True, "redis": "ok", "role": "edge"})


def _operator(request: web.Request) -> bool:
    token = os.environ.get(auth.METRICS_TOKEN_ENV)
    given = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
    return bool(token) and hmac.compare_digest(given.encode(), token.encode())


def _refused() -> web.Response:
    return error_response(
        401,
        "unauthorized",
        f"Send Authorization: Bearer ${auth.METRICS_TOKEN_ENV}.",
        {"WWW-Authenticate": 'Bearer realm="metrics"'},
    )


async def status(request: web.Request) -> web.Response:
    """This edge's shows, viewers and pull sessions (operators)."""
    if not _operator(request):
        return _refused()
    edge = _edge(request)
    shows = {sid: s.stats() for sid, s in edge.shows.items()}
    return web.json_response({"id": edge.id, "origin": edge.origin, "shows": shows})


async def metrics(request: web.Request) -> web.Response:
    if not _operator(request):
        return _refused()
    r = CollectorRegistry()
    viewers = Gauge("showroom_viewers", "WHEP viewers on this edge", ["show"], registry=r)
    up = Gauge(
        "showroom_edge_pull_up", "1 while the show's pull session is live", ["show"], registry=r
    )
    sessions = Gauge(
        "showroom_edge_pull_sessions", "WHEP sessions opened at the origin", ["show"], registry=r
    )
    frames = Gauge(
        "showroom_edge_frames_relayed", "Video frames from the origin", ["show"], registry=r
    )
    lost = Gauge("showroom_edge_lost_packets", "RTP packets lost on the pull", ["show"], registry=r)
    plis = Gauge("showroom_edge_plis_sent", "Keyframe requests sent upstream", ["show"], registry=r)
    for sid, show in _edge(request).shows.items():
        viewers.labels(sid).set(show.audience)
        pull = show.pull.stats() if show.pull is not None else None
        up.labels(sid).set(int(bool(pull and pull["state"] == "live")))
        if pull:
            sessions.labels(sid).set(pull["sessions"])
            frames.labels(sid).set(pull["frames"])
            lost.labels(sid).set(pull["lost_packets"])
            plis.labels(sid).set(pull["plis_sent"])
    return web.Response(body=generate_latest(r), headers={"Content-Type": CONTENT_TYPE_LATEST})


# --- the app ----------------------------------------------------------------------------


def create_edge_app(settings: Settings, config: EdgeConfig, redis_url: str) -> web.Application:
    app = web.Application(
        middlewares=[json_errors],
        client_max_size=1024 * 1024,
        handler_args={"auto_decompress": False},
    )
    app[keys.SETTINGS] = settings
    app[keys.EXTRA] = {"media": {}}
    edge = app[EDGE] = Edge(app, config)

    async def edge_ctx(app: web.Application):
        await asyncio.to_thread(fastsend.load)  # the lean path's C loop, off the event loop
        redis = await connect(redis_url, health_check_interval=10)
        app[keys.REDIS] = redis
        app[keys.EXTRA]["viewer_slots"] = viewer_slots.ViewerSlots(redis)
        edge.secret = await auth.load_secret(redis)
        edge.http = aiohttp.ClientSession()
        beat = asyncio.create_task(edge.run_heartbeat(), name="edge-heartbeat")
        yield
        await tasks.stop(beat)
        with contextlib.suppress(Exception):
            await edges.leave(redis, edge.id)
        for show_id, show in edge.shows.items():
            await show.stop()
            with contextlib.suppress(Exception):
                await presence.clear(redis, show_id)
        with contextlib.suppress(Exception):
            await whep._slots(app).release_all()
        await edge.http.close()
        await redis.aclose()

    app.cleanup_ctx.append(edge_ctx)
    r = app.router
    r.add_post("/whep/{show}", whep_post)
    r.add_route("OPTIONS", "/whep/{show}", options)
    r.add_patch("/whep/{show}/{session}", whep_patch)
    r.add_delete("/whep/{show}/{session}", whep_delete)
    r.add_route("OPTIONS", "/whep/{show}/{session}", options)
    r.add_get("/healthz", healthz)
    r.add_get("/metrics", metrics)
    r.add_get("/api/edge", status)
    app.on_response_prepare.append(whep._cors)
    return app


async def run_edge(
    settings: Settings, config: EdgeConfig, redis_url: str, stop: asyncio.Event
) -> int:
    app = create_edge_app(settings, config, redis_url)
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, settings.host, settings.port, reuse_address=True).start()
    print(f"showroom listening on {settings.base_url} (edge of {config.origin})", flush=True)
    try:
        await stop.wait()
        log.info("edge shutting down")
    finally:
        await runner.cleanup()
    return 0
