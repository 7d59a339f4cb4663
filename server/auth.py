"""Who is asking: viewers (signed cookie), staff (session cookie or Bearer password),
hosts (Bearer stream key or a staff session), operators (metrics token or staff).

Tokens are ``kind.subject.issued.expires.mac``: an HMAC-SHA256 over all four fields,
so a viewer token can never pass as a staff token (or the other way round), and both
ends of its validity are checked. The key comes from ``SHOWROOM_SECRET`` (at least
``MIN_SECRET_CHARS``) or, when unset, is created once in Redis so that every server
process on one Redis accepts the same cookies.

``identify`` (a middleware) resolves the request's credentials once: a Bearer secret
goes through the failure throttle (``throttle``), a staff cookie names a server-side
session (``sessions``). Route code asks the sync helpers below.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import os
import re
import secrets
import socket
import time
import uuid
from dataclasses import dataclass

from aiohttp import web

from server import audit, keys, roles, sessions, throttle
from server.config import ShowConfig
from server.errors import ApiError, error_response, not_found, unauthorized

VIEWER_COOKIE = "sr_viewer"
STAFF_COOKIE = "sr_staff"
VIEWER = "viewer"
STAFF = "staff"
VIEWER_S = 30 * 86400
STAFF_SESSION_S = sessions.SESSION_S
MIN_SECRET_CHARS = 32
CLOCK_SKEW_S = 60  # a token issued this far in the future still counts (clock drift)
METRICS_TOKEN_ENV = "SHOWROOM_METRICS_TOKEN"
VIEWER_ID: web.RequestKey[str] = web.RequestKey("viewer_id")
VIEWER_NEW: web.RequestKey[bool] = web.RequestKey("viewer_new")
_SUBJECT = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


# --- the signing key ----------------------------------------------------------------


def secret_problem(env: dict[str, str] | None = None) -> str | None:
    """What is wrong with SHOWROOM_SECRET, if it is set and unfit (None: fine or unset)."""
    value = (os.environ if env is None else env).get("SHOWROOM_SECRET")
    if value is not None and len(value) < MIN_SECRET_CHARS:
        return (
            f"SHOWROOM_SECRET must be at least {MIN_SECRET_CHARS} characters "
            f"(got {len(value)}); e.g. python3 -c 'import secrets; print(secrets.token_hex(32))'"
        )
    return None


async def load_secret(redis) -> bytes:
    problem = secret_problem()
    if problem:
        raise ValueError(problem)
    env = os.environ.get("SHOWROOM_SECRET")
    if env:
        return env.encode()
    await redis.set("showroom:secret", secrets.token_hex(32), nx=True)
    value = await redis.get("showroom:secret")
    return value if isinstance(value, bytes) else str(value).encode()


# --- tokens -------------------------------------------------------------------------


def _mac(secret: bytes, body: str) -> str:
    digest = hmac.new(secret, f"showroom-token|{body}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest[:18]).decode()


def issue_token(
    secret: bytes, kind: str, subject: str, ttl_s: int, now: float | None = None
) -> str:
    if not _SUBJECT.match(subject):
        raise ValueError(f"token subject must be URL-safe, got {subject!r}")
    issued = int(time.time() if now is None else now)
    body = f"{kind}.{subject}.{issued}.{issued + ttl_s}"
    return f"{body}.{_mac(secret, body)}"


def read_token(secret: bytes, kind: str, token: str | None, now: float | None = None) -> str | None:
    """The token's subject if it is a valid ``kind`` token right now, else None."""
    if not token or len(token) > 256:
        return None
    parts = token.split(".")
    if len(parts) != 5 or parts[0] != kind:
        return None
    body, mac = token.rpartition(".")[0], parts[4]
    if not hmac.compare_digest(_mac(secret, body), mac):
        return None
    if not (parts[2].isdigit() and parts[3].isdigit()):
        return None
    now = time.time() if now is None else now
    if int(parts[2]) > now + CLOCK_SKEW_S or int(parts[3]) <= now:
        return None
    return parts[1]


def constant_eq(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


# --- cookies ------------------------------------------------------------------------


def https(request: web.Request) -> bool:
    return request.app[keys.SETTINGS].base_url.startswith("https://")


def set_cookie(
    request: web.Request,
    response: web.StreamResponse,
    name: str,
    value: str,
    max_age: int,
    samesite: str = "Lax",
) -> None:
    """Every cookie we set: HttpOnly, whole site, Secure when the public URL is https."""
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        httponly=True,
        samesite=samesite,
        secure=https(request),
        path="/",
    )


def client_ip(request: web.Request) -> str:
    return request.remote or "unknown"


def internal(request: web.Request) -> bool:
    """Sent by another worker process over its Unix socket (a forwarded request, already
    counted by the worker that took it from the client)."""
    sock = request.transport.get_extra_info("socket") if request.transport else None
    return sock is not None and sock.family == socket.AF_UNIX


# --- viewers ------------------------------------------------------------------------


def viewer_id(request: web.Request) -> str | None:
    """The viewer's id from the signed cookie, or None for a new visitor."""
    if VIEWER_ID in request:
        return request[VIEWER_ID]
    return read_token(request.app[keys.SECRET], VIEWER, request.cookies.get(VIEWER_COOKIE))


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
        token = issue_token(request.app[keys.SECRET], VIEWER, request[VIEWER_ID], VIEWER_S)
        set_cookie(request, response, VIEWER_COOKIE, token, VIEWER_S)
    return response


# --- who is asking ------------------------------------------------------------------


@dataclass(frozen=True)
class Identity:
    """The request's credentials, resolved once by ``identify``."""

    staff: tuple[str, ...] = ()  # shows it may act on as staff
    stream_keys: tuple[str, ...] = ()  # shows whose stream key it presented
    operator: bool = False  # the metrics token
    session: sessions.StaffSession | None = None  # the staff cookie's session
    member: str | None = None  # a named staff member (None: the show's owner password)
    roles: tuple[tuple[str, str], ...] = ()  # (show id, role) for a member

    def role_in(self, show_id: str) -> str:
        """The role this identity holds in a show (owner for the shared password)."""
        return dict(self.roles).get(show_id, sessions.OWNER)

    def may(self, show_id: str, capability: str) -> bool:
        if show_id in self.stream_keys and roles.allows("host", capability):
            return True  # whoever holds the stream key is the show's host
        return show_id in self.staff and roles.allows(self.role_in(show_id), capability)


IDENTITY: web.RequestKey[Identity] = web.RequestKey("identity")
NOBODY = Identity()
# Paths that never act on a staff cookie (media authenticates by Bearer only): no session
# lookup, so a WHEP DELETE is not a Redis round trip slower than the peer's own close.
NO_SESSION_PREFIXES = ("/whip/", "/whep/", "/static/")


def _bearer(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    if header[:7].lower() == "bearer ":
        return header[7:].strip()
    return None


def _account(request: web.Request) -> str:
    """Whose secret a Bearer guess is aimed at: the show in the path, else staff at large."""
    show = request.match_info.get("show")
    return f"show:{show}" if show in request.app[keys.SHOWS] else STAFF


def staff_shows_for_password(shows: dict[str, ShowConfig], password: str) -> list[str]:
    return [s.id for s in shows.values() if constant_eq(s.staff_password, password)]


# Verified member passwords, so a script's Bearer "name:password" costs one argon2 check
# per process, not one per request. Keyed by a hash: no password is kept in memory.
_VERIFIED: dict[str, bool] = {}


def _member_key(show: ShowConfig, name: str, password: str) -> str:
    m = show.member(name)
    raw = f"{show.id}|{name}|{m.password_hash if m else ''}|{password}".encode()
    return hashlib.sha256(raw).hexdigest()


def _verify_members(shows: list[ShowConfig], name: str, password: str) -> list[str]:
    ok = []
    for show in shows:
        member = show.member(name)
        if member is None:
            continue
        cache = _member_key(show, name, password)
        if cache not in _VERIFIED:
            if len(_VERIFIED) > 4096:
                _VERIFIED.clear()
            _VERIFIED[cache] = roles.check_password(member.password_hash, password)
        if _VERIFIED[cache]:
            ok.append(show.id)
    return ok


async def member_shows(shows: dict[str, ShowConfig], name: str, password: str) -> list[str]:
    """The shows where ``name`` is a member with this password (argon2, off the loop)."""
    candidates = [s for s in shows.values() if s.member(name) is not None]
    if not candidates or not password:
        return []
    if all(_member_key(s, name, password) in _VERIFIED for s in candidates):
        return _verify_members(candidates, name, password)
    return await asyncio.to_thread(_verify_members, candidates, name, password)


def member_identity(shows: dict[str, ShowConfig], name: str, show_ids: list[str]) -> Identity:
    return Identity(
        staff=tuple(show_ids),
        member=name,
        roles=tuple((s, shows[s].member(name).role) for s in show_ids),
    )


def rate_limited(verdict: throttle.Verdict) -> web.Response:
    return error_response(
        429,
        "rate_limited",
        f"Too many failed attempts; try again in {verdict.retry_after} s.",
        {"Retry-After": verdict.retry_after},
    )


async def _from_bearer(request: web.Request, bearer: str) -> Identity | web.Response:
    shows = request.app[keys.SHOWS]
    name, sep, password = bearer.partition(":")
    if sep and any(s.member(name) for s in shows.values()):  # "name:password", a member
        granted = await member_shows(shows, name, password)
        if internal(request):
            return member_identity(shows, name, granted)
        verdict = await throttle.attempt(
            request.app[keys.REDIS],
            request.app[keys.SETTINGS].throttle,
            client_ip(request),
            f"member:{name}",
            ok=bool(granted),
            mirror=request.app.get(throttle.MIRROR),
        )
        if verdict.locked:
            return rate_limited(verdict)
        return member_identity(shows, name, granted) if granted else NOBODY
    staff = tuple(staff_shows_for_password(shows, bearer))
    keyed = tuple(s.id for s in shows.values() if constant_eq(s.stream_key, bearer))
    metrics_token = os.environ.get(METRICS_TOKEN_ENV)
    operator = bool(metrics_token) and constant_eq(bearer, metrics_token or "")
    if internal(request):
        return Identity(staff=staff, stream_keys=keyed, operator=operator)
    verdict = await throttle.attempt(
        request.app[keys.REDIS],
        request.app[keys.SETTINGS].throttle,
        client_ip(request),
        _account(request),
        ok=bool(staff or keyed or operator),
        mirror=request.app.get(throttle.MIRROR),
    )
    if verdict.locked:
        return rate_limited(verdict)
    return Identity(staff=staff, stream_keys=keyed, operator=operator)


async def _from_cookie(request: web.Request, token: str) -> Identity:
    secret = request.app[keys.SECRET]
    session_id = read_token(secret, STAFF, token)
    if session_id is None:
        return NOBODY
    session = await sessions.load(request.app[keys.REDIS], session_id)
    if session is None:
        return NOBODY
    valid = sessions.valid_shows(session, secret, request.app[keys.SHOWS])
    return Identity(
        staff=valid,
        session=session,
        member=session.member,
        roles=tuple((s, session.role_in(s)) for s in valid) if session.member else (),
    )


@web.middleware
async def identify(request: web.Request, handler):
    bearer = _bearer(request)
    identity = NOBODY
    if bearer is not None:
        resolved = await _from_bearer(request, bearer)
        if isinstance(resolved, web.Response):
            return resolved
        identity = resolved
    elif STAFF_COOKIE in request.cookies and not request.path.startswith(NO_SESSION_PREFIXES):
        identity = await _from_cookie(request, request.cookies[STAFF_COOKIE])
    request[IDENTITY] = identity
    if identity.member:
        request[audit.ACTOR] = identity.member
    return await handler(request)


def identity(request: web.Request) -> Identity:
    return request.get(IDENTITY, NOBODY)


# --- staff and hosts ----------------------------------------------------------------


async def start_staff_session(
    request: web.Request,
    response: web.StreamResponse,
    show_ids: list[str],
    member: str | None = None,
) -> sessions.StaffSession:
    shows = request.app[keys.SHOWS]
    session = await sessions.create(
        request.app[keys.REDIS],
        request.app[keys.SECRET],
        [shows[s] for s in show_ids],
        member=member,
    )
    token = issue_token(request.app[keys.SECRET], STAFF, session.id, STAFF_SESSION_S)
    set_cookie(request, response, STAFF_COOKIE, token, STAFF_SESSION_S)
    return session


async def end_staff_session(request: web.Request, response: web.StreamResponse) -> None:
    session = identity(request).session
    if session is not None:
        await sessions.end(request.app[keys.REDIS], session.id)
    response.del_cookie(STAFF_COOKIE, path="/")


def staff_shows(request: web.Request) -> list[str]:
    """Shows this request may act on as staff (session cookie or Bearer password)."""
    return list(identity(request).staff)


def forbidden(detail: str) -> ApiError:
    return ApiError(403, "forbidden", detail)


def require_staff(
    request: web.Request, show_id: str | None = None, capability: str = "floor"
) -> list[str]:
    """Shows (or ``show_id``) whose orders this caller may work on: 401 when not logged in
    there, 403 when logged in with a role that does not include ``capability``."""
    who = identity(request)
    logged_in = list(who.staff)
    if not logged_in or (show_id is not None and show_id not in logged_in):
        raise unauthorized("Staff login required.")
    allowed = [s for s in logged_in if who.may(s, capability)]
    if not allowed or (show_id is not None and show_id not in allowed):
        raise forbidden(f"Your role ({who.role_in(show_id or logged_in[0])}) cannot do this.")
    return allowed


def is_staff(request: web.Request, show: ShowConfig) -> bool:
    """Any staff role in the show, or its stream key (e.g. to see every order event)."""
    who = identity(request)
    return show.id in who.staff or show.id in who.stream_keys


def is_operator(request: web.Request) -> bool:
    """Operations data (/metrics, media figures): the metrics token or any staff."""
    who = identity(request)
    return who.operator or bool(who.staff)


def require_operator(request: web.Request) -> None:
    if not is_operator(request):
        raise unauthorized(f"Send Authorization: Bearer ${METRICS_TOKEN_ENV}, or log in as staff.")


def get_show(request: web.Request, show_id: str | None = None) -> ShowConfig:
    show_id = show_id if show_id is not None else request.match_info.get("show", "")
    show = request.app[keys.SHOWS].get(show_id)
    if show is None:
        raise not_found(f"No show called {show_id!r}.")
    return show


def is_host(request: web.Request, show: ShowConfig) -> bool:
    return identity(request).may(show.id, "host")


def require_host(request: web.Request, show: ShowConfig) -> None:
    require_role(request, "host", show.id)


def require_role(request: web.Request, capability: str, show_id: str | None = None) -> ShowConfig:
    """The show of this request (or ``show_id``), if the caller may ``capability`` there
    (``roles.CAPABILITIES``): 401 when not logged in for the show, 403 when the role
    does not include it."""
    show = get_show(request, show_id)
    who = identity(request)
    if not is_staff(request, show):
        raise unauthorized(
            f"Log in as staff of this show (or send its stream key) to {capability}."
        )
    if not who.may(show.id, capability):
        raise forbidden(
            f"Your role ({who.role_in(show.id)}) cannot do this: it takes the {capability} right."
        )
    return show


def require_stream_key(request: web.Request, show: ShowConfig) -> None:
    if show.id not in identity(request).stream_keys:
        raise ApiError(
            401,
            "unauthorized",
            "Missing or wrong stream key.",
            {"WWW-Authenticate": 'Bearer realm="whip"'},
        )
