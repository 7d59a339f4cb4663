"""Chat kept in Redis, under the rules of ``server.chat.rules``.

Keys (per show):

- ``chat:{show}:log`` — the messages, a stream capped near ``LOG_MAXLEN`` (XADD MAXLEN ~);
  a message's id is its stream entry id, so a delete is one XDEL;
- ``chat:{show}:pinned`` — the pinned message (JSON), if any;
- ``chat:{show}:settings`` — the host's live edits (slow mode, blocked words); the
  manifest's ``[chat]`` table is the default until the first edit;
- ``chat:{show}:mod:{author}`` — a timed-out or banned author (JSON ``ModState``), kept
  as long as it matters (a timeout's key expires with it);
- ``chat:{show}:last:{author}`` — when the author last posted (slow mode);
- ``chat:{show}:ip:{hash}`` — a sorted set of the recent posts from one IP.

A post reads the viewer's name, the settings, the author's moderation state and last
post and the IP's window in one round trip, lets ``rules.check_post`` decide, and
commits with one script that adds and publishes the message only if the author's state
and last post are still what was read (else it reads again). So two processes (or two
tabs) cannot both slip a message past slow mode or a ban. The IP's window is not part
of that guard: everyone behind one address (a venue's wifi) would retry each other; near
its limit it may let a few parallel posts through, never a steady stream. Every change
is published on the show's event bus, so each process's SSE streams carry the same chat.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from dataclasses import dataclass

from redis.exceptions import WatchError

from checkout.keys import tag
from checkout.scripts import Script
from server import identity
from server.chat import rules
from server.chat.rules import ChatMessage, ChatSettings, Moderation, ModState, PostSnapshot
from server.events import CHANNEL_PREFIX

LOG_MAXLEN = 1000
LAST_POST_TTL_MS = (rules.MAX_SLOW_MODE_S + 5) * 1000
POST_ATTEMPTS = 8


def now_ms() -> int:
    return int(time.time() * 1000)


def _key(show_id: str, *parts: str) -> str:
    # The show as hash tag: a post's script touches several of these (one Cluster slot).
    return ":".join(("chat", tag(show_id), *parts))


def pinned_key(show_id: str) -> str:
    return _key(show_id, "pinned")


def _s(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def parse_entry(entry_id, fields: dict) -> ChatMessage:
    f = {_s(k): _s(v) for k, v in fields.items()}
    return ChatMessage(
        id=_s(entry_id),
        author=f.get("author", ""),
        name=f.get("name", ""),
        role=f.get("role", "viewer"),
        text=f.get("text", ""),
        ts=int(f.get("ts", "0") or 0),
    )


def message_from_json(raw: bytes | str | None) -> ChatMessage | None:
    if not raw:
        return None
    data = json.loads(raw)
    return ChatMessage(**{k: data[k] for k in ("id", "author", "name", "role", "text", "ts")})


def parse_mod(raw: bytes | None) -> ModState:
    if not raw:
        return ModState()
    data = json.loads(raw)
    return ModState(bool(data.get("banned")), data.get("timeout_until_ms"))


@dataclass
class ChatStore:
    redis: object
    secret: bytes
    show_id: str
    defaults: ChatSettings
    ip_limit: int = 0  # posts per rules.IP_WINDOW_MS from one IP; 0 = none

    # --- keys ------------------------------------------------------------------------
    @property
    def log_key(self) -> str:
        return _key(self.show_id, "log")

    @property
    def pinned_key(self) -> str:
        return pinned_key(self.show_id)

    @property
    def settings_key(self) -> str:
        return _key(self.show_id, "settings")

    def mod_key(self, author: str) -> str:
        return _key(self.show_id, "mod", author)

    def last_key(self, author: str) -> str:
        return _key(self.show_id, "last", author)

    def ip_key(self, ip: str) -> str:
        digest = hmac.new(self.secret, b"chat-ip:" + ip.encode(), hashlib.sha256).hexdigest()
        return _key(self.show_id, "ip", digest[:16])

    # --- reading ---------------------------------------------------------------------
    async def settings(self) -> ChatSettings:
        raw = await self.redis.hgetall(self.settings_key)
        return self._settings_from(raw)

    def _settings_from(self, raw: dict) -> ChatSettings:
        f = {_s(k): _s(v) for k, v in raw.items()}
        s = self.defaults
        if "slow_mode_s" in f:
            s = ChatSettings(int(f["slow_mode_s"]), s.blocked_words)
        if "blocked_words" in f:
            s = ChatSettings(s.slow_mode_s, tuple(json.loads(f["blocked_words"])))
        return s

    async def history(self, count: int = rules.HISTORY) -> list[ChatMessage]:
        entries = await self.redis.xrevrange(self.log_key, count=count)
        return [parse_entry(i, f) for i, f in reversed(entries)]

    async def get(self, message_id: str) -> ChatMessage | None:
        if not rules.MESSAGE_ID_RE.match(message_id):
            return None
        entries = await self.redis.xrange(self.log_key, message_id, message_id)
        return parse_entry(*entries[0]) if entries else None

    async def pinned(self) -> ChatMessage | None:
        return message_from_json(await self.redis.get(self.pinned_key))

    async def mod_state(self, author: str) -> ModState:
        return parse_mod(await self.redis.get(self.mod_key(author)))

    # --- posting ---------------------------------------------------------------------
    async def post(
        self, *, author: str, viewer_id: str, role: str, text: str, ip: str, staff: bool
    ) -> ChatMessage:
        """Append a message and publish it if the rules allow it now; raises
        rules.Refused otherwise."""
        text = rules.clean_text(text)
        if staff:  # the host speaks freely: no slow mode, rate limit or word list
            ts, name = now_ms(), await identity.get_name(self.redis, viewer_id) or "Host"
            entry_id = await self._commit(author, name, role, text, ts, None)
            assert entry_id is not None
            return ChatMessage(_s(entry_id), author, name, role, text, ts)
        mod_key, last_key, ip_key = self.mod_key(author), self.last_key(author), self.ip_key(ip)
        for _ in range(POST_ATTEMPTS):
            ts = now_ms()
            async with self.redis.pipeline(transaction=False) as reads:
                reads.hget(identity.profile_key(viewer_id), "name")
                reads.hgetall(self.settings_key)
                reads.get(mod_key)
                reads.get(last_key)
                if self.ip_limit:
                    reads.zrangebyscore(ip_key, ts - rules.IP_WINDOW_MS, "+inf", withscores=True)
                name_raw, settings_raw, mod_raw, last, *ip_rows = await reads.execute()
            name = _s(name_raw) if name_raw else None
            snap = PostSnapshot(
                name=name,
                mod=parse_mod(mod_raw),
                last_post_ms=int(last) if last else None,
                ip_recent_ms=tuple(int(score) for _, score in (ip_rows or [[]])[0]),
                settings=self._settings_from(settings_raw),
                ip_limit=self.ip_limit,
            )
            rules.check_post(snap, text, ts)
            assert name is not None
            entry_id = await self._commit(
                author, name, role, text, ts, (mod_raw or b"", last or b"", ip)
            )
            if entry_id is not None:
                return ChatMessage(_s(entry_id), author, name, role, text, ts)
            # another post or a moderation of this author came in between: decide again
        raise rules.Refused("rate_limited", "Chat is busy; please try again.", 1)

    async def _commit(
        self,
        author: str,
        name: str,
        role: str,
        text: str,
        ts: int,
        guard: tuple[bytes, bytes, str] | None,
    ) -> bytes | str | None:
        """XADD + publish in one script; with a guard (the author's moderation state and
        last post as read), only if neither changed since. None: they did."""
        mod_raw, last_raw, ip = guard if guard is not None else (b"", b"", "")
        return await _COMMIT(
            self.redis,
            [self.log_key, self.last_key(author), self.mod_key(author), self.ip_key(ip)],
            [
                1 if guard is not None else 0,
                mod_raw,
                last_raw,
                LAST_POST_TTL_MS,
                rules.IP_WINDOW_MS if self.ip_limit and guard is not None else 0,
                LOG_MAXLEN,
                author,
                name,
                role,
                text,
                ts,
                CHANNEL_PREFIX + self.show_id,
                self.show_id,
            ],
        )

    @staticmethod
    def _fields(author: str, name: str, role: str, text: str, ts: int) -> dict:
        return {"author": author, "name": name, "role": role, "text": text, "ts": ts}

    # --- moderation ------------------------------------------------------------------
    async def delete(self, message_id: str) -> tuple[bool, bool]:
        """Remove a message: (it existed, the pin was lifted with it)."""
        if not rules.MESSAGE_ID_RE.match(message_id):
            return False, False
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.xdel(self.log_key, message_id)
            pipe.get(self.pinned_key)
            removed, pinned_raw = await pipe.execute()
        pinned = message_from_json(pinned_raw)
        unpinned = False
        if pinned is not None and pinned.id == message_id:
            # only if it is still the pinned one (a new pin may have come meanwhile)
            unpinned = bool(await _DEL_IF_EQUAL(self.redis, [self.pinned_key], [pinned_raw]))
        return bool(removed) or unpinned, unpinned

    async def pin(self, message_id: str | None) -> ChatMessage | None:
        """Pin a message (None unpins); raises Refused(not_found) for an unknown id."""
        if message_id is None:
            await self.redis.delete(self.pinned_key)
            return None
        message = await self.get(message_id)
        if message is None:
            raise rules.Refused("not_found", f"No chat message {message_id!r} in this show.")
        await self.redis.set(self.pinned_key, json.dumps(message.public()))
        return message

    async def moderate(self, action: Moderation) -> ModState:
        key = self.mod_key(action.author)
        async with self.redis.pipeline(transaction=True) as pipe:
            while True:
                try:
                    await pipe.watch(key)
                    ts = now_ms()
                    state = rules.moderate(
                        parse_mod(await pipe.get(key)), action.action, action.minutes, ts
                    )
                    pipe.multi()
                    if state.clear(ts):
                        pipe.delete(key)
                    else:
                        value = json.dumps(
                            {"banned": state.banned, "timeout_until_ms": state.timeout_until_ms}
                        )
                        pipe.set(key, value, px=state.ttl_ms(ts))
                    await pipe.execute()
                    return state
                except WatchError:
                    continue

    async def update_settings(self, body: dict) -> ChatSettings:
        new = rules.update_settings(await self.settings(), body)
        await self.redis.hset(
            self.settings_key,
            mapping={
                "slow_mode_s": new.slow_mode_s,
                "blocked_words": json.dumps(list(new.blocked_words)),
            },
        )
        return new


# The commit of a post: one round trip, and the chat event is published with the message
# (no window in which it is stored but not yet announced). It is the event bus's envelope
# (server.events: msgpack of the event with "ts" and "show") built here because only the
# script knows the entry id.
# KEYS: log, author's last post, author's moderation state, IP window
# ARGV: guarded, moderation as read, last post as read, last-post TTL ms, IP window ms
#       (0 = none), log maxlen, author, name, role, text, ts, channel, show
# -> the entry id, or false when the guarded keys changed
_COMMIT = Script(
    """
if ARGV[1] == '1' then
  if (redis.call('GET', KEYS[3]) or '') ~= ARGV[2] then return false end
  if (redis.call('GET', KEYS[2]) or '') ~= ARGV[3] then return false end
end
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[6], '*',
  'author', ARGV[7], 'name', ARGV[8], 'role', ARGV[9], 'text', ARGV[10], 'ts', ARGV[11])
local ts = tonumber(ARGV[11])
if ARGV[1] == '1' then
  redis.call('SET', KEYS[2], ARGV[11], 'PX', ARGV[4])
  local window = tonumber(ARGV[5])
  if window > 0 then
    redis.call('ZADD', KEYS[4], ts, ARGV[11] .. ':' .. ARGV[7])
    redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', ts - window)
    redis.call('PEXPIRE', KEYS[4], window)
  end
end
local message = {id = id, author = ARGV[7], name = ARGV[8], role = ARGV[9], text = ARGV[10],
  ts = ts}
redis.call('PUBLISH', ARGV[12],
  cmsgpack.pack({type = 'chat', message = message, ts = ts, show = ARGV[13]}))
return id
"""
)

_DEL_IF_EQUAL = Script(
    "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"
)
