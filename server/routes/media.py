"""WHIP ingest and WHEP egress (RFC 9725 and the WHEP draft), plus the per-show media
runtimes' lifecycle: created at start-up for every show, stopped on shutdown.

Routes only parse, authorise and call into ``media``. CORS is open (``*``) on these paths
so a browser publisher or player served from another origin works; WHIP is protected by
the stream key, not by the origin.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import weakref
from collections.abc import Callable

from aiohttp import web
from multidict import CIMultiDict

from media import fastsend, tasks
from media.candidates import (
    MAX_CANDIDATES,
    CandidatePolicy,
    TrickleBudget,
    count_offer_candidates,
    screen_candidates,
    screen_offer,
)
from media.egress import Viewer
from media.ice import advertise_address, link_headers
from media.ingest import IceRestartRequired, Publisher, add_trickle
from media.runtime import ShowRuntime
from media.sdp import (
    MAX_SDP_BYTES,
    Offer,
    SdpError,
    check_publish_offer,
    choose_view_codec,
    drop_mdns_candidates,
    parse_offer,
    parse_sdpfrag,
)
from media.udp_ports import PortRangeBinding
from server import edges, keys, presence, segments, viewer_slots
from server.auth import get_show, is_host, require_operator, require_stream_key
from server.cluster import cluster, maybe_forward
from server.config import Settings
from server.errors import ApiError, bad_request, not_found, read_body

log = logging.getLogger("showroom.media")

CORS_HEADERS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "OPTIONS, POST, PATCH, DELETE",
    "Access-Control-Allow-Headers": "Authorization, Content-Type, If-Match",
    "Access-Control-Expose-Headers": "Location, ETag, Link, Accept-Post, Accept-Patch, Retry-After",
    "Access-Control-Max-Age": "86400",
}
SDP = "application/sdp"
SDPFRAG = "application/trickle-ice-sdpfrag"
STATUS_INTERVAL_S = 1.0
RETRY_AFTER_S = "10"


def runtimes(app: web.Application) -> dict[str, ShowRuntime]:
    return app[keys.EXTRA]["media"]


def _runtime(request: web.Request) -> ShowRuntime:
    show = get_show(request)
    return runtimes(request.app)[show.id]


async def _read_sdp(request: web.Request, expected: str = SDP) -> str:
    ctype = request.headers.get("Content-Type", "").split(";")[0].strip().lower()
    if ctype != expected:
        raise ApiError(415, "bad_request", f"Content-Type must be {expected}.")
    raw = await read_body(request, MAX_SDP_BYTES)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise bad_request("SDP must be UTF-8 text.") from None


def _refuse_candidate_floods(text: str) -> None:
    """A cheap count before any parsing: an offer stuffed with candidates costs one
    substring count, not a parse of every line (a flood of them stalled the loop)."""
    n = text.count("a=candidate:")
    if n > MAX_CANDIDATES:
        raise bad_request(f"Too many ICE candidates ({n}; at most {MAX_CANDIDATES}).")


def _sdp_error(exc: SdpError) -> ApiError:
    return ApiError(exc.status, "bad_request", exc.detail)


# Trickle budgets of live sessions (a session's entry goes with it).
_budgets: weakref.WeakKeyDictionary[object, TrickleBudget] = weakref.WeakKeyDictionary()


def _policy(request: web.Request) -> CandidatePolicy:
    settings = request.app[keys.SETTINGS]
    return CandidatePolicy(
        allow_loopback=settings.candidate_allowed("loopback"),
        allow_private=settings.candidate_allowed("private"),
    )


def _screened_offer(request: web.Request, text: str) -> tuple[str, int]:
    """The offer without mDNS names (resolving them would delay the answer ~1 s) and
    without candidates we never check toward; and how many candidates it brought."""
    text = drop_mdns_candidates(text)
    try:
        return screen_offer(text, _policy(request)), count_offer_candidates(text)
    except SdpError as exc:
        raise _sdp_error(exc) from None


def _track_budget(session: object, offered: int) -> None:
    _budgets[session] = TrickleBudget(candidates=offered)


def _created(request: web.Request, answer: str, location: str, etag: str) -> web.Response:
    show = get_show(request)
    if public_ip := request.app[keys.SETTINGS].public_ip:
        answer = advertise_address(answer, public_ip)
    headers = CIMultiDict({"Location": location, "ETag": etag, "Accept-Patch": SDPFRAG})
    for link in link_headers(show.ice_servers):  # the manifest's [ice] (RFC 9725 4.6)
        headers.add("Link", link)
    return web.Response(status=201, text=answer, content_type=SDP, headers=headers)


# --- WHIP ---------------------------------------------------------------------------


async def whip_post(request: web.Request) -> web.Response:
    show = get_show(request)
    require_stream_key(request, show)
    text = await _read_sdp(request)
    _refuse_candidate_floods(text)
    try:
        offer = parse_offer(text)
        check_publish_offer(offer)
    except SdpError as exc:
        raise _sdp_error(exc) from None
    text, offered = _screened_offer(request, text)
    runtime = runtimes(request.app)[show.id]
    publisher = Publisher(runtime)
    publisher.id = _session_id(request.app, publisher.id)
    _track_budget(publisher, offered)
    try:
        answer = await publisher.accept(text, offer.ice_ufrag)
    except Exception as exc:  # aiortc rejected it: nothing was published
        await publisher.close()
        raise ApiError(422, "bad_request", f"Cannot use this SDP offer: {exc}") from None
    workers = cluster(request.app)
    if workers is None:
        await runtime.set_publisher(publisher)
    else:
        try:
            await workers.claim(show.id, publisher)  # this worker composes the show now
        except BaseException:
            await publisher.close()
            raise
    return _created(request, answer, f"/whip/{show.id}/{publisher.id}", publisher.etag)


def _publisher(request: web.Request) -> tuple[ShowRuntime, Publisher]:
    runtime = _runtime(request)
    publisher = runtime.publisher
    if publisher is None or publisher.id != request.match_info["session"]:
        raise not_found("No such WHIP session.")
    return runtime, publisher


async def whip_patch(request: web.Request) -> web.StreamResponse:
    if (forwarded := await maybe_forward(request)) is not None:
        return forwarded
    show = get_show(request)
    require_stream_key(request, show)
    _runtime_, publisher = _publisher(request)
    return await _trickle(request, publisher)


async def whip_delete(request: web.Request) -> web.StreamResponse:
    if (forwarded := await maybe_forward(request)) is not None:
        return forwarded
    show = get_show(request)
    require_stream_key(request, show)
    _runtime_, publisher = _publisher(request)
    await publisher.close()
    return web.Response(status=200)


# --- WHEP ---------------------------------------------------------------------------


async def whep_post(request: web.Request) -> web.Response:
    show = get_show(request)
    text = await _read_sdp(request)
    _refuse_candidate_floods(text)
    try:
        offer = parse_offer(text)
        codec = choose_view_codec(offer)
    except SdpError as exc:
        raise _sdp_error(exc) from None
    text, offered = _screened_offer(request, text)
    runtime = runtimes(request.app)[show.id]
    settings = request.app[keys.SETTINGS]
    edge = edges.edge_of(request)  # an edge node pulling the show for its viewers
    wants_preview = request.query.get("preview") == "1"
    if edge is None and codec == "H264" and not wants_preview:
        target = await edges.redirect_for(request, show.id)
        if target is not None:
            return web.Response(status=307, headers={"Location": target})
    slots = _slots(request.app)
    # An edge's pull takes no slot: its viewers take theirs at the edge.
    slot = None if edge is not None else await take_viewer_slot(request, slots, show.id)

    def make_viewer() -> Viewer:
        # The host page's preview asks with ?preview=1; only the show's host is believed.
        # An edge's pull is not one of the audience either (its viewers are counted there).
        preview = (wants_preview and is_host(request, show)) or edge is not None
        viewer = Viewer(runtime, codec, preview=preview)
        viewer.edge = edge
        viewer.id = _session_id(request.app, viewer.id)
        return viewer

    viewer, answer = await open_viewer(make_viewer, text, offer, offered, slots, slot, settings)
    workers = cluster(request.app)
    if workers is not None:
        workers.clients[show.id].wake()  # relay the origin's packets here now
    return _created(request, answer, f"/whep/{show.id}/{viewer.id}", viewer.etag)


async def take_viewer_slot(
    request: web.Request, slots: viewer_slots.ViewerSlots, show_id: str
) -> str:
    """A viewer slot for this request (atomically, over every process, before any work
    that awaits); 503 when the show is full, 429 when this address has its share."""
    settings = request.app[keys.SETTINGS]
    slot = secrets.token_urlsafe(9)
    taken = await slots.take(
        show_id, slot, request.remote or "-", settings.max_viewers_per_show, settings.viewer_ip_cap
    )
    if taken == viewer_slots.SHOW_FULL:
        raise ApiError(
            503,
            "unavailable",
            "This show is at viewer capacity; try again shortly.",
            {"Retry-After": RETRY_AFTER_S},
        )
    if taken == viewer_slots.IP_FULL:
        raise ApiError(
            429,
            "rate_limited",
            "Too many viewing sessions from this address.",
            {"Retry-After": RETRY_AFTER_S},
        )
    return slot


async def open_viewer(
    make_viewer: Callable[[], Viewer],
    text: str,
    offer: Offer,
    offered: int,
    slots: viewer_slots.ViewerSlots,
    slot: str | None,
    settings: Settings,
) -> tuple[Viewer, str]:
    """A new viewer session and its answer to the offer (422 for an offer it cannot use);
    the slot goes with the session, and back if anything fails; a session that never
    connects is closed."""
    audio = offer.section("audio")
    with_audio = audio is not None and audio.direction in ("recvonly", "sendrecv")
    try:
        viewer = make_viewer()
        _track_budget(viewer, offered)
        try:
            answer = await viewer.accept(text, offer.ice_ufrag, with_audio)
        except Exception as exc:
            await viewer.close()
            raise ApiError(422, "bad_request", f"Cannot use this SDP offer: {exc}") from None
        # Only now is the session among the show's viewers: tied to it any earlier, the
        # slot looked abandoned to the once-a-second tending (the session not listed
        # yet) and was given back while the session went on, so the cap let one more in.
        if slot is not None and slot in slots.held:
            slots.held[slot].session = viewer
    except BaseException:
        if slot is not None:
            await slots.release(slot)
        raise
    _close_if_not_connected(viewer, settings.whep_connect_timeout_s)
    return viewer, answer


def _slots(app: web.Application) -> viewer_slots.ViewerSlots:
    return app[keys.EXTRA]["viewer_slots"]


def _session_id(app: web.Application, token: str) -> str:
    """Session ids start with the id of the worker holding them, so any worker can send
    a PATCH or DELETE on to it (no prefix with a single process)."""
    prefix = app[keys.EXTRA].get("session_prefix", "")
    return f"{prefix}{token}"


def _close_if_not_connected(viewer: Viewer, timeout_s: float) -> None:
    """A WHEP session that has not connected in ``timeout_s`` is closed (its slot goes
    with it): an offer that never completes ICE must not hold a place."""
    loop = asyncio.get_running_loop()

    def check() -> None:
        if viewer.pc.connectionState != "connected" and viewer.runtime.viewers.get(viewer.id):
            log.info("WHEP session %s not connected after %.0fs; closed", viewer.id, timeout_s)
            task = loop.create_task(viewer.close())
            _closing.add(task)
            task.add_done_callback(_closing.discard)

    loop.call_later(timeout_s, check)


_closing: set[asyncio.Task] = set()


def _viewer(request: web.Request) -> Viewer:
    viewer = _runtime(request).viewers.get(request.match_info["session"])
    if viewer is None:
        raise not_found("No such WHEP session.")
    return viewer


async def whep_patch(request: web.Request) -> web.StreamResponse:
    if (forwarded := await maybe_forward(request)) is not None:
        return forwarded
    return await _trickle(request, _viewer(request))


async def whep_delete(request: web.Request) -> web.StreamResponse:
    if (forwarded := await maybe_forward(request)) is not None:
        return forwarded
    await close_viewer(request.app, _viewer(request))
    return web.Response(status=200)


async def close_viewer(app: web.Application, viewer: Viewer) -> None:
    """End a WHEP session and give its viewer slot back (origin and edge alike)."""
    await viewer.close()
    slots = _slots(app)
    for slot, held in list(slots.held.items()):
        if held.session is viewer:
            await slots.release(slot)


# --- shared -------------------------------------------------------------------------


async def _trickle(request: web.Request, session: Publisher | Viewer) -> web.Response:
    if_match = request.headers.get("If-Match")
    if if_match and if_match not in ("*", session.etag):
        raise ApiError(412, "conflict", "ETag does not match this session.")
    budget = _budgets.setdefault(session, TrickleBudget())
    if not budget.take_request():
        raise ApiError(429, "rate_limited", "Too many trickle ICE requests.", {"Retry-After": "1"})
    text = await _read_sdp(request, SDPFRAG)
    try:
        frag = parse_sdpfrag(drop_mdns_candidates(text))
        keep = screen_candidates([line for _mid, line in frag.candidates], _policy(request))
        if budget.candidates + len(frag.candidates) > MAX_CANDIDATES:
            raise SdpError(
                400, f"Too many ICE candidates for this session (at most {MAX_CANDIDATES})."
            )
        budget.candidates += len(frag.candidates)
        frag.candidates = [c for c, ok in zip(frag.candidates, keep, strict=True) if ok]
        await add_trickle(session.pc, session.remote_ufrag, frag)
    except SdpError as exc:
        raise _sdp_error(exc) from None
    except IceRestartRequired:
        raise ApiError(422, "bad_request", "ICE restart is not supported.") from None
    return web.Response(status=204)


async def media_stats(request: web.Request) -> web.Response:
    """Live media figures for operators and benchmarks (recent server-added latency; with
    worker processes, which worker answered, whether it is the show's origin, and the
    relay's figures)."""
    require_operator(request)
    runtime = _runtime(request)
    stats = runtime.stats()
    # Edge nodes' pull sessions held here (each edge pulls a show once for its viewers).
    stats["edge_pulls"] = sorted(
        v.edge for v in runtime.viewers.values() if getattr(v, "edge", None)
    )
    workers = cluster(request.app)
    if workers is not None:
        stats["worker"] = workers.index
        stats["pid"] = os.getpid()
        stats["origin"] = runtime.origin
        stats["relay"] = workers.clients[runtime.show.id].stats()
    return web.json_response(stats)


async def options(request: web.Request) -> web.Response:
    get_show(request)
    return web.Response(status=204, headers={"Accept-Post": SDP, "Accept-Patch": SDPFRAG})


async def _cors(request: web.Request, response: web.StreamResponse) -> None:
    if request.path.startswith(("/whip/", "/whep/")):
        for name, value in CORS_HEADERS.items():
            response.headers.setdefault(name, value)


# --- lifecycle ----------------------------------------------------------------------


async def _report_status(app: web.Application) -> None:
    """About once a second: presence in Redis, viewer counts on the bus."""
    redis, bus = app[keys.REDIS], app[keys.BUS]
    shows = runtimes(app)
    last_viewers: dict[str, int] = {}

    def session_live(held: viewer_slots.Held) -> bool:
        runtime = shows.get(held.show_id)
        return runtime is not None and runtime.viewers.get(held.session.id) is held.session

    while True:
        try:
            await _slots(app).tend(session_live)
        except Exception as exc:
            log.warning("viewer slots: %s", exc)
        for show_id, runtime in shows.items():
            n = runtime.audience
            try:
                await presence.report(redis, show_id, live=runtime.live, viewers=n)
                # The total over every process: each one publishes it when it changes.
                _, everyone = await presence.read(redis, show_id)
                if last_viewers.get(show_id) != everyone:
                    last_viewers[show_id] = everyone
                    await bus.publish(show_id, {"type": "viewers", "viewers": everyone})
                    await segments.viewers_seen(redis, show_id, everyone)
            except Exception as exc:  # Redis hiccup: the media path keeps going
                log.warning("status report for %s failed: %s", show_id, exc)
        await asyncio.sleep(STATUS_INTERVAL_S)


async def _viewers_total(app: web.Application) -> None:
    """/metrics: ``showroom_viewers`` is the total over every process."""
    gauge = app[keys.METRICS].viewers
    for show_id in runtimes(app):
        with contextlib.suppress(Exception):
            _, everyone = await presence.read(app[keys.REDIS], show_id)
            gauge.labels(show_id).set(everyone)


def _status_publisher(app: web.Application, show_id: str):
    def publish(kind: str, event: dict) -> None:
        async def send() -> None:
            with contextlib.suppress(Exception):
                await app[keys.BUS].publish(show_id, dict(event))
                runtime = runtimes(app)[show_id]
                await presence.report(
                    app[keys.REDIS], show_id, live=runtime.live, viewers=runtime.audience
                )

        asyncio.get_running_loop().create_task(send())

    return publish


async def media_ctx(app: web.Application):
    metrics = app[keys.METRICS]
    extra = app[keys.EXTRA]
    ports = app[keys.SETTINGS].udp_ports
    binding = PortRangeBinding(ports) if ports is not None else None
    if binding is not None:
        binding.install()  # before any peer gathers candidates
    # Load (or, the first time, compile) the lean path's C send loop now, off the loop,
    # rather than on the first viewer's first frame.
    await asyncio.to_thread(fastsend.load)
    shows: dict[str, ShowRuntime] = {}
    extra["media"] = shows
    extra["viewer_slots"] = slots = viewer_slots.ViewerSlots(app[keys.REDIS])
    metrics.before_scrape.append(lambda: _viewers_total(app))
    for show_id, show in app[keys.SHOWS].items():
        runtime = ShowRuntime(
            show,
            metrics,
            scene_lookup=lambda sid=show_id: extra.get("scenes", {}).get(sid),
            on_status=_status_publisher(app, show_id),
            shared_clock=app[keys.SETTINGS].worker_index is not None,
        )
        shows[show_id] = runtime
        runtime.start()
    status = asyncio.create_task(_report_status(app), name="media-status")
    yield
    await tasks.stop(status)
    for show_id, runtime in shows.items():
        await runtime.stop()
        with contextlib.suppress(Exception):
            await presence.clear(app[keys.REDIS], show_id)
    with contextlib.suppress(Exception):
        await slots.release_all()
    if binding is not None:
        binding.uninstall()


def setup(app: web.Application) -> None:
    r = app.router
    r.add_post("/whip/{show}", whip_post)
    r.add_route("OPTIONS", "/whip/{show}", options)
    r.add_patch("/whip/{show}/{session}", whip_patch)
    r.add_delete("/whip/{show}/{session}", whip_delete)
    r.add_route("OPTIONS", "/whip/{show}/{session}", options)
    r.add_post("/whep/{show}", whep_post)
    r.add_route("OPTIONS", "/whep/{show}", options)
    r.add_patch("/whep/{show}/{session}", whep_patch)
    r.add_delete("/whep/{show}/{session}", whep_delete)
    r.add_route("OPTIONS", "/whep/{show}/{session}", options)
    r.add_get("/api/shows/{show}/media", media_stats)
    app.on_response_prepare.append(_cors)
    app.cleanup_ctx.append(media_ctx)
