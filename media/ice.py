"""ICE servers (STUN and TURN) of a show: validated from the manifest's ``[ice]``, sent
to WHIP/WHEP clients as ``Link`` headers (RFC 9725 section 4.6), rendered into the pages
(a browser needs them before it creates its offer) and used by the server's own peers,
so the server gathers relay candidates too.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection

# stun:host[:port]  turn(s):host[:port][?transport=udp|tcp]
_URL = re.compile(
    r"(?P<scheme>stuns?|turns?):(?P<host>\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+)(?::(?P<port>\d{1,5}))?"
    r"(?:\?transport=(?P<transport>udp|tcp))?"
)


@dataclass(frozen=True)
class IceServer:
    url: str
    username: str | None = None
    credential: str | None = None

    @property
    def is_turn(self) -> bool:
        return self.url.startswith("turn")

    def link(self) -> str:
        """One ``Link`` header value for this server (RFC 9725 section 4.6)."""
        value = f'<{self.url}>; rel="ice-server"'
        if self.is_turn:
            value += (
                f'; username="{self.username}"; credential="{self.credential}"'
                '; credential-type="password"'
            )
        return value

    def browser(self) -> dict:
        """For ``new RTCPeerConnection({iceServers: [...]})``."""
        out: dict = {"urls": self.url}
        if self.is_turn:
            out |= {"username": self.username, "credential": self.credential}
        return out


def url_problem(url: str, turn: bool) -> str | None:
    """Pure: why ``url`` is not a usable STUN (``turn=False``) or TURN URL, or None."""
    m = _URL.fullmatch(url)
    if m is None:
        kind = "turn:host[:port][?transport=udp|tcp] or turns:..." if turn else "stun:host[:port]"
        return f"must look like {kind}, got {url!r}"
    if m["scheme"].startswith("turn") != turn:
        return f"must be a {'turn: or turns:' if turn else 'stun:'} URL, got {url!r}"
    if m["port"] and not 1 <= int(m["port"]) <= 65535:
        return f"port out of range in {url!r}"
    if m["transport"] and not turn:
        return f"a STUN URL takes no transport, got {url!r}"
    if m["scheme"] == "turns" and m["transport"] == "udp":
        return f"turns: runs over TCP (TLS), got {url!r}"
    return None


def credential_problem(value: str) -> str | None:
    """Credentials go inside quoted header attributes: no quotes, backslashes or controls."""
    if not value:
        return "must not be empty"
    if any(c in '"\\' or ord(c) < 32 or ord(c) == 127 for c in value):
        return "must not contain quotes, backslashes or control characters"
    return None


def link_headers(servers: tuple[IceServer, ...]) -> list[str]:
    return [s.link() for s in servers]


_LINK = re.compile(r'^\s*<([^>]*)>\s*((?:;\s*[A-Za-z-]+="[^"]*"\s*)*)$')
_LINK_ATTR = re.compile(r';\s*([A-Za-z-]+)="([^"]*)"')


def parse_link_headers(values: list[str]) -> tuple[IceServer, ...]:
    """Pure: the ICE servers of a WHIP/WHEP answer's ``Link`` headers (RFC 9725 4.6),
    as ``IceServer.link`` writes them; anything else (or invalid) is left out."""
    servers = []
    for value in values:
        m = _LINK.match(value)
        if m is None:
            continue
        attrs = dict(_LINK_ATTR.findall(m[2]))
        url = m[1]
        if attrs.get("rel") != "ice-server":
            continue
        turn = url.startswith("turn")
        if url_problem(url, turn):
            continue
        if turn:
            username, credential = attrs.get("username", ""), attrs.get("credential", "")
            if credential_problem(username) or credential_problem(credential):
                continue
            servers.append(IceServer(url, username, credential))
        else:
            servers.append(IceServer(url))
    return tuple(servers)


def rtc_configuration(servers: tuple[IceServer, ...] = ()) -> RTCConfiguration:
    """The configuration of Showroom's own peers (WHIP ingest, WHEP egress, edge pulls,
    restreams, the PocketCam): the manifest's ``[ice]`` servers and no others.

    Without ``[ice]``, host candidates only. aiortc's default would ask Google's STUN
    server from every peer, and an answer waits for its gathering: a round trip where
    the server can reach it, up to aioice's 5 s timeout where it cannot (a showroom
    network without internet, a slow resolver). aioice uses one STUN and one TURN
    server per connection: the first of each."""
    chosen: list[IceServer] = []
    for turn in (False, True):
        first = next((s for s in servers if s.is_turn == turn), None)
        if first is not None:
            chosen.append(first)
    return RTCConfiguration(
        iceServers=[RTCIceServer(s.url, s.username, s.credential) for s in chosen]
    )


def peer_connection(servers: tuple[IceServer, ...] = ()) -> RTCPeerConnection:
    """A peer of ours (and of the load generators and tests): only ``servers`` as ICE
    servers, never aiortc's default (``rtc_configuration``)."""
    return RTCPeerConnection(rtc_configuration(servers))


def advertise_address(sdp: str, public_ip: str) -> str:
    """Pure: the answer with its host candidates (and ``c=`` lines) of the public IP's
    family naming ``public_ip`` (``--public-ip``: a cloud server behind 1:1 NAT knows only
    its private addresses; the sockets stay bound to those, the NAT maps the ports)."""
    public = ipaddress.ip_address(public_ip)
    family = f"IP{public.version}"
    out = []
    for line in sdp.splitlines(keepends=True):
        body = line.rstrip("\r\n")
        if body.startswith("a=candidate:"):
            fields = body.split(" ")
            if len(fields) >= 8 and fields[7] == "host" and _version(fields[4]) == public.version:
                fields[4] = public_ip
                line = " ".join(fields) + line[len(body) :]
        elif body.startswith(f"c=IN {family} "):
            line = f"c=IN {family} {public_ip}" + line[len(body) :]
        out.append(line)
    return "".join(out)


def _version(address: str) -> int | None:
    try:
        return ipaddress.ip_address(address).version
    except ValueError:
        return None
