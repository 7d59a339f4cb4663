"""Staff sessions: a server-side record in Redis per login.

The staff cookie carries only a signed session id (``auth``); what the session may do
lives here, so logging out deletes it everywhere at once, on every process. Each record
keeps a fingerprint of the credential it was opened with per show: after a password
change (a restart with a new manifest or ``SHOWROOM_STAFF_PASSWORD``) the fingerprint no
longer matches and the session ends for that show.

``member`` and ``role`` say who logged in; today every login is a show's owner password
(``member`` None, role ``owner``). Named members with roles fill them in.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass, field

import msgpack

from server.config import ShowConfig

PREFIX = "showroom:session:"
SESSION_S = 12 * 3600
OWNER = "owner"


@dataclass(frozen=True)
class StaffSession:
    id: str
    shows: tuple[str, ...]
    credentials: dict[str, str] = field(default_factory=dict)  # show id -> fingerprint
    member: str | None = None
    role: str = OWNER
    created_at: int = 0
    expires_at: int = 0

    def pack(self) -> bytes:
        return msgpack.packb(
            {
                "shows": list(self.shows),
                "credentials": self.credentials,
                "member": self.member,
                "role": self.role,
                "created_at": self.created_at,
                "expires_at": self.expires_at,
            }
        )

    @classmethod
    def unpack(cls, session_id: str, raw: bytes) -> StaffSession | None:
        try:
            data = msgpack.unpackb(raw)
            return cls(
                id=session_id,
                shows=tuple(data["shows"]),
                credentials=dict(data["credentials"]),
                member=data.get("member"),
                role=data.get("role", OWNER),
                created_at=int(data["created_at"]),
                expires_at=int(data["expires_at"]),
            )
        except (ValueError, KeyError, TypeError, msgpack.UnpackException):
            return None


def fingerprint(secret: bytes, show: ShowConfig) -> str:
    """Stands for the show's current staff password; changes when the password does."""
    msg = f"staff-password|{show.id}|{show.staff_password}".encode()
    return hmac.new(secret, msg, hashlib.sha256).hexdigest()[:24]


def valid_shows(
    session: StaffSession, secret: bytes, shows: dict[str, ShowConfig], now: float | None = None
) -> tuple[str, ...]:
    """The shows this session still covers: not expired, credential unchanged."""
    if session.expires_at <= (time.time() if now is None else now):
        return ()
    return tuple(
        s
        for s in session.shows
        if s in shows
        and hmac.compare_digest(session.credentials.get(s, ""), fingerprint(secret, shows[s]))
    )


async def create(
    redis, secret: bytes, shows: list[ShowConfig], ttl_s: int = SESSION_S
) -> StaffSession:
    now = int(time.time())
    session = StaffSession(
        id=secrets.token_urlsafe(18),
        shows=tuple(s.id for s in shows),
        credentials={s.id: fingerprint(secret, s) for s in shows},
        created_at=now,
        expires_at=now + ttl_s,
    )
    await redis.set(PREFIX + session.id, session.pack(), ex=ttl_s)
    return session


async def load(redis, session_id: str) -> StaffSession | None:
    raw = await redis.get(PREFIX + session_id)
    return StaffSession.unpack(session_id, raw) if raw else None


async def end(redis, session_id: str) -> None:
    await redis.delete(PREFIX + session_id)
