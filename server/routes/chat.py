"""Viewer identity (``/api/me``), chat, moderation and reactions: the HTTP face of
``server.chat``. Handlers parse, authorise, call the store and publish what changed on
the show's event bus (so every process's SSE streams carry it)."""

from __future__ import annotations

import hashlib
import hmac
import time

from aiohttp import web

from server import audit, identity, keys
from server.auth import ensure_viewer, get_show, is_host, require_role, viewer_id
from server.auth import identity as identity_of
from server.chat import rules
from server.chat.reactions import Reactions, clean_kind
from server.chat.rules import ChatSettings
from server.chat.store import ChatStore
from server.config import ShowConfig
from server.errors import ApiError, read_json
from server.routes.scene import apply_pinned

REACTIONS: web.AppKey[Reactions] = web.AppKey("reactions")
_STATUS = {"bad_request": 400, "name_required": 400, "forbidden": 403, "not_found": 404}


def refused(exc: rules.Refused) -> ApiError:
    if exc.code == "rate_limited":
        return ApiError(429, exc.code, exc.detail, {"Retry-After": str(exc.retry_after_s or 1)})
    return ApiError(_STATUS.get(exc.code, 400), exc.code, exc.detail)


def store_for(app: web.Application, show: ShowConfig) -> ChatStore:
    return ChatStore(
        app[keys.REDIS],
        app[keys.SECRET],
        show.id,
        ChatSettings(show.chat.slow_mode_s, show.chat.blocked_words),
        app[keys.SETTINGS].chat_ip_limit,
    )


def client_ip(request: web.Request) -> str:
    return request.remote or "unknown"


async def publish(request: web.Request, show: ShowConfig, event: dict) -> None:
    await request.app[keys.BUS].publish(show.id, event)


# --- /api/me --------------------------------------------------------------------------


async def get_me(request: web.Request) -> web.Response:
    from server.routes.auctions import has_payment_method

    vid = viewer_id(request)
    name = await identity.get_name(request.app[keys.REDIS], vid)
    me = {"name": name, "has_payment_method": await has_payment_method(request.app, vid)}
    if vid is not None:  # compared with an auction's leader_handle: winning or outbid
        me["handle"] = rules.author_handle(request.app[keys.SECRET], vid)
    return web.json_response(me)


async def put_me(request: web.Request) -> web.Response:
    body = await read_json(request, max_bytes=1024)
    try:
        name = rules.clean_name(body.get("name"))
    except rules.Refused as exc:
        raise refused(exc) from None
    await identity.set_name(request.app[keys.REDIS], ensure_viewer(request), name)
    return web.json_response({"name": name})


# --- chat -----------------------------------------------------------------------------


async def get_chat(request: web.Request) -> web.Response:
    show = get_show(request)
    store = store_for(request.app, show)
    messages = await store.history()
    settings = await store.settings()
    body = {
        "messages": [m.public() for m in messages],
        "pinned": (p.public() if (p := await store.pinned()) else None),
        "slow_mode_s": settings.slow_mode_s,
    }
    vid = viewer_id(request)
    if vid is not None:  # so the page can say so before the viewer types
        author = rules.author_handle(request.app[keys.SECRET], vid)
        body["me"] = {"author": author, **(await store.mod_state(author)).public(_now_ms())}
    return web.json_response(body)


async def post_chat(request: web.Request) -> web.Response:
    show = get_show(request)
    body = await read_json(request, max_bytes=4096)
    store = store_for(request.app, show)
    secret = request.app[keys.SECRET]
    # Hosts and moderators speak with their badge (and no slow mode); viewers as viewers.
    host = is_host(request, show)
    staff = host or identity_of(request).may(show.id, "moderator")
    vid = ensure_viewer(request)
    try:
        message = await store.post(
            author=rules.host_handle(secret, show.id)
            if staff
            else rules.author_handle(secret, vid),
            viewer_id=vid,
            role="host" if host else "moderator" if staff else "viewer",
            text=body.get("text"),
            ip=client_ip(request),
            staff=staff,
        )
    except rules.Refused as exc:
        raise refused(exc) from None
    # (the store published the chat event with the message, in the same script)
    return web.json_response(message.public(), status=201)


async def delete_message(request: web.Request) -> web.Response:
    show = require_role(request, "moderator")
    message_id = request.match_info["id"]
    existed, unpinned = await store_for(request.app, show).delete(message_id)
    if not existed:
        raise ApiError(404, "not_found", f"No chat message {message_id!r} in this show.")
    await publish(request, show, {"type": "chat_deleted", "id": message_id})
    await audit.log(request, show.id, "chat delete", message_id)
    if unpinned:
        await apply_pinned(request.app, show.id, None)
        await publish(request, show, {"type": "pinned", "message": None})
    return web.json_response({"deleted": message_id})


async def post_moderation(request: web.Request) -> web.Response:
    show = require_role(request, "moderator")
    try:
        action = rules.parse_moderation(await read_json(request, max_bytes=1024))
        state = await store_for(request.app, show).moderate(action)
    except rules.Refused as exc:
        raise refused(exc) from None
    await audit.log(request, show.id, f"chat {action.action}", action.author)
    return web.json_response(
        {"author": action.author, "action": action.action, **state.public(_now_ms())}
    )


async def post_pin(request: web.Request) -> web.Response:
    show = require_role(request, "moderator")
    body = await read_json(request, max_bytes=1024)
    message_id = body.get("id", ...)
    if message_id is ... or (message_id is not None and not isinstance(message_id, str)):
        raise ApiError(400, "bad_request", 'Send {"id": "<message id>"} or {"id": null}.')
    try:
        message = await store_for(request.app, show).pin(message_id)
    except rules.Refused as exc:
        raise refused(exc) from None
    public = message.public() if message else None
    await apply_pinned(request.app, show.id, public)
    await publish(request, show, {"type": "pinned", "message": public})
    await audit.log(request, show.id, "pin", message_id or "(unpinned)")
    return web.json_response({"pinned": public})


async def host_pins(app: web.Application, show: ShowConfig, text: str) -> dict:
    """The host says ``text`` in chat and pins it (the run of show's "pin" cue)."""
    store = store_for(app, show)
    try:
        message = await store.post(
            author=rules.host_handle(app[keys.SECRET], show.id),
            name=None,
            role="host",
            text=text,
            ip="cue",
            staff=True,
        )
        pinned = await store.pin(message.id)
    except rules.Refused as exc:
        raise refused(exc) from None
    await app[keys.BUS].publish(show.id, {"type": "chat", "message": message.public()})
    public = pinned.public() if pinned else None
    await apply_pinned(app, show.id, public)
    await app[keys.BUS].publish(show.id, {"type": "pinned", "message": public})
    return public or {}


async def get_settings(request: web.Request) -> web.Response:
    show = require_role(request, "moderator")
    return web.json_response((await store_for(request.app, show).settings()).public())


async def put_settings(request: web.Request) -> web.Response:
    show = require_role(request, "moderator")
    body = await read_json(request, max_bytes=64 * 1024)
    try:
        settings = await store_for(request.app, show).update_settings(body)
    except rules.Refused as exc:
        raise refused(exc) from None
    await publish(request, show, {"type": "chat_settings", "slow_mode_s": settings.slow_mode_s})
    return web.json_response(settings.public())


# --- reactions ------------------------------------------------------------------------


async def post_reaction(request: web.Request) -> web.Response:
    show = get_show(request)
    body = await read_json(request, max_bytes=1024)
    try:
        kind = clean_kind(body)
    except rules.Refused as exc:
        raise refused(exc) from None
    secret = request.app[keys.SECRET]
    ip_hash = hmac.new(secret, client_ip(request).encode(), hashlib.sha256).hexdigest()[:16]
    counted = await request.app[REACTIONS].tap(
        show.id, kind, ensure_viewer(request), ip_hash, int(time.time())
    )
    return web.json_response({"kind": kind, "counted": counted}, status=202)


async def reactions_summary(app: web.Application, show_id: str) -> dict:
    return await app[REACTIONS].summary(show_id, _now_ms())


def _now_ms() -> int:
    return int(time.time() * 1000)


def setup(app: web.Application) -> None:
    async def reactions_ctx(app: web.Application):
        reactions = Reactions(
            app[keys.REDIS], app[keys.BUS].publish, ip_per_s=app[keys.SETTINGS].reactions_ip_limit
        )
        app[REACTIONS] = reactions
        yield
        await reactions.close()

    app.cleanup_ctx.append(reactions_ctx)
    r = app.router
    r.add_get("/api/me", get_me)
    r.add_put("/api/me", put_me)
    r.add_get("/api/shows/{show}/chat", get_chat)
    r.add_post("/api/shows/{show}/chat", post_chat)
    r.add_post("/api/shows/{show}/chat/moderation", post_moderation)
    r.add_post("/api/shows/{show}/chat/pin", post_pin)
    r.add_get("/api/shows/{show}/chat/settings", get_settings)
    r.add_put("/api/shows/{show}/chat/settings", put_settings)
    r.add_delete("/api/shows/{show}/chat/{id}", delete_message)
    r.add_post("/api/shows/{show}/reactions", post_reaction)
