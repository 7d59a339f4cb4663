"""Every Lua script call's keys hash to one Redis Cluster slot, and no script builds a
key name itself (a cluster rejects a key it was not given, unless by luck it lives on
the same node). Pure: no Redis needed."""

from __future__ import annotations

import re

import pytest
from redis.crc import key_slot

from checkout import auctions, carts, drops, keys, ordering, orders, scripts
from server import segments, throttle, viewer_slots
from server.chat import reactions
from server.chat import store as chat_store
from server.mail import outbox, reminders

SHOWS = ("demo", "spring-sale", "s1", "a")


def slots(names: list[str]) -> set[int]:
    return {key_slot(k.encode()) for k in names}


def calls(show: str) -> dict[str, list[str]]:
    """The keys of each script call for one show (as the code builds them)."""
    oid = keys.new_order_id(show)
    others = [keys.new_order_id(show) for _ in range(3)]
    auc = auctions.new_auction_id(show)
    chat = chat_store.ChatStore.__new__(chat_store.ChatStore)
    chat.show_id, chat.secret = show, b"k"
    return {
        "add_to_cart": carts.add_keys(show, "v1"),
        "remove_from_cart": carts.remove_keys(show, "v1"),
        "reap_holds": carts.reap_keys(show, ["v1", "v2", "pos:abc"]),
        "checkout": ordering.checkout_keys(show, "v1", oid, "10.0.0.1", others),
        "expire_orders": ordering.expire_keys(show, [oid, *others]),
        "restore_cart": ordering.restore_keys(show, "v1", oid),
        "drops": drops.drop_keys(show),
        "transition": orders.transition_keys(show, oid),
        "mark_paid": orders.mark_paid_keys(show, oid),
        "refund": orders.refund_keys(show, oid),
        "auction_start": auctions.start_keys(show, auc, auctions.new_auction_id(show)),
        "auction_bid": auctions.bid_keys(auc),
        "auction_cancel": auctions.cancel_keys(show, auc),
        "auction_claim": auctions.claim_keys(show, [auc, auctions.new_auction_id(show)]),
        "auction_finish": auctions.finish_keys(show, auc),
        "auction_order": [
            orders.order_key(auctions.auction_order_id(auc, 2)),
            orders.print_stream(show),
        ],
        "mail_requeue": [outbox.retry_key(show), orders.notify_stream(show)],
        "reminders": [reminders.key(show), orders.notify_stream(show)],
        "viewer_slots": [viewer_slots.show_key(show), viewer_slots.ip_key(show, "10.0.0.1")],
        "segments": [segments.key(show), keys.cart_adds(show)],
        "chat_commit": [chat.log_key, chat.last_key("a"), chat.mod_key("a"), chat.ip_key("ip")],
        "reactions": [reactions._key(show, "pending"), reactions._key(show, "totals")],
    }


@pytest.mark.parametrize("show", SHOWS)
def test_each_script_call_touches_one_slot(show):
    for name, names in calls(show).items():
        assert len(slots(names)) == 1, f"{name} spans slots: {names}"


def test_a_show_s_commerce_is_all_in_the_show_s_slot():
    for show in SHOWS:
        everything = [k for names in calls(show).values() for k in names]
        assert slots(everything) == {key_slot(show.encode())}, show


def test_login_throttle_keys_share_a_slot():
    assert len(slots(throttle._keys("10.0.0.1", "demo:host"))) == 1


def test_order_ids_name_their_show():
    for show in SHOWS:
        oid = keys.new_order_id(show)
        assert keys.order_show(oid) == show
        assert keys.order(oid) == f"order:{{{show}}}:{oid}"
        assert keys.order_show(auctions.auction_order_id(auctions.new_auction_id(show), 0)) == show
    # An id of the first layout names no show: its keys stay where they were.
    assert keys.order_show("ord_0123456789abcdef0123") is None
    assert keys.order("ord_0123456789abcdef0123") == "order:ord_0123456789abcdef0123"


SCRIPTS = {
    **{n: getattr(scripts, n) for n in dir(scripts) if n.isupper() and n[0] != "_"},
    **{n: getattr(auctions, n) for n in ("START", "BID", "CANCEL", "CLAIM", "FINISH")},
    "_TRANSITION_LUA": orders._TRANSITION_LUA,
    "_MARK_PAID_LUA": orders._MARK_PAID_LUA,
    "_REFUND_LUA": orders._REFUND_LUA,
    "_UNDO_LUA": orders._UNDO_LUA,
    "_REQUEUE_LUA": outbox._REQUEUE_LUA,
}
# A key named inside Lua: a literal with a ':' joined to something ('stock:' .. show), or
# a KEYS entry extended (KEYS[1] .. ':bids'). Error replies ('conflict:' .. cur) are not keys.
BUILT_KEY = re.compile(r"""(?<!error_reply\()['"][\w-]*:['"]\s*\.\.|KEYS\[\d+\]\s*\.\.""")


def test_no_script_builds_a_key_name():
    for name, text in SCRIPTS.items():
        if not isinstance(text, str):
            continue
        found = BUILT_KEY.findall(text)
        assert not found, f"{name} builds key names in Lua: {found}"


def test_the_check_catches_the_first_layout():
    # The checkout script of the first layout built these; the check must see them.
    assert BUILT_KEY.search("redis.call('HGET', 'order:' .. oid, 'status')")
    assert BUILT_KEY.search("for _, k in ipairs({KEYS[1], KEYS[1] .. ':bids'}) do")


def test_rehearsal_on_a_cluster_is_refused_clearly(tmp_path, write_manifest):
    """Rehearsal keeps its data in database 15, which a Redis Cluster does not have."""
    import os
    import subprocess
    import sys

    argv = [sys.executable, "-m", "server.cli", "serve", "--rehearsal", "--port", "0"]
    argv += ["--redis", "redis+cluster://127.0.0.1:1", "--data-dir", str(tmp_path)]
    argv += ["--manifest", str(write_manifest("demo"))]
    env = {**os.environ, "STRIPE_API_BASE": "http://127.0.0.1:9"}  # no sandbox started
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert "rehearsal mode needs a single Redis" in done.stderr
