"""Redis key names of the commerce area (one place, so scripts and code agree)."""

from __future__ import annotations

HOLDS_EXPIRY = "holds:expiry"  # zset "{viewer}|{show}|{sku}" -> hold expiry (ms)
ORDERS_PENDING = "orders:pending"  # zset order id -> payment deadline (ms)
DROPS_ACTIVE = "drops:active"  # zset show id -> drop end (ms)
WEBHOOK_SEEN = "stripe:event:{id}"  # SET NX marker per Stripe event id
SANDBOX_WEBHOOK_SECRET = "stripe:sandbox:webhook_secret"


def stock(show: str) -> str:
    """hash sku -> units available to add to a cart (held and sold units excluded)."""
    return f"stock:{show}"


def cart_adds(show: str) -> str:
    """hash sku -> units buyers have added to carts in this show (the host's tally)."""
    return f"cartadds:{show}"


def drop(show: str) -> str:
    return f"drop:{show}"


def cart(viewer: str) -> str:
    """hash "{show}|{sku}" -> "qty|unit_price_cents|drop_id"."""
    return f"cart:{viewer}"


def bought(show: str, viewer: str) -> str:
    """hash sku -> units of this viewer in orders (pending or paid); for per-buyer limits."""
    return f"bought:{show}:{viewer}"


def buyer_ip(viewer: str) -> str:
    """The IP of the viewer's first add to a cart: their units count against it."""
    return f"buyerip:{viewer}"


def ip_units(show: str, ip: str) -> str:
    """hash sku -> units held or ordered by the buyers of one IP (per-IP limits)."""
    return f"ipunits:{show}:{ip}"


def pending_orders(viewer: str) -> str:
    """zset order id -> payment deadline: the viewer's unpaid orders (capped)."""
    return f"pending:{viewer}"


def bought_by_email(show: str, email_token: str) -> str:
    """hash sku -> units in orders placed with one email (per-buyer limits by email)."""
    return f"bought:{show}:email:{email_token}"


def order_stock(order_id: str) -> str:
    """hash sku -> "qty|drop_id" held by a pending order (+ _show, _viewer)."""
    return f"orderstock:{order_id}"


def payment_intent(pi_id: str) -> str:
    return f"pi:{pi_id}"


def order_seq(show: str) -> str:
    return f"show:{show}:order_seq"
