"""What each email says (pure functions: data in, ``Draft`` out)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import formatdate, make_msgid

# Deliberately plain: a receiving server does the real check. This refuses what can never
# be delivered or would break a header (spaces, control characters, no domain).
_EMAIL = re.compile(r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]{1,64}@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+$")


def valid_email(value: str) -> bool:
    return len(value) <= 254 and bool(_EMAIL.match(value))


@dataclass(frozen=True)
class Draft:
    to: str
    subject: str
    text: str
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Line:
    name: str
    quantity: int
    amount: str  # "36.00"


def _money(amount: str, currency: str) -> str:
    return f"{amount} {currency.upper()}"


def receipt(
    *,
    to: str,
    show_title: str,
    number: int,
    lines: list[Line],
    amount: str,
    currency: str,
    pickup_note: str,
    order_url: str,
    test: bool = False,
) -> Draft:
    items = "\n".join(f"  {ln.quantity} x {ln.name}  {_money(ln.amount, currency)}" for ln in lines)
    prefix = "[TEST] " if test else ""
    text = (
        f"Thank you for your order from {show_title}.\n\n"
        f"Order #{number}\n{items}\n\n"
        f"Paid: {_money(amount, currency)}\n\n"
        f"{pickup_note}. We'll email you again when it is ready.\n\n"
        f"Your order, on any device:\n{order_url}\n"
    )
    if test:
        text += "\nThis was a test payment: no money was taken.\n"
    return Draft(to, f"{prefix}Your order #{number} from {show_title}", text)


def ready(*, to: str, show_title: str, number: int, pickup_note: str, order_url: str) -> Draft:
    text = (
        f"Your order #{number} from {show_title} is packed and ready.\n\n"
        f"{pickup_note}. Show order number {number} at the counter.\n\n"
        f"Your order:\n{order_url}\n"
    )
    return Draft(to, f"Order #{number} is ready for pickup", text)


def refund(
    *, to: str, show_title: str, number: int, amount: str, currency: str, order_url: str
) -> Draft:
    text = (
        f"Your order #{number} from {show_title} has been refunded: "
        f"{_money(amount, currency)}.\n\n"
        "Card refunds usually show on your statement within 5-10 days.\n\n"
        f"Your order:\n{order_url}\n"
    )
    return Draft(to, f"Refund for order #{number}", text)


def reminder(*, to: str, show_title: str, watch_url: str, unsubscribe_url: str) -> Draft:
    text = (
        f"{show_title} is live now.\n\nWatch and shop: {watch_url}\n\n"
        "You asked for one reminder for this show; this is it.\n"
        f"Not interested any more? {unsubscribe_url}\n"
    )
    return Draft(
        to,
        f"Live now: {show_title}",
        text,
        headers={"List-Unsubscribe": f"<{unsubscribe_url}>"},
    )


def to_message(draft: Draft, sender: str, now: datetime | None = None) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = draft.to
    msg["Subject"] = draft.subject
    msg["Date"] = formatdate((now or datetime.now(UTC)).timestamp(), usegmt=True)
    msg["Message-ID"] = make_msgid(domain=sender.rpartition("@")[2] or "showroom.local")
    for name, value in draft.headers.items():
        msg[name] = value
    msg.set_content(draft.text)
    return msg
