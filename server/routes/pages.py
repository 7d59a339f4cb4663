"""HTML pages (Jinja2 templates from ``web/``), static files, staff login."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

import jinja2
from aiohttp import web

from server import auth, keys

WEB_DIR = Path(__file__).resolve().parents[2] / "web"
TEMPLATES: web.AppKey[jinja2.Environment] = web.AppKey("templates")


def render(request: web.Request, name: str, status: int = 200, **context) -> web.Response:
    env = request.app[TEMPLATES]
    html = env.get_template(name).render(request=request, **context)
    return web.Response(
        text=html, status=status, content_type="text/html", headers={"Cache-Control": "no-store"}
    )


def safe_next(value: str | None) -> str:
    # Only same-site paths: never redirect a logged-in staff member off-site.
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return "/staff"
    return value


def login_redirect(request: web.Request) -> web.HTTPFound:
    return web.HTTPFound(f"/login?next={quote(request.path_qs, safe='')}")


async def login_form(request: web.Request) -> web.Response:
    return render(request, "login.html", next=safe_next(request.query.get("next")), error=None)


async def login_submit(request: web.Request) -> web.Response:
    form = await request.post()
    password = str(form.get("password", ""))
    nxt = safe_next(str(form.get("next", "")))
    show_ids = auth.staff_shows_for_password(request.app[keys.SHOWS], password) if password else []
    if not show_ids:
        return render(
            request, "login.html", status=401, next=nxt, error="That password is not right."
        )
    resp = web.HTTPFound(nxt)
    auth.set_staff_cookie(request, resp, show_ids)
    raise resp


async def logout(request: web.Request) -> web.Response:
    resp = web.HTTPFound("/login")
    resp.del_cookie(auth.STAFF_COOKIE, path="/")
    raise resp


def setup(app: web.Application) -> None:
    app[TEMPLATES] = jinja2.Environment(
        loader=jinja2.FileSystemLoader(WEB_DIR / "templates"),
        autoescape=jinja2.select_autoescape(["html"], default=True),
    )
    app.router.add_get("/login", login_form)
    app.router.add_post("/login", login_submit)
    app.router.add_post("/logout", logout)
    app.router.add_static("/static", WEB_DIR / "static", append_version=True)
