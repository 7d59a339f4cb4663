"""A show's scene: what is on screen, kept as ready-to-blend sprites.

The compositor calls ``blend_into(frame, now_ms)`` once per frame: it only blends the
cached sprites into the frame's planes. Changes (``set_featured``, ``set_stock``,
``set_drop``, ``set_ticker``, ``set_pinned``, ``set_viewers``, ``set_live``) update the scene's state
and re-render the affected layers on a background thread; the new sprites are swapped
in with one reference assignment, so a frame sees either the old or the new picture.

Each change gets a version number. ``when_shown(version, callback)`` calls back with the
``now_ms`` of the first composed frame that shows that version (used for ``media_ts``).
"""

from __future__ import annotations

import concurrent.futures
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from decimal import Decimal
from urllib.parse import quote

import numpy as np

from overlays import layers
from overlays.layers import AuctionInfo, DropInfo, PinnedInfo, ProductInfo
from overlays.layout import Box, Layout, make_layout
from overlays.yuv import (
    BlendPlan,
    Sprite,
    blend_sprite,
    flat_view,
    frame_planes,
    geometry,
    make_plan,
    run_plan,
    sprite_from_rgba,
)

ANIM_MS = 250
DROP_LINGER_MS = 3000  # keep showing 00:00 briefly after a drop ends, then hide
AUCTION_AHEAD_MS = 300  # the countdown's next second is rendered this long before it
AUCTION_LINGER_MS = 10_000  # "SOLD to Ana" stays this long after the result, then hides
SUBTITLE = "Live shopping \u00b7 tap Buy or scan the code"

# One rendering thread for every scene in the process: renders are short and rare, and
# a single worker keeps them in order without competing with the compositor for cores.
_RENDERER = concurrent.futures.ThreadPoolExecutor(
    max_workers=1, thread_name_prefix="overlay-render"
)

Planes = tuple[np.ndarray, np.ndarray, np.ndarray]


@dataclass
class SceneState:
    title: str
    live: bool = False
    viewers: int = 0
    featured: ProductInfo | None = None
    drop: DropInfo | None = None
    ticker: str | None = None
    pinned: PinnedInfo | None = None
    auction: AuctionInfo | None = None


@dataclass
class _CardSlot:
    """The featured product's card and QR sprites; t0 is set by the first frame showing it."""

    sku: str
    card: Sprite
    qr: Sprite
    t0: int | None = None


@dataclass
class _DropSlot:
    info: DropInfo
    sprites: dict[int, Sprite] = field(default_factory=dict)  # seconds left -> banner
    pending: set[int] = field(default_factory=set)


@dataclass
class _AuctionSlot:
    info: AuctionInfo
    sprites: dict[int, Sprite] = field(default_factory=dict)  # seconds left -> card
    pending: set[int] = field(default_factory=set)
    hide_at_ms: int | None = None  # finished auctions: when the card leaves the picture


@dataclass(frozen=True)
class _Sprites:
    """Everything a frame needs; replaced as a whole when something changes."""

    version: int
    static: tuple[Sprite, ...]  # title, badge, ticker, pinned message
    card: _CardSlot | None
    leaving: _CardSlot | None
    drop: _DropSlot | None
    auction: _AuctionSlot | None = None


def _ease_out(p: float) -> float:
    return 1.0 - (1.0 - p) ** 3


def _even(v: float) -> int:
    return int(round(v)) & ~1


class Scene:
    def __init__(
        self,
        width: int,
        height: int,
        *,
        title: str,
        currency: str = "usd",
        show_id: str = "",
        base_url: str = "",
        threaded: bool = True,
    ) -> None:
        self.width, self.height = width, height
        self.currency = currency
        self.show_id = show_id
        self.base_url = base_url.rstrip("/")
        self.layout: Layout = make_layout(width, height)
        self.threaded = threaded
        self._lock = threading.Lock()  # state, version, dirty set, waiters
        self._render_lock = threading.Lock()  # one render of this scene at a time
        self._state = SceneState(title=title)
        self._version = 0
        self._dirty: set[str] = {"title", "badge"}
        self._futures: list[tuple[int, concurrent.futures.Future]] = []
        self._scheduled = False
        self._static: dict[str, Sprite | None] = {
            "title": None,
            "badge": None,
            "ticker": None,
            "pinned": None,
        }
        self._sprites = _Sprites(0, (), None, None, None)
        self._shown_version = -1
        self._shown: deque[tuple[int, int]] = deque(maxlen=128)  # (version, first now_ms)
        self._waiters: list[tuple[int, Callable[[int], None]]] = []
        self._plan: BlendPlan | None = None
        self.last_blend_wall: float = 0.0  # time.monotonic() of the last blend
        self.last_render_ms: dict[str, float] = {}
        self.renders: Counter[str] = Counter()  # layer renders so far (never per frame)
        self.render_threads: set[str] = set()  # where they ran (the render thread, normally)
        self.render_now()

    # --- state changes (any thread) -----------------------------------------------------
    @property
    def version(self) -> int:
        return self._version

    @property
    def state(self) -> SceneState:
        with self._lock:
            return replace(self._state)

    def _change(
        self, layers_: set[str], apply: Callable[[SceneState], bool]
    ) -> concurrent.futures.Future:
        """Apply a state change; returns a future resolved (with the version) once the
        new sprites are in place. No-op changes resolve at once with the current version."""
        fut: concurrent.futures.Future = concurrent.futures.Future()
        with self._lock:
            changed = apply(self._state)
            if changed:
                self._version += 1
                self._dirty |= layers_
            now_done = not changed and not (self._scheduled or self._dirty)
            if not now_done:
                self._futures.append((self._version, fut))
            schedule = changed and not self._scheduled
            if schedule:
                self._scheduled = True
            version = self._version
        if now_done:  # results are set outside the lock: their callbacks may call back in
            fut.set_result(version)
            return fut
        if schedule:
            if self.threaded:
                _RENDERER.submit(self.render_now)
            else:
                self.render_now()
        return fut

    def set_title(self, title: str) -> concurrent.futures.Future:
        def apply(s: SceneState) -> bool:
            changed = s.title != title
            s.title = title
            return changed

        return self._change({"title"}, apply)

    def set_live(self, live: bool) -> concurrent.futures.Future:
        def apply(s: SceneState) -> bool:
            changed = s.live != bool(live)
            s.live = bool(live)
            return changed

        return self._change({"badge"}, apply)

    def set_viewers(self, n: int) -> concurrent.futures.Future:
        n = max(0, int(n))

        def apply(s: SceneState) -> bool:
            changed = s.viewers != n
            s.viewers = n
            return changed

        return self._change({"badge"}, apply)

    def set_featured(self, product: ProductInfo | None) -> concurrent.futures.Future:
        def apply(s: SceneState) -> bool:
            changed = s.featured != product
            s.featured = product
            return changed

        return self._change({"card"}, apply)

    def set_stock(self, sku: str, available: int) -> concurrent.futures.Future:
        """Live stock for a product: updates the card if it is the featured one."""

        def apply(s: SceneState) -> bool:
            if s.featured is None or s.featured.sku != sku or s.featured.available == available:
                return False
            s.featured = replace(s.featured, available=available)
            return True

        return self._change({"card"}, apply)

    def set_drop(self, drop: DropInfo | None) -> concurrent.futures.Future:
        def apply(s: SceneState) -> bool:
            changed = s.drop != drop
            s.drop = drop
            return changed

        # The card shows a drop's price on its product: re-render it too.
        return self._change({"drop", "card"}, apply)

    def set_drop_remaining(self, remaining: int) -> concurrent.futures.Future:
        def apply(s: SceneState) -> bool:
            if s.drop is None or s.drop.remaining == remaining:
                return False
            s.drop = replace(s.drop, remaining=remaining)
            return True

        return self._change({"drop"}, apply)

    def set_ticker(self, text: str | None) -> concurrent.futures.Future:
        text = text.strip() if text else None

        def apply(s: SceneState) -> bool:
            changed = s.ticker != (text or None)
            s.ticker = text or None
            return changed

        return self._change({"ticker"}, apply)

    def set_pinned(self, pin: PinnedInfo | None) -> concurrent.futures.Future:
        """The pinned chat message (None: nothing pinned)."""

        def apply(s: SceneState) -> bool:
            changed = s.pinned != pin
            s.pinned = pin
            return changed

        return self._change({"pinned"}, apply)

    def set_auction(self, auction: AuctionInfo | None) -> concurrent.futures.Future:
        """The show's auction (None or cancelled: no card). Older states of the same
        auction (events may arrive out of order) are the caller's to drop."""

        def apply(s: SceneState) -> bool:
            changed = s.auction != auction
            s.auction = auction
            return changed

        return self._change({"auction"}, apply)

    def flush(self, timeout: float = 5.0) -> int:
        """Wait until every change so far is rendered; returns the version."""
        with self._lock:
            pending = [f for _, f in self._futures]
        for f in pending:
            f.result(timeout)
        return self._sprites.version

    # --- rendering (render thread, or the caller when threaded=False) -------------------
    def buy_url(self, sku: str) -> str:
        return f"{self.base_url}/shows/{quote(self.show_id)}?sku={quote(sku)}"

    def _timed(self, name: str, fn: Callable[[], Sprite | None]) -> Sprite | None:
        t = time.perf_counter()
        out = fn()
        self.last_render_ms[name] = (time.perf_counter() - t) * 1000
        self.renders[name] += 1
        self.render_threads.add(threading.current_thread().name)
        return out

    def render_now(self) -> None:
        """Render every dirty layer from the current state and swap the sprites in."""
        done: list[tuple[list[concurrent.futures.Future], int]] = []
        with self._render_lock:
            while True:
                with self._lock:
                    dirty, self._dirty = self._dirty, set()
                    state = replace(self._state)
                    version = self._version
                    if not dirty:
                        self._scheduled = False
                        ready = self._take_ready(self._sprites.version)
                        break
                try:
                    new = self._render(dirty, state, version)
                except Exception as exc:  # keep the old picture; report to waiters
                    with self._lock:
                        self._scheduled = False
                        futures, self._futures = self._futures, []
                    for _, f in futures:
                        if not f.done():
                            f.set_exception(exc)
                    raise
                self._sprites = new  # the atomic swap the compositor sees
                with self._lock:
                    done.append((self._take_ready(version), version))
            done.append((ready, self._sprites.version))
        # outside both locks: a future's callbacks may change the scene again
        for futures, v in done:
            self._set_results(futures, v)

    def _take_ready(self, version: int) -> list[concurrent.futures.Future]:
        """Futures of changes up to version (under the lock; resolved outside it)."""
        ready = [f for v, f in self._futures if v <= version]
        self._futures = [(v, f) for v, f in self._futures if v > version]
        return ready

    @staticmethod
    def _set_results(futures: list[concurrent.futures.Future], version: int) -> None:
        for f in futures:
            if not f.done():
                f.set_result(version)

    def _render(self, dirty: set[str], state: SceneState, version: int) -> _Sprites:
        lay = self.layout
        old = self._sprites
        if "title" in dirty:
            self._static["title"] = self._timed(
                "title",
                lambda: _place(
                    layers.render_title(state.title, SUBTITLE, lay.title.w, lay.title.h, lay.unit),
                    lay.title,
                ),
            )
        if "badge" in dirty:
            self._static["badge"] = self._timed(
                "badge",
                lambda: _place(
                    layers.render_badge(
                        state.live, state.viewers, lay.badge.w, lay.badge.h, lay.unit
                    ),
                    lay.badge,
                ),
            )
        if "ticker" in dirty:
            self._static["ticker"] = (
                self._timed(
                    "ticker",
                    lambda: _place(
                        layers.render_ticker(state.ticker, lay.ticker.w, lay.ticker.h, lay.unit),
                        lay.ticker,
                    ),
                )
                if state.ticker
                else None
            )
        if "pinned" in dirty:
            pin = state.pinned
            self._static["pinned"] = (
                self._timed(
                    "pinned",
                    lambda: _place(
                        layers.render_pinned(pin, lay.pinned.w, lay.pinned.h, lay.unit),
                        lay.pinned,
                    ),
                )
                if pin is not None
                else None
            )
        card, leaving = old.card, old.leaving
        if "card" in dirty:
            product = state.featured
            if product is None:
                if card is not None:
                    leaving = _CardSlot(card.sku, card.card, card.qr, None)
                card = None
            else:
                d = state.drop
                on_drop = d is not None and d.sku == product.sku and d.price != product.price
                shown = replace(product, price=d.price) if on_drop else product
                card_sprite = self._timed(
                    "card",
                    lambda: _place(
                        layers.render_card(
                            shown,
                            lay.card.w,
                            lay.card.h,
                            self.currency,
                            lay.unit,
                            regular_price=product.price if on_drop else None,
                        ),
                        lay.card,
                    ),
                )
                if card is not None and card.sku == product.sku:
                    # same product (stock or price changed): swap in place, no animation
                    card = _CardSlot(product.sku, card_sprite, card.qr, card.t0)
                else:
                    qr_sprite = self._timed(
                        "qr",
                        lambda: _place(
                            layers.render_qr(
                                self.buy_url(product.sku), lay.qr.w, lay.qr.h, lay.unit
                            ),
                            lay.qr,
                        ),
                    )
                    card = _CardSlot(product.sku, card_sprite, qr_sprite, None)
                    leaving = None  # the new card takes the same place
        drop = old.drop
        if "drop" in dirty:
            if state.drop is None:
                drop = None
            else:
                drop = _DropSlot(state.drop)
                secs = _secs_left(state.drop, int(time.time() * 1000))
                for s in (secs, secs - 1):
                    if s >= 0:
                        drop.sprites[s] = self._timed(
                            "drop", lambda s=s: self._drop_sprite(drop.info, s)
                        )
        auction = old.auction
        if "auction" in dirty:
            info = state.auction
            if info is None or info.status == "cancelled":
                auction = None
            else:
                auction = _AuctionSlot(info)
                now = int(time.time() * 1000)
                if info.status in ("running", "settling"):
                    secs = _secs_left(info, now)
                else:
                    secs, auction.hide_at_ms = 0, now + AUCTION_LINGER_MS
                auction.sprites[secs] = self._timed(
                    "auction", lambda: self._auction_sprite(info, secs)
                )
        order = ("title", "ticker", "pinned", "badge")
        static = tuple(s for s in (self._static[k] for k in order) if s)
        return _Sprites(version, static, card, leaving, drop, auction)

    def _auction_sprite(self, info: AuctionInfo, secs: int) -> Sprite:
        lay = self.layout
        return _place(
            layers.render_auction(
                info, secs * 1000, lay.auction.w, lay.auction.h, self.currency, lay.unit
            ),
            lay.auction,
        )

    def _prerender_auction(self, slot: _AuctionSlot, seconds: list[int]) -> None:
        for s in seconds:
            if s not in slot.sprites:
                slot.sprites[s] = self._timed(
                    "auction", lambda s=s: self._auction_sprite(slot.info, s)
                )
            slot.pending.discard(s)
        for s in [k for k in slot.sprites if k > max(seconds) + 1]:
            slot.sprites.pop(s, None)

    def _auction_sprite_for(self, slot: _AuctionSlot | None, now_ms: int) -> Sprite | None:
        """The auction card for this second; like the drop banner, the next second is
        rendered ahead on the render thread."""
        if slot is None:
            return None
        if slot.hide_at_ms is not None:
            return None if now_ms >= slot.hide_at_ms else next(iter(slot.sprites.values()), None)
        secs = _secs_left(slot.info, now_ms)
        # The next second only when it is near: during a bidding war the card changes
        # many times a second, and most states never reach their next second.
        near = (slot.info.ends_at_ms - now_ms) % 1000 < AUCTION_AHEAD_MS
        ahead = [secs, secs - 1] if near and secs > 0 else [max(secs, 0)]
        want = [s for s in ahead if s >= 0 and s not in slot.sprites]
        if want and not (set(want) <= slot.pending):
            slot.pending.update(want)
            _RENDERER.submit(self._prerender_auction, slot, ahead)
        sprite = slot.sprites.get(secs)
        if sprite is None and slot.sprites:
            sprite = slot.sprites[min(slot.sprites, key=lambda k: abs(k - secs))]
        return sprite

    def _drop_sprite(self, info: DropInfo, secs: int) -> Sprite:
        lay = self.layout
        return _place(
            layers.render_drop(info, secs * 1000, lay.drop.w, lay.drop.h, self.currency, lay.unit),
            lay.drop,
        )

    def _prerender_drop(self, slot: _DropSlot, seconds: list[int]) -> None:
        for s in seconds:
            if s not in slot.sprites:
                slot.sprites[s] = self._timed("drop", lambda s=s: self._drop_sprite(slot.info, s))
            slot.pending.discard(s)
        for s in [k for k in slot.sprites if k > max(seconds) + 1]:
            slot.sprites.pop(s, None)

    # --- per frame (compositor) ---------------------------------------------------------
    def blend_into(self, frame, now_ms: int) -> None:
        """Blend the scene into a yuv420p av.VideoFrame in place."""
        self.blend_planes(frame_planes(frame), now_ms)

    def blend_planes(self, planes: Planes, now_ms: int) -> None:
        sprites = self._sprites  # one read: a consistent set even if a swap happens now
        flats = (
            tuple(flat_view(p) for p in planes) if all(p.strides[1] == 1 for p in planes) else None
        )
        still: list[Sprite] = list(sprites.static)
        drop = self._drop_sprite_for(sprites.drop, now_ms)
        if drop is not None:
            still.append(drop)
        auction = self._auction_sprite_for(sprites.auction, now_ms)
        if auction is not None:
            still.append(auction)
        moving: list[tuple[_CardSlot, float]] = []
        if sprites.leaving is not None:
            slot = sprites.leaving
            if slot.t0 is None:
                slot.t0 = now_ms
            p = (now_ms - slot.t0) / ANIM_MS
            if p < 1.0:
                moving.append((slot, 1.0 - p * p))
        if sprites.card is not None:
            slot = sprites.card
            if slot.t0 is None:
                slot.t0 = now_ms
            # start a little in, so the first frame already shows the card
            e = _ease_out(min(1.0, 0.2 + (now_ms - slot.t0) / ANIM_MS))
            if e >= 1.0:
                still += [slot.card, slot.qr]
            else:
                moving.append((slot, e))
        self._blend_still(tuple(still), planes, flats)
        for slot, e in moving:
            self._blend_card(planes, slot, e, flats)
        self.last_blend_wall = time.monotonic()
        if sprites.version > self._shown_version:
            self._mark_shown(sprites.version, now_ms)

    def _blend_still(self, still: tuple[Sprite, ...], planes: Planes, flats) -> None:
        """Layers at rest: one merged plan (rebuilt only when a layer or the frame
        geometry changes), else layer by layer."""
        plan = self._plan
        if flats is not None:
            if (
                plan is None
                or plan.geometry != geometry(planes)
                or len(plan.sprites) != len(still)
                or any(a is not b for a, b in zip(plan.sprites, still, strict=True))
            ):
                plan = self._plan = make_plan(still, planes)
            if plan is not None:
                run_plan(plan, planes, flats)
                return
        for sp in still:
            blend_sprite(planes, sp, flats=flats)

    def _blend_card(self, planes: Planes, slot: _CardSlot, e: float, flats=None) -> None:
        opacity = int(256 * e)
        if opacity <= 0:
            return
        shift = _even((1.0 - e) * self.layout.px(56))
        dx, dy = (0, shift) if self.layout.vertical else (shift, 0)
        blend_sprite(planes, slot.card, opacity, dx, dy, flats)
        blend_sprite(planes, slot.qr, opacity, dx, dy, flats)

    def _drop_sprite_for(self, slot: _DropSlot | None, now_ms: int) -> Sprite | None:
        """The drop banner for this second; the next seconds are rendered ahead on the
        render thread, so the countdown never renders text on the compositor's time."""
        if slot is None or slot.info.ends_at_ms - now_ms < -DROP_LINGER_MS:
            return None
        secs = _secs_left(slot.info, now_ms)
        want = [s for s in (secs, secs - 1) if s >= 0 and s not in slot.sprites]
        if want and not (set(want) <= slot.pending):
            slot.pending.update(want)
            _RENDERER.submit(self._prerender_drop, slot, [secs, secs - 1] if secs > 0 else [0])
        sprite = slot.sprites.get(secs)
        if sprite is None and slot.sprites:  # not rendered yet: nearest second (a frame late)
            sprite = slot.sprites[min(slot.sprites, key=lambda k: abs(k - secs))]
        return sprite

    # --- media_ts -------------------------------------------------------------------------
    def _mark_shown(self, version: int, now_ms: int) -> None:
        with self._lock:
            self._shown_version = version
            self._shown.append((version, now_ms))
            ready = [(v, cb) for v, cb in self._waiters if v <= version]
            self._waiters = [(v, cb) for v, cb in self._waiters if v > version]
        for _, cb in ready:
            cb(now_ms)

    def when_shown(self, version: int, callback: Callable[[int], None]) -> None:
        """Call back with the now_ms of the first composed frame showing ``version``
        (at once if a frame already did). Called from the compositor's thread."""
        with self._lock:
            if version > self._shown_version:
                self._waiters.append((version, callback))
                return
            ms = next((m for v, m in self._shown if v >= version), None)
        callback(ms if ms is not None else int(time.time() * 1000))

    def cancel_waiters(self) -> list[Callable[[int], None]]:
        with self._lock:
            waiters, self._waiters = self._waiters, []
        return [cb for _, cb in waiters]

    def is_compositing(self, within_s: float = 0.5) -> bool:
        """True if a compositor blended a frame recently."""
        return time.monotonic() - self.last_blend_wall < within_s

    def layer_boxes(self) -> dict[str, Box]:
        lay = self.layout
        return {
            "badge": lay.badge,
            "drop": lay.drop,
            "card": lay.card,
            "qr": lay.qr,
            "title": lay.title,
            "ticker": lay.ticker,
            "pinned": lay.pinned,
            "auction": lay.auction,
        }


def _place(image, box: Box) -> Sprite:
    return sprite_from_rgba(image, box.x, box.y)


def _secs_left(info: DropInfo | AuctionInfo, now_ms: int) -> int:
    return max(0, -(-(info.ends_at_ms - now_ms) // 1000))


def product_info(product, available: int | None = None) -> ProductInfo:
    """A ProductInfo from a manifest product (server.config.ProductConfig-like)."""
    return ProductInfo(
        sku=product.sku,
        name=product.name,
        price=Decimal(str(product.price)),
        available=available,
        image=getattr(product, "image", None),
    )
