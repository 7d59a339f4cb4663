"""Staff roles: what each role may do (pure), and staff passwords (argon2).

Endpoints ask for a capability (``require_role(request, "floor")``); a member's role
grants a set of them. The show's shared ``[staff] password`` and its stream key log in as
the owner, with every capability, as before named members existed.
"""

from __future__ import annotations

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

CAPABILITIES = ("host", "moderator", "floor", "pos", "refund", "stock")
GRANTS: dict[str, frozenset[str]] = {
    "owner": frozenset(CAPABILITIES),
    # feature, drops, auctions, ticker, cues, restreams, stream key, report; moderation;
    # the floor's order queue; refunds
    "host": frozenset({"host", "moderator", "floor", "refund", "stock"}),
    "moderator": frozenset({"moderator"}),
    "floor": frozenset({"floor"}),  # orders, ready, fulfil, reprint, printers, pick list
    # the floor, plus in-person sales, refunds and stock counts
    "cashier": frozenset({"floor", "pos", "refund", "stock"}),
}
MIN_PASSWORD = 10

_hasher = PasswordHasher()


def allows(role: str, capability: str) -> bool:
    return capability in GRANTS.get(role, frozenset())


def hash_password(password: str) -> str:
    if len(password) < MIN_PASSWORD:
        raise ValueError(f"a staff password needs at least {MIN_PASSWORD} characters")
    return _hasher.hash(password)


def check_password(password_hash: str, password: str) -> bool:
    """Argon2 verification (tens of ms of CPU: call it in a thread)."""
    try:
        return _hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False
