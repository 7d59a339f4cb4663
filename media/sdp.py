"""Pure checks on the SDP that WHIP/WHEP clients send, before aiortc sees it.

aiortc accepts a lot of malformed SDP silently (and fails later, deep inside ICE), so the
routes validate the shape first: a bad body becomes a clear 400/422 instead of a 500 or
a half-created session.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

MAX_SDP_BYTES = 64 * 1024
VIDEO_CODECS = ("H264", "VP8")
AUDIO_CODECS = ("opus",)


class SdpError(ValueError):
    """The offer cannot be used; ``status`` is 400 (unparseable) or 422 (unusable)."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


@dataclass
class MediaSection:
    kind: str
    direction: str = "sendrecv"
    codecs: list[str] = field(default_factory=list)  # encoding names in offer order
    mid: str | None = None
    setup: str | None = None  # DTLS a=setup: actpass | active | passive


@dataclass
class Offer:
    media: list[MediaSection]
    ice_ufrag: str | None = None

    def section(self, kind: str) -> MediaSection | None:
        return next((m for m in self.media if m.kind == kind), None)

    @property
    def dtls_setup(self) -> str | None:
        """The offerer's DTLS role (RFC 8842): the first media section's ``a=setup``; with
        BUNDLE every section shares that transport."""
        return next((m.setup for m in self.media if m.setup), None)


_RTPMAP = re.compile(r"^a=rtpmap:(\d+) ([A-Za-z0-9_.-]+)/")
_DIRECTIONS = ("sendrecv", "sendonly", "recvonly", "inactive")
_OFFER_SETUPS = ("actpass", "active", "passive")


def parse_offer(sdp: str) -> Offer:
    """Parse the parts we decide on; raise SdpError(400) when it is not SDP at all."""
    lines = [line.strip() for line in sdp.replace("\r\n", "\n").split("\n") if line.strip()]
    if not lines or lines[0] != "v=0":
        raise SdpError(400, "Body is not an SDP offer (it must start with v=0).")
    if not any(line.startswith("o=") for line in lines):
        raise SdpError(400, "SDP offer has no origin (o=) line.")
    media: list[MediaSection] = []
    session_ufrag: str | None = None
    session_direction = "sendrecv"
    session_setup: str | None = None
    for line in lines:
        if len(line) < 2 or line[1] != "=":
            raise SdpError(400, f"Malformed SDP line: {line[:40]!r}.")
        if line.startswith("m="):
            parts = line[2:].split()
            if len(parts) < 4:
                raise SdpError(400, f"Malformed media line: {line[:60]!r}.")
            media.append(
                MediaSection(kind=parts[0], direction=session_direction, setup=session_setup)
            )
            continue
        current = media[-1] if media else None
        if line.startswith("a=ice-ufrag:") and session_ufrag is None:
            session_ufrag = line.split(":", 1)[1]
        if line.startswith("a=setup:"):
            value = line[8:].strip().lower()
            if current is None:
                session_setup = value
            else:
                current.setup = value
        elif line[2:] in _DIRECTIONS:
            if current is None:
                session_direction = line[2:]
            else:
                current.direction = line[2:]
        elif current is not None:
            m = _RTPMAP.match(line)
            if m:
                current.codecs.append(m.group(2))
            elif line.startswith("a=mid:"):
                current.mid = line[6:]
    if not media:
        raise SdpError(400, "SDP offer has no media sections.")
    return Offer(media=media, ice_ufrag=session_ufrag)


def check_dtls_setup(offer: Offer) -> None:
    """An offer's DTLS role must be one an answer can take the other side of."""
    for m in offer.media:
        if m.setup is not None and m.setup not in _OFFER_SETUPS:
            raise SdpError(
                422, f"The offer's a=setup:{m.setup[:20]} must be actpass, active or passive."
            )


def check_publish_offer(offer: Offer) -> None:
    """A WHIP offer must send video in a codec we decode (H.264 or VP8)."""
    check_dtls_setup(offer)
    video = offer.section("video")
    if video is None or video.direction not in ("sendonly", "sendrecv"):
        raise SdpError(422, "The offer must send a video track.")
    if not any(c.upper() in VIDEO_CODECS for c in video.codecs):
        raise SdpError(422, "The offer's video must include H264 or VP8.")
    audio = offer.section("audio")
    if audio is not None and audio.direction in ("sendonly", "sendrecv"):
        if not any(c.lower() in AUDIO_CODECS for c in audio.codecs):
            raise SdpError(422, "The offer's audio must include Opus.")


def choose_view_codec(offer: Offer) -> str:
    """Video codec for a WHEP viewer: H.264 (always encoded) if offered, else VP8."""
    check_dtls_setup(offer)
    video = offer.section("video")
    if video is None or video.direction not in ("recvonly", "sendrecv"):
        raise SdpError(422, "The offer must receive a video track.")
    names = [c.upper() for c in video.codecs]
    if "H264" in names:
        return "H264"
    if "VP8" in names:
        return "VP8"
    raise SdpError(422, "The offer's video must accept H264 or VP8.")


def drop_mdns_candidates(sdp: str) -> str:
    """``sdp`` (an offer or a trickle fragment) without ``a=candidate`` lines whose address
    is an mDNS name (``*.local``).

    Chromium hides its host addresses behind such names; aioice would spend up to a second
    resolving each one before the offer is answered. The browser's other candidates, and
    the peer-reflexive candidate learned from its checks once our candidates reach it,
    connect just as well, so these lines are dropped before aiortc sees them. Line
    endings and every other line are kept as they are.
    """
    kept = []
    for line in sdp.splitlines(keepends=True):
        fields = line.strip().split()
        if (
            line.startswith("a=candidate:")
            and len(fields) >= 5
            and fields[4].rstrip(".").lower().endswith(".local")
        ):
            continue
        kept.append(line)
    return "".join(kept)


@dataclass
class SdpFrag:
    ufrag: str | None
    pwd: str | None
    candidates: list[tuple[str | None, str]]  # (mid, "candidate:..." without a=)
    end_of_candidates: bool


def parse_sdpfrag(text: str) -> SdpFrag:
    """Parse a trickle-ICE SDP fragment (RFC 8840), raising SdpError(400) on garbage."""
    ufrag = pwd = mid = None
    candidates: list[tuple[str | None, str]] = []
    end = False
    for raw in text.replace("\r\n", "\n").split("\n"):
        line = raw.strip()
        if not line:
            continue
        if len(line) < 2 or line[1] != "=":
            raise SdpError(400, f"Malformed SDP fragment line: {line[:40]!r}.")
        if line.startswith("a=ice-ufrag:"):
            ufrag = line[12:]
        elif line.startswith("a=ice-pwd:"):
            pwd = line[10:]
        elif line.startswith("a=mid:"):
            mid = line[6:]
        elif line.startswith("a=candidate:"):
            if len(line[2:].split()) < 8:
                raise SdpError(400, "Malformed ICE candidate.")
            candidates.append((mid, line[2:]))
        elif line == "a=end-of-candidates":
            end = True
    return SdpFrag(ufrag, pwd, candidates, end)
