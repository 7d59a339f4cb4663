"""The order state machine only moves forward; paid and its print job are one step."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis

from checkout.orders import (
    Order,
    OrderItem,
    PrintJob,
    Status,
    TransitionError,
    can_transition,
    load_order,
    mark_paid,
    print_stream,
    save_new_order,
    transition,
)


def test_state_machine_moves_forward_only():
    assert can_transition("pending_payment", "paid")
    assert can_transition("paid", "printed")
    assert can_transition("printed", "fulfilled")
    assert can_transition("printed", "ready") and can_transition("ready", "fulfilled")
    assert can_transition("paid", "ready")  # packed while the printer is down
    assert not can_transition("ready", "printed") and not can_transition("fulfilled", "ready")
    assert can_transition("fulfilled", "refunded")
    assert not can_transition("paid", "pending_payment")
    assert not can_transition("printed", "paid")
    assert not can_transition("expired", "paid")
    assert not can_transition("refunded", "paid")


async def test_mark_paid_is_atomic_and_once(redis_url):
    redis = aioredis.Redis.from_url(redis_url)
    order = Order(
        "o1",
        "demo",
        "v1",
        Status.PENDING_PAYMENT,
        [OrderItem("MUG-01", "Mug", 2, 1800)],
        3600,
        "usd",
    )
    await save_new_order(redis, order)
    assert await mark_paid(redis, "o1", "pi_1") == Status.PENDING_PAYMENT
    with pytest.raises(TransitionError) as err:
        await mark_paid(redis, "o1", "pi_1")
    assert err.value.current == "paid"
    entries = await redis.xrange(print_stream("demo"))
    assert len(entries) == 1
    assert PrintJob.unpack(entries[0][1][b"job"]).order_id == "o1"
    await transition(redis, "o1", Status.PRINTED)
    with pytest.raises(TransitionError):
        await transition(redis, "o1", Status.PAID)
    loaded = await load_order(redis, "o1")
    assert loaded.status == Status.PRINTED and loaded.paid_at and loaded.printed_at
    assert loaded.public()["amount"] == "36.00"
    with pytest.raises(TransitionError):
        await transition(redis, "missing", Status.PRINTED)
    await redis.aclose()
