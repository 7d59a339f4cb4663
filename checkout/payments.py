"""Stripe through the official ``stripe`` library (its async client over aiohttp).

One ``PaymentGateway`` per app: a ``StripeClient`` pointed at api.stripe.com, or in
sandbox mode at localstripe. PaymentIntents are created only at checkout (Stripe's rate
limits make a per-click object impossible during a drop), with an idempotency key
derived from the order id so a retried checkout never charges twice.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import stripe
from stripe import AIOHTTPClient

log = logging.getLogger("showroom.checkout")

SANDBOX_SECRET_KEY = "sk_test_showroom_sandbox"
SANDBOX_PUBLISHABLE_KEY = "pk_test_showroom_sandbox"
TOTAL_TIMEOUT_S = 10.0  # a Stripe call, retries included, never takes longer


@dataclass(frozen=True)
class Intent:
    id: str
    client_secret: str


@dataclass(frozen=True)
class Card:
    number: str
    exp_month: int
    exp_year: int
    cvc: str


class PaymentDeclined(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


class PaymentUnavailable(Exception):
    pass


class PaymentGateway:
    def __init__(
        self,
        secret_key: str,
        publishable_key: str,
        *,
        api_base: str | None = None,
        sandbox: bool = False,
        total_timeout_s: float = TOTAL_TIMEOUT_S,
    ) -> None:
        self.publishable_key = publishable_key
        self.sandbox = sandbox
        self.api_base = api_base
        self.total_timeout_s = total_timeout_s
        # One retry of a request that failed on the network, each try bounded; the whole
        # call (retries and every request of a card payment) by total_timeout_s.
        self._http = AIOHTTPClient(timeout=max(1.0, total_timeout_s / 2.5))
        self.client = stripe.StripeClient(
            secret_key,
            base_addresses={"api": api_base} if api_base else None,
            http_client=self._http,
            max_network_retries=1,
        )

    async def _bounded(self, call, timeout_s: float | None = None):
        """Run ``call`` within ``timeout_s`` (default total_timeout_s); PaymentUnavailable
        when Stripe is slower."""
        limit = self.total_timeout_s if timeout_s is None else timeout_s
        try:
            return await asyncio.wait_for(call, limit)
        except TimeoutError:
            log.warning("Stripe did not answer within %.0f s", limit)
            raise PaymentUnavailable(f"no answer within {limit:.0f} s") from None

    async def close(self) -> None:
        await self._http.close_async()

    async def create_intent(
        self, order_id: str, amount_cents: int, currency: str, show: str
    ) -> Intent:
        try:
            pi = await self._bounded(
                self.client.v1.payment_intents.create_async(
                    params={
                        "amount": amount_cents,
                        "currency": currency,
                        "metadata": {"order_id": order_id, "show": show},
                    },
                    options={"idempotency_key": f"showroom-order-{order_id}"},
                )
            )
        except stripe.StripeError as exc:
            log.warning("PaymentIntent for %s failed: %s", order_id, exc)
            raise PaymentUnavailable(str(exc.user_message or exc)) from exc
        return Intent(pi.id, pi.client_secret or "")

    async def pay_with_card(self, intent_id: str, card: Card) -> str:
        """Sandbox test-card form: attach the card like Stripe.js would, then confirm.

        Returns the PaymentIntent status; raises PaymentDeclined with Stripe's message.
        The order itself moves when the webhook arrives (the same path as real payments).
        """
        return await self._bounded(self._pay_with_card(intent_id, card))

    async def _pay_with_card(self, intent_id: str, card: Card) -> str:
        try:
            pm = await self.client.v1.payment_methods.create_async(params=_card_params(card))
            # Saving the card to a customer runs the card check that declines 4000...0002.
            customer = await self.client.v1.customers.create_async(params={})
            await self.client.v1.payment_methods.attach_async(
                pm.id, params={"customer": customer.id}
            )
            await self.client.v1.payment_intents.update_async(
                intent_id, params={"payment_method": pm.id, "customer": customer.id}
            )
            pi = await self.client.v1.payment_intents.confirm_async(intent_id)
        except stripe.CardError as exc:
            raise PaymentDeclined(
                exc.code or "card_declined", exc.user_message or str(exc)
            ) from exc
        except stripe.InvalidRequestError as exc:
            raise PaymentDeclined("invalid_card", exc.user_message or str(exc)) from exc
        except stripe.StripeError as exc:
            raise PaymentUnavailable(str(exc.user_message or exc)) from exc
        return pi.status

    async def refund(self, intent_id: str, *, strict: bool = False) -> None:
        """Refund a payment in full, once however often it is asked (idempotency key).
        ``strict`` raises PaymentUnavailable when Stripe refuses; otherwise it is logged."""
        try:
            await self._bounded(
                self.client.v1.refunds.create_async(
                    params={"payment_intent": intent_id},
                    options={"idempotency_key": f"showroom-refund-{intent_id}"},
                )
            )
        except (stripe.StripeError, PaymentUnavailable) as exc:
            log.error("refund of %s failed: %s", intent_id, exc)
            if strict:
                raise PaymentUnavailable(str(exc.user_message or exc)) from exc

    # --- saved cards (auctions) --------------------------------------------------------
    async def save_card(self, card: Card, customer: str | None = None) -> tuple[str, str]:
        """Sandbox: a test card saved for off-session charges, as Stripe.js would after a
        SetupIntent. Returns (customer, payment method); PaymentDeclined if the card check
        refuses it (4000 0000 0000 0002)."""
        return await self._bounded(self._save_card(card, customer))

    async def _save_card(self, card: Card, customer: str | None) -> tuple[str, str]:
        try:
            pm = await self.client.v1.payment_methods.create_async(params=_card_params(card))
            if customer is None:
                customer = (await self.client.v1.customers.create_async(params={})).id
            await self.client.v1.payment_methods.attach_async(pm.id, params={"customer": customer})
        except stripe.CardError as exc:
            raise PaymentDeclined(
                exc.code or "card_declined", exc.user_message or str(exc)
            ) from exc
        except stripe.InvalidRequestError as exc:
            raise PaymentDeclined("invalid_card", exc.user_message or str(exc)) from exc
        except stripe.StripeError as exc:
            raise PaymentUnavailable(str(exc.user_message or exc)) from exc
        return customer, pm.id

    async def create_setup(self, customer: str | None = None) -> tuple[str, str, str]:
        """A SetupIntent for saving a card in the browser (Stripe.js confirms it).
        Returns (customer, setup intent id, client secret)."""
        try:
            if customer is None:
                customer = (
                    await self._bounded(self.client.v1.customers.create_async(params={}))
                ).id
            si = await self._bounded(
                self.client.v1.setup_intents.create_async(
                    params={"customer": customer, "usage": "off_session"}
                )
            )
        except stripe.StripeError as exc:
            raise PaymentUnavailable(str(exc.user_message or exc)) from exc
        return customer, si.id, si.client_secret or ""

    async def payment_intent(self, intent_id: str, timeout_s: float | None = None) -> dict:
        """The PaymentIntent as Stripe has it now (the object its events carry)."""
        try:
            pi = await self._bounded(
                self.client.v1.payment_intents.retrieve_async(intent_id), timeout_s
            )
        except stripe.StripeError as exc:
            raise PaymentUnavailable(str(exc.user_message or exc)) from exc
        return pi.to_dict()

    async def setup_result(self, setup_id: str) -> str | None:
        """The payment method a confirmed SetupIntent saved (None while unconfirmed)."""
        try:
            si = await self._bounded(self.client.v1.setup_intents.retrieve_async(setup_id))
        except stripe.StripeError as exc:
            raise PaymentUnavailable(str(exc.user_message or exc)) from exc
        if si.status != "succeeded" or not si.payment_method:
            return None
        pm = si.payment_method
        return pm if isinstance(pm, str) else pm.id

    async def charge_off_session(
        self,
        order_id: str,
        amount_cents: int,
        currency: str,
        show: str,
        customer: str,
        payment_method: str,
        idempotency_key: str,
    ) -> tuple[str, str]:
        """Charge a saved card without the buyer present (the auction's end). Returns
        (PaymentIntent id, status); PaymentDeclined when the card is refused."""
        try:
            pi = await self._bounded(
                self.client.v1.payment_intents.create_async(
                    params={
                        "amount": amount_cents,
                        "currency": currency,
                        "customer": customer,
                        "payment_method": payment_method,
                        "confirm": True,
                        "off_session": True,
                        "metadata": {"order_id": order_id, "show": show},
                    },
                    options={"idempotency_key": idempotency_key},
                )
            )
        except stripe.CardError as exc:
            raise PaymentDeclined(
                exc.code or "card_declined", exc.user_message or str(exc)
            ) from exc
        except stripe.InvalidRequestError as exc:
            raise PaymentDeclined("invalid_request", exc.user_message or str(exc)) from exc
        except stripe.StripeError as exc:
            raise PaymentUnavailable(str(exc.user_message or exc)) from exc
        return pi.id, pi.status


def _card_params(card: Card) -> dict:
    """A card as Stripe's payment_methods.create takes it (the test-card forms)."""
    return {
        "type": "card",
        "card": {
            "number": card.number,
            "exp_month": card.exp_month,
            "exp_year": card.exp_year,
            "cvc": card.cvc,
        },
    }
