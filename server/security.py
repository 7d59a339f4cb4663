"""Cross-site request checks, form tokens and the security headers of every answer.

A state-changing request that carries a cookie must come from our own pages: a browser
says where a request comes from (``Sec-Fetch-Site``, else ``Origin``), and anything but
same-origin is refused with 403. A request with neither header is not from a browser
(browsers send ``Origin`` on every cross-origin POST/PUT/PATCH/DELETE) and passes; one
without a cookie acts for nobody and passes too. WHIP and WHEP are exempt: API.md opens
them to cross-origin players (CORS ``*``), and their only credential is a Bearer key a
cross-site page does not have. JSON bodies under ``/api/`` must say
``application/json``: a plain form cannot send that without a CORS preflight.

The login and logout forms also carry a token bound to a cookie of their own
(``sr_csrf``, SameSite=Strict).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from urllib.parse import urlsplit

from aiohttp import web

from server import auth, keys
from server.errors import error_response

UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
EXEMPT_PREFIXES = ("/whip/", "/whep/", "/webhooks/")
SAME_ORIGIN = frozenset({"same-origin", "none"})  # none: typed in the address bar
CSRF_COOKIE = "sr_csrf"
CSRF_FIELD = "csrf"
HSTS = "max-age=31536000; includeSubDomains"


def _origin_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()


def cross_site(request: web.Request) -> bool:
    """True when a browser sent this cookie-carrying, state-changing request from
    another origin (a same-site page on another port counts as another origin)."""
    if request.method not in UNSAFE_METHODS or "Cookie" not in request.headers:
        return False
    if request.path.startswith(EXEMPT_PREFIXES):
        return False
    site = request.headers.get("Sec-Fetch-Site")
    if site is not None:
        return site.lower() not in SAME_ORIGIN
    origin = request.headers.get("Origin")
    if origin is None:
        return False
    origin = origin.lower()
    public = _origin_of(request.app[keys.SETTINGS].base_url)
    return origin != public and urlsplit(origin).netloc != request.host.lower()


def _json_type(request: web.Request) -> bool:
    ctype = request.content_type.lower()
    return ctype == "application/json" or ctype.endswith("+json")


@web.middleware
async def same_origin(request: web.Request, handler):
    if cross_site(request):
        return error_response(
            403, "forbidden", "Cross-site request refused: use the page on this site."
        )
    if (
        request.method in UNSAFE_METHODS
        and request.path.startswith("/api/")
        and request.body_exists
        and not _json_type(request)
    ):
        return error_response(415, "bad_request", "Content-Type must be application/json.")
    return await handler(request)


async def security_headers(request: web.Request, response: web.StreamResponse) -> None:
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    if auth.https(request):
        response.headers.setdefault("Strict-Transport-Security", HSTS)


# --- form tokens --------------------------------------------------------------------


def _form_token(request: web.Request, binding: str) -> str:
    mac = hmac.new(request.app[keys.SECRET], f"csrf|{binding}".encode(), hashlib.sha256)
    return base64.urlsafe_b64encode(mac.digest()[:18]).decode()


CSRF_NEW: web.RequestKey[str] = web.RequestKey("csrf_new")


def form_token(request: web.Request) -> str:
    """The token for a form on this page (``set_form_cookie`` then binds it)."""
    binding = request.get(CSRF_NEW) or request.cookies.get(CSRF_COOKIE, "")
    if len(binding) < 16:
        binding = request[CSRF_NEW] = secrets.token_urlsafe(18)
    return _form_token(request, binding)


def set_form_cookie(request: web.Request, response: web.StreamResponse) -> None:
    if CSRF_NEW in request:
        auth.set_cookie(request, response, CSRF_COOKIE, request[CSRF_NEW], 30 * 86400, "Strict")


def form_token_ok(request: web.Request, token: object) -> bool:
    binding = request.cookies.get(CSRF_COOKIE, "")
    if len(binding) < 16 or not isinstance(token, str):
        return False
    return hmac.compare_digest(_form_token(request, binding), token)


def setup(app: web.Application) -> None:
    app.on_response_prepare.append(security_headers)
