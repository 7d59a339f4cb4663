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
    roles: dict[str, str] = field(default_factory=dict)  # show id -> the member's role there

    def role_in(self, show_id: str) -> str:
        return self.roles.get(show_id, self.role)

    def pack(self) -> bytes:
        return msgpack.packb(
            {
                "shows": list(self.shows),
                "credentials": self.credentials,
                "member": self.member,
                "role": self.role,
                "created_at": self.created_at,
                "expires_at": self.expires_at,
                "roles": self.roles,
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
                roles=dict(data.get("roles") or {}),
            )
        except (ValueError, KeyError, TypeError, msgpack.UnpackException):
            return None


def fingerprint(secret: bytes, show: ShowConfig, member: str | None = None) -> str:
    """Stands for the credential the session was opened with (the show's staff password,
    or the member's password hash and role); changes when that does."""
    if member is None:
        msg = f"staff-password|{show.id}|{show.staff_password}"
    else:
        m = show.member(member)
        msg = f"member|{show.id}|{member}|{m.role}|{m.password_hash}" if m else "member-gone"
    return hmac.new(secret, msg.encode(), hashlib.sha256).hexdigest()[:24]


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
        and hmac.compare_digest(
            session.credentials.get(s, ""), fingerprint(secret, shows[s], session.member)
        )
    )


async def create(
    redis,
    secret: bytes,
    shows: list[ShowConfig],
    ttl_s: int = SESSION_S,
    member: str | None = None,
) -> StaffSession:
    now = int(time.time())
    roles = {s.id: s.member(member).role for s in shows if s.member(member)} if member else {}
    session = StaffSession(
        id=secrets.token_urlsafe(18),
        shows=tuple(s.id for s in shows),
        credentials={s.id: fingerprint(secret, s, member) for s in shows},
        member=member,
        role=next(iter(roles.values()), OWNER) if member else OWNER,
        created_at=now,
        expires_at=now + ttl_s,
        roles=roles,
    )
    await redis.set(PREFIX + session.id, session.pack(), ex=ttl_s)
    return session


async def load(redis, session_id: str) -> StaffSession | None:
    raw = await redis.get(PREFIX + session_id)
    return StaffSession.unpack(session_id, raw) if raw else None


async def end(redis, session_id: str) -> None:
    await redis.delete(PREFIX + session_id)
