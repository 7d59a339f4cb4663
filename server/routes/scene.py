"""The on-screen scene of each show, kept in step with the show's live events.

- Each show gets an ``overlays.scene.Scene`` at setup (the compositor looks it up at its
  own startup under ``app[keys.EXTRA]["scenes"]``).
- A bus interceptor per show applies ``featured``/``stock``/``drop``/``ticker``/
  ``viewers``/``live`` events to the scene, and re-emits ``featured``/``drop``/``stock``
  locally with ``media_ts``: the ``now_ms`` of the first composed frame showing the
  change (or the current time when no compositor is running in this process).
- At startup the scene is loaded from the show state (featured product, availability,
  running drop, ticker, pinned chat message).
- ``POST /api/shows/{show}/ticker`` sets the host's message line; the feature endpoint
  calls ``apply_featured`` so the card is rendered before the API answers.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
from decimal import Decimal, InvalidOperation

from aiohttp import web

from overlays.layers import AuctionInfo, DropInfo, PinnedInfo
from overlays.scene import Scene, product_info
from server import audit, keys
from server.auth import get_show, require_host
from server.chat.store import message_from_json, pinned_key
from server.config import ShowConfig
from server.errors import bad_request, read_json, string_or_null

log = logging.getLogger("showroom.scene")

SCENE_EVENTS = ("featured", "stock", "drop", "ticker", "pinned", "viewers", "live", "auction")
MEDIA_TS_EVENTS = ("featured", "drop", "stock", "pinned", "auction")
TICKER_MAX_CHARS = 140
# Without a frame showing a change this soon (no compositor, or it stalled), the event
# goes out anyway, stamped with the time it was ready.
EMIT_FALLBACK_S = 1.0


def ticker_key(show_id: str) -> str:
    return f"show:{show_id}:ticker"


def scenes(app: web.Application) -> dict[str, Scene]:
    return app[keys.EXTRA]["scenes"]


def _now_ms() -> int:
    return int(time.time() * 1000)


class SceneSync:
    """Applies one show's events to its scene (thin async shell around ``Scene``)."""

    def __init__(self, app: web.Application, show: ShowConfig, scene: Scene) -> None:
        self.app = app
        self.show = show
        self.scene = scene
        self.available: dict[str, int] = {p.sku: p.stock for p in show.products}
        self.loop: asyncio.AbstractEventLoop | None = None
        self.auction_seen: tuple[str, int, int] | None = None  # (id, status rank, bids)
        # A busy auction: at most one card render per AUCTION_RENDER_INTERVAL_S, the
        # newest state then; every event waiting for it gets the frame that shows it.
        self._auction_next: AuctionInfo | None = None
        self._auction_waiters: list[concurrent.futures.Future] = []
        self._auction_timer: asyncio.TimerHandle | None = None
        self._auction_rendered_at = 0.0
        self._timers: set[asyncio.TimerHandle] = set()

    # --- event -> scene ----------------------------------------------------------------
    def apply(self, event: dict) -> concurrent.futures.Future | None:
        """Apply an event to the scene; returns a future resolved with the scene version
        once rendered (None for events the scene does not show)."""
        kind = event.get("type")
        scene = self.scene
        if kind == "featured":
            return self.apply_featured(event.get("sku"))
        if kind == "stock":
            sku, available = event.get("sku"), event.get("available")
            if not isinstance(sku, str) or not isinstance(available, int):
                return None
            self.available[sku] = available
            return scene.set_stock(sku, available)
        if kind == "drop":
            return scene.set_drop(self.drop_info(event.get("drop")))
        if kind == "ticker":
            text = event.get("text")
            return scene.set_ticker(text if isinstance(text, str) else None)
        if kind == "pinned":
            return scene.set_pinned(pinned_info(event.get("message")))
        if kind == "viewers" and isinstance(event.get("viewers"), int):
            return scene.set_viewers(event["viewers"])
        if kind == "live" and isinstance(event.get("live"), bool):
            return scene.set_live(event["live"])
        if kind == "auction":
            return self.apply_auction(event.get("auction"))
        return None

    def apply_auction(self, auction: dict | None) -> concurrent.futures.Future | None:
        """The auction card; None for a state older than the one shown (events of one
        auction may arrive out of order: its status and bid count only move forward)."""
        info = auction_info(self.show, auction)
        if info is None:
            return self.scene.set_auction(None) if auction is None else None
        rank = AUCTION_RANK.get(info.status, 0)
        seen = self.auction_seen
        if seen is not None and seen[0] == info.id and (rank, info.bids) < seen[1:]:
            return None
        self.auction_seen = (info.id, rank, info.bids)
        now = time.monotonic()
        wait = self._auction_rendered_at + AUCTION_RENDER_INTERVAL_S - now
        if self._auction_timer is None and (wait <= 0 or self.loop is None):
            self._auction_rendered_at = now
            return self.scene.set_auction(info)
        self._auction_next = info
        fut: concurrent.futures.Future = concurrent.futures.Future()
        self._auction_waiters.append(fut)
        if self._auction_timer is None:
            self._auction_timer = self.loop.call_later(max(0.0, wait), self._render_auction)
        return fut

    def _render_auction(self) -> None:
        self._auction_timer = None
        self._auction_rendered_at = time.monotonic()
        waiters, self._auction_waiters = self._auction_waiters, []
        done = self.scene.set_auction(self._auction_next)

        def resolve(f: concurrent.futures.Future) -> None:
            for w in waiters:
                if f.exception() is not None:
                    w.set_exception(f.exception())
                else:
                    w.set_result(f.result())

        done.add_done_callback(resolve)

    def apply_featured(self, sku: str | None) -> concurrent.futures.Future:
        product = self.show.product(sku) if isinstance(sku, str) else None
        info = product_info(product, self.available.get(product.sku)) if product else None
        return self.scene.set_featured(info)

    def drop_info(self, drop: dict | None) -> DropInfo | None:
        if not isinstance(drop, dict):
            return None
        product = self.show.product(str(drop.get("sku")))
        if product is None:
            return None
        try:
            price = Decimal(str(drop["price"])) if drop.get("price") else product.price
            return DropInfo(
                sku=product.sku,
                name=product.name,
                price=price,
                remaining=int(drop.get("remaining", 0)),
                ends_at_ms=int(drop["ends_at"]),
                quantity=int(drop.get("quantity", 0)),
            )
        except (KeyError, TypeError, ValueError, InvalidOperation):
            log.warning("show %s: unreadable drop %r", self.show.id, drop)
            return None

    async def load(self) -> None:
        """Bring the scene up to date with the show state (at startup)."""
        from server.routes.shows import show_state

        state = await show_state(self.app, self.show)
        for p in state.get("products", []):
            if isinstance(p.get("available"), int):
                self.available[p["sku"]] = p["available"]
        redis = self.app[keys.REDIS]
        raw = await redis.get(ticker_key(self.show.id))
        pinned = message_from_json(await redis.get(pinned_key(self.show.id)))
        futures = [
            self.scene.set_pinned(pinned_info(pinned.public() if pinned else None)),
            self.apply_featured(state.get("featured")),
            self.scene.set_drop(self.drop_info(state.get("drop"))),
            self.scene.set_ticker(raw.decode() if raw else None),
        ]
        for fut in futures:
            await asyncio.wrap_future(fut)

    # --- the bus interceptor -------------------------------------------------------------
    def intercept(self, show_id: str, event: dict) -> None:
        bus = self.app[keys.BUS]
        if event.get("type") not in SCENE_EVENTS:
            bus.emit_local(show_id, event)
            return
        try:
            fut = self.apply(event)
        except Exception:  # a bad event must not stop the show's events
            log.exception("show %s: could not apply %r", show_id, event.get("type"))
            fut = None
        if fut is None or event.get("type") not in MEDIA_TS_EVENTS:
            bus.emit_local(show_id, event)
            return
        self._emit_when_shown(show_id, event, fut)

    def _emit_when_shown(self, show_id: str, event: dict, fut: concurrent.futures.Future) -> None:
        loop = self.loop or asyncio.get_running_loop()
        bus = self.app[keys.BUS]
        sent = False

        def emit(media_ts: int) -> None:  # on the loop
            nonlocal sent
            if not sent:
                sent = True
                bus.emit_local(show_id, {**event, "media_ts": media_ts})

        def shown(ms: int) -> None:  # on the compositor's thread
            loop.call_soon_threadsafe(emit, ms)

        def rendered(f: concurrent.futures.Future) -> None:  # on the render thread
            try:
                version = f.result()
            except Exception:
                loop.call_soon_threadsafe(emit, _now_ms())
                return
            if self.scene.is_compositing():
                self.scene.when_shown(version, shown)
            else:
                loop.call_soon_threadsafe(emit, _now_ms())

        def fallback() -> None:
            if not sent:
                emit(_now_ms())

        handle = loop.call_later(EMIT_FALLBACK_S, fallback)
        self._timers.add(handle)
        loop.call_later(EMIT_FALLBACK_S + 0.1, self._timers.discard, handle)
        fut.add_done_callback(rendered)

    def close(self) -> None:
        if self._auction_timer is not None:
            self._auction_timer.cancel()
        for handle in self._timers:
            handle.cancel()
        self._timers.clear()
        self.scene.cancel_waiters()


def syncs(app: web.Application) -> dict[str, SceneSync]:
    return app[keys.EXTRA]["scene_sync"]


async def apply_featured(app: web.Application, show: ShowConfig, sku: str | None) -> None:
    """Render the featured card now (called by the feature endpoint before it answers,
    so the next composed frame already shows it)."""
    sync = app[keys.EXTRA].get("scene_sync", {}).get(show.id)
    if sync is not None:
        await asyncio.wrap_future(sync.apply_featured(sku))


AUCTION_RENDER_INTERVAL_S = 0.066  # two frames at 30 fps
AUCTION_RANK = {"running": 0, "settling": 1, "sold": 2, "unsold": 2, "cancelled": 2}


def auction_info(show: ShowConfig, auction: dict | None) -> AuctionInfo | None:
    """What the picture shows of an auction event's ``auction`` (None: unreadable)."""
    if not isinstance(auction, dict):
        return None
    product = show.product(str(auction.get("sku")))
    try:
        status = "settling" if auction.get("settling") else str(auction["status"])
        current = auction.get("current_bid")
        sold_for = auction.get("sold_for")
        return AuctionInfo(
            id=str(auction["id"]),
            name=product.name if product else str(auction.get("sku")),
            status=status,
            start=Decimal(str(auction["start_price"])),
            current=Decimal(str(current)) if current is not None else None,
            leader=auction.get("leader"),
            ends_at_ms=int(auction["ends_at"]),
            bids=int(auction.get("bids") or 0),
            winner=auction.get("winner"),
            sold_for=Decimal(str(sold_for)) if sold_for is not None else None,
        )
    except (KeyError, TypeError, ValueError, InvalidOperation):
        log.warning("show %s: unreadable auction %r", show.id, auction)
        return None


def pinned_info(message: dict | None) -> PinnedInfo | None:
    """What the picture shows of a pinned chat message (None: nothing pinned)."""
    if not isinstance(message, dict) or not isinstance(message.get("text"), str):
        return None
    return PinnedInfo(
        name=str(message.get("name") or ""),
        text=message["text"],
        role=str(message.get("role") or "viewer"),
    )


async def apply_pinned(app: web.Application, show_id: str, message: dict | None) -> None:
    """Render the pinned message now (the pin endpoint awaits this before it answers, so
    the next composed frame already shows it)."""
    sync = app[keys.EXTRA].get("scene_sync", {}).get(show_id)
    if sync is not None:
        await asyncio.wrap_future(sync.scene.set_pinned(pinned_info(message)))


async def post_ticker(request: web.Request) -> web.Response:
    show = get_show(request)
    require_host(request, show)
    body = await read_json(request)
    text = string_or_null(body, "text", "<message>")
    text = await set_ticker(request.app, show, text)
    await audit.log(request, show.id, "ticker", text or "(cleared)")
    return web.json_response({"ticker": text})


async def set_ticker(app: web.Application, show: ShowConfig, text: str | None) -> str | None:
    """Set (or clear) the ticker, by hand or from the run of show; 400 if too long."""
    if text is not None:
        text = " ".join(text.split())  # one line: newlines and tabs become spaces
        if len(text) > TICKER_MAX_CHARS:
            raise bad_request(f"text is limited to {TICKER_MAX_CHARS} characters.")
        text = text or None
    redis = app[keys.REDIS]
    if text is None:
        await redis.delete(ticker_key(show.id))
    else:
        await redis.set(ticker_key(show.id), text)
    sync = syncs(app).get(show.id)
    if sync is not None:
        await asyncio.wrap_future(sync.scene.set_ticker(text))
    await app[keys.BUS].publish(show.id, {"type": "ticker", "text": text})
    return text


async def _state_hook(app: web.Application, show: ShowConfig, state: dict) -> None:
    raw = await app[keys.REDIS].get(ticker_key(show.id))
    state["ticker"] = raw.decode() if raw else None


def setup(app: web.Application) -> None:
    from server.routes.shows import add_state_hook

    settings = app[keys.SETTINGS]
    # Created at setup (not startup) so the media runtime finds them in its startup hook.
    app[keys.EXTRA]["scenes"] = {
        show.id: Scene(
            show.video.width,
            show.video.height,
            title=show.title,
            currency=show.currency,
            show_id=show.id,
            base_url=settings.base_url,
        )
        for show in app[keys.SHOWS].values()
    }
    app[keys.EXTRA]["scene_sync"] = {}
    app[keys.EXTRA].setdefault("feature_hooks", []).append(apply_featured)

    async def scene_ctx(app: web.Application):
        # A cleanup context runs before the media one: our interceptors come first.
        bus = app[keys.BUS]
        loop = asyncio.get_running_loop()
        for show in app[keys.SHOWS].values():
            sync = SceneSync(app, show, scenes(app)[show.id])
            sync.loop = loop
            syncs(app)[show.id] = sync
            bus.set_interceptor(show.id, sync.intercept)
        yield
        for show_id, sync in syncs(app).items():
            bus.set_interceptor(show_id, None)
            sync.close()

    async def load_scenes(app: web.Application) -> None:
        # on_startup runs after every cleanup context: the show state (with the checkout
        # area's availability and drop) is complete by now.
        for sync in syncs(app).values():
            try:
                await sync.load()
            except Exception:
                log.exception("show %s: could not load the scene state", sync.show.id)

    app.cleanup_ctx.append(scene_ctx)
    app.on_startup.append(load_scenes)
    add_state_hook(app, _state_hook)
    app.router.add_post("/api/shows/{show}/ticker", post_ticker)
