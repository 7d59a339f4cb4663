"""A show's life around the live part: the show list, reminders, the calendar file, the
"starting soon" page, the buyer's order page that works on any device, and the email
outbox worker.
"""

from __future__ import annotations

import asyncio
import logging
import mimetypes
from datetime import UTC, datetime, timedelta

from aiohttp import web

from checkout.keys import ORDER_ID_MAX
from checkout.orders import load_order
from media import tasks
from server import keys, links, presence
from server.config import ShowConfig
from server.errors import bad_request, not_found, read_json
from server.mail import reminders
from server.mail.delivery import Mailer
from server.mail.messages import valid_email
from server.mail.outbox import Outbox
from server.routes.pages import page_show, render, show_summary
from server.routes.recordings import show_recordings

log = logging.getLogger("showroom.schedule")

MAILER: web.AppKey[Mailer] = web.AppKey("mailer")
REMINDER_SWEEP_S = 2.0


def iso(dt: datetime | None) -> str | None:
    return dt.astimezone(UTC).isoformat().replace("+00:00", "Z") if dt else None


def ended_key(show_id: str) -> str:
    return f"show:{show_id}:ended_at"


def phase(show: ShowConfig, live: bool, has_ended: bool, now: datetime) -> str:
    """Pure: where a show is in its life, for the show list."""
    if live:
        return "live"
    if show.starts_at is not None and show.starts_at > now:
        return "upcoming"
    if has_ended or show.starts_at is not None:
        return "past"
    return "upcoming"  # never live and not scheduled: announced without a time


async def list_shows(app: web.Application) -> list[dict]:
    if app[keys.SETTINGS].rehearsal:
        return []  # a rehearsal is unlisted: only those with the link find it
    redis = app[keys.REDIS]
    now = datetime.now(UTC)
    out = []
    for show in app[keys.SHOWS].values():
        live, viewers = await presence.read(redis, show.id)
        has_ended = bool(await redis.exists(ended_key(show.id)))
        replays = sum(1 for rec in await show_recordings(redis, show.id) if rec.ended_at)
        out.append(
            {
                "id": show.id,
                "title": show.title,
                "description": show.description,
                "live": live,
                "viewers": viewers,
                "starts_at": iso(show.starts_at),
                "cover_url": f"/media/covers/{show.id}" if show.cover else None,
                "replays": replays,
                "phase": phase(show, live, has_ended, now),
            }
        )
    far = datetime.max.replace(tzinfo=UTC)
    out.sort(key=lambda s: (s["starts_at"] or iso(far), s["title"].lower()))
    return out


async def api_shows(request: web.Request) -> web.Response:
    return web.json_response({"shows": await list_shows(request.app)})


async def index(request: web.Request) -> web.Response:
    shows = await list_shows(request.app)
    groups = {p: [s for s in shows if s["phase"] == p] for p in ("live", "upcoming", "past")}
    groups["past"].reverse()  # newest first
    return render(request, "index.html", groups=groups, any_show=bool(shows))


# --- reminders ----------------------------------------------------------------------


async def add_reminder(request: web.Request) -> web.Response:
    show = request.app[keys.SHOWS].get(request.match_info["show"])
    if show is None:
        raise not_found("No such show.")
    body = await read_json(request)
    email = body.get("email")
    if not isinstance(email, str) or not valid_email(email.strip()):
        raise bad_request("Enter an email address like ana@example.com.")
    email = email.strip().lower()
    redis = request.app[keys.REDIS]
    live, _ = await presence.read(redis, show.id)
    if not await reminders.subscribe(redis, show.id, email, live=live):
        raise bad_request("That address is already on the list for this show.")
    return web.json_response({"email": email, "live": live}, status=202)


async def unsubscribe(request: web.Request) -> web.Response:
    show = page_show(request)
    email = request.query.get("email", "")
    token = request.query.get("t")
    secret = request.app[keys.SECRET]
    if not links.check_unsubscribe_token(secret, show.id, email, token):
        return render(request, "not_found.html", status=404, what="reminder")
    done = False
    if request.method == "POST":
        await reminders.unsubscribe(request.app[keys.REDIS], show.id, email.lower())
        done = True
    return render(
        request, "unsubscribe.html", show=show, email=email, done=done, action=request.path_qs
    )


# --- calendar -----------------------------------------------------------------------


def ics_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace(";", r"\;").replace(",", r"\,").replace("\n", r"\n")


def calendar_ics(show: ShowConfig, url: str, now: datetime) -> str:
    """Pure: an RFC 5545 calendar with the show as one hour-long event."""
    assert show.starts_at is not None
    fmt = "%Y%m%dT%H%M%SZ"
    start = show.starts_at.astimezone(UTC)
    lines = [
        "BEGIN:VCALENDAR",
        "VERSION:2.0",
        "PRODID:-//Showroom//Live shows//EN",
        "CALSCALE:GREGORIAN",
        "METHOD:PUBLISH",
        "BEGIN:VEVENT",
        f"UID:{show.id}-{start.strftime(fmt)}@showroom",
        f"DTSTAMP:{now.astimezone(UTC).strftime(fmt)}",
        f"DTSTART:{start.strftime(fmt)}",
        f"DTEND:{(start + timedelta(hours=1)).strftime(fmt)}",
        f"SUMMARY:{ics_escape(show.title)}",
        f"DESCRIPTION:{ics_escape((show.description + chr(10) + chr(10)).lstrip() + url)}",
        f"URL:{url}",
        "END:VEVENT",
        "END:VCALENDAR",
    ]
    return "\r\n".join(lines) + "\r\n"


async def calendar(request: web.Request) -> web.Response:
    show = page_show(request)
    if show.starts_at is None:
        raise web.HTTPNotFound(text="This show has no start time yet.")
    url = f"{request.app[keys.SETTINGS].base_url}/shows/{show.id}"
    return web.Response(
        text=calendar_ics(show, url, datetime.now(UTC)),
        content_type="text/calendar",
        headers={"Content-Disposition": f'attachment; filename="{show.id}.ics"'},
    )


# --- pages --------------------------------------------------------------------------


async def soon_page(request: web.Request) -> web.Response:
    show = page_show(request)
    data = {**show_summary(show), "starts_at": iso(show.starts_at)}
    return render(request, "soon.html", show=show, data=data, starts_at=iso(show.starts_at))


async def order_page(request: web.Request) -> web.Response:
    order_id = request.match_info["order_id"]
    token = request.query.get("t")
    secret = request.app[keys.SECRET]
    order = None
    if len(order_id) <= ORDER_ID_MAX and links.check_order_token(secret, order_id, token):
        order = await load_order(request.app[keys.REDIS], order_id)
    if order is None:
        return render(request, "not_found.html", status=404, what="order")
    show = request.app[keys.SHOWS].get(order.show)
    data = {"order_id": order.order_id, "token": token, "show": order.show}
    return render(
        request,
        "order.html",
        order=order.public(),
        show=show,
        pickup_note=show.pickup_note if show else "",
        data=data,
    )


async def cover_image(request: web.Request) -> web.Response:
    show = request.app[keys.SHOWS].get(request.match_info["show"])
    if show is None or show.cover is None:
        raise web.HTTPNotFound(text="No cover image.")
    body = await asyncio.to_thread(show.cover.read_bytes)
    ctype = mimetypes.guess_type(show.cover.name)[0] or "application/octet-stream"
    return web.Response(
        body=body,
        content_type=ctype,
        headers={"Cache-Control": "public, max-age=300", "X-Content-Type-Options": "nosniff"},
    )


# --- lifecycle ----------------------------------------------------------------------


def _track_endings(app: web.Application):
    """Remember that a show has been live and ended, for the show list's "past"."""

    def on_event(show_id: str, event: dict) -> None:
        if event.get("type") == "live" and event.get("live") is False:
            redis = app[keys.REDIS]
            task = asyncio.get_running_loop().create_task(
                redis.set(ended_key(show_id), int(event.get("ts") or 0))
            )
            task.add_done_callback(lambda t: t.exception())

    return on_event


def setup(app: web.Application) -> None:
    async def mail_ctx(app: web.Application):
        settings = app[keys.SETTINGS]
        redis = app[keys.REDIS]
        mailer = Mailer(
            redis=redis,
            shows=app[keys.SHOWS],
            base_url=settings.base_url,
            secret=app[keys.SECRET],
            mail_dir=settings.data_dir / "mail",
            sandbox=settings.sandbox,
        )
        app[MAILER] = mailer
        no_smtp = [s.id for s in app[keys.SHOWS].values() if s.email is None]
        if no_smtp:
            log.info(
                "no [email] in the manifest of %s: emails are written to %s",
                ", ".join(no_smtp),
                mailer.mail_dir.resolve(),
            )

        async def release_due() -> None:
            for show in app[keys.SHOWS].values():
                live, _ = await presence.read(redis, show.id)
                if live and await reminders.pending(redis, show.id):
                    n = await reminders.release(redis, show.id)
                    log.info("%s is live: %d reminder(s) queued", show.id, n)

        outbox = Outbox(
            redis,
            mailer.deliver,
            consumer=presence.PROCESS_ID,
            shows=list(app[keys.SHOWS]),
            on_idle=release_due,
        )
        app[keys.BUS].add_listener(None, _track_endings(app))
        task = asyncio.create_task(outbox.run(), name="mail-outbox")
        yield
        await tasks.stop(task)

    app.cleanup_ctx.append(mail_ctx)
    r = app.router
    r.add_get("/", index)
    r.add_get("/api/shows", api_shows)
    r.add_post("/api/shows/{show}/reminders", add_reminder)
    r.add_get("/shows/{show}/calendar.ics", calendar)
    r.add_get("/shows/{show}/soon", soon_page)
    r.add_route("*", "/shows/{show}/reminders/unsubscribe", unsubscribe)
    r.add_get("/orders/{order_id}", order_page)
    r.add_get("/media/covers/{show}", cover_image)
