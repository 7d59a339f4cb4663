"""The commerce runtime of one server process: payments, live stock events, the reaper.

Processes keep no commerce state in memory: everything lives in Redis, so several
processes on one Redis behave as one. Each process runs a reaper that returns expired
holds, expires unpaid orders and ends drops; the Lua scripts make concurrent reapers
safe (a unit is returned by whichever reaper deletes its place first, once).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import aiohttp

from checkout import keys
from checkout.carts import reap_expired_holds
from checkout.catalog import load_catalog
from checkout.drops import end_due_drop
from checkout.live import StockNotifier
from checkout.ordering import due_orders, expire_orders
from checkout.orders import (
    Order,
    Status,
    TransitionError,
    cents_str,
    load_order,
    mark_paid,
    order_key,
    paid_count_key,
    prune_order_index,
)
from checkout.payments import (
    SANDBOX_PUBLISHABLE_KEY,
    SANDBOX_SECRET_KEY,
    PaymentGateway,
    PaymentUnavailable,
)
from checkout.webhooks import BadEvent, mismatch, read_payment

if TYPE_CHECKING:
    from server.config import Settings, ShowConfig

log = logging.getLogger("showroom.checkout")

REAP_INTERVAL_S = 0.25
# The last look's time per reaper tick, all its Stripe calls together: Stripe slower
# than this and the orders not yet looked at expire as before.
LAST_LOOK_BUDGET_S = 3.0
SUCCEEDED = "payment_intent.succeeded"
PRUNE_INTERVAL_S = 60.0  # finished orders Redis dropped leave the show's index
WEBHOOK_EVENTS = ("payment_intent.succeeded", "payment_intent.payment_failed", "charge.refunded")
STRIPE_JS_URL = "https://js.stripe.com/v3"  # live mode's card forms load Stripe.js from here

Publish = Callable[[str, dict], Awaitable[None]]


@dataclass(frozen=True)
class StripeSetup:
    secret_key: str
    publishable_key: str
    api_base: str | None
    webhook_secret: str | None
    sandbox: bool
    js_url: str = STRIPE_JS_URL


def stripe_setup(settings: Settings) -> StripeSetup | None:
    """Where payments go; None in sandbox mode when no sandbox server is known."""
    env = os.environ
    secret = getattr(settings, "stripe_secret_key", None) or env.get("STRIPE_SECRET_KEY")
    base = getattr(settings, "stripe_api_base", None) or env.get("STRIPE_API_BASE")
    hook = getattr(settings, "stripe_webhook_secret", None) or env.get("STRIPE_WEBHOOK_SECRET")
    if secret:
        js = getattr(settings, "stripe_js_url", None) or env.get("STRIPE_JS_URL") or STRIPE_JS_URL
        return StripeSetup(secret, env.get("STRIPE_PUBLISHABLE_KEY", ""), base, hook, False, js)
    if not base:
        return None
    return StripeSetup(SANDBOX_SECRET_KEY, SANDBOX_PUBLISHABLE_KEY, base, hook, True)


class Commerce:
    def __init__(
        self,
        redis,
        shows: dict[str, ShowConfig],
        settings: Settings,
        publish: Publish,
    ) -> None:
        self.redis = redis
        self.shows = shows
        self.settings = settings
        self.publish = publish
        self.stripe = stripe_setup(settings)
        self.gateway: PaymentGateway | None = None
        self.webhook_secret: str | None = None
        self.notifier = StockNotifier(redis, publish, self.drop_event_view)
        self._reaper: asyncio.Task | None = None
        self._closing = asyncio.Event()
        self._webhook_id = f"showroom-{uuid.uuid4().hex[:12]}"
        self._next_prune = 0.0

    # --- lifecycle ---------------------------------------------------------------------
    async def start(self) -> None:
        for show in self.shows.values():
            await load_catalog(self.redis, show.id, {p.sku: p.stock for p in show.products})
        if self.stripe is not None:
            self.gateway = PaymentGateway(
                self.stripe.secret_key,
                self.stripe.publishable_key,
                api_base=self.stripe.api_base,
                sandbox=self.stripe.sandbox,
                total_timeout_s=getattr(self.settings, "stripe_timeout_s", 10.0),
            )
            self.webhook_secret = self.stripe.webhook_secret
            if self.stripe.sandbox:
                if not self.webhook_secret:
                    # One secret per Redis, so every process verifies the same signatures.
                    await self.redis.set(
                        keys.SANDBOX_WEBHOOK_SECRET, "whsec_" + secrets.token_hex(24), nx=True
                    )
                    self.webhook_secret = (
                        await self.redis.get(keys.SANDBOX_WEBHOOK_SECRET)
                    ).decode()
                await self._register_sandbox_webhook(list(WEBHOOK_EVENTS))
                log.info("payments: Stripe sandbox (localstripe) at %s", self.stripe.api_base)
        else:
            log.warning("payments: no Stripe sandbox configured; checkout answers 503")
        self.notifier.start()
        self._reaper = asyncio.create_task(self._reap_forever(), name="checkout-reaper")

    async def stop(self) -> None:
        self._closing.set()
        if self._reaper:
            # The flag ends the loop even if a cancellation is swallowed inside Redis I/O.
            self._reaper.cancel()
            await asyncio.wait({self._reaper}, timeout=5)
        await self.notifier.stop()
        if self.gateway is not None:
            if self.stripe and self.stripe.sandbox:
                with contextlib.suppress(Exception):
                    # localstripe cannot delete a webhook: point this one at no event.
                    await self._register_sandbox_webhook(["showroom.disabled"])
            await self.gateway.close()

    def webhook_url(self) -> str:
        if self.settings.public_url:
            return self.settings.public_url.rstrip("/") + "/webhooks/stripe"
        host = self.settings.host if self.settings.host not in ("0.0.0.0", "::") else "127.0.0.1"
        return f"http://{host}:{self.settings.port}/webhooks/stripe"

    async def _register_sandbox_webhook(self, events: list[str]) -> None:
        assert self.stripe is not None and self.webhook_secret is not None
        data = [("url", self.webhook_url()), ("secret", self.webhook_secret)]
        data += [(f"events[{i}]", e) for i, e in enumerate(events)]
        url = f"{self.stripe.api_base.rstrip('/')}/_config/webhooks/{self._webhook_id}"
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session,
            session.post(url, data=data) as resp,
        ):
            resp.raise_for_status()

    # --- reaper ------------------------------------------------------------------------
    async def _reap_forever(self) -> None:
        while not self._closing.is_set():
            try:
                await self.reap_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis away: try again next tick
                log.warning("checkout reaper: %s", exc)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(REAP_INTERVAL_S):
                    await self._closing.wait()

    async def reap_once(self) -> None:
        # Show by show: each show's holds, orders and drop live in its own slot.
        for show_id in self.shows:
            await self.reap_show(show_id)
        if time.monotonic() >= self._next_prune:
            self._next_prune = time.monotonic() + PRUNE_INTERVAL_S
            for show_id in self.shows:
                await prune_order_index(self.redis, show_id)

    async def reap_show(self, show_id: str) -> None:
        for show, sku in await reap_expired_holds(self.redis, show_id):
            self.notifier.touch(show, sku)
        due = await due_orders(self.redis, show_id)
        await self.last_look(due)
        expired, changed = await expire_orders(self.redis, show_id, due)
        for show, sku in changed:
            self.notifier.touch(show, sku)
        for order_id in expired:
            order = await load_order(self.redis, order_id)
            if order is not None:
                await self.publish_order(order)
        sku = await end_due_drop(self.redis, show_id)
        if sku is not None:
            self.notifier.touch(show_id, sku)
            await self.publish(show_id, {"type": "drop", "drop": None})

    async def last_look(self, due: list[str]) -> None:
        """Before unpaid orders expire, ask Stripe about their payments. A payment whose
        webhook never came (lost on the way, or its ``paid`` move lost in a Redis
        failover) makes the order paid, and its label print, instead of its units going
        back on sale. Stripe away or slow: the orders expire as before (a late webhook
        then refunds the payment)."""
        if self.gateway is None or not due:
            return
        deadline = time.monotonic() + LAST_LOOK_BUDGET_S
        for order_id in due:
            left = deadline - time.monotonic()
            if left <= 0:  # the reaper's other shows and holds must not wait on Stripe
                log.info("last look at unpaid orders: out of time, the rest expire")
                return
            order = await load_order(self.redis, order_id)
            if order is None or order.status != Status.PENDING_PAYMENT or not order.payment_intent:
                continue
            try:
                intent = await self.gateway.payment_intent(order.payment_intent, left)
            except PaymentUnavailable as exc:
                log.info("last look at unpaid orders: Stripe unavailable (%s)", exc)
                return
            if intent.get("status") != "succeeded":
                continue
            # The webhook's own rule for "this payment pays this order".
            try:
                payment = read_payment({"type": SUCCEEDED, "data": {"object": intent}})
            except BadEvent as exc:
                log.warning("order %s: Stripe's payment unreadable (%s)", order_id, exc)
                continue
            why = mismatch(payment, order) if payment is not None else "no payment"
            if why is not None:
                log.warning("order %s: paid at Stripe but not for it (%s)", order_id, why)
                continue
            log.warning(
                "order %s: paid at Stripe but no webhook applied it; marking it paid",
                order.order_id,
            )
            with contextlib.suppress(TransitionError):  # a webhook got there first
                await mark_paid(self.redis, order.order_id, order.payment_intent)
            updated = await load_order(self.redis, order.order_id)
            if updated is not None:
                await self.publish_order(updated)

    # --- views and events --------------------------------------------------------------
    def drop_event_view(self, show_id: str, drop: dict | None) -> dict | None:
        if drop is None:
            return None
        view = dict(drop)
        if view.get("price") is None:
            show = self.shows.get(show_id)
            product = show.product(drop["sku"]) if show else None
            view["price"] = cents_str(product.price_cents) if product else None
        return view

    async def publish_order(self, order: Order) -> None:
        event = order.event()
        if order.status == Status.PAID:  # the sales counter everyone may see
            event["paid_orders"] = int(await self.redis.get(paid_count_key(order.show)) or 0)
        await self.publish(order.show, event)

    async def order_counts(self) -> dict[str, int]:
        counts = {str(s): 0 for s in Status}
        for show_id in self.shows:
            ids = await self.redis.zrange(keys.orders_index(show_id), 0, -1)
            for start in range(0, len(ids), 1000):
                pipe = self.redis.pipeline(transaction=False)
                for oid in ids[start : start + 1000]:
                    pipe.hget(order_key(oid.decode()), "status")
                for status in await pipe.execute():
                    if status:
                        counts[status.decode()] = counts.get(status.decode(), 0) + 1
        return counts
