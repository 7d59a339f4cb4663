"""Who is asking: viewers (signed cookie), staff (session cookie or Bearer password),
hosts (Bearer stream key or a staff session).

Tokens are ``payload.signature`` with an HMAC-SHA256 over the payload. The key comes
from ``SHOWROOM_SECRET`` or, when unset, is created once in Redis so that every server
process on one Redis accepts the same cookies.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import time
import uuid

from aiohttp import web

from server import keys
from server.config import ShowConfig
from server.errors import ApiError, not_found, unauthorized

VIEWER_COOKIE = "sr_viewer"
STAFF_COOKIE = "sr_staff"
STAFF_SESSION_S = 12 * 3600
VIEWER_ID: web.RequestKey[str] = web.RequestKey("viewer_id")
VIEWER_NEW: web.RequestKey[bool] = web.RequestKey("viewer_new")


async def load_secret(redis) -> bytes:
    env = os.environ.get("SHOWROOM_SECRET")
    if env:
        return env.encode()
    await redis.set("showroom:secret", secrets.token_hex(32), nx=True)
    value = await redis.get("showroom:secret")
    return value if isinstance(value, bytes) else str(value).encode()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def sign(secret: bytes, payload: str) -> str:
    mac = hmac.new(secret, payload.encode(), hashlib.sha256).digest()[:18]
    return f"{payload}.{_b64(mac)}"


def unsign(secret: bytes, token: str | None) -> str | None:
    if not token or "." not in token or len(token) > 512:
        return None
    payload, _, _sig = token.rpartition(".")
    return payload if hmac.compare_digest(sign(secret, payload), token) else None


def constant_eq(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


# --- viewers ------------------------------------------------------------------------


def viewer_id(request: web.Request) -> str | None:
    """The viewer's id from the signed cookie, or None for a new visitor."""
    if VIEWER_ID in request:
        return request[VIEWER_ID]
    return unsign(request.app[keys.SECRET], request.cookies.get(VIEWER_COOKIE))


def ensure_viewer(request: web.Request) -> str:
    """The viewer's id; a new one is issued (the cookie is set on the response)."""
    vid = viewer_id(request)
    if vid is None:
        vid = uuid.uuid4().hex
        request[VIEWER_ID] = vid
        request[VIEWER_NEW] = True
    return vid


@web.middleware
async def viewer_cookie(request: web.Request, handler):
    response = await handler(request)
    if (
        request.get(VIEWER_NEW)
        and isinstance(response, web.StreamResponse)
        and not response.prepared
    ):
        response.set_cookie(
            VIEWER_COOKIE,
            sign(request.app[keys.SECRET], request[VIEWER_ID]),
            max_age=30 * 86400,
            httponly=True,
            samesite="Lax",
            path="/",
        )
    return response


# --- staff and hosts ----------------------------------------------------------------


def staff_shows_for_password(shows: dict[str, ShowConfig], password: str) -> list[str]:
    return [s.id for s in shows.values() if constant_eq(s.staff_password, password)]


def staff_cookie_value(secret: bytes, show_ids: list[str]) -> str:
    expires = int(time.time()) + STAFF_SESSION_S
    return sign(secret, f"{','.join(show_ids)}|{expires}")


def set_staff_cookie(
    request: web.Request, response: web.StreamResponse, show_ids: list[str]
) -> None:
    response.set_cookie(
        STAFF_COOKIE,
        staff_cookie_value(request.app[keys.SECRET], show_ids),
        max_age=STAFF_SESSION_S,
        httponly=True,
        samesite="Lax",
        path="/",
    )


def staff_shows(request: web.Request) -> list[str]:
    """Shows this request may act on as staff (session cookie or Bearer password)."""
    shows = request.app[keys.SHOWS]
    bearer = _bearer(request)
    if bearer is not None:
        return staff_shows_for_password(shows, bearer)
    payload = unsign(request.app[keys.SECRET], request.cookies.get(STAFF_COOKIE))
    if not payload or "|" not in payload:
        return []
    ids, _, expires = payload.rpartition("|")
    if not expires.isdigit() or int(expires) < time.time():
        return []
    return [i for i in ids.split(",") if i in shows]


def require_staff(request: web.Request, show_id: str | None = None) -> list[str]:
    allowed = staff_shows(request)
    if not allowed or (show_id is not None and show_id not in allowed):
        raise unauthorized("Staff login required.")
    return allowed


def _bearer(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    if header[:7].lower() == "bearer ":
        return header[7:].strip()
    return None


def get_show(request: web.Request, show_id: str | None = None) -> ShowConfig:
    show_id = show_id if show_id is not None else request.match_info.get("show", "")
    show = request.app[keys.SHOWS].get(show_id)
    if show is None:
        raise not_found(f"No show called {show_id!r}.")
    return show


def is_host(request: web.Request, show: ShowConfig) -> bool:
    bearer = _bearer(request)
    if bearer is not None and (
        constant_eq(bearer, show.stream_key) or constant_eq(bearer, show.staff_password)
    ):
        return True
    return show.id in staff_shows(request)


def require_host(request: web.Request, show: ShowConfig) -> None:
    if not is_host(request, show):
        raise unauthorized("Host login or the show's stream key is required.")


def require_role(request: web.Request, role: str, show_id: str | None = None) -> ShowConfig:
    """The show of this request (or ``show_id``), if the caller may act in ``role`` (e.g.
    "moderator") there. Today every host credential and staff session holds every role;
    named staff members with roles narrow this later (403 forbidden for a missing role)."""
    show = get_show(request, show_id)
    if not is_host(request, show):
        raise unauthorized(f"Host or {role} login required.")
    return show


def require_stream_key(request: web.Request, show: ShowConfig) -> None:
    bearer = _bearer(request)
    if bearer is None or not constant_eq(bearer, show.stream_key):
        raise ApiError(
            401,
            "unauthorized",
            "Missing or wrong stream key.",
            {"WWW-Authenticate": 'Bearer realm="whip"'},
        )
