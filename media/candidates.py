"""Remote ICE candidates we are willing to send connectivity checks to.

Every candidate in a WHIP/WHEP offer or a trickle PATCH makes aioice send STUN packets to
the address it names, so an unauthenticated offer could aim the server at any host and
port (1,000 candidates once made it send 12,516 packets to 893 addresses), and a
non-numeric priority or port used to crash deep in aiortc. So, before aiortc sees them:

- a malformed candidate line (fields missing, non-numeric component/priority/port, a
  port out of range, an address that is not an IP literal) is a 400;
- more than ``MAX_CANDIDATES`` per session is a 400;
- candidates toward addresses we never check are dropped: loopback (unless allowed),
  link-local, multicast, unspecified, reserved, and private/non-global ranges (unless
  allowed). The peer still connects: its own checks reach our candidates and aioice
  learns its address as a peer-reflexive candidate.
- trickle PATCHes are rate-limited per session (``TrickleBudget``).
"""

from __future__ import annotations

import ipaddress
import time
from dataclasses import dataclass, field

from media.sdp import SdpError

MAX_CANDIDATES = 20
CANDIDATE_TYPES = ("host", "srflx", "prflx", "relay")


@dataclass(frozen=True)
class CandidatePolicy:
    allow_loopback: bool = False
    allow_private: bool = False


@dataclass
class TrickleBudget:
    """Per session: candidates added so far and a token bucket for PATCH requests
    (``burst`` at once, then ``per_s`` a second)."""

    burst: float = 10.0
    per_s: float = 2.0
    candidates: int = 0
    tokens: float = field(default=-1.0)
    last: float = 0.0

    def take_request(self, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        if self.tokens < 0:
            self.tokens, self.last = self.burst, now
        self.tokens = min(self.burst, self.tokens + (now - self.last) * self.per_s)
        self.last = now
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True


def _malformed(detail: str) -> SdpError:
    return SdpError(400, f"Malformed ICE candidate: {detail}.")


def _number(text: str, what: str, lo: int, hi: int) -> int:
    if not text.isdigit():
        raise _malformed(f"{what} {text[:20]!r} is not a number")
    value = int(text)
    if not lo <= value <= hi:
        raise _malformed(f"{what} {value} is out of range")
    return value


def candidate_address(value: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """Validate one ``candidate:...`` value (no ``a=``); return its address.

    Raises SdpError(400) when the line is malformed."""
    fields = value.split()
    if len(fields) < 8 or not fields[0].startswith("candidate:") or len(fields[0]) < 11:
        raise _malformed(
            "expected 'candidate:<foundation> <component> <transport> "
            "<priority> <address> <port> typ <type>'"
        )
    _number(fields[1], "component", 1, 256)
    if fields[2].lower() not in ("udp", "tcp"):
        raise _malformed(f"transport {fields[2][:10]!r} is not udp or tcp")
    _number(fields[3], "priority", 0, 2**32 - 1)
    try:
        address = ipaddress.ip_address(fields[4])
    except ValueError:
        raise _malformed(f"address {fields[4][:60]!r} is not an IP address") from None
    _number(fields[5], "port", 0 if fields[2].lower() == "tcp" else 1, 65535)
    if fields[6] != "typ" or fields[7] not in CANDIDATE_TYPES:
        raise _malformed("expected 'typ host|srflx|prflx|relay'")
    rest = fields[8:]
    for key, val in zip(rest[::2], rest[1::2], strict=False):
        if key == "rport":
            _number(val, "rport", 0, 65535)
    return address


def allowed(
    address: ipaddress.IPv4Address | ipaddress.IPv6Address, policy: CandidatePolicy
) -> bool:
    """Pure: may the server send connectivity checks to ``address``?"""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if address.is_loopback:
        return policy.allow_loopback
    if address.is_link_local or address.is_multicast or address.is_unspecified:
        return False
    if address.is_reserved:
        return False
    if not address.is_global:  # RFC 1918, ULA, CGNAT, documentation ranges...
        return policy.allow_private
    return True


def screen_candidates(values: list[str], policy: CandidatePolicy) -> list[bool]:
    """For each ``candidate:...`` value: keep it (True) or drop it (False).
    Raises SdpError(400) on a malformed one."""
    return [allowed(candidate_address(v), policy) for v in values]


def screen_offer(sdp: str, policy: CandidatePolicy, max_candidates: int = MAX_CANDIDATES) -> str:
    """The offer without the candidate lines we never check toward.

    Raises SdpError(400) on a malformed candidate or more than ``max_candidates``."""
    lines = sdp.splitlines(keepends=True)
    values = [ln.strip()[2:] for ln in lines if ln.startswith("a=candidate:")]
    if len(values) > max_candidates:
        raise SdpError(400, f"Too many ICE candidates ({len(values)}; at most {max_candidates}).")
    keep = iter(screen_candidates(values, policy))
    return "".join(ln for ln in lines if not ln.startswith("a=candidate:") or next(keep))


def count_offer_candidates(sdp: str) -> int:
    return sum(1 for ln in sdp.splitlines() if ln.startswith("a=candidate:"))
