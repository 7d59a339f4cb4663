"""The pure core of chat: what may be posted, by whom, and when.

Nothing here touches Redis or HTTP. The store reads a snapshot of the state (the
viewer's name, their moderation state, when they last posted, their IP's recent posts,
the show's settings), asks ``check_post`` whether the message may go out, and commits
only if the snapshot is still true (see ``store``). A refusal is a ``Refused`` carrying
the API error code; the route turns it into the JSON error.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import unicodedata
from dataclasses import dataclass, replace
from typing import Any

MAX_TEXT = 200  # characters (code points) of a message, after trimming
MAX_NAME = 32
HISTORY = 50  # messages a joining viewer gets
MAX_SLOW_MODE_S = 300
MAX_BLOCKED_WORDS = 500
MAX_BLOCKED_WORD_LEN = 64
MAX_TIMEOUT_MIN = 7 * 24 * 60
MIN_TIMEOUT_MIN = 1 / 60  # one second
# Even with slow mode off one viewer posts at most once a second: a held-down Enter key
# or a script should not flood everyone's chat.
VIEWER_MIN_INTERVAL_MS = 1000
IP_WINDOW_MS = 60_000

ROLES = ("viewer", "host", "moderator")
ACTIONS = ("timeout", "ban", "unban")

# Joiners glue emoji sequences (family, skin tones, flags); everything else of category
# Cf (bidi overrides, zero-width spaces, tags) only hides or reorders text.
_ZWJ = "\u200d"
_BAD_CATEGORIES = {"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"}
_EMOJI_NEIGHBOURS = {"So", "Sk", "Mn", "Me"}


@dataclass  # not frozen: raising sets attributes (__traceback__) on the exception
class Refused(Exception):
    """A post or request the rules refuse; ``code`` is the API.md error code."""

    code: str  # bad_request | name_required | forbidden | rate_limited | not_found
    detail: str
    retry_after_s: int | None = None

    def __str__(self) -> str:
        return self.detail


def bad(detail: str) -> Refused:
    return Refused("bad_request", detail)


# --- text and names ------------------------------------------------------------------


def bad_character(text: str) -> str | None:
    """A description of the first control or format character in text, or None."""
    for i, ch in enumerate(text):
        cat = unicodedata.category(ch)
        if cat not in _BAD_CATEGORIES:
            continue
        if ch == _ZWJ and 0 < i < len(text) - 1:
            before, after = unicodedata.category(text[i - 1]), unicodedata.category(text[i + 1])
            if before in _EMOJI_NEIGHBOURS and after in _EMOJI_NEIGHBOURS:
                continue
        name = unicodedata.name(ch, "")
        return f"U+{ord(ch):04X}" + (f" {name}" if name else "")
    return None


def clean_line(raw: Any, what: str, max_chars: int) -> str:
    """A trimmed single line of 1..max_chars characters without control or format
    characters; raises Refused (bad_request) otherwise."""
    if not isinstance(raw, str):
        raise bad(f"{what} must be a string.")
    text = raw.strip()
    if not text:
        raise bad(f"{what} must not be empty.")
    if len(text) > max_chars:
        raise bad(f"{what} is limited to {max_chars} characters (got {len(text)}).")
    found = bad_character(text)
    if found is not None:
        raise bad(f"{what} must not contain control or format characters ({found}).")
    return text


def clean_text(raw: Any) -> str:
    return clean_line(raw, "text", MAX_TEXT)


def clean_name(raw: Any) -> str:
    return clean_line(raw, "name", MAX_NAME)


def author_handle(secret: bytes, viewer_id: str) -> str:
    """An opaque, stable handle for a viewer: moderators act on it, and it reveals nothing
    that would let anyone act as that viewer (the cookie is never shown)."""
    mac = hmac.new(secret, b"chat-author:" + viewer_id.encode(), hashlib.sha256).hexdigest()
    return "a" + mac[:15]


def host_handle(secret: bytes, show_id: str) -> str:
    """The handle of the show's host(s): staff sessions and scripts post as one author."""
    mac = hmac.new(secret, b"chat-host:" + show_id.encode(), hashlib.sha256).hexdigest()
    return "h" + mac[:15]


AUTHOR_RE = re.compile(r"^[ah][0-9a-f]{15}$")


# --- blocked words -------------------------------------------------------------------


def fold(text: str) -> str:
    """Text as the blocked-word check sees it: compatibility forms folded (full-width,
    ligatures), case folded, joiners dropped, runs of spaces made one."""
    text = unicodedata.normalize("NFKC", text).casefold().replace(_ZWJ, "")
    return " ".join(text.split())


def clean_blocked_words(raw: Any) -> tuple[str, ...]:
    if not isinstance(raw, list):
        raise bad("blocked_words must be a list of words or phrases.")
    if len(raw) > MAX_BLOCKED_WORDS:
        raise bad(f"blocked_words is limited to {MAX_BLOCKED_WORDS} entries.")
    words: list[str] = []
    for item in raw:
        word = fold(clean_line(item, "each blocked word", MAX_BLOCKED_WORD_LEN))
        if word not in words:
            words.append(word)
    return tuple(words)


def blocked_word_in(text: str, words: tuple[str, ...]) -> str | None:
    """The first blocked word or phrase found in text as a whole word, else None
    ("ass" blocks "ass" and "ASS!" but not "class")."""
    folded = fold(text)
    for word in words:
        if re.search(r"(?<!\w)" + re.escape(word) + r"(?!\w)", folded):
            return word
    return None


# --- settings ------------------------------------------------------------------------


@dataclass(frozen=True)
class ChatSettings:
    slow_mode_s: int = 0
    blocked_words: tuple[str, ...] = ()

    def public(self) -> dict:
        return {"slow_mode_s": self.slow_mode_s, "blocked_words": list(self.blocked_words)}


def clean_slow_mode(raw: Any) -> int:
    if isinstance(raw, bool) or not isinstance(raw, int) or not 0 <= raw <= MAX_SLOW_MODE_S:
        raise bad(f"slow_mode_s must be a whole number of seconds from 0 to {MAX_SLOW_MODE_S}.")
    return raw


def update_settings(current: ChatSettings, body: dict) -> ChatSettings:
    """Settings after a host's edit: each field given replaces the current one."""
    unknown = set(body) - {"slow_mode_s", "blocked_words"}
    if unknown:
        raise bad(f"Unknown field(s): {', '.join(sorted(unknown))}.")
    if not body:
        raise bad('Send {"slow_mode_s": 0-300} and/or {"blocked_words": [...]}.')
    new = current
    if "slow_mode_s" in body:
        new = replace(new, slow_mode_s=clean_slow_mode(body["slow_mode_s"]))
    if "blocked_words" in body:
        new = replace(new, blocked_words=clean_blocked_words(body["blocked_words"]))
    return new


# --- moderation ----------------------------------------------------------------------


@dataclass(frozen=True)
class ModState:
    """One author's standing in one show's chat."""

    banned: bool = False
    timeout_until_ms: int | None = None

    def timed_out(self, now_ms: int) -> bool:
        return self.timeout_until_ms is not None and self.timeout_until_ms > now_ms

    def clear(self, now_ms: int) -> bool:
        return not self.banned and not self.timed_out(now_ms)

    def ttl_ms(self, now_ms: int) -> int | None:
        """How long the state must be kept (None: until lifted)."""
        if self.banned:
            return None
        return max(1, (self.timeout_until_ms or now_ms) - now_ms)

    def public(self, now_ms: int) -> dict:
        return {
            "banned": self.banned,
            "timeout_until": self.timeout_until_ms if self.timed_out(now_ms) else None,
        }


@dataclass(frozen=True)
class Moderation:
    action: str
    author: str
    minutes: float | None


def parse_moderation(body: dict) -> Moderation:
    action = body.get("action")
    if action not in ACTIONS:
        raise bad(f"action must be one of {', '.join(ACTIONS)}.")
    author = body.get("author")
    if not isinstance(author, str) or not AUTHOR_RE.match(author):
        raise bad("author must be the author handle of a chat message.")
    minutes = body.get("minutes")
    if action == "timeout":
        # whole minutes from the host page; fractions (down to a second) for scripts
        if (
            isinstance(minutes, bool)
            or not isinstance(minutes, int | float)
            or not MIN_TIMEOUT_MIN <= minutes <= MAX_TIMEOUT_MIN
        ):
            raise bad(f"minutes must be a number of minutes (at most {MAX_TIMEOUT_MIN}).")
    elif minutes is not None and (isinstance(minutes, bool) or not isinstance(minutes, int)):
        raise bad("minutes must be a whole number (or left out).")
    return Moderation(action, author, minutes if action == "timeout" else None)


def moderate(state: ModState, action: str, minutes: float | None, now_ms: int) -> ModState:
    """The author's state after a moderation action. A timeout replaces an earlier one
    (a moderator may shorten it); a ban stays until unbanned; unban lifts both."""
    if action == "unban":
        return ModState()
    if action == "ban":
        return ModState(banned=True, timeout_until_ms=state.timeout_until_ms)
    if action == "timeout":
        assert minutes is not None
        return replace(state, timeout_until_ms=now_ms + int(minutes * 60_000))
    raise bad(f"unknown action {action!r}")


# --- may this viewer post now? -------------------------------------------------------


@dataclass(frozen=True)
class PostSnapshot:
    """What the store read before a post (all of it about one viewer and one IP)."""

    name: str | None
    mod: ModState
    last_post_ms: int | None
    ip_recent_ms: tuple[int, ...]  # this IP's posts in the last IP_WINDOW_MS, any order
    settings: ChatSettings
    ip_limit: int  # posts per IP_WINDOW_MS; 0 = no limit


def slow_mode_wait_ms(last_post_ms: int | None, now_ms: int, slow_mode_s: int) -> int:
    """0 if the viewer may post now, else how long until they may."""
    if last_post_ms is None:
        return 0
    interval = max(slow_mode_s * 1000, VIEWER_MIN_INTERVAL_MS)
    return max(0, last_post_ms + interval - now_ms)


def ip_wait_ms(recent_ms: tuple[int, ...], now_ms: int, limit: int, window_ms: int) -> int:
    """0 if the IP is under its limit, else how long until its oldest post in the
    window leaves it (a sliding window)."""
    if limit <= 0:
        return 0
    inside = sorted(t for t in recent_ms if t > now_ms - window_ms)
    if len(inside) < limit:
        return 0
    return max(1, inside[len(inside) - limit] + window_ms - now_ms)


def _seconds(ms: int) -> int:
    return max(1, -(-ms // 1000))


def check_post(snap: PostSnapshot, text: str, now_ms: int) -> None:
    """Raise Refused if this (already cleaned) text may not be posted now."""
    if not snap.name:
        raise Refused("name_required", "Choose a display name before chatting (PUT /api/me).")
    if snap.mod.banned:
        raise Refused("forbidden", "You have been banned from this chat.")
    if snap.mod.timed_out(now_ms):
        assert snap.mod.timeout_until_ms is not None
        left = _seconds(snap.mod.timeout_until_ms - now_ms)
        raise Refused("forbidden", f"You are timed out of this chat for {left} more seconds.")
    word = blocked_word_in(text, snap.settings.blocked_words)
    if word is not None:
        raise Refused(
            "bad_request", f"Your message was not sent: {word!r} is not allowed in this chat."
        )
    wait = slow_mode_wait_ms(snap.last_post_ms, now_ms, snap.settings.slow_mode_s)
    if wait:
        why = (
            f"Slow mode is on: one message every {snap.settings.slow_mode_s} s."
            if snap.settings.slow_mode_s
            else "You are sending messages too quickly."
        )
        raise Refused("rate_limited", f"{why} Try again in {_seconds(wait)} s.", _seconds(wait))
    wait = ip_wait_ms(snap.ip_recent_ms, now_ms, snap.ip_limit, IP_WINDOW_MS)
    if wait:
        raise Refused(
            "rate_limited",
            f"Too many messages from your network; try again in {_seconds(wait)} s.",
            _seconds(wait),
        )


# --- messages ------------------------------------------------------------------------


@dataclass(frozen=True)
class ChatMessage:
    id: str
    author: str
    name: str
    role: str
    text: str
    ts: int

    def public(self) -> dict:
        return {
            "id": self.id,
            "author": self.author,
            "name": self.name,
            "role": self.role,
            "text": self.text,
            "ts": self.ts,
        }


MESSAGE_ID_RE = re.compile(r"^\d{1,16}-\d{1,10}$")  # a Redis stream entry id
