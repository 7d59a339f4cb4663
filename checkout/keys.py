"""Redis key names of the commerce area (one place, so scripts and code agree).

Every key of one show's commerce carries the show as its hash tag (``stock:{s1}``,
``cart:{s1}:viewer``, ``order:{s1}:ord_s1__...``): on a Redis Cluster they all live in
one slot, so each Lua script, which gets every key it touches through KEYS, runs on one
node. Order ids carry their show (``ord_{show}__{hex}``) so that an order's keys can be
named from its id alone (an API path, a Stripe webhook's metadata). A script never
builds a key name inside Lua; ``tests/test_redis_cluster_keys.py`` checks every call.
"""

from __future__ import annotations

import uuid

WEBHOOK_SEEN = "stripe:event:{id}"  # SET NX marker per Stripe event id (one key per call)
SANDBOX_WEBHOOK_SECRET = "stripe:sandbox:webhook_secret"
ORDER_SEP = "__"  # show slugs have no "_": ord_{show}__{hex} splits at the first "__"
# ord_ + a show slug (up to 64) + __ + 20 hex, or an auction's 16 hex + _rank: paths
# longer than this name no order.
ORDER_ID_MAX = 127


def tag(show: str) -> str:
    return "{" + show + "}"


def stock(show: str) -> str:
    """hash sku -> units available to add to a cart (held and sold units excluded)."""
    return f"stock:{tag(show)}"


def cart_adds(show: str) -> str:
    """hash sku -> units buyers have added to carts in this show (the host's tally)."""
    return f"cartadds:{tag(show)}"


def drop(show: str) -> str:
    return f"drop:{tag(show)}"


def cart(show: str, viewer: str) -> str:
    """hash "{show}|{sku}" -> "qty|unit_price_cents|drop_id": a viewer's cart in one show
    (``GET /api/cart`` shows the viewer's carts of every show together)."""
    return f"cart:{tag(show)}:{viewer}"


def holds_expiry(show: str) -> str:
    """zset "{viewer}|{show}|{sku}" -> hold expiry (ms): the show's live holds."""
    return f"holds:expiry:{tag(show)}"


def orders_index(show: str) -> str:
    """zset order id -> created_at (ms): every order of the show (reports, staff lists)."""
    return f"orders:{tag(show)}"


def orders_pending(show: str) -> str:
    """zset order id -> payment deadline (ms): the show's unpaid orders."""
    return f"orders:pending:{tag(show)}"


def bought(show: str) -> str:
    """hash "{viewer}|{sku}" -> units in orders (pending or paid); per-buyer limits."""
    return f"bought:{tag(show)}"


def bought_by_email(show: str) -> str:
    """hash "{email token}|{sku}" -> units in orders placed with one email."""
    return f"boughtemail:{tag(show)}"


def buyer_ip(show: str, viewer: str) -> str:
    """The IP of the viewer's first add to a cart in this show: their units count
    against it."""
    return f"buyerip:{tag(show)}:{viewer}"


def ip_units(show: str) -> str:
    """hash "{ip}|{sku}" -> units held or ordered by the buyers of one IP (per-IP limits)."""
    return f"ipunits:{tag(show)}"


def pending_orders(show: str, viewer: str) -> str:
    """zset order id -> payment deadline: the viewer's unpaid orders in this show."""
    return f"pending:{tag(show)}:{viewer}"


def pending_ip(show: str, ip: str) -> str:
    """zset order id -> payment deadline: the unpaid orders of one IP's buyers."""
    return f"pending:{tag(show)}:ip:{ip}"


def order_seq(show: str) -> str:
    return f"show:{tag(show)}:order_seq"


def payment_intent(pi_id: str) -> str:
    """The order id a Stripe PaymentIntent was created for. Not in a show's slot: a
    refund's event names only the PaymentIntent. Only ever read or written alone."""
    return f"pi:{pi_id}"


# --- orders: their keys follow from the id ------------------------------------------


def new_order_id(show: str) -> str:
    return f"ord_{show}{ORDER_SEP}{uuid.uuid4().hex[:20]}"


def order_show(order_id: str) -> str | None:
    """The show an order id names; None for ids of the earlier layout (``ord_{hex}``)."""
    if not order_id.startswith("ord_") or ORDER_SEP not in order_id:
        return None
    show = order_id[4:].split(ORDER_SEP, 1)[0]
    return show or None


def _order_scoped(prefix: str, order_id: str) -> str:
    show = order_show(order_id)
    # An order of the earlier layout keeps its untagged key (only ever on a single Redis).
    return f"{prefix}:{tag(show)}:{order_id}" if show else f"{prefix}:{order_id}"


def order(order_id: str) -> str:
    return _order_scoped("order", order_id)


def order_stock(order_id: str) -> str:
    """hash sku -> "qty|drop_id" held by a pending order (+ _show, _viewer, _ip, _email)."""
    return _order_scoped("orderstock", order_id)
