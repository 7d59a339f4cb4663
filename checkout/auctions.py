"""Live auctions: the rules (one Lua script per move) and the settlement at the end.

An auction is the hash ``auction:{show}:{id}`` (its id ``auc_{show}__{hex}`` names its
show, so all its keys carry the show's hash tag: one Redis Cluster slot with the show's
stock); the show's ``show:{show}:auction`` names its current (running, else last) auction. Starting one takes the unit out of the product's
stock in the same script that checks no other auction of the show runs; the unit is in
the auction until it is sold (then it is the order's) or the auction ends unsold or is
cancelled (then it goes back to stock, in the script that moves the status, so once).

Every bid is one script run at the bid's arrival in Redis (``TIME`` inside the script):
accepted only while the clock runs and at least the current bid plus the increment (the
start price for the first); ties go to the earlier bid because an equal later one is
below current + increment. A bid accepted within ``extend`` of the end moves the end to
``extend`` from the bid (never with sudden death). Money is integer cents.

The end: any process's worker claims due auctions in one script (status ``settling``,
with a lease), so exactly one settles each; a settler that dies leaves the lease to run
out and another takes over. Settling charges the leader's saved card off-session for
the winning bid, then the next highest bidder on a failed charge, and finishes the
auction sold (the order is paid with its print job, as any order) or unsold (unit back).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from checkout import keys
from checkout.orders import (
    Order,
    OrderItem,
    Status,
    TransitionError,
    cents_str,
    load_order,
    mark_paid,
    order_key,
    save_new_order,
    transition,
)
from checkout.scripts import Script

log = logging.getLogger("showroom.auctions")

SETTLE_LEASE_MS = 120_000  # a settler silent this long has died: another takes over
MAX_CENTS = 10_000_000  # $100,000.00: a sane ceiling for one bid or price
MIN_DURATION_S, MAX_DURATION_S = 10, 600
MAX_EXTEND_S = 60
LOG_KEEP = 1000  # bids kept in an auction's log (the host page's live list)
RETENTION_S = 30 * 86400


def auction_show(auction_id: str) -> str:
    return auction_id.removeprefix("auc_").split(keys.ORDER_SEP, 1)[0]


def auction_key(auction_id: str) -> str:
    return f"auction:{keys.tag(auction_show(auction_id))}:{auction_id}"


def bids_key(auction_id: str) -> str:
    """zset viewer -> their highest accepted bid (cents): the ranking at the end."""
    return auction_key(auction_id) + ":bids"


def log_key(auction_id: str) -> str:
    """list "ms|viewer|cents|name" of accepted bids, in acceptance order."""
    return auction_key(auction_id) + ":log"


def current_key(show: str) -> str:
    return f"show:{keys.tag(show)}:auction"


def active_key(show: str) -> str:
    """zset auction id -> ends_at (ms): the worker's due list of the show."""
    return f"auctions:active:{keys.tag(show)}"


def settling_key(show: str) -> str:
    """zset auction id -> lease deadline (ms)."""
    return f"auctions:settling:{keys.tag(show)}"


def card_key(viewer: str) -> str:
    """hash: the viewer's saved payment method (customer, payment_method, last4, ...)."""
    return f"buyer:{viewer}:card"


# --- money -------------------------------------------------------------------------------


class BadAmount(ValueError):
    pass


def parse_cents(value: Any, what: str = "amount", allow_zero: bool = False) -> int:
    """Integer cents from "13.00" (a decimal string; ints are accepted too). Refuses
    floats, non-decimals, negatives, fractional cents and amounts over MAX_CENTS."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise BadAmount(f'{what} must be a decimal string like "13.00".')
    text = value.strip() if isinstance(value, str) else str(value)
    if not text or len(text) > 16 or not all(c.isdigit() or c == "." for c in text):
        raise BadAmount(f'{what} must be a decimal string like "13.00".')
    try:
        amount = Decimal(text)
    except InvalidOperation:
        raise BadAmount(f'{what} must be a decimal string like "13.00".') from None
    if not amount.is_finite() or amount != amount.quantize(Decimal("0.01")):
        raise BadAmount(f"{what} must be whole cents (at most 2 decimals).")
    cents = int(amount * 100)
    if cents < 0 or (cents == 0 and not allow_zero):
        raise BadAmount(f"{what} must be more than zero.")
    if cents > MAX_CENTS:
        raise BadAmount(f"{what} is over the most one bid may be ({cents_str(MAX_CENTS)}).")
    return cents


# --- scripts ---------------------------------------------------------------------------

_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# KEYS: stock, show's current auction, new auction hash, active zset, the current
#       auction's hash as read just before ('' id: none)
# ARGV: id, show, sku, start cents, increment cents, duration ms, extend ms, sudden (0/1),
#       the current auction's id as read just before
# -> {'ok', ends_at} | {'auction_active', id} | {'not_found'} | {'sold_out'} | {'retry'}
START = (
    _NOW
    + """
local cur = redis.call('GET', KEYS[2])
if (cur or '') ~= ARGV[9] then return {'retry'} end
if cur then
  local st = redis.call('HGET', KEYS[5], 'status')
  if st == 'running' or st == 'settling' then return {'auction_active', cur} end
end
local avail = tonumber(redis.call('HGET', KEYS[1], ARGV[3]) or '-1')
if avail < 0 then return {'not_found', 0} end
if avail < 1 then return {'sold_out', 0} end
redis.call('HINCRBY', KEYS[1], ARGV[3], -1)
local ends = now + tonumber(ARGV[6])
redis.call('HSET', KEYS[3], 'id', ARGV[1], 'show', ARGV[2], 'sku', ARGV[3],
  'start', ARGV[4], 'increment', ARGV[5], 'extend', ARGV[7], 'sudden', ARGV[8],
  'status', 'running', 'current', '', 'leader', '', 'leader_name', '', 'bids', 0,
  'started_at', now, 'ends_at', ends, 'original_ends_at', ends, 'order_id', '')
redis.call('SET', KEYS[2], ARGV[1])
redis.call('ZADD', KEYS[4], ends, ARGV[1])
return {'ok', ends}
"""
)

# KEYS: auction hash, bids zset, active zset, bid log
# ARGV: viewer, amount cents, log size, the bidder's display name ('' = none), '1' if the
#       bidder has a saved card (both read just before: they are the viewer's keys, in
#       another slot than the auction's)
# -> {result, status, current, leader_name, bids, ends_at, leader viewer, accepted_at}
# result: ok | not_found | auction_closed | bid_too_low | name_required | payment_required
BID = (
    _NOW
    + """
local function state(result)
  local s = redis.call('HMGET', KEYS[1], 'status', 'current', 'leader_name', 'bids',
    'ends_at', 'leader')
  return {result, s[1] or '', s[2] or '', s[3] or '', s[4] or '0', s[5] or '0', s[6] or '',
    now}
end
local a = redis.call('HMGET', KEYS[1], 'status', 'ends_at', 'current', 'start',
  'increment', 'extend', 'sudden')
if not a[1] then return {'not_found'} end
local ends = tonumber(a[2])
if a[1] ~= 'running' or now >= ends then return state('auction_closed') end
local name = ARGV[4]
if name == '' then return state('name_required') end
if ARGV[5] ~= '1' then return state('payment_required') end
local amount = tonumber(ARGV[2])
local need
if a[3] == '' then need = tonumber(a[4]) else need = tonumber(a[3]) + tonumber(a[5]) end
if amount < need then return state('bid_too_low') end
local extend = tonumber(a[6])
if a[7] ~= '1' and ends - now < extend then
  ends = now + extend
  redis.call('ZADD', KEYS[3], ends, redis.call('HGET', KEYS[1], 'id'))
end
redis.call('HSET', KEYS[1], 'current', amount, 'leader', ARGV[1], 'leader_name', name,
  'ends_at', ends)
redis.call('HINCRBY', KEYS[1], 'bids', 1)
redis.call('ZADD', KEYS[2], amount, ARGV[1])
redis.call('RPUSH', KEYS[4], now .. '|' .. ARGV[1] .. '|' .. amount .. '|' .. name)
redis.call('LTRIM', KEYS[4], -tonumber(ARGV[3]), -1)
return state('ok')
"""
)

# KEYS: auction hash, stock, active zset; ARGV: none -> 'ok' | current status | ''
CANCEL = """
local st = redis.call('HGET', KEYS[1], 'status')
if not st then return '' end
if st ~= 'running' then return st end
redis.call('HSET', KEYS[1], 'status', 'cancelled')
redis.call('HINCRBY', KEYS[2], redis.call('HGET', KEYS[1], 'sku'), 1)
redis.call('ZREM', KEYS[3], redis.call('HGET', KEYS[1], 'id'))
return 'ok'
"""

# KEYS: active zset, settling zset, then the hash of each auction in ARGV[2..]
# ARGV: lease ms, then the ids read just before from both zsets (one no longer due is
#       left alone)
# -> ids this caller now settles: due running auctions, and settlements whose lease ran out
CLAIM = (
    _NOW
    + """
local out = {}
local lease = now + tonumber(ARGV[1])
for i = 2, #ARGV do
  local id, ak = ARGV[i], KEYS[i + 1]
  local due = redis.call('ZSCORE', KEYS[1], id)
  if due and tonumber(due) <= now then
    redis.call('ZREM', KEYS[1], id)
    local st = redis.call('HGET', ak, 'status')
    if st == 'running' and tonumber(redis.call('HGET', ak, 'ends_at')) <= now then
      redis.call('HSET', ak, 'status', 'settling')
      redis.call('ZADD', KEYS[2], lease, id)
      table.insert(out, id)
    elseif st == 'running' then
      redis.call('ZADD', KEYS[1], redis.call('HGET', ak, 'ends_at'), id)
    end
  end
  local lapsed = redis.call('ZSCORE', KEYS[2], id)
  if lapsed and tonumber(lapsed) <= now then
    redis.call('ZADD', KEYS[2], lease, id)
    table.insert(out, id)
  end
end
return out
"""
)

# KEYS: auction hash, stock, settling zset, bids zset, bid log; ARGV: 'sold'|'unsold',
# order id, winner name, winning cents, retention s -> 1 if this call finished it, 0 if
# it was already finished
FINISH = """
if redis.call('HGET', KEYS[1], 'status') ~= 'settling' then return 0 end
redis.call('HSET', KEYS[1], 'status', ARGV[1], 'order_id', ARGV[2])
if ARGV[1] == 'sold' then
  redis.call('HSET', KEYS[1], 'winner_name', ARGV[3], 'sold_for', ARGV[4])
else
  redis.call('HINCRBY', KEYS[2], redis.call('HGET', KEYS[1], 'sku'), 1)
end
redis.call('ZREM', KEYS[3], redis.call('HGET', KEYS[1], 'id'))
for _, k in ipairs({KEYS[1], KEYS[4], KEYS[5]}) do
  redis.call('EXPIRE', k, ARGV[5])
end
return 1
"""

start_script = Script(START)
bid_script = Script(BID)
cancel_script = Script(CANCEL)
claim_script = Script(CLAIM)
finish_script = Script(FINISH)


# --- data --------------------------------------------------------------------------------


@dataclass(frozen=True)
class AuctionRequest:
    sku: str
    start_cents: int
    increment_cents: int
    duration_s: int
    extend_s: int = 10
    sudden_death: bool = False


@dataclass(frozen=True)
class Auction:
    id: str
    show: str
    sku: str
    status: str  # running | settling | sold | unsold | cancelled
    start_cents: int
    increment_cents: int
    current_cents: int | None
    leader: str | None  # viewer id: never sent to clients
    leader_name: str | None
    bids: int
    ends_at: int
    extend_s: int
    sudden_death: bool
    order_id: str | None = None
    winner_name: str | None = None
    sold_for_cents: int | None = None

    @property
    def next_min_cents(self) -> int:
        if self.current_cents is None:
            return self.start_cents
        return self.current_cents + self.increment_cents

    def public(self, viewer: str | None = None) -> dict[str, Any]:
        """The API.md view; ``you_lead`` for the asking viewer."""
        shown_status = "running" if self.status == "settling" else self.status
        view = {
            "id": self.id,
            "show": self.show,
            "sku": self.sku,
            "status": shown_status,
            "settling": self.status == "settling",
            "start_price": cents_str(self.start_cents),
            "increment": cents_str(self.increment_cents),
            "current_bid": cents_str(self.current_cents)
            if self.current_cents is not None
            else None,
            "next_min_bid": cents_str(self.next_min_cents),
            "leader": self.leader_name,
            "bids": self.bids,
            "ends_at": self.ends_at,
            "extend_s": self.extend_s,
            "sudden_death": self.sudden_death,
            "order_id": self.order_id,
            "winner": self.winner_name,
            "sold_for": cents_str(self.sold_for_cents) if self.sold_for_cents is not None else None,
        }
        if viewer is not None:
            view["you_lead"] = self.leader == viewer
        return view


def _s(v: bytes | str | None) -> str:
    if v is None:
        return ""
    return v.decode() if isinstance(v, bytes) else str(v)


def auction_from_redis(raw: dict) -> Auction | None:
    if not raw:
        return None
    d = {_s(k): _s(v) for k, v in raw.items()}
    return Auction(
        id=d["id"],
        show=d["show"],
        sku=d["sku"],
        status=d["status"],
        start_cents=int(d["start"]),
        increment_cents=int(d["increment"]),
        current_cents=int(d["current"]) if d.get("current") else None,
        leader=d.get("leader") or None,
        leader_name=d.get("leader_name") or None,
        bids=int(d.get("bids") or 0),
        ends_at=int(d["ends_at"]),
        extend_s=int(d.get("extend") or 0) // 1000,
        sudden_death=d.get("sudden") == "1",
        order_id=d.get("order_id") or None,
        winner_name=d.get("winner_name") or None,
        sold_for_cents=int(d["sold_for"]) if d.get("sold_for") else None,
    )


class AuctionError(Exception):
    def __init__(self, code: str, detail: str = "") -> None:
        super().__init__(code)
        self.code, self.detail = code, detail


# --- moves -------------------------------------------------------------------------------


def new_auction_id(show: str) -> str:
    return f"auc_{show}{keys.ORDER_SEP}{uuid.uuid4().hex[:16]}"


# --- the keys of each script call (pure: tests check they share one slot) -----------


def start_keys(show: str, auction_id: str, current: str) -> list[str]:
    cur_key = auction_key(current) if current else auction_key(auction_id)
    return [keys.stock(show), current_key(show), auction_key(auction_id), active_key(show), cur_key]


def bid_keys(auction_id: str) -> list[str]:
    show = auction_show(auction_id)
    return [auction_key(auction_id), bids_key(auction_id), active_key(show), log_key(auction_id)]


def cancel_keys(show: str, auction_id: str) -> list[str]:
    return [auction_key(auction_id), keys.stock(show), active_key(show)]


def claim_keys(show: str, auction_ids: list[str]) -> list[str]:
    return [active_key(show), settling_key(show), *(auction_key(a) for a in auction_ids)]


def finish_keys(show: str, auction_id: str) -> list[str]:
    return [
        auction_key(auction_id),
        keys.stock(show),
        settling_key(show),
        bids_key(auction_id),
        log_key(auction_id),
    ]


async def start_auction(redis, show: str, req: AuctionRequest) -> Auction:
    auction_id = new_auction_id(show)
    for _ in range(5):  # 'retry': another auction started between the read and the script
        current = _s(await redis.get(current_key(show)))
        out = await start_script(
            redis,
            start_keys(show, auction_id, current),
            [
                auction_id,
                show,
                req.sku,
                req.start_cents,
                req.increment_cents,
                req.duration_s * 1000,
                req.extend_s * 1000,
                "1" if req.sudden_death else "0",
                current,
            ],
        )
        if _s(out[0]) != "retry":
            break
    result = _s(out[0])
    if result != "ok":
        raise AuctionError(result, _s(out[1]) if len(out) > 1 else "")
    found = await load_auction(redis, auction_id)
    assert found is not None
    return found


async def load_auction(redis, auction_id: str) -> Auction | None:
    return auction_from_redis(await redis.hgetall(auction_key(auction_id)))


async def current_auction(redis, show: str) -> Auction | None:
    auction_id = await redis.get(current_key(show))
    return await load_auction(redis, _s(auction_id)) if auction_id else None


@dataclass(frozen=True)
class BidResult:
    result: str  # ok | not_found | auction_closed | bid_too_low | name_required | payment_required
    status: str = ""
    current_cents: int | None = None
    leader_name: str | None = None
    bids: int = 0
    ends_at: int = 0
    leader: str | None = None
    accepted_at: int = 0  # Redis time of the bid's arrival (ms)


async def place_bid(redis, auction_id: str, viewer: str, cents: int, profile_key: str) -> BidResult:
    """One script: the bid is judged at its arrival in Redis. ``profile_key`` is the
    hash holding the viewer's display name (``name``)."""
    pipe = redis.pipeline(transaction=False)
    pipe.hget(profile_key, "name")
    pipe.hexists(card_key(viewer), "payment_method")
    name, has_card = await pipe.execute()
    out = await bid_script(
        redis, bid_keys(auction_id), [viewer, cents, LOG_KEEP, _s(name), "1" if has_card else ""]
    )
    result = _s(out[0])
    if result == "not_found":
        return BidResult(result)
    return BidResult(
        result=result,
        status=_s(out[1]),
        current_cents=int(out[2]) if _s(out[2]) else None,
        leader_name=_s(out[3]) or None,
        bids=int(out[4]),
        ends_at=int(out[5]),
        leader=_s(out[6]) or None,
        accepted_at=int(out[7]),
    )


async def cancel_auction(redis, auction_id: str) -> str:
    """'ok' (cancelled, unit back), '' (no such auction) or the status that prevents it."""
    # The show is in the id; the script answers '' when there is no such auction.
    keys_ = cancel_keys(auction_show(auction_id), auction_id)
    return _s(await cancel_script(redis, keys_, []))


async def bid_log(redis, auction_id: str, last: int = 50) -> list[dict]:
    """The newest accepted bids, oldest first: {"ts", "amount", "name"} (viewer kept out)."""
    out = []
    for raw in await redis.lrange(log_key(auction_id), -last, -1):
        ts, _viewer, cents, name = _s(raw).split("|", 3)
        out.append({"ts": int(ts), "amount": cents_str(int(cents)), "name": name})
    return out


async def full_log(redis, auction_id: str) -> list[tuple[int, str, int]]:
    """(ms, viewer, cents) of every kept accepted bid, in acceptance order."""
    out = []
    for raw in await redis.lrange(log_key(auction_id), 0, -1):
        ts, viewer, cents, _name = _s(raw).split("|", 3)
        out.append((int(ts), viewer, int(cents)))
    return out


async def claim_due(redis, show: str, batch: int = 20) -> list[str]:
    now = int(time.time() * 1000) + 1000  # Redis's clock decides; a second of slack
    pipe = redis.pipeline(transaction=False)
    pipe.zrangebyscore(active_key(show), "-inf", now, start=0, num=batch)
    pipe.zrangebyscore(settling_key(show), "-inf", now, start=0, num=batch)
    ids = sorted({_s(x) for found in await pipe.execute() for x in found})
    if not ids:
        return []
    out = await claim_script(redis, claim_keys(show, ids), [SETTLE_LEASE_MS, *ids])
    return [_s(x) for x in out]


async def next_end_ms(redis, shows) -> int | None:
    ends = []
    for show in shows:
        first = await redis.zrange(active_key(show), 0, 0, withscores=True)
        if first:
            ends.append(int(first[0][1]))
    return min(ends) if ends else None


# --- settlement ----------------------------------------------------------------------------


@dataclass(frozen=True)
class SavedCard:
    customer: str
    payment_method: str


async def saved_card(redis, viewer: str) -> SavedCard | None:
    raw = await redis.hmget(card_key(viewer), "customer", "payment_method")
    if not raw[0] or not raw[1]:
        return None
    return SavedCard(_s(raw[0]), _s(raw[1]))


class ChargeFailed(Exception):
    pass


# charge(order_id, amount_cents, currency, show, card, idempotency_key) -> (intent id, status)
Charge = Callable[[str, int, str, str, SavedCard, str], Awaitable[tuple[str, str]]]


@dataclass(frozen=True)
class Settled:
    auction: Auction
    order: Order | None
    tried: int  # bidders whose card was tried


def auction_order_id(auction_id: str, rank: int) -> str:
    """Deterministic per (auction, bidder rank): a settlement taken over after a crash
    finds the order it already made instead of making a second one."""
    show, _, rest = auction_id.removeprefix("auc_").partition(keys.ORDER_SEP)
    return f"ord_{show}{keys.ORDER_SEP}{rest}_{rank}"


async def settle(
    redis,
    auction_id: str,
    *,
    charge: Charge,
    product_name: str,
    currency: str,
    sandbox: bool,
    buyer_name: Callable[[str], Awaitable[str]],
    max_tries: int = 5,
) -> Settled | None:
    """Charge the leader, else the next highest bidders (at their own highest bid), and
    finish the auction. Only the claimant calls this (``claim_due``)."""
    auction = await load_auction(redis, auction_id)
    if auction is None or auction.status != "settling":
        return None
    ranking = await redis.zrevrange(bids_key(auction_id), 0, max_tries - 1, withscores=True)
    tried = 0
    for rank, (member, score) in enumerate(ranking):
        viewer, cents = _s(member), int(score)
        card = await saved_card(redis, viewer)
        if card is None:
            continue
        tried += 1
        order_id = auction_order_id(auction_id, rank)
        order = await load_order(redis, order_id)
        if order is None:
            number = await redis.incr(keys.order_seq(auction.show))
            order = Order(
                order_id=order_id,
                show=auction.show,
                viewer=viewer,
                status=Status.PENDING_PAYMENT,
                items=[OrderItem(auction.sku, product_name, 1, cents)],
                amount_cents=cents,
                currency=currency,
                buyer_name=await buyer_name(viewer),
                number=int(number),
                sandbox=sandbox,
                channel="online",
            )
            await save_new_order(redis, order)
            await redis.hset(order_key(order_id), "auction_id", auction_id)
        if order.status not in (Status.PENDING_PAYMENT, Status.PAYMENT_FAILED):
            paid = order.status not in (Status.EXPIRED, Status.REFUNDED)
            if paid:
                return await _finish_sold(redis, auction, order, tried)
            continue
        try:
            intent_id, status = await charge(
                order_id,
                cents,
                currency,
                auction.show,
                card,
                f"showroom-auction-{auction_id}-{rank}",
            )
        except ChargeFailed as exc:
            log.info("auction %s: charge of bidder %d failed: %s", auction_id, rank + 1, exc)
            await _fail(redis, order_id)
            continue
        await redis.hset(order_key(order_id), "payment_intent", intent_id)
        # Outside the order's slot (see checkout.keys.payment_intent): its own command.
        await redis.set(keys.payment_intent(intent_id), order_id, ex=30 * 86400)
        if status != "succeeded":  # e.g. requires_action: off-session cannot authenticate
            log.info("auction %s: bidder %d's charge is %s", auction_id, rank + 1, status)
            await _fail(redis, order_id)
            continue
        try:
            await mark_paid(redis, order_id, intent_id)
        except TransitionError:
            pass  # the webhook got there first: paid all the same
        order = await load_order(redis, order_id)
        return await _finish_sold(redis, auction, order, tried)
    await finish_script(
        redis, finish_keys(auction.show, auction_id), ["unsold", "", "", "", RETENTION_S]
    )
    return Settled(await load_auction(redis, auction_id), None, tried)


async def _fail(redis, order_id: str) -> None:
    for status in (Status.PAYMENT_FAILED, Status.EXPIRED):
        try:
            await transition(redis, order_id, status)
        except TransitionError:
            pass


async def _finish_sold(redis, auction: Auction, order: Order, tried: int) -> Settled:
    await finish_script(
        redis,
        finish_keys(auction.show, auction.id),
        ["sold", order.order_id, order.buyer_name, order.amount_cents, RETENTION_S],
    )
    return Settled(await load_auction(redis, auction.id), order, tried)


def now_ms() -> int:
    return int(time.time() * 1000)
