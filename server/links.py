"""Signed links that work on any device: the buyer's order page, reminder unsubscribe.

A link carries an HMAC of what it opens under the app's signing secret, so it needs no
cookie and cannot be guessed or moved to another order or address.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from urllib.parse import quote


def _mac(secret: bytes, purpose: str, value: str) -> str:
    digest = hmac.new(secret, f"{purpose}:{value}".encode(), hashlib.sha256).digest()[:18]
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def order_token(secret: bytes, order_id: str) -> str:
    return _mac(secret, "order", order_id)


def check_order_token(secret: bytes, order_id: str, token: str | None) -> bool:
    return bool(token) and hmac.compare_digest(order_token(secret, order_id), token or "")


def order_url(base_url: str, secret: bytes, order_id: str) -> str:
    return f"{base_url}/orders/{quote(order_id)}?t={order_token(secret, order_id)}"


def unsubscribe_token(secret: bytes, show_id: str, email: str) -> str:
    return _mac(secret, "unsubscribe", f"{show_id}|{email.lower()}")


def check_unsubscribe_token(secret: bytes, show_id: str, email: str, token: str | None) -> bool:
    expected = unsubscribe_token(secret, show_id, email)
    return bool(token) and hmac.compare_digest(expected, token or "")


def unsubscribe_url(base_url: str, secret: bytes, show_id: str, email: str) -> str:
    token = unsubscribe_token(secret, show_id, email)
    return (
        f"{base_url}/shows/{quote(show_id)}/reminders/unsubscribe"
        f"?email={quote(email, safe='')}&t={token}"
    )
