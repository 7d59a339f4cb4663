"""Auctions and saved payment methods (API.md "Auctions"): parsing, authorisation, live
events and each process's settlement worker. The rules are ``checkout.auctions``.

Every accepted bid goes out as ``{"type": "auction", "auction"}`` on the show's bus; the
scene interceptor draws the card and re-emits the event with ``media_ts``. Events of one
auction may overtake each other between processes: its ``status`` and ``bids`` only move
forward, so a consumer keeps the state with the highest (status, bids).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time

from aiohttp import web

from checkout import auctions
from checkout.auctions import AuctionError, AuctionRequest, BadAmount, ChargeFailed, SavedCard
from checkout.orders import order_key
from checkout.payments import Card, PaymentDeclined, PaymentUnavailable
from media import tasks
from server import audit, identity, keys, segments
from server.auth import ensure_viewer, get_show, require_role, viewer_id
from server.chat.rules import author_handle
from server.errors import ApiError, bad_request, conflict, not_found, read_json
from server.routes.cart import commerce

log = logging.getLogger("showroom.auctions")

AUCTION_ID = re.compile(r"^auc_[a-z0-9][a-z0-9-]{0,63}__[0-9a-f]{16}$")
WORKER_MAX_WAIT_S = 0.25
WORKER_MIN_WAIT_S = 0.005


def _redis(app: web.Application):
    return app[keys.REDIS]


def view(app: web.Application, auction: auctions.Auction, viewer: str | None = None) -> dict:
    out = auction.public(viewer)
    # An opaque handle of the leader, so a page can tell "you're winning" from "outbid"
    # by comparing with its own (GET /api/me "handle"); never the cookie.
    out["leader_handle"] = (
        author_handle(app[keys.SECRET], auction.leader) if auction.leader else None
    )
    return out


async def publish(app: web.Application, auction: auctions.Auction, **extra) -> None:
    event = {"type": "auction", "auction": view(app, auction), **extra}
    await app[keys.BUS].publish(auction.show, event)


# --- /api/me payment method ---------------------------------------------------------------


async def has_payment_method(app: web.Application, viewer: str | None) -> bool:
    """True once the viewer has a saved card; a SetupIntent confirmed in the browser
    since is looked up here (its payment method saved)."""
    if viewer is None:
        return False
    redis = _redis(app)
    raw = await redis.hmget(auctions.card_key(viewer), "payment_method", "setup_intent")
    if raw[0]:
        return True
    gateway = commerce(app).gateway
    if not raw[1] or gateway is None:
        return False
    try:
        pm = await gateway.setup_result(raw[1].decode())
    except PaymentUnavailable:
        return False
    if pm is None:
        return False
    await redis.hset(auctions.card_key(viewer), "payment_method", pm)
    return True


def _card(body: dict) -> Card:
    card = body.get("card")
    if not isinstance(card, dict):
        raise bad_request('card must be an object {"number", "exp_month", "exp_year", "cvc"}.')
    number = card.get("number")
    if not isinstance(number, str):
        raise bad_request("card.number is required and must be a string.")
    number = number.replace(" ", "").replace("-", "")
    if not number.isdigit() or not 12 <= len(number) <= 19:
        raise bad_request("card.number must be 12 to 19 digits.")
    month, year = card.get("exp_month"), card.get("exp_year")
    if isinstance(month, bool) or not isinstance(month, int) or not 1 <= month <= 12:
        raise bad_request("card.exp_month must be a whole number from 1 to 12.")
    if isinstance(year, bool) or not isinstance(year, int) or not 0 <= year <= 2100:
        raise bad_request("card.exp_year must be a year.")
    cvc = card.get("cvc")
    if not isinstance(cvc, str) or not cvc.isdigit() or len(cvc) not in (3, 4):
        raise bad_request("card.cvc must be 3 or 4 digits.")
    return Card(number, month, year + 2000 if year < 100 else year, cvc)


async def post_payment_method(request: web.Request) -> web.Response:
    viewer = ensure_viewer(request)
    body = await read_json(request, max_bytes=2048) if request.can_read_body else {}
    gateway = commerce(request.app).gateway
    if gateway is None:
        raise ApiError(503, "unavailable", "Payments are not configured on this server.")
    redis = _redis(request.app)
    key = auctions.card_key(viewer)
    customer_raw = await redis.hget(key, "customer")
    customer = customer_raw.decode() if customer_raw else None
    try:
        if "card" in body:
            if not gateway.sandbox:
                raise bad_request("Cards are saved in the browser (Stripe.js) in live mode.")
            card = _card(body)
            customer, pm = await gateway.save_card(card, customer)
            await redis.hset(
                key, mapping={"customer": customer, "payment_method": pm, "last4": card.number[-4:]}
            )
            return web.json_response(
                {"has_payment_method": True, "card": {"last4": card.number[-4:]}}
            )
        customer, setup_id, secret = await gateway.create_setup(customer)
    except PaymentDeclined as exc:
        raise ApiError(402, "card_declined", exc.message) from None
    except PaymentUnavailable as exc:
        raise ApiError(
            503,
            "unavailable",
            f"The payment provider is unavailable ({exc}).",
            {"Retry-After": "5"},
        ) from None
    await redis.hset(key, mapping={"customer": customer, "setup_intent": setup_id})
    return web.json_response(
        {
            "setup": {
                "client_secret": secret,
                "publishable_key": gateway.publishable_key,
                "sandbox": gateway.sandbox,
            }
        }
    )


# --- auctions ----------------------------------------------------------------------------


def _int(body: dict, name: str, lo: int, hi: int, default: int | None = None) -> int:
    value = body.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise bad_request(f"{name} must be a whole number from {lo} to {hi}.")
    return value


def _cents(body: dict, name: str) -> int:
    try:
        return auctions.parse_cents(body.get(name), name)
    except BadAmount as exc:
        raise bad_request(str(exc)) from None


async def start_auction(request: web.Request) -> web.Response:
    show = require_role(request, "host")
    body = await read_json(request, max_bytes=2048)
    sku = body.get("sku")
    product = show.product(sku) if isinstance(sku, str) else None
    if product is None:
        raise not_found(f"No product {sku!r} in show {show.id!r}.")
    sudden = body.get("sudden_death", False)
    if not isinstance(sudden, bool):
        raise bad_request("sudden_death must be true or false.")
    req = AuctionRequest(
        sku=product.sku,
        start_cents=_cents(body, "start_price"),
        increment_cents=_cents(body, "increment"),
        duration_s=_int(body, "duration_s", auctions.MIN_DURATION_S, auctions.MAX_DURATION_S),
        extend_s=_int(body, "extend_s", 0, auctions.MAX_EXTEND_S, default=10),
        sudden_death=sudden,
    )
    try:
        auction = await auctions.start_auction(_redis(request.app), show.id, req)
    except AuctionError as exc:
        if exc.code == "auction_active":
            raise conflict("conflict", "An auction is already running in this show.") from None
        if exc.code == "sold_out":
            raise conflict("sold_out", f"{product.sku} is out of stock.") from None
        raise not_found(f"No stock for {product.sku!r}.") from None
    com = commerce(request.app)
    com.notifier.touch(show.id, product.sku)
    await audit.log(request, show.id, "auction", f"{product.sku} from {body['start_price']}")
    await publish(request.app, auction)
    return web.json_response(view(request.app, auction), status=201)


async def get_current(request: web.Request) -> web.Response:
    show = get_show(request)
    auction = await auctions.current_auction(_redis(request.app), show.id)
    if auction is None:
        raise not_found("No auction in this show yet.")
    out = view(request.app, auction, viewer_id(request))
    out["recent_bids"] = await auctions.bid_log(_redis(request.app), auction.id, 20)
    return web.json_response(out)


async def _auction_or_404(request: web.Request) -> auctions.Auction:
    auction_id = request.match_info["id"]
    found = (
        await auctions.load_auction(_redis(request.app), auction_id)
        if AUCTION_ID.match(auction_id)
        else None
    )
    if found is None:
        raise not_found(f"No auction {auction_id!r}.")
    return found


async def cancel(request: web.Request) -> web.Response:
    auction = await _auction_or_404(request)
    require_role(request, "host", auction.show)
    result = await auctions.cancel_auction(_redis(request.app), auction.id)
    if result != "ok":
        raise conflict("auction_closed", f"This auction is {result}; it cannot be cancelled.")
    done = await auctions.load_auction(_redis(request.app), auction.id)
    await audit.log(request, done.show, "auction_cancel", done.id)
    commerce(request.app).notifier.touch(done.show, done.sku)
    await publish(request.app, done)
    return web.json_response(view(request.app, done))


# The parts of an auction a bid cannot change, per process (bids answer from the script's
# result without reading the hash again).
_FIXED: dict[str, auctions.Auction] = {}

_BID_REFUSALS = {
    "auction_closed": (409, "This auction is over."),
    "bid_too_low": (409, "Someone bid that much or more already."),
    "name_required": (400, "Choose a display name before bidding (PUT /api/me)."),
    "payment_required": (402, "Save a payment method before bidding."),
}


async def post_bid(request: web.Request) -> web.Response:
    auction_id = request.match_info["id"]
    if not AUCTION_ID.match(auction_id):
        raise not_found(f"No auction {auction_id!r}.")
    viewer = ensure_viewer(request)
    body = await read_json(request, max_bytes=1024)
    try:
        cents = auctions.parse_cents(body.get("amount"))
    except BadAmount as exc:
        raise bad_request(str(exc)) from None
    app = request.app
    redis = _redis(app)
    profile = identity.profile_key(viewer)
    out = await auctions.place_bid(redis, auction_id, viewer, cents, profile)
    if out.result == "payment_required" and await has_payment_method(app, viewer):
        # Saved in the browser since (Stripe.js confirmed the SetupIntent): now on file.
        out = await auctions.place_bid(redis, auction_id, viewer, cents, profile)
    if out.result == "not_found":
        raise not_found(f"No auction {auction_id!r}.")
    fixed = _FIXED.get(auction_id)
    if fixed is None:
        fixed = await auctions.load_auction(redis, auction_id)
        if fixed is None:
            raise not_found(f"No auction {auction_id!r}.")
        if len(_FIXED) > 256:
            _FIXED.clear()
        _FIXED[auction_id] = fixed
    state = auctions.Auction(
        **{
            **fixed.__dict__,
            "status": out.status,
            "current_cents": out.current_cents,
            "leader": out.leader,
            "leader_name": out.leader_name,
            "bids": out.bids,
            "ends_at": out.ends_at,
        }
    )
    if out.result != "ok":
        status, detail = _BID_REFUSALS[out.result]
        if out.result == "bid_too_low":
            detail = f"The next bid must be at least {auctions.cents_str(state.next_min_cents)}."
        # The state as the bid found it: the page shows the new minimum without asking.
        return web.json_response(
            {"error": out.result, "detail": detail, "auction": view(app, state, viewer)},
            status=status,
        )
    await publish(app, state, accepted_at=out.accepted_at)
    return web.json_response(view(app, state, viewer), status=201)


# --- settlement worker ------------------------------------------------------------------


class AuctionWorker:
    """Claims auctions whose clock ran out (one script: exactly one process gets each)
    and settles them: charge, order, label; or unsold."""

    def __init__(self, app: web.Application) -> None:
        self.app = app
        self._closing = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._settling: set[asyncio.Task] = set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="auction-worker")

    async def stop(self) -> None:
        self._closing.set()
        await tasks.stop(self._task)
        if self._settling:
            await asyncio.wait(self._settling, timeout=10)

    async def _run(self) -> None:
        redis = _redis(self.app)
        while not self._closing.is_set():
            wait = WORKER_MAX_WAIT_S
            try:
                for show_id in self.app[keys.SHOWS]:
                    for auction_id in await auctions.claim_due(redis, show_id):
                        task = asyncio.create_task(self.settle(auction_id))
                        self._settling.add(task)
                        task.add_done_callback(self._settling.discard)
                nxt = await auctions.next_end_ms(redis, self.app[keys.SHOWS])
                if nxt is not None:
                    wait = min(wait, max(WORKER_MIN_WAIT_S, (nxt - time.time() * 1000) / 1000))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis away: next tick
                log.warning("auction worker: %s", exc)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._closing.wait()

    async def settle(self, auction_id: str) -> None:
        app = self.app
        redis = _redis(app)
        com = commerce(app)
        try:
            auction = await auctions.load_auction(redis, auction_id)
            if auction is None:
                return
            await publish(app, auction)  # the clock stopped: settling
            show = app[keys.SHOWS].get(auction.show)
            product = show.product(auction.sku) if show else None
            gateway = com.gateway
            if gateway is None:
                log.warning("auction %s: no payments configured; left to settle later", auction_id)
                return

            async def charge(order_id, cents, currency, show_id, card: SavedCard, key):
                try:
                    return await gateway.charge_off_session(
                        order_id, cents, currency, show_id, card.customer, card.payment_method, key
                    )
                except PaymentDeclined as exc:
                    raise ChargeFailed(exc.message) from None

            async def buyer_name(viewer: str) -> str:
                return await identity.get_name(redis, viewer) or ""

            done = await auctions.settle(
                redis,
                auction_id,
                charge=charge,
                product_name=product.name if product else auction.sku,
                currency=show.currency if show else "usd",
                sandbox=gateway.sandbox,
                buyer_name=buyer_name,
            )
        except PaymentUnavailable as exc:
            log.warning("auction %s: payments unavailable (%s); retried later", auction_id, exc)
            return
        except Exception:
            log.exception("auction %s: settlement failed; retried when its lease ends", auction_id)
            return
        if done is None:
            return
        _FIXED.pop(auction_id, None)
        if done.order is not None:
            # The report counts the sale for the segment on air when the winning bid came.
            log_ = await auctions.full_log(redis, auction_id)
            won = [ts for ts, v, _c in log_ if v == done.order.viewer] or [done.auction.ends_at]
            added = json.dumps({done.auction.sku: won[-1]})
            await redis.hset(order_key(done.order.order_id), segments.ADDED_FIELD, added)
            await com.publish_order(done.order)
        else:
            com.notifier.touch(done.auction.show, done.auction.sku)
        await publish(app, done.auction)


async def _load_scenes(app: web.Application) -> None:
    from server.routes.scene import syncs

    for show_id, sync in syncs(app).items():
        try:
            auction = await auctions.current_auction(_redis(app), show_id)
            if auction is not None:
                sync.apply_auction(view(app, auction))
        except Exception:
            log.exception("show %s: could not load the auction", show_id)


async def _state_hook(app: web.Application, show, state: dict) -> None:
    auction = await auctions.current_auction(_redis(app), show.id)
    state["auction"] = view(app, auction) if auction is not None else None


def setup(app: web.Application) -> None:
    from server.routes.shows import add_state_hook

    async def worker_ctx(app: web.Application):
        worker = AuctionWorker(app)
        app[keys.EXTRA]["auction_worker"] = worker
        worker.start()
        yield
        await worker.stop()

    app.cleanup_ctx.append(worker_ctx)
    app.on_startup.append(_load_scenes)
    add_state_hook(app, _state_hook)
    r = app.router
    r.add_post("/api/me/payment-method", post_payment_method)
    r.add_post("/api/shows/{show}/auctions", start_auction)
    r.add_get("/api/shows/{show}/auctions/current", get_current)
    r.add_post("/api/auctions/{id}/bids", post_bid)
    r.add_delete("/api/auctions/{id}", cancel)
