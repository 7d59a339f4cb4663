"""Show reminders: each address gets one email when the show goes live, exactly once.

``reminders:{show}`` is a hash email -> ``pending`` | ``sent``. Signing up, and the move
from pending to sent together with the outbox job, are Lua scripts: two processes seeing
the show go live at the same moment still send each address one email.
"""

from __future__ import annotations

from checkout.keys import tag
from checkout.orders import notify_stream
from server.mail.outbox import pack


def key(show_id: str) -> str:
    """In the show's slot, with the outbox stream its scripts append to."""
    return f"reminders:{tag(show_id)}"


# KEYS[1] reminders hash, KEYS[2] outbox; ARGV[1] email, ARGV[2] '1' if live now,
# ARGV[3] packed job. Returns 'dup' or 'ok'.
_SUBSCRIBE_LUA = """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then return 'dup' end
if ARGV[2] == '1' then
  redis.call('HSET', KEYS[1], ARGV[1], 'sent')
  redis.call('XADD', KEYS[2], '*', 'job', ARGV[3])
else
  redis.call('HSET', KEYS[1], ARGV[1], 'pending')
end
return 'ok'
"""

# KEYS[1] reminders hash, KEYS[2] outbox; ARGV[1] show id. Returns how many were released.
_RELEASE_LUA = """
local all = redis.call('HGETALL', KEYS[1])
local n = 0
for i = 1, #all, 2 do
  if all[i + 1] == 'pending' then
    redis.call('HSET', KEYS[1], all[i], 'sent')
    redis.call('XADD', KEYS[2], '*', 'job', cmsgpack.pack({kind = 'reminder', show = ARGV[1], email = all[i]}))
    n = n + 1
  end
end
return n
"""


def job(show_id: str, email: str) -> dict:
    return {"kind": "reminder", "show": show_id, "email": email}


async def subscribe(redis, show_id: str, email: str, *, live: bool) -> bool:
    """False if the address has already asked for this show."""
    result = await redis.eval(
        _SUBSCRIBE_LUA,
        2,
        key(show_id),
        notify_stream(show_id),
        email,
        "1" if live else "0",
        pack(job(show_id, email)),
    )
    return (result.decode() if isinstance(result, bytes) else result) == "ok"


async def release(redis, show_id: str) -> int:
    return int(await redis.eval(_RELEASE_LUA, 2, key(show_id), notify_stream(show_id), show_id))


async def is_subscribed(redis, show_id: str, email: str) -> bool:
    return bool(await redis.hexists(key(show_id), email))


async def unsubscribe(redis, show_id: str, email: str) -> None:
    await redis.hdel(key(show_id), email)


async def pending(redis, show_id: str) -> int:
    values = await redis.hvals(key(show_id))
    return sum(1 for v in values if v in (b"pending", "pending"))
