"""Every stock change is one Lua script (atomic in Redis).

Stock lives in exactly one place at a time: the product's ``stock:{show}`` hash, the
drop's ``remaining``, a cart line, or a pending order's ``orderstock:{show}:{id}``. Each script
moves units from one place to another and deletes the place it empties in the same
step, so a unit can never be returned twice: an expiring hold and a checkout
converting it both delete the same cart line, and only one of them finds it.

Every key a script touches comes in KEYS, and all of one call's keys carry the same show
tag (``checkout.keys``), so each call runs on one Redis Cluster node. Loops over due
holds or orders read the due members first, then hand their keys to the script, which
checks each is still due before it acts.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cached_property

from redis.exceptions import NoScriptError

# Return units to where they came from: the same drop while it still runs, else the product.
# Every key a helper touches is handed to it (named by KEYS): nothing is built in Lua.
_GIVE_BACK = """
local function give_back(dk, sk, sku, qty, src, now)
  if src ~= '' then
    local ends = redis.call('HGET', dk, 'ends_at')
    if redis.call('HGET', dk, 'id') == src and ends and tonumber(ends) > now then
      redis.call('HINCRBY', dk, 'remaining', qty)
      return
    end
  end
  redis.call('HINCRBY', sk, sku, qty)
end
local function parse_line(v)
  local q, p, d = string.match(v, '^(%d+)|(%d+)|(.*)$')
  return tonumber(q), p, d
end
-- Units per IP: the show's 'ipunits' hash "{ip}|{sku}" -> units held or ordered by the
-- buyers whose first add came from that IP (their 'buyerip' key). Released with the units.
local function hdecr(k, f, qty)
  if redis.call('HINCRBY', k, f, -qty) <= 0 then redis.call('HDEL', k, f) end
end
local function ip_release(ipk, ip, sku, qty)
  if ip then hdecr(ipk, ip .. '|' .. sku, qty) end
end
"""

# KEYS: stock, drop, cart, holds expiry, bought, cart adds tally, buyer's ip, ip units
# ARGV: show, sku, qty, now_ms, expires_ms, per-buyer limit (0 = none), price cents, viewer,
#       ip, buyers per ip (0 = no per-IP limit), drop hold expires_ms, per-IP memory (s)
# -> {result, available, then on success the cart: field, line, expiry ms, ...}
# result ip_limit: the buyers of this IP together reached buyers_per_ip x the limit.
ADD_TO_CART = (
    _GIVE_BACK
    + """
local show, sku, qty, now = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local limit, price, viewer = tonumber(ARGV[6]), ARGV[7], ARGV[8]
local per_ip, expires = tonumber(ARGV[10]), ARGV[5]
local ip
if per_ip > 0 then ip = redis.call('GET', KEYS[7]) or ARGV[9] end
local field = show .. '|' .. sku
local src = ''
if redis.call('HGET', KEYS[2], 'sku') == sku then
  local ends = tonumber(redis.call('HGET', KEYS[2], 'ends_at'))
  if ends > now then
    src = redis.call('HGET', KEYS[2], 'id')
    limit = tonumber(redis.call('HGET', KEYS[2], 'limit'))
    local dp = redis.call('HGET', KEYS[2], 'price')
    if dp and dp ~= '' then price = dp end
    expires = ARGV[11]
  end
end
local held = 0
local cur = redis.call('HGET', KEYS[3], field)
if cur then
  local q, p, d = parse_line(cur)
  if d ~= src then return {'source_changed', 0} end
  held, price = q, p
end
if limit > 0 then
  local b = tonumber(redis.call('HGET', KEYS[5], viewer .. '|' .. sku) or '0')
  if held + b + qty > limit then return {'limit_reached', limit} end
  if ip then
    local u = tonumber(redis.call('HGET', KEYS[8], ip .. '|' .. sku) or '0')
    if u + qty > limit * per_ip then return {'ip_limit', limit} end
  end
end
local avail
if src ~= '' then
  avail = tonumber(redis.call('HGET', KEYS[2], 'remaining'))
else
  avail = tonumber(redis.call('HGET', KEYS[1], sku) or '-1')
end
if avail < 0 then return {'not_found', 0} end
if avail < qty then return {'sold_out', avail} end
if src ~= '' then
  avail = redis.call('HINCRBY', KEYS[2], 'remaining', -qty)
else
  avail = redis.call('HINCRBY', KEYS[1], sku, -qty)
end
redis.call('HSET', KEYS[3], field, (held + qty) .. '|' .. price .. '|' .. src)
redis.call('ZADD', KEYS[4], expires, viewer .. '|' .. field)
redis.call('HINCRBY', KEYS[6], sku, qty)
if ip then
  redis.call('SET', KEYS[7], ip, 'EX', ARGV[12])
  redis.call('HINCRBY', KEYS[8], ip .. '|' .. sku, qty)
  redis.call('EXPIRE', KEYS[8], ARGV[12])
end
-- The whole cart comes back with the answer: the buyer sees it without another round trip.
local out = {'ok', avail}
local lines = redis.call('HGETALL', KEYS[3])
for i = 1, #lines, 2 do
  table.insert(out, lines[i])
  table.insert(out, lines[i + 1])
  table.insert(out, redis.call('ZSCORE', KEYS[4], viewer .. '|' .. lines[i]) or '0')
end
return out
"""
)

# KEYS: cart, holds expiry, stock, drop, buyer's ip, ip units
# ARGV: viewer, "{show}|{sku}", now_ms -> units released (0 = none)
REMOVE_FROM_CART = (
    _GIVE_BACK
    + """
local v = redis.call('HGET', KEYS[1], ARGV[2])
if not v then return 0 end
redis.call('HDEL', KEYS[1], ARGV[2])
redis.call('ZREM', KEYS[2], ARGV[1] .. '|' .. ARGV[2])
local q, p, d = parse_line(v)
local sku = string.match(ARGV[2], '^[^|]+|(.+)$')
give_back(KEYS[4], KEYS[3], sku, q, d, tonumber(ARGV[3]))
ip_release(KEYS[6], redis.call('GET', KEYS[5]), sku, q)
return q
"""
)

# Holds past their expiry go back, once (the cart line is deleted in the same step).
# KEYS: holds expiry, stock, drop, ip units, then per hold: its cart, its buyer's ip
# ARGV: now_ms, then the holds' members "{viewer}|{show}|{sku}" (read just before; a
# member whose hold was renewed or taken meanwhile is left alone)
# -> flat list of "{show}|{sku}" whose stock changed
REAP_HOLDS = (
    _GIVE_BACK
    + """
local now = tonumber(ARGV[1])
local changed = {}
for i = 2, #ARGV do
  local m = ARGV[i]
  local score = redis.call('ZSCORE', KEYS[1], m)
  if score and tonumber(score) <= now then
    redis.call('ZREM', KEYS[1], m)
    local ck, ipk = KEYS[5 + 2 * (i - 2)], KEYS[6 + 2 * (i - 2)]
    local viewer, show, sku = string.match(m, '^([^|]+)|([^|]+)|(.+)$')
    local field = show .. '|' .. sku
    local v = redis.call('HGET', ck, field)
    if v then
      redis.call('HDEL', ck, field)
      local q, p, d = parse_line(v)
      give_back(KEYS[3], KEYS[2], sku, q, d, now)
      ip_release(KEYS[4], redis.call('GET', ipk), sku, q)
      table.insert(changed, field)
    end
  end
end
return changed
"""
)

# Turn the cart's live holds into a pending order's stock (expired lines go back).
# KEYS: cart, holds expiry, order stock, orders pending, the buyer's unpaid orders (zset),
#       the IP's unpaid orders (zset), stock, drop, bought, bought by email, ip units,
#       buyer's ip, then the order hashes of the unpaid orders read just before
# ARGV: viewer, now_ms, order id, payment deadline ms, email token ('' = none),
#       unpaid orders a buyer may have (0 = no cap), buyers per ip (0 = no per-IP cap),
#       ip, show, n (unpaid orders read before), their n ids, then "{show}|{sku}",
#       per-buyer limit pairs
# -> {show, sku1, qty1, price1, drop1, sku2, ...}, {} when nothing is left to buy, or
#    {'!pending', n} / {'!pending_ip', n} / {'!email_limit', sku, limit}: refused, nothing
#    changed (the cart keeps its holds).
CHECKOUT = (
    _GIVE_BACK
    + """
local viewer, now, email = ARGV[1], tonumber(ARGV[2]), ARGV[5]
local max_pending, per_ip, ip = tonumber(ARGV[6]), tonumber(ARGV[7]), ARGV[8]
local show, n_known = ARGV[9], tonumber(ARGV[10])
local known = {}
for i = 1, n_known do known[ARGV[10 + i]] = KEYS[12 + i] end
local limits = {}
for i = 11 + n_known, #ARGV, 2 do limits[ARGV[i]] = tonumber(ARGV[i + 1]) end
local lines = redis.call('HGETALL', KEYS[1])

-- Unpaid orders still open: past-deadline ones are the reaper's, paid ones are done. An
-- order not read before (placed a moment ago) counts as open.
local function open_orders(key)
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
  for _, oid in ipairs(redis.call('ZRANGE', key, 0, -1)) do
    if known[oid] then
      local st = redis.call('HGET', known[oid], 'status')
      if st and st ~= 'pending_payment' and st ~= 'payment_failed' then
        redis.call('ZREM', key, oid)
      end
    end
  end
  return redis.call('ZCARD', key)
end

-- First pass, no writes: is there anything to buy, and may this buyer buy it?
local live = false
for i = 1, #lines, 2 do
  local score = redis.call('ZSCORE', KEYS[2], viewer .. '|' .. lines[i])
  if score and tonumber(score) > now then live = true end
end
if live then
  if max_pending > 0 then
    local n = open_orders(KEYS[5])
    if n >= max_pending then return {'!pending', n} end
    if per_ip > 0 then
      n = open_orders(KEYS[6])
      if n >= max_pending * per_ip then return {'!pending_ip', n} end
    end
  end
  if email ~= '' then
    local drop_id, drop_limit = redis.call('HGET', KEYS[8], 'id'), redis.call('HGET', KEYS[8], 'limit')
    for i = 1, #lines, 2 do
      local score = redis.call('ZSCORE', KEYS[2], viewer .. '|' .. lines[i])
      if score and tonumber(score) > now then
        local sku = string.match(lines[i], '^[^|]+|(.+)$')
        local q, p, d = parse_line(lines[i + 1])
        local limit = limits[lines[i]] or 0
        if d ~= '' and d == drop_id then limit = tonumber(drop_limit) end
        if limit > 0 then
          local b = tonumber(redis.call('HGET', KEYS[10], email .. '|' .. sku) or '0')
          if b + q > limit then return {'!email_limit', sku, limit} end
        end
      end
    end
  end
end

local out = {''}
local any = false
local buyer_ip = redis.call('GET', KEYS[12])
for i = 1, #lines, 2 do
  local field, v = lines[i], lines[i + 1]
  local member = viewer .. '|' .. field
  local score = redis.call('ZSCORE', KEYS[2], member)
  redis.call('ZREM', KEYS[2], member)
  redis.call('HDEL', KEYS[1], field)
  local sku = string.match(field, '^[^|]+|(.+)$')
  local q, p, d = parse_line(v)
  if (not score) or tonumber(score) <= now then
    give_back(KEYS[8], KEYS[7], sku, q, d, now)
    ip_release(KEYS[11], buyer_ip, sku, q)
  else
    any = true
    redis.call('HSET', KEYS[3], sku, q .. '|' .. d)
    redis.call('HINCRBY', KEYS[9], viewer .. '|' .. sku, q)
    if email ~= '' then redis.call('HINCRBY', KEYS[10], email .. '|' .. sku, q) end
    table.insert(out, sku); table.insert(out, q); table.insert(out, p); table.insert(out, d)
  end
end
if not any then return {} end
redis.call('HSET', KEYS[3], '_show', show, '_viewer', viewer)
if buyer_ip then redis.call('HSET', KEYS[3], '_ip', buyer_ip) end
if email ~= '' then redis.call('HSET', KEYS[3], '_email', email) end
redis.call('ZADD', KEYS[4], ARGV[4], ARGV[3])
if max_pending > 0 then
  redis.call('ZADD', KEYS[5], ARGV[4], ARGV[3])
  redis.call('PEXPIREAT', KEYS[5], ARGV[4])
  if per_ip > 0 then
    redis.call('ZADD', KEYS[6], ARGV[4], ARGV[3])
    redis.call('PEXPIREAT', KEYS[6], ARGV[4])
  end
end
out[1] = show
return out
"""
)

# The units an order held go back (to its drop while it runs, else the product), its
# buyer's counts are released, and the record goes: once, since only one step finds it.
_RELEASE_ORDER = """
local function release_order(sk, stock, dk, bk, ek, ipk, now)
  local viewer = redis.call('HGET', sk, '_viewer')
  local ip = redis.call('HGET', sk, '_ip')
  local email = redis.call('HGET', sk, '_email')
  local show = redis.call('HGET', sk, '_show')
  local held = redis.call('HGETALL', sk)
  local changed = {}
  for i = 1, #held, 2 do
    local sku = held[i]
    if string.sub(sku, 1, 1) ~= '_' then
      local q, d = string.match(held[i + 1], '^(%d+)|(.*)$')
      q = tonumber(q)
      give_back(dk, stock, sku, q, d, now)
      if viewer then hdecr(bk, viewer .. '|' .. sku, q) end
      ip_release(ipk, ip, sku, q)
      if email then hdecr(ek, email .. '|' .. sku, q) end
      table.insert(changed, show .. '|' .. sku)
    end
  end
  redis.call('DEL', sk)
  return changed
end
"""

# Orders past their payment deadline (or told to expire now): expired + stock back, once.
# KEYS: orders pending, stock, drop, bought, bought by email, ip units, then per order:
#       its hash, its stock record
# ARGV: now_ms, retention of the expired order (s), then the due order ids (read just
#       before; one paid or renewed meanwhile is left alone)
# -> flat list of {order_id, "{show}|{sku}"...} changed
EXPIRE_ORDERS = (
    _GIVE_BACK
    + _RELEASE_ORDER
    + """
local now = tonumber(ARGV[1])
local changed = {}
for i = 3, #ARGV do
  local oid = ARGV[i]
  local ok, sk = KEYS[7 + 2 * (i - 3)], KEYS[8 + 2 * (i - 3)]
  local score = redis.call('ZSCORE', KEYS[1], oid)
  if score and tonumber(score) <= now then
    redis.call('ZREM', KEYS[1], oid)
    local st = redis.call('HGET', ok, 'status')
    if (not st) or st == 'pending_payment' or st == 'payment_failed' then
      if st then
        redis.call('HSET', ok, 'status', 'expired')
        redis.call('EXPIRE', ok, ARGV[2])
      end
      table.insert(changed, oid)
      for _, c in ipairs(release_order(sk, KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], now)) do
        table.insert(changed, c)
      end
    end
  end
end
return changed
"""
)

# A pending order whose payment could not be created (Stripe away) goes back into the
# buyer's cart: its units are held again, not released; the order is expired.
# KEYS: order stock, cart, holds expiry, orders pending, order hash, stock, drop, bought,
#       bought by email, ip units
# ARGV: order id, now_ms, hold expiry ms, drop hold expiry ms, retention (s), '1' when
#       the buyer's cart holds another show meanwhile, then sku, unit price cents pairs
# -> {"{show}|{sku}" whose units went back to stock} (a sku the cart got again
# meanwhile: those units are released instead of merged).
RESTORE_CART = (
    _GIVE_BACK
    + """
if redis.call('HGET', KEYS[5], 'status') ~= 'pending_payment' then return {} end
local show = redis.call('HGET', KEYS[1], '_show')
local viewer = redis.call('HGET', KEYS[1], '_viewer')
if not show then return {} end
local now = tonumber(ARGV[2])
local email = redis.call('HGET', KEYS[1], '_email')
local ip = redis.call('HGET', KEYS[1], '_ip')
local prices = {}
for i = 7, #ARGV, 2 do prices[ARGV[i]] = ARGV[i + 1] end
local other_show = ARGV[6] == '1'
local released = {}
local held = redis.call('HGETALL', KEYS[1])
for i = 1, #held, 2 do
  local sku = held[i]
  if string.sub(sku, 1, 1) ~= '_' then
    local q, d = string.match(held[i + 1], '^(%d+)|(.*)$')
    q = tonumber(q)
    local field = show .. '|' .. sku
    hdecr(KEYS[8], viewer .. '|' .. sku, q)
    if email then hdecr(KEYS[9], email .. '|' .. sku, q) end
    if other_show or redis.call('HEXISTS', KEYS[2], field) == 1 or not prices[sku] then
      give_back(KEYS[7], KEYS[6], sku, q, d, now)
      ip_release(KEYS[10], ip, sku, q)
      table.insert(released, field)
    else
      redis.call('HSET', KEYS[2], field, q .. '|' .. prices[sku] .. '|' .. d)
      local expires = ARGV[3]
      if d ~= '' then expires = ARGV[4] end
      redis.call('ZADD', KEYS[3], expires, viewer .. '|' .. field)
    end
  end
end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[4], ARGV[1])
redis.call('HSET', KEYS[5], 'status', 'expired')
redis.call('EXPIRE', KEYS[5], ARGV[5])
return released
"""
)

# KEYS: stock, drop
# ARGV: sku, quantity, ends_at ms, price cents ('' = product price), limit, id, now
START_DROP = """
local now = tonumber(ARGV[7])
local ends = redis.call('HGET', KEYS[2], 'ends_at')
if ends then
  if tonumber(ends) > now then return {'drop_active', 0} end
  local old = redis.call('HGET', KEYS[2], 'sku')
  redis.call('HINCRBY', KEYS[1], old, tonumber(redis.call('HGET', KEYS[2], 'remaining')))
  redis.call('DEL', KEYS[2])
end
local avail = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '-1')
if avail < 0 then return {'not_found', 0} end
local qty = tonumber(ARGV[2])
if avail < qty then return {'insufficient', avail} end
redis.call('HINCRBY', KEYS[1], ARGV[1], -qty)
redis.call('HSET', KEYS[2], 'id', ARGV[6], 'sku', ARGV[1], 'remaining', qty, 'quantity', qty,
  'ends_at', ARGV[3], 'price', ARGV[4], 'limit', ARGV[5])
return {'ok', avail - qty}
"""

# A drop whose time is up: unsold units back to the product, exactly once (the hash goes).
# KEYS: stock, drop; ARGV: now_ms -> the drop's sku ('' when none ended)
END_DROP = """
local ends = redis.call('HGET', KEYS[2], 'ends_at')
if not ends or tonumber(ends) > tonumber(ARGV[1]) then return '' end
local sku = redis.call('HGET', KEYS[2], 'sku')
redis.call('HINCRBY', KEYS[1], sku, tonumber(redis.call('HGET', KEYS[2], 'remaining')))
redis.call('DEL', KEYS[2])
return sku
"""


@dataclass(frozen=True)
class Script:
    """A Lua script run by EVALSHA (loaded on first NOSCRIPT, e.g. after a Redis restart)."""

    text: str

    @cached_property
    def sha(self) -> str:
        return hashlib.sha1(self.text.encode()).hexdigest()

    async def __call__(self, redis, keys: list[str], args: list) -> object:
        try:
            return await redis.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            await redis.script_load(self.text)
            return await redis.evalsha(self.sha, len(keys), *keys, *args)


add_to_cart = Script(ADD_TO_CART)
remove_from_cart = Script(REMOVE_FROM_CART)
reap_holds = Script(REAP_HOLDS)
checkout = Script(CHECKOUT)
expire_orders = Script(EXPIRE_ORDERS)
restore_cart = Script(RESTORE_CART)
start_drop = Script(START_DROP)
end_drop = Script(END_DROP)
