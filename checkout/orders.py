"""Orders: the record, the state machine, and its atomic moves in Redis.

An order is the Redis hash ``order:{show}:{id}`` (``checkout.keys.order``); its
``status`` only moves forward (``can_transition``), and every move is one Lua script so
that concurrent webhooks, workers and staff never move it backwards. Marking an order
paid and appending its print job to the show's stream ``print:jobs:{show}`` happen in
the same script: a paid order always has a print job.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

import msgpack

from checkout import keys


class Status(StrEnum):
    PENDING_PAYMENT = "pending_payment"
    PAID = "paid"
    PRINTED = "printed"
    READY = "ready"  # packed and waiting at the counter (staff marked it)
    FULFILLED = "fulfilled"
    PAYMENT_FAILED = "payment_failed"
    EXPIRED = "expired"
    REFUNDED = "refunded"


# Forward moves only. A late or replayed webhook can never undo a later state.
TRANSITIONS: dict[Status, frozenset[Status]] = {
    Status.PENDING_PAYMENT: frozenset({Status.PAID, Status.PAYMENT_FAILED, Status.EXPIRED}),
    # A card can be retried after a decline; an expired order whose payment still
    # succeeds is honoured if its holds are still there (checked by the caller).
    Status.PAYMENT_FAILED: frozenset({Status.PAID, Status.EXPIRED}),
    # Staff may pack an order whose label has not printed yet (printer down): paid -> ready.
    Status.PAID: frozenset({Status.PRINTED, Status.READY, Status.FULFILLED, Status.REFUNDED}),
    Status.PRINTED: frozenset({Status.READY, Status.FULFILLED, Status.REFUNDED}),
    Status.READY: frozenset({Status.FULFILLED, Status.REFUNDED}),
    Status.FULFILLED: frozenset({Status.REFUNDED}),
    Status.EXPIRED: frozenset(),
    Status.REFUNDED: frozenset(),
}


def can_transition(old: Status | str, new: Status | str) -> bool:
    return Status(new) in TRANSITIONS[Status(old)]


def print_stream(show: str) -> str:
    """The show's print jobs (a stream in the show's slot, read by ``devices.worker``)."""
    return f"print:jobs:{keys.tag(show)}"


# Order moves that someone outside checkout acts on (the buyer's emails), appended in the
# same script as the move itself so none is lost: entries ``job`` = msgpack
# {"kind": "order", "order_id", "status"}. Other notifications of the show share it.
def notify_stream(show: str) -> str:
    return f"notify:outbox:{keys.tag(show)}"


NOTIFY_STATUSES = frozenset({"paid", "ready", "refunded"})
order_key = keys.order


def paid_count_key(show: str) -> str:
    """How many orders of the show were paid (the public sales counter)."""
    return f"show:{keys.tag(show)}:paid_orders"


# Finished orders (nothing left to do on the floor) are kept this long, then Redis
# drops them: SHOWROOM_ORDER_RETENTION_DAYS (default 30).
FINISHED = frozenset({Status.FULFILLED, Status.EXPIRED, Status.REFUNDED})


def retention_s(env: dict[str, str] | None = None) -> int:
    env = os.environ if env is None else env
    return int(float(env.get("SHOWROOM_ORDER_RETENTION_DAYS") or 30) * 86400)


@dataclass
class OrderItem:
    sku: str
    name: str
    quantity: int
    unit_price_cents: int

    @property
    def total_cents(self) -> int:
        return self.quantity * self.unit_price_cents


@dataclass
class Order:
    order_id: str
    show: str
    viewer: str
    status: Status
    items: list[OrderItem]
    amount_cents: int
    currency: str
    buyer_name: str = ""
    buyer_email: str = ""
    created_at: float = field(default_factory=time.time)
    paid_at: float | None = None
    printed_at: float | None = None
    ready_at: float | None = None
    fulfilled_at: float | None = None
    payment_intent: str | None = None
    number: int = 0  # short, per-show number printed big on the label
    print_error: str | None = None
    sandbox: bool = False  # paid with a test card against the Stripe sandbox
    channel: str = "online"  # "online" | "in_person" (sold at the showroom's counter)
    payment_method: str = ""  # in person: "cash" | "card_present"
    refunded_at: float | None = None

    def to_redis(self) -> dict[str, str]:
        data = asdict(self)
        data["items"] = json.dumps(data["items"])
        data["status"] = str(self.status)
        data["sandbox"] = "1" if self.sandbox else ""
        return {k: "" if v is None else str(v) for k, v in data.items()}

    @classmethod
    def from_redis(cls, raw: dict[bytes | str, bytes | str]) -> Order:
        d = {
            (k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
            for k, v in raw.items()
        }

        def opt_float(key: str) -> float | None:
            return float(d[key]) if d.get(key) else None

        return cls(
            order_id=d["order_id"],
            show=d["show"],
            viewer=d.get("viewer", ""),
            status=Status(d["status"]),
            items=[OrderItem(**i) for i in json.loads(d.get("items") or "[]")],
            amount_cents=int(d["amount_cents"]),
            currency=d["currency"],
            buyer_name=d.get("buyer_name", ""),
            buyer_email=d.get("buyer_email", ""),
            created_at=float(d.get("created_at") or 0),
            paid_at=opt_float("paid_at"),
            printed_at=opt_float("printed_at"),
            ready_at=opt_float("ready_at"),
            fulfilled_at=opt_float("fulfilled_at"),
            payment_intent=d.get("payment_intent") or None,
            number=int(d.get("number") or 0),
            print_error=d.get("print_error") or None,
            sandbox=d.get("sandbox") == "1",
            channel=d.get("channel") or "online",
            payment_method=d.get("payment_method", ""),
            refunded_at=opt_float("refunded_at"),
        )

    def event(self, status: Status | None = None, **extra: Any) -> dict[str, Any]:
        """The ``order`` live event (staff pages, the buyer's status)."""
        return {
            "type": "order",
            "viewer": self.viewer,  # who may see it (server.events.visible_to); never sent
            "order_id": self.order_id,
            "number": self.number,
            "status": str(status or self.status),
            "show": self.show,
            **extra,
        }

    def public(self) -> dict[str, Any]:
        """The API.md view of an order."""
        return {
            "order_id": self.order_id,
            "number": self.number,
            "show": self.show,
            "status": str(self.status),
            "items": [
                {
                    "sku": i.sku,
                    "name": i.name,
                    "quantity": i.quantity,
                    "unit_price": cents_str(i.unit_price_cents),
                }
                for i in self.items
            ],
            "amount": cents_str(self.amount_cents),
            "currency": self.currency,
            "buyer_name": self.buyer_name,
            "created_at": self.created_at,
            "paid_at": self.paid_at,
            "printed_at": self.printed_at,
            "ready_at": self.ready_at,
            "fulfilled_at": self.fulfilled_at,
            "print_error": self.print_error,
            "sandbox": self.sandbox,
            "channel": self.channel,
            "payment_method": self.payment_method or None,
            "refunded_at": self.refunded_at,
        }


def cents_str(cents: int) -> str:
    return f"{cents // 100}.{cents % 100:02d}"


# --- print jobs ---------------------------------------------------------------------


@dataclass
class PrintJob:
    order_id: str
    show: str
    reprint: bool = False
    enqueued_at: float = field(default_factory=time.time)

    def pack(self) -> bytes:
        return msgpack.packb(asdict(self))

    @classmethod
    def unpack(cls, data: bytes) -> PrintJob:
        return cls(**msgpack.unpackb(data))


# --- atomic moves -------------------------------------------------------------------

# KEYS[1] order hash, KEYS[2] notify stream; ARGV: new status, timestamp field name
# ('' for none), now, packed notification ('' for none), retention in s (0: keep; a
# finished order expires after it), then the allowed previous statuses. Returns the
# previous status, or an error reply.
_TRANSITION_LUA = """
local cur = redis.call('HGET', KEYS[1], 'status')
if not cur then return redis.error_reply('not_found') end
for i = 6, #ARGV do
  if ARGV[i] == cur then
    redis.call('HSET', KEYS[1], 'status', ARGV[1])
    if ARGV[2] ~= '' then redis.call('HSET', KEYS[1], ARGV[2], ARGV[3]) end
    if ARGV[4] ~= '' then redis.call('XADD', KEYS[2], '*', 'job', ARGV[4]) end
    if tonumber(ARGV[5]) > 0 then redis.call('EXPIRE', KEYS[1], ARGV[5]) end
    return cur
  end
end
return redis.error_reply('conflict:' .. cur)
"""

# KEYS[1] order hash, KEYS[2] print stream, KEYS[3] notify stream, KEYS[4] the show's
# paid-order count, KEYS[5] the order's stock record; ARGV[1] now, ARGV[2] packed job,
# ARGV[3] payment intent id, ARGV[4] packed notification, ARGV[5] retention (s), then
# allowed previous statuses. Paid, its print job and the receipt in one step: all or
# nothing.
_MARK_PAID_LUA = """
local cur = redis.call('HGET', KEYS[1], 'status')
if not cur then return redis.error_reply('not_found') end
for i = 6, #ARGV do
  if ARGV[i] == cur then
    redis.call('HSET', KEYS[1], 'status', 'paid', 'paid_at', ARGV[1])
    if ARGV[3] ~= '' then redis.call('HSET', KEYS[1], 'payment_intent', ARGV[3]) end
    redis.call('XADD', KEYS[2], '*', 'job', ARGV[2])
    redis.call('XADD', KEYS[3], '*', 'job', ARGV[4])
    redis.call('INCR', KEYS[4])
    -- The units are sold: what the order held is history now.
    redis.call('EXPIRE', KEYS[5], ARGV[5])
    return cur
  end
end
return redis.error_reply('conflict:' .. cur)
"""

_TIMESTAMP_FIELD = {
    Status.PAID: "paid_at",
    Status.PRINTED: "printed_at",
    Status.READY: "ready_at",
    Status.FULFILLED: "fulfilled_at",
}


class TransitionError(Exception):
    def __init__(self, order_id: str, current: str | None, wanted: str) -> None:
        self.order_id, self.current, self.wanted = order_id, current, wanted
        super().__init__(f"order {order_id}: cannot move from {current} to {wanted}")


def _notification(order_id: str, status: str) -> bytes:
    return msgpack.packb({"kind": "order", "order_id": order_id, "status": status})


def _allowed_from(new: Status) -> list[str]:
    return [str(old) for old, nxt in TRANSITIONS.items() if new in nxt]


def _parse_error(order_id: str, exc: Exception, wanted: str) -> TransitionError:
    msg = str(exc)
    current = msg.split("conflict:", 1)[1] if "conflict:" in msg else None
    return TransitionError(order_id, current, wanted)


# --- the keys of each script call (pure: tests check they share one slot) -----------


def transition_keys(show: str, order_id: str) -> list[str]:
    return [order_key(order_id), notify_stream(show)]


def mark_paid_keys(show: str, order_id: str) -> list[str]:
    return [
        order_key(order_id),
        print_stream(show),
        notify_stream(show),
        paid_count_key(show),
        keys.order_stock(order_id),
    ]


def refund_keys(show: str, order_id: str) -> list[str]:
    return [order_key(order_id), keys.stock(show), keys.bought(show), notify_stream(show)]


async def order_show(redis, order_id: str) -> str:
    """The show of an order: from its id, or (an order of the earlier layout) its hash."""
    show = keys.order_show(order_id)
    if show is not None:
        return show
    raw = await redis.hget(order_key(order_id), "show")
    return raw.decode() if isinstance(raw, bytes) else (raw or "")


async def load_order(redis, order_id: str) -> Order | None:
    raw = await redis.hgetall(order_key(order_id))
    return Order.from_redis(raw) if raw else None


async def save_new_order(redis, order: Order) -> None:
    pipe = redis.pipeline(transaction=True)
    pipe.hset(order_key(order.order_id), mapping=order.to_redis())
    pipe.zadd(keys.orders_index(order.show), {order.order_id: order.created_at})
    await pipe.execute()


async def transition(redis, order_id: str, new: Status, now: float | None = None) -> Status:
    """Move an order forward; returns the previous status or raises TransitionError."""
    now = time.time() if now is None else now
    show = await order_show(redis, order_id)
    try:
        prev = await redis.eval(
            _TRANSITION_LUA,
            2,
            *transition_keys(show, order_id),
            str(new),
            _TIMESTAMP_FIELD.get(new, ""),
            repr(now),
            _notification(order_id, str(new)) if str(new) in NOTIFY_STATUSES else "",
            retention_s() if new in FINISHED else 0,
            *_allowed_from(new),
        )
    except Exception as exc:  # redis.ResponseError carries the script's error reply
        if "not_found" in str(exc) or "conflict:" in str(exc):
            raise _parse_error(order_id, exc, str(new)) from None
        raise
    return Status(prev.decode() if isinstance(prev, bytes) else prev)


async def mark_paid(
    redis, order_id: str, payment_intent: str = "", now: float | None = None
) -> Status:
    """Paid + print job, atomically. Raises TransitionError if not payable (e.g. already paid)."""
    now = time.time() if now is None else now
    show = await order_show(redis, order_id)
    job = PrintJob(order_id=order_id, show=show, enqueued_at=now).pack()
    try:
        prev = await redis.eval(
            _MARK_PAID_LUA,
            5,
            *mark_paid_keys(show, order_id),
            repr(now),
            job,
            payment_intent,
            _notification(order_id, "paid"),
            retention_s(),
            *_allowed_from(Status.PAID),
        )
    except Exception as exc:
        if "not_found" in str(exc) or "conflict:" in str(exc):
            raise _parse_error(order_id, exc, "paid") from None
        raise
    return Status(prev.decode() if isinstance(prev, bytes) else prev)


async def prune_order_index(redis, show: str, now: float | None = None, batch: int = 500) -> int:
    """Drop from the show's order index the orders Redis expired (finished orders past
    their retention); returns how many. Only entries older than the retention can be
    gone, so only those are looked at."""
    now = time.time() if now is None else now
    index = keys.orders_index(show)
    old = await redis.zrangebyscore(index, "-inf", now - retention_s(), start=0, num=batch)
    if not old:
        return 0
    pipe = redis.pipeline(transaction=False)
    for oid in old:
        pipe.exists(order_key(oid.decode() if isinstance(oid, bytes) else oid))
    gone = [oid for oid, exists in zip(old, await pipe.execute(), strict=True) if not exists]
    if gone:
        await redis.zrem(index, *gone)
    return len(gone)


# KEYS[1] order hash, KEYS[2] the show's stock, KEYS[3] the show's bought units
# ("{viewer}|{sku}"), KEYS[4] notify stream; ARGV[1] now, ARGV[2] packed notification,
# ARGV[3] retention (s), then the statuses a refund may start from (the buyer is the
# order's own 'viewer'). Refunded, its units back on sale and the buyer's limit freed,
# once: a second refund (the webhook after the staff's button) finds it refunded.
_REFUND_LUA = """
local cur = redis.call('HGET', KEYS[1], 'status')
if not cur then return redis.error_reply('not_found') end
local viewer = redis.call('HGET', KEYS[1], 'viewer') or ''
for i = 4, #ARGV do
  if ARGV[i] == cur then
    redis.call('HSET', KEYS[1], 'status', 'refunded', 'refunded_at', ARGV[1])
    if tonumber(ARGV[3]) > 0 then redis.call('EXPIRE', KEYS[1], ARGV[3]) end
    local items = cjson.decode(redis.call('HGET', KEYS[1], 'items') or '[]')
    for _, item in ipairs(items) do
      redis.call('HINCRBY', KEYS[2], item.sku, item.quantity)
      local f = viewer .. '|' .. item.sku
      if redis.call('HEXISTS', KEYS[3], f) == 1 then
        if redis.call('HINCRBY', KEYS[3], f, -item.quantity) <= 0 then redis.call('HDEL', KEYS[3], f) end
      end
    end
    redis.call('XADD', KEYS[4], '*', 'job', ARGV[2])
    return cur
  end
end
return redis.error_reply('conflict:' .. cur)
"""


async def refund_order(redis, order_id: str, now: float | None = None) -> Status:
    """Refunded + stock returned, atomically and once; raises TransitionError otherwise
    (e.g. already refunded, or never paid). Returns the previous status."""
    now = time.time() if now is None else now
    show = await order_show(redis, order_id)  # from the id: no round trip
    try:
        prev = await redis.eval(
            _REFUND_LUA,
            4,
            *refund_keys(show, order_id),
            repr(now),
            _notification(order_id, "refunded"),
            retention_s(),
            *_allowed_from(Status.REFUNDED),
        )
    except Exception as exc:
        if "not_found" in str(exc) or "conflict:" in str(exc):
            raise _parse_error(order_id, exc, "refunded") from None
        raise
    return Status(prev.decode() if isinstance(prev, bytes) else prev)


UNDO_WINDOW_S = 60

# KEYS[1] order hash; ARGV[1] now, ARGV[2] window (s). Staff take back their last
# "ready" or "fulfilled" within the window: a slip of the thumb on a busy floor.
_UNDO_LUA = """
local st = redis.call('HGET', KEYS[1], 'status')
if not st then return redis.error_reply('not_found') end
local field
if st == 'fulfilled' then field = 'fulfilled_at'
elseif st == 'ready' then field = 'ready_at'
else return redis.error_reply('conflict:' .. st) end
local at = tonumber(redis.call('HGET', KEYS[1], field) or '')
if not at or tonumber(ARGV[1]) - at > tonumber(ARGV[2]) then
  return redis.error_reply('too_late:' .. st)
end
local back = 'paid'
if st == 'fulfilled' and (redis.call('HGET', KEYS[1], 'ready_at') or '') ~= '' then
  back = 'ready'
elseif (redis.call('HGET', KEYS[1], 'printed_at') or '') ~= '' then
  back = 'printed'
end
redis.call('HSET', KEYS[1], 'status', back, field, '')
redis.call('PERSIST', KEYS[1])
return back
"""


class UndoTooLate(Exception):
    pass


async def undo_move(redis, order_id: str, now: float | None = None) -> Status:
    """Back from ``fulfilled`` or ``ready`` to the step before, within UNDO_WINDOW_S;
    raises UndoTooLate, or TransitionError when there is nothing to undo."""
    now = time.time() if now is None else now
    try:
        back = await redis.eval(_UNDO_LUA, 1, order_key(order_id), repr(now), UNDO_WINDOW_S)
    except Exception as exc:
        if "too_late:" in str(exc):
            raise UndoTooLate(str(exc).split("too_late:", 1)[1]) from None
        if "not_found" in str(exc) or "conflict:" in str(exc):
            raise _parse_error(order_id, exc, "undo") from None
        raise
    return Status(back.decode() if isinstance(back, bytes) else back)


async def enqueue_reprint(redis, order: Order) -> None:
    job = PrintJob(order_id=order.order_id, show=order.show, reprint=True)
    await redis.xadd(print_stream(order.show), {"job": job.pack()})
