"""Every stock change is one Lua script (atomic in Redis).

Stock lives in exactly one place at a time: the product's ``stock:{show}`` hash, the
drop's ``remaining``, a cart line, or a pending order's ``orderstock:{id}``. Each script
moves units from one place to another and deletes the place it empties in the same
step, so a unit can never be returned twice: an expiring hold and a checkout
converting it both delete the same cart line, and only one of them finds it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cached_property

from redis.exceptions import NoScriptError

# Return units to where they came from: the same drop while it still runs, else the product.
_GIVE_BACK = """
local function give_back(show, sku, qty, src, now)
  if src ~= '' then
    local dk = 'drop:' .. show
    local ends = redis.call('HGET', dk, 'ends_at')
    if redis.call('HGET', dk, 'id') == src and ends and tonumber(ends) > now then
      redis.call('HINCRBY', dk, 'remaining', qty)
      return
    end
  end
  redis.call('HINCRBY', 'stock:' .. show, sku, qty)
end
local function parse_line(v)
  local q, p, d = string.match(v, '^(%d+)|(%d+)|(.*)$')
  return tonumber(q), p, d
end
-- Units per IP: 'ipunits:{show}:{ip}' sku -> units held or ordered by the buyers whose
-- first add came from that IP ('buyerip:{viewer}'). Released with the units.
local function viewer_ipk(viewer, show)
  local ip = redis.call('GET', 'buyerip:' .. viewer)
  if ip then return 'ipunits:' .. show .. ':' .. ip end
  return nil
end
local function ip_release(ipk, sku, qty)
  if not ipk then return end
  if redis.call('HINCRBY', ipk, sku, -qty) <= 0 then redis.call('HDEL', ipk, sku) end
end
"""

# KEYS: stock, drop, cart, holds expiry, bought, cart adds tally, buyer's ip
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
local ip, ipk
if per_ip > 0 then
  ip = redis.call('GET', KEYS[7]) or ARGV[9]
  ipk = 'ipunits:' .. show .. ':' .. ip
end
local field = show .. '|' .. sku
for _, f in ipairs(redis.call('HKEYS', KEYS[3])) do
  if string.sub(f, 1, #show + 1) ~= show .. '|' then return {'other_show', 0} end
end
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
  local b = tonumber(redis.call('HGET', KEYS[5], sku) or '0')
  if held + b + qty > limit then return {'limit_reached', limit} end
  if ipk then
    local u = tonumber(redis.call('HGET', ipk, sku) or '0')
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
if ipk then
  redis.call('SET', KEYS[7], ip, 'EX', ARGV[12])
  redis.call('HINCRBY', ipk, sku, qty)
  redis.call('EXPIRE', ipk, ARGV[12])
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

# KEYS: cart, holds expiry; ARGV: viewer, "{show}|{sku}", now_ms -> units released (0 = none)
REMOVE_FROM_CART = (
    _GIVE_BACK
    + """
local v = redis.call('HGET', KEYS[1], ARGV[2])
if not v then return 0 end
redis.call('HDEL', KEYS[1], ARGV[2])
redis.call('ZREM', KEYS[2], ARGV[1] .. '|' .. ARGV[2])
local q, p, d = parse_line(v)
local show, sku = string.match(ARGV[2], '^([^|]+)|(.+)$')
give_back(show, sku, q, d, tonumber(ARGV[3]))
ip_release(viewer_ipk(ARGV[1], show), sku, q)
return q
"""
)

# KEYS: holds expiry; ARGV: now_ms, batch -> flat list of "{show}|{sku}" whose stock changed
REAP_HOLDS = (
    _GIVE_BACK
    + """
local now = tonumber(ARGV[1])
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[2]))
local changed = {}
for _, m in ipairs(due) do
  redis.call('ZREM', KEYS[1], m)
  local viewer, show, sku = string.match(m, '^([^|]+)|([^|]+)|(.+)$')
  local ck = 'cart:' .. viewer
  local field = show .. '|' .. sku
  local v = redis.call('HGET', ck, field)
  if v then
    redis.call('HDEL', ck, field)
    local q, p, d = parse_line(v)
    give_back(show, sku, q, d, now)
    ip_release(viewer_ipk(viewer, show), sku, q)
    table.insert(changed, field)
  end
end
return changed
"""
)

# Turn the cart's live holds into a pending order's stock (expired lines go back).
# KEYS: cart, holds expiry, order stock, orders pending, the buyer's unpaid orders (zset)
# ARGV: viewer, now_ms, order id, payment deadline ms, email token ('' = none),
#       unpaid orders a buyer may have (0 = no cap), buyers per ip (0 = no per-IP cap),
#       ip, then "{show}|{sku}", per-buyer limit pairs
# -> {show, sku1, qty1, price1, drop1, sku2, ...}, {} when nothing is left to buy, or
#    {'!pending', n} / {'!pending_ip', n} / {'!email_limit', sku, limit}: refused, nothing
#    changed (the cart keeps its holds).
CHECKOUT = (
    _GIVE_BACK
    + """
local viewer, now, email = ARGV[1], tonumber(ARGV[2]), ARGV[5]
local max_pending, per_ip, ip = tonumber(ARGV[6]), tonumber(ARGV[7]), ARGV[8]
local limits = {}
for i = 9, #ARGV, 2 do limits[ARGV[i]] = tonumber(ARGV[i + 1]) end
local lines = redis.call('HGETALL', KEYS[1])

-- Unpaid orders still open: past-deadline ones are the reaper's, paid ones are done.
local function open_orders(key)
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
  for _, oid in ipairs(redis.call('ZRANGE', key, 0, -1)) do
    local st = redis.call('HGET', 'order:' .. oid, 'status')
    if st and st ~= 'pending_payment' and st ~= 'payment_failed' then
      redis.call('ZREM', key, oid)
    end
  end
  return redis.call('ZCARD', key)
end

-- First pass, no writes: is there anything to buy, and may this buyer buy it?
local live_show
for i = 1, #lines, 2 do
  local score = redis.call('ZSCORE', KEYS[2], viewer .. '|' .. lines[i])
  if score and tonumber(score) > now then
    live_show = string.match(lines[i], '^([^|]+)|')
  end
end
local ip_pending = 'pending:ip:' .. ip
if live_show then
  if max_pending > 0 then
    local n = open_orders(KEYS[5])
    if n >= max_pending then return {'!pending', n} end
    if per_ip > 0 then
      n = open_orders(ip_pending)
      if n >= max_pending * per_ip then return {'!pending_ip', n} end
    end
  end
  if email ~= '' then
    local dk = 'drop:' .. live_show
    local drop_id, drop_limit = redis.call('HGET', dk, 'id'), redis.call('HGET', dk, 'limit')
    for i = 1, #lines, 2 do
      local score = redis.call('ZSCORE', KEYS[2], viewer .. '|' .. lines[i])
      if score and tonumber(score) > now then
        local s, sku = string.match(lines[i], '^([^|]+)|(.+)$')
        local q, p, d = parse_line(lines[i + 1])
        local limit = limits[lines[i]] or 0
        if d ~= '' and d == drop_id then limit = tonumber(drop_limit) end
        if limit > 0 then
          local b = tonumber(redis.call('HGET', 'bought:' .. s .. ':email:' .. email, sku) or '0')
          if b + q > limit then return {'!email_limit', sku, limit} end
        end
      end
    end
  end
end

local out = {''}
local show
local buyer_ip = redis.call('GET', 'buyerip:' .. viewer)
for i = 1, #lines, 2 do
  local field, v = lines[i], lines[i + 1]
  local member = viewer .. '|' .. field
  local score = redis.call('ZSCORE', KEYS[2], member)
  redis.call('ZREM', KEYS[2], member)
  redis.call('HDEL', KEYS[1], field)
  local s, sku = string.match(field, '^([^|]+)|(.+)$')
  local q, p, d = parse_line(v)
  if (not score) or tonumber(score) <= now then
    give_back(s, sku, q, d, now)
    ip_release(viewer_ipk(viewer, s), sku, q)
  else
    show = s
    redis.call('HSET', KEYS[3], sku, q .. '|' .. d)
    redis.call('HINCRBY', 'bought:' .. s .. ':' .. viewer, sku, q)
    if email ~= '' then redis.call('HINCRBY', 'bought:' .. s .. ':email:' .. email, sku, q) end
    table.insert(out, sku); table.insert(out, q); table.insert(out, p); table.insert(out, d)
  end
end
if not show then return {} end
redis.call('HSET', KEYS[3], '_show', show, '_viewer', viewer)
if buyer_ip then redis.call('HSET', KEYS[3], '_ip', buyer_ip) end
if email ~= '' then redis.call('HSET', KEYS[3], '_email', email) end
redis.call('ZADD', KEYS[4], ARGV[4], ARGV[3])
if max_pending > 0 then
  redis.call('ZADD', KEYS[5], ARGV[4], ARGV[3])
  redis.call('PEXPIREAT', KEYS[5], ARGV[4])
  if per_ip > 0 then
    redis.call('ZADD', ip_pending, ARGV[4], ARGV[3])
    redis.call('PEXPIREAT', ip_pending, ARGV[4])
  end
end
out[1] = show
return out
"""
)

# Orders past their payment deadline (or told to expire now): expired + stock back, once.
# KEYS: orders pending; ARGV: now_ms, batch, retention of the expired order (s)
# -> flat list of {order_id, show, sku...} changed
EXPIRE_ORDERS = (
    _GIVE_BACK
    + """
local now = tonumber(ARGV[1])
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[2]))
local changed = {}
for _, oid in ipairs(due) do
  redis.call('ZREM', KEYS[1], oid)
  local ok = 'order:' .. oid
  local st = redis.call('HGET', ok, 'status')
  if (not st) or st == 'pending_payment' or st == 'payment_failed' then
    if st then
      redis.call('HSET', ok, 'status', 'expired')
      redis.call('EXPIRE', ok, ARGV[3])
    end
    local sk = 'orderstock:' .. oid
    local show = redis.call('HGET', sk, '_show')
    local viewer = redis.call('HGET', sk, '_viewer')
    local ip = redis.call('HGET', sk, '_ip')
    local email = redis.call('HGET', sk, '_email')
    local held = redis.call('HGETALL', sk)
    table.insert(changed, oid)
    for i = 1, #held, 2 do
      local sku = held[i]
      if string.sub(sku, 1, 1) ~= '_' then
        local q, d = string.match(held[i + 1], '^(%d+)|(.*)$')
        give_back(show, sku, tonumber(q), d, now)
        redis.call('HINCRBY', 'bought:' .. show .. ':' .. viewer, sku, -tonumber(q))
        if ip then ip_release('ipunits:' .. show .. ':' .. ip, sku, tonumber(q)) end
        if email then
          redis.call('HINCRBY', 'bought:' .. show .. ':email:' .. email, sku, -tonumber(q))
        end
        table.insert(changed, show .. '|' .. sku)
      end
    end
    redis.call('DEL', sk)
  end
end
return changed
"""
)

# A pending order whose payment could not be created (Stripe away) goes back into the
# buyer's cart: its units are held again, not released; the order is expired.
# KEYS: order stock, cart, holds expiry, orders pending, order hash
# ARGV: order id, now_ms, hold expiry ms, drop hold expiry ms, retention (s),
#       then sku, unit price cents pairs -> {"{show}|{sku}" whose units went back to stock}
# (a sku the cart got again meanwhile: those units are released instead of merged).
RESTORE_CART = (
    _GIVE_BACK
    + """
if redis.call('HGET', KEYS[5], 'status') ~= 'pending_payment' then return {} end
local show = redis.call('HGET', KEYS[1], '_show')
local viewer = redis.call('HGET', KEYS[1], '_viewer')
if not show then return {} end
local now = tonumber(ARGV[2])
local email = redis.call('HGET', KEYS[1], '_email')
local ipk = viewer_ipk(viewer, show)
local prices = {}
for i = 6, #ARGV, 2 do prices[ARGV[i]] = ARGV[i + 1] end
local other_show = false
for _, f in ipairs(redis.call('HKEYS', KEYS[2])) do
  if string.sub(f, 1, #show + 1) ~= show .. '|' then other_show = true end
end
local released = {}
local held = redis.call('HGETALL', KEYS[1])
for i = 1, #held, 2 do
  local sku = held[i]
  if string.sub(sku, 1, 1) ~= '_' then
    local q, d = string.match(held[i + 1], '^(%d+)|(.*)$')
    q = tonumber(q)
    local field = show .. '|' .. sku
    redis.call('HINCRBY', 'bought:' .. show .. ':' .. viewer, sku, -q)
    if email then redis.call('HINCRBY', 'bought:' .. show .. ':email:' .. email, sku, -q) end
    if other_show or redis.call('HEXISTS', KEYS[2], field) == 1 or not prices[sku] then
      give_back(show, sku, q, d, now)
      ip_release(ipk, sku, q)
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

# KEYS: stock, drop, drops active
# ARGV: show, sku, quantity, ends_at ms, price cents ('' = product price), limit, id, now
START_DROP = """
local now = tonumber(ARGV[8])
local ends = redis.call('HGET', KEYS[2], 'ends_at')
if ends then
  if tonumber(ends) > now then return {'drop_active', 0} end
  local old = redis.call('HGET', KEYS[2], 'sku')
  redis.call('HINCRBY', KEYS[1], old, tonumber(redis.call('HGET', KEYS[2], 'remaining')))
  redis.call('DEL', KEYS[2])
end
local avail = tonumber(redis.call('HGET', KEYS[1], ARGV[2]) or '-1')
if avail < 0 then return {'not_found', 0} end
local qty = tonumber(ARGV[3])
if avail < qty then return {'insufficient', avail} end
redis.call('HINCRBY', KEYS[1], ARGV[2], -qty)
redis.call('HSET', KEYS[2], 'id', ARGV[7], 'sku', ARGV[2], 'remaining', qty, 'quantity', qty,
  'ends_at', ARGV[4], 'price', ARGV[5], 'limit', ARGV[6])
redis.call('ZADD', KEYS[3], ARGV[4], ARGV[1])
return {'ok', avail - qty}
"""

# Drops whose time is up: unsold units back to the product, exactly once (the hash goes).
# KEYS: drops active; ARGV: now_ms -> flat list of "{show}|{sku}"
END_DROPS = """
local now = tonumber(ARGV[1])
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)
local changed = {}
for _, show in ipairs(due) do
  redis.call('ZREM', KEYS[1], show)
  local dk = 'drop:' .. show
  local ends = redis.call('HGET', dk, 'ends_at')
  if ends and tonumber(ends) <= now then
    local sku = redis.call('HGET', dk, 'sku')
    redis.call('HINCRBY', 'stock:' .. show, sku, tonumber(redis.call('HGET', dk, 'remaining')))
    redis.call('DEL', dk)
    table.insert(changed, show .. '|' .. sku)
  end
end
return changed
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
end_drops = Script(END_DROPS)
