"""Stripe webhooks: the truth about payments.

The signature (HMAC-SHA256 over ``t.body``, 300 s tolerance) is checked by the stripe
library before anything is read; events are de-duplicated by id; the order state
machine only moves forward, so out-of-order or replayed events change nothing.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import stripe

from checkout import keys
from checkout.orders import Status, TransitionError, load_order, mark_paid, transition

log = logging.getLogger("showroom.checkout")

TOLERANCE_S = 300
SEEN_TTL_S = 7 * 86400


class BadSignature(Exception):
    pass


@dataclass(frozen=True)
class Outcome:
    order_id: str | None
    status: Status | None  # the order's status after this event (None: not ours)
    changed: bool
    duplicate: bool = False


def verify(payload: bytes, signature: str | None, secret: str) -> dict:
    """The event as a dict, or BadSignature for a missing, wrong or stale signature."""
    if not signature:
        raise BadSignature("Missing Stripe-Signature header.")
    try:
        stripe.WebhookSignature.verify_header(
            payload.decode("utf-8"), signature, secret, TOLERANCE_S
        )
        event = json.loads(payload)
    except stripe.SignatureVerificationError as exc:
        raise BadSignature(str(exc.user_message or exc)) from None
    except (UnicodeDecodeError, ValueError):
        raise BadSignature("Body is not a JSON Stripe event.") from None
    if not isinstance(event, dict) or not isinstance(event.get("id"), str):
        raise BadSignature("Body is not a Stripe event.")
    return event


async def _order_for_intent(redis, intent: dict) -> str | None:
    order_id = (intent.get("metadata") or {}).get("order_id")
    if order_id:
        return str(order_id)
    found = await redis.get(keys.payment_intent(str(intent.get("id", ""))))
    return found.decode() if found else None


async def handle_event(
    redis, event: dict, refund: Callable[[str], Awaitable[None]] | None = None
) -> Outcome:
    """Apply one verified event. Idempotent: a replay returns duplicate=True.

    The event id is remembered only after the event was applied: if Redis fails half
    way, Stripe's retry applies it again (the forward-only state machine makes a second
    application harmless), instead of being skipped as already seen.
    """
    seen = keys.WEBHOOK_SEEN.format(id=event["id"])
    if await redis.exists(seen):
        return Outcome(None, None, changed=False, duplicate=True)
    outcome = await _apply(redis, event, refund)
    await redis.set(seen, 1, ex=SEEN_TTL_S)
    return outcome


async def _apply(redis, event: dict, refund) -> Outcome:
    kind = event.get("type")
    obj = ((event.get("data") or {}).get("object")) or {}
    if kind in ("payment_intent.succeeded", "payment_intent.payment_failed"):
        order_id = await _order_for_intent(redis, obj)
    elif kind == "charge.refunded":
        pi = obj.get("payment_intent")
        order_id = await _order_for_intent(redis, {"id": pi}) if pi else None
    else:
        return Outcome(None, None, changed=False)
    if not order_id or await load_order(redis, order_id) is None:
        log.info("webhook %s for an unknown order (%s); ignored", kind, order_id)
        return Outcome(order_id, None, changed=False)
    try:
        if kind == "payment_intent.succeeded":
            await mark_paid(redis, order_id, str(obj.get("id") or ""))
            return Outcome(order_id, Status.PAID, changed=True)
        if kind == "payment_intent.payment_failed":
            await transition(redis, order_id, Status.PAYMENT_FAILED)
            return Outcome(order_id, Status.PAYMENT_FAILED, changed=True)
        await transition(redis, order_id, Status.REFUNDED)
        return Outcome(order_id, Status.REFUNDED, changed=True)
    except TransitionError as exc:
        current = Status(exc.current) if exc.current else None
        if kind == "payment_intent.succeeded" and current == Status.EXPIRED and refund:
            # Paid after its units went back on sale: give the money back.
            log.warning("order %s was paid after it expired; refunding", order_id)
            await refund(str(obj.get("id")))
        return Outcome(order_id, current, changed=False)
