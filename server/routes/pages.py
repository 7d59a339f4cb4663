"""HTML pages (Jinja2 templates from ``web/``), static files, staff login, product images.

Pages hold no business rules: they render the page shell plus a small JSON blob of what
the page's script needs, and the script talks to the JSON API like any other client.
"""

from __future__ import annotations

import asyncio
import functools
import re
from pathlib import Path
from urllib.parse import quote, urlsplit

import jinja2
from aiohttp import web

from checkout.keys import ORDER_ID_MAX
from checkout.orders import load_order
from overlays.layout import make_layout
from server import auth, edges, keys, presence, security, throttle
from server.config import ShowConfig
from web.placeholder import product_png

WEB_DIR = Path(__file__).resolve().parents[2] / "web"
TEMPLATES: web.AppKey[jinja2.Environment] = web.AppKey("templates")
IMAGE_CACHE: web.AppKey[dict[tuple[str, str], bytes]] = web.AppKey("product_images")

# Everything the pages load comes from this origin; Stripe.js only with real keys.
_CSP_BASE = (
    "default-src 'self'; img-src 'self' data: blob:; media-src 'self' blob:; "
    "style-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; "
    "form-action 'self'"
)
_CSP_SANDBOX = _CSP_BASE + "; script-src 'self'; connect-src 'self'"


@functools.cache
def _csp_stripe(js_url: str) -> str:
    """Live mode: Stripe.js from its origin (STRIPE_JS_URL), which also frames its card
    fields and calls its API; hooks.stripe.com frames 3-D Secure."""
    origin = origin_of(js_url)
    return (
        f"{_CSP_BASE}; script-src 'self' {origin}; frame-src {origin} https://hooks.stripe.com; "
        f"connect-src 'self' https://api.stripe.com {origin}"
    )


def live_stripe_js(app: web.Application) -> str | None:
    """Stripe.js's URL when the payment gateway is live (real keys); None in sandbox mode,
    whose card forms post test cards to this server."""
    com = app[keys.EXTRA].get("commerce")
    setup = com.stripe if com is not None else None
    return setup.js_url if setup is not None and not setup.sandbox else None


def render(
    request: web.Request,
    name: str,
    status: int = 200,
    headers: dict | None = None,
    connect: tuple[str, ...] = (),
    **context,
) -> web.Response:
    """A page; ``csrf`` in the template is the token its login/logout form posts back;
    ``connect``: other origins the page may call (a WHEP service it plays from)."""
    env = request.app[TEMPLATES]
    context.setdefault("rehearsal", request.app[keys.SETTINGS].rehearsal)
    csrf = security.form_token(request)
    html = env.get_template(name).render(request=request, csrf=csrf, **context)
    stripe_js = live_stripe_js(request.app)
    csp = _csp_stripe(stripe_js) if stripe_js else _CSP_SANDBOX
    # WHEP may be sent to an edge, or to the show's playback service.
    if extra := " ".join([*edges.connect_sources(request.app), *connect]):
        csp = csp.replace("connect-src 'self'", f"connect-src 'self' {extra}")
    response = web.Response(
        text=html,
        status=status,
        content_type="text/html",
        headers={
            "Cache-Control": "no-store",
            "Content-Security-Policy": csp,
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "same-origin",
            **(headers or {}),
        },
    )
    security.set_form_cookie(request, response)
    return response


# A path on this site: one leading slash, then printable ASCII without spaces or
# backslashes. Browsers drop tabs and newlines from URLs, so "/\t/evil.example" would
# become "//evil.example", another site; such characters are refused, not stripped.
_LOCAL_PATH = re.compile(r"^/(?![/\\])[\x21-\x5b\x5d-\x7e]*$")


def safe_next(value: str | None) -> str:
    """Where to go after login: only a path on this site, never anywhere else."""
    if not value or not _LOCAL_PATH.match(value):
        return "/staff"
    return value


def login_redirect(request: web.Request) -> web.HTTPFound:
    return web.HTTPFound(f"/login?next={quote(request.path_qs, safe='')}")


def page_show(request: web.Request) -> ShowConfig:
    show = request.app[keys.SHOWS].get(request.match_info.get("show", ""))
    if show is None:
        raise web.HTTPNotFound(text="No such show.")
    return show


def show_summary(show: ShowConfig) -> dict:
    return {"id": show.id, "title": show.title, "currency": show.currency}


# --- login --------------------------------------------------------------------------


async def login_form(request: web.Request) -> web.Response:
    return render(request, "login.html", next=safe_next(request.query.get("next")), error=None)


def _login_page(request: web.Request, nxt: str, status: int, error: str, **kw) -> web.Response:
    return render(request, "login.html", status=status, next=nxt, error=error, **kw)


async def login_submit(request: web.Request) -> web.Response:
    form = await request.post()
    nxt = safe_next(str(form.get("next", "")))
    if not security.form_token_ok(request, form.get(security.CSRF_FIELD)):
        return _login_page(request, nxt, 403, "This form had expired. Please log in again.")
    password = str(form.get("password", ""))
    name = str(form.get("name", "")).strip()[:32]
    shows = request.app[keys.SHOWS]
    if name:  # a named staff member
        show_ids = await auth.member_shows(shows, name, password)
    else:  # the show's shared staff password: the owner
        show_ids = auth.staff_shows_for_password(shows, password) if password else []
    verdict = await throttle.attempt(
        request.app[keys.REDIS],
        request.app[keys.SETTINGS].throttle,
        auth.client_ip(request),
        f"member:{name}" if name else auth.STAFF,
        ok=bool(show_ids),
        mirror=request.app.get(throttle.MIRROR),
    )
    if verdict.locked:
        return _login_page(
            request,
            nxt,
            429,
            f"Too many failed attempts. Wait {verdict.retry_after} seconds, then try again.",
            headers={"Retry-After": verdict.retry_after},
        )
    if not show_ids:
        wrong = "That name and password do not match." if name else "That password is not right."
        return _login_page(request, nxt, 401, wrong)
    resp = web.HTTPFound(nxt)
    await auth.start_staff_session(request, resp, show_ids, member=name or None)
    raise resp


async def logout(request: web.Request) -> web.Response:
    form = await request.post()
    if not security.form_token_ok(request, form.get(security.CSRF_FIELD)):
        raise web.HTTPForbidden(text="This form had expired; reload the page and try again.")
    resp = web.HTTPFound("/login")
    await auth.end_staff_session(request, resp)
    raise resp


# --- pages --------------------------------------------------------------------------


def picture_boxes(show: ShowConfig) -> dict[str, dict[str, float]]:
    """Where the product card and its QR code sit in the composed picture, as fractions
    of the frame: the page keeps its chat and buttons off them."""
    lay = make_layout(show.video.width, show.video.height)
    w, h = lay.width, lay.height
    return {
        name: {"x": b.x / w, "y": b.y / h, "w": b.w / w, "h": b.h / h}
        for name, b in (("card", lay.card), ("qr", lay.qr))
    }


async def share_tags(request: web.Request, show: ShowConfig) -> dict[str, str]:
    """Open Graph / Twitter card: title, picture, and whether it is live or when it starts."""
    base = request.app[keys.SETTINGS].base_url.rstrip("/")
    try:
        live, _ = await presence.read(request.app[keys.REDIS], show.id)
    except Exception:  # Redis away: the page still renders, the tags just say less
        live = False
    if live:
        description = f"Live now: shop {show.title} as it happens."
    elif show.starts_at:
        when = show.starts_at.strftime("%a %d %b %Y, %H:%M %Z").strip()
        description = f"Live shopping show, starting {when}."
    else:
        description = "Live shopping show: watch, chat and buy in the stream."
    if show.description:
        description = f"{description} {show.description}"
    sku = show.products[0].sku if show.products else ""
    if show.cover:
        image = f"{base}/media/covers/{quote(show.id)}"
    else:
        image = f"{base}/media/products/{quote(show.id)}/{quote(sku)}.png" if sku else ""
    return {
        "title": f"{'LIVE · ' if live else ''}{show.title}",
        "description": description,
        "url": f"{base}/shows/{quote(show.id)}",
        "image": image,
    }


async def viewer_page(request: web.Request) -> web.Response:
    show = page_show(request)
    settings = request.app[keys.SETTINGS]
    stripe_js = live_stripe_js(request.app)
    data = {
        **show_summary(show),
        # The card forms' mode is the payment gateway's: test cards posted here (sandbox),
        # or Stripe.js Elements (live), loaded from stripe_js_url.
        "sandbox": stripe_js is None,
        "stripe_js_url": stripe_js,
        "hold_seconds": settings.hold_seconds,
        "payment_timeout_s": settings.payment_timeout_s,
        "pickup_note": show.pickup_note,
        "highlight": request.query.get("sku") or None,
        "picture": picture_boxes(show),
        "video": {"width": show.video.width, "height": show.video.height},
        # Play from another WHEP service when the manifest says so (API.md [show.playback]).
        "playback_whep_url": show.playback_whep_url,
        "ice_servers": [s.browser() for s in show.ice_servers],
    }
    og = await share_tags(request, show)
    playback = show.playback_whep_url
    connect = (origin_of(playback),) if playback else ()
    return render(request, "viewer.html", connect=connect, show=show, data=data, og=og)


def origin_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


async def host_page(request: web.Request) -> web.Response:
    show = page_show(request)
    # Only the show's hosts: the page carries the stream key for going live.
    if show.id not in auth.staff_shows(request):
        raise login_redirect(request)
    if not auth.is_host(request, show):
        return role_page(request, "the host page", "host")
    data = {
        **show_summary(show),
        "stream_key": show.stream_key,
        "products": [
            {"sku": p.sku, "name": p.name, "price": f"{p.price:.2f}", "stock": p.stock}
            for p in show.products
        ],
        "ice_servers": [s.browser() for s in show.ice_servers],
    }
    return render(request, "host.html", show=show, data=data)


def role_page(request: web.Request, what: str, needs: str) -> web.Response:
    """A clear page (403) for a logged-in member whose role does not cover ``what``."""
    return render(request, "forbidden.html", status=403, what=what, needs=needs)


def floor_shows(request: web.Request) -> list[str]:
    who = auth.identity(request)
    return [s for s in auth.staff_shows(request) if who.may(s, "floor")]


async def staff_page(request: web.Request) -> web.Response:
    if not auth.staff_shows(request):
        raise login_redirect(request)
    allowed = floor_shows(request)
    if not allowed:
        return role_page(request, "the order queue", "floor, cashier or host")
    shows = [request.app[keys.SHOWS][s] for s in allowed]
    data = {"shows": [show_summary(s) for s in shows]}
    return render(request, "staff.html", shows=shows, data=data)


async def staff_order_page(request: web.Request) -> web.Response:
    order_id = request.match_info["order_id"]
    if not auth.staff_shows(request):
        raise login_redirect(request)
    allowed = floor_shows(request)
    order = None
    if len(order_id) <= ORDER_ID_MAX:
        order = await load_order(request.app[keys.REDIS], order_id)
    # An order of a show this login does not cover is treated as not found: staff of
    # one show learn nothing about another show's buyers.
    if order is None or order.show not in allowed:
        return render(request, "not_found.html", status=404, what="order")
    show = request.app[keys.SHOWS][order.show]
    public = order.public()
    return render(
        request,
        "staff_order.html",
        order=public,
        show=show,
        data={"order_id": order.order_id, "show": order.show, "currency": order.currency},
    )


# --- product images -----------------------------------------------------------------


async def product_image(request: web.Request) -> web.Response:
    show = request.app[keys.SHOWS].get(request.match_info["show"])
    product = show.product(request.match_info["sku"]) if show else None
    if show is None or product is None:
        raise web.HTTPNotFound(text="No such product.")
    cache = request.app[IMAGE_CACHE]
    key = (show.id, product.sku)
    body = cache.get(key)
    if body is None:
        # Pillow work (decode, draw, encode) happens once per product, off the event loop.
        body = await asyncio.to_thread(product_png, product.name, product.sku, product.image)
        cache[key] = body
    return web.Response(
        body=body,
        content_type="image/png",
        headers={"Cache-Control": "public, max-age=300", "X-Content-Type-Options": "nosniff"},
    )


def setup(app: web.Application) -> None:
    app[TEMPLATES] = jinja2.Environment(
        loader=jinja2.FileSystemLoader(WEB_DIR / "templates"),
        autoescape=jinja2.select_autoescape(["html"], default=True),
    )
    app[IMAGE_CACHE] = {}
    app.router.add_get("/login", login_form)
    app.router.add_post("/login", login_submit)
    app.router.add_post("/logout", logout)
    app.router.add_get("/shows/{show}", viewer_page)
    app.router.add_get("/shows/{show}/host", host_page)
    app.router.add_get("/staff", staff_page)
    app.router.add_get("/staff/orders/{order_id}", staff_order_page)
    app.router.add_get("/media/products/{show}/{sku}.png", product_image)
    static = app.router.add_static(
        "/static", WEB_DIR / "static", append_version=True, name="static"
    )
    # Versioned URLs (?v=hash): browsers may cache assets, a new deploy still loads fresh.
    app[TEMPLATES].globals["static"] = lambda filename: str(static.url_for(filename=filename))
