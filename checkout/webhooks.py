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
from checkout.orders import (
    Order,
    Status,
    TransitionError,
    load_order,
    mark_paid,
    refund_order,
    transition,
)

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
    ignored: str | None = None  # why a well-formed event did not apply to its order


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
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise BadSignature("Body is not a JSON Stripe event.") from None
    if not isinstance(event, dict) or not isinstance(event.get("id"), str) or not event["id"]:
        raise BadSignature("Body is not a Stripe event.")
    return event


class BadEvent(Exception):
    """A verified event whose shape is not what Stripe sends (answered 400)."""


@dataclass(frozen=True)
class Payment:
    """What an event says about a payment, read and type-checked once."""

    kind: str
    intent_id: str
    order_id: str | None  # from the PaymentIntent's metadata, when it has one
    amount: int | None  # PaymentIntent events only
    currency: str | None
    show: str | None


def read_payment(event: dict) -> Payment | None:
    """The payment an event is about; None for event types we do not act on; BadEvent
    when a field we rely on is missing or has the wrong type."""
    kind = event.get("type")
    if not isinstance(kind, str):
        raise BadEvent("type must be a string.")
    if kind not in ("payment_intent.succeeded", "payment_intent.payment_failed", "charge.refunded"):
        return None
    data = event.get("data")
    obj = data.get("object") if isinstance(data, dict) else None
    if not isinstance(obj, dict):
        raise BadEvent("data.object must be an object.")
    metadata = obj.get("metadata")
    metadata = {} if metadata is None else metadata
    if not isinstance(metadata, dict):
        raise BadEvent("data.object.metadata must be an object.")
    if kind == "charge.refunded":
        intent_id = obj.get("payment_intent")
        if not isinstance(intent_id, str) or not intent_id:
            raise BadEvent("data.object.payment_intent must be a PaymentIntent id.")
        return Payment(kind, intent_id, None, None, None, None)
    intent_id, amount, currency = obj.get("id"), obj.get("amount"), obj.get("currency")
    if not isinstance(intent_id, str) or not intent_id:
        raise BadEvent("data.object.id must be a PaymentIntent id.")
    if isinstance(amount, bool) or not isinstance(amount, int):
        raise BadEvent("data.object.amount must be a whole number of cents.")
    if not isinstance(currency, str):
        raise BadEvent("data.object.currency must be a string.")
    order_id, show = metadata.get("order_id"), metadata.get("show")
    if order_id is not None and not isinstance(order_id, str):
        raise BadEvent("metadata.order_id must be a string.")
    if show is not None and not isinstance(show, str):
        raise BadEvent("metadata.show must be a string.")
    return Payment(kind, intent_id, order_id, amount, currency.lower(), show)


def mismatch(payment: Payment, order: Order) -> str | None:
    """Why this event does not belong to ``order`` (None when it does). Only the
    PaymentIntent created at checkout, for the order's own amount, currency and show,
    can move it: a signed event about another payment changes nothing."""
    if not order.payment_intent:
        return "the order has no payment yet"
    if payment.intent_id != order.payment_intent:
        return f"payment {payment.intent_id} is not the order's payment"
    if payment.amount is not None and payment.amount != order.amount_cents:
        return f"amount {payment.amount} is not the order's {order.amount_cents}"
    if payment.currency is not None and payment.currency != order.currency.lower():
        return f"currency {payment.currency} is not the order's {order.currency}"
    if payment.show is not None and payment.show != order.show:
        return f"show {payment.show} is not the order's {order.show}"
    return None


async def _order_for(redis, payment: Payment) -> str | None:
    # The id stored at checkout first: metadata is what the event claims.
    found = await redis.get(keys.payment_intent(payment.intent_id))
    if found:
        return found.decode()
    return payment.order_id


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
    payment = read_payment(event)
    if payment is None:
        return Outcome(None, None, changed=False)
    kind = payment.kind
    order_id = await _order_for(redis, payment)
    order = await load_order(redis, order_id) if order_id else None
    if order is None:
        log.info("webhook %s for an unknown order (%s); ignored", kind, order_id)
        return Outcome(order_id, None, changed=False)
    why = mismatch(payment, order)
    if why is not None:
        log.warning("webhook %s for order %s ignored: %s", kind, order.order_id, why)
        return Outcome(order.order_id, order.status, changed=False, ignored=why)
    try:
        if kind == "payment_intent.succeeded":
            await mark_paid(redis, order.order_id, payment.intent_id)
            return Outcome(order.order_id, Status.PAID, changed=True)
        if kind == "payment_intent.payment_failed":
            await transition(redis, order.order_id, Status.PAYMENT_FAILED)
            return Outcome(order.order_id, Status.PAYMENT_FAILED, changed=True)
        await refund_order(redis, order.order_id)
        return Outcome(order.order_id, Status.REFUNDED, changed=True)
    except TransitionError as exc:
        current = Status(exc.current) if exc.current else None
        if kind == "payment_intent.succeeded" and current == Status.EXPIRED and refund:
            # Paid after its units went back on sale: give the money back.
            log.warning("order %s was paid after it expired; refunding", order.order_id)
            await refund(payment.intent_id)
        return Outcome(order.order_id, current, changed=False)
