"""A lossy link for WebRTC tests: a UDP relay between one viewer and the server.

The machine has no netem, so the link is made in user space. The relay has two sockets:
the viewer talks to ``viewer_side`` (put in the answer the viewer applies, in place of
the server's candidates) and the server talks to ``server_side`` (put in the offer the
server gets, in place of the viewer's). Every datagram between them goes through an
``Impairment`` per direction: random loss, a token-bucket bandwidth cap with a bounded
queue that drops what overflows (as a real bottleneck does), and a fixed delay.

``rewrite_offer``/``rewrite_answer`` do the candidate surgery; ``RelayedPlayer`` is a
``media.client.WhepPlayer`` whose media all flows through a relay.
"""

from __future__ import annotations

import asyncio
import random
import re
import socket
import time
from dataclasses import dataclass, field
from urllib.parse import urljoin

import aiohttp
from aiortc import RTCSessionDescription

from media.client import WhepPlayer, WhipError

UDP_OVERHEAD = 28  # IPv4 + UDP header bytes a link also carries
RCVBUF = 4 << 20


@dataclass
class Impairment:
    """One direction of the link. ``rate_bps`` None: no cap."""

    rate_bps: float | None = None
    loss: float = 0.0
    delay_s: float = 0.0
    queue_s: float = 0.3  # the bottleneck's buffer, in seconds at ``rate_bps``
    seed: int = 1
    sent: int = 0
    dropped_loss: int = 0
    dropped_queue: int = 0
    bytes_sent: int = 0
    _free_at: float = 0.0  # when the bottleneck has sent everything queued so far
    _rng: random.Random = field(init=False)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)

    def set(self, rate_bps: float | None = None, loss: float = 0.0, delay_s: float = 0.0) -> None:
        self.rate_bps, self.loss, self.delay_s = rate_bps, loss, delay_s

    def departure(self, now: float, size: int) -> float | None:
        """When a datagram arriving now leaves the link, or None when it is dropped."""
        if self.loss and self._rng.random() < self.loss:
            self.dropped_loss += 1
            return None
        # First in, first out even when the cap lifts: what is queued leaves first.
        leave = max(now, self._free_at)
        if self.rate_bps:
            start = max(now, self._free_at)
            if start - now > self.queue_s:  # the queue is full: tail drop
                self.dropped_queue += 1
                return None
            self._free_at = start + (size + UDP_OVERHEAD) * 8 / self.rate_bps
            leave = self._free_at
        self.sent += 1
        self.bytes_sent += size
        return leave + self.delay_s


def roomy(transport: asyncio.BaseTransport) -> None:
    """A big receive buffer: bursts of small packets (probe padding) while the test's one
    event loop is busy must not be dropped by this machine's kernel, which would look
    like loss on the link."""
    sock = transport.get_extra_info("socket")
    for option in (getattr(socket, "SO_RCVBUFFORCE", None), socket.SO_RCVBUF):
        if option is None:
            continue
        try:
            sock.setsockopt(socket.SOL_SOCKET, option, RCVBUF)
            return
        except OSError:
            continue


class _Side(asyncio.DatagramProtocol):
    def __init__(self, relay: UdpRelay, name: str) -> None:
        self.relay, self.name = relay, name
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport
        roomy(transport)

    def datagram_received(self, data: bytes, addr) -> None:
        self.relay._received(self.name, data, addr)


class UdpRelay:
    def __init__(self, down: Impairment | None = None, up: Impairment | None = None) -> None:
        self.down = down or Impairment()  # server -> viewer (media)
        self.up = up or Impairment(seed=2)  # viewer -> server (feedback)
        self.server_addr: tuple[str, int] | None = None  # the server's real candidate
        self.viewer_addr: tuple[str, int] | None = None  # learnt from the viewer's packets
        self._viewer: _Side | None = None
        self._server: _Side | None = None

    async def start(self, host: str = "127.0.0.1") -> UdpRelay:
        loop = asyncio.get_running_loop()
        _t, self._viewer = await loop.create_datagram_endpoint(
            lambda: _Side(self, "viewer"), local_addr=(host, 0)
        )
        _t, self._server = await loop.create_datagram_endpoint(
            lambda: _Side(self, "server"), local_addr=(host, 0)
        )
        return self

    @property
    def viewer_side(self) -> tuple[str, int]:
        return self._viewer.transport.get_extra_info("sockname")[:2]

    @property
    def server_side(self) -> tuple[str, int]:
        return self._server.transport.get_extra_info("sockname")[:2]

    def _received(self, side: str, data: bytes, addr) -> None:
        loop = asyncio.get_running_loop()
        # Only the one candidate of each end left in the SDP: the checks of the others
        # are dropped, so exactly one path through the relay works.
        if side == "viewer":
            if addr[:2] != self.viewer_addr:
                return
            link, out, dest = self.up, self._server, self.server_addr
        else:
            if addr[:2] != self.server_addr:
                return
            link, out, dest = self.down, self._viewer, self.viewer_addr
        if dest is None or out is None or out.transport is None:
            return
        now = loop.time()
        leave = link.departure(now, len(data))
        if leave is None:
            return
        if leave <= now:
            out.transport.sendto(data, dest)
        else:
            loop.call_at(leave, self._send, out, data, dest)

    @staticmethod
    def _send(out: _Side, data: bytes, dest: tuple[str, int]) -> None:
        if out.transport is not None and not out.transport.is_closing():
            out.transport.sendto(data, dest)

    def close(self) -> None:
        for side in (self._viewer, self._server):
            if side is not None and side.transport is not None:
                side.transport.close()


_CANDIDATE = re.compile(r"^a=candidate:(\S+) (\d) (\S+) (\d+) (\S+) (\d+) typ (\S+)(.*)$")


def _first_udp_host(sdp: str) -> tuple[str, int]:
    """The UDP IPv4 host candidate to keep (loopback first)."""
    found = []
    for line in sdp.splitlines():
        m = _CANDIDATE.match(line.strip())
        if m and m.group(3).lower() == "udp" and m.group(7) == "host" and ":" not in m.group(5):
            found.append((not m.group(5).startswith("127."), m.group(5), int(m.group(6))))
    if not found:
        raise AssertionError("no UDP host candidate in:\n" + sdp)
    _rank, host, port = min(found)
    return host, port


def _only_candidate(sdp: str, addr: tuple[str, int]) -> str:
    """``sdp`` with every candidate line replaced by one host candidate at ``addr``."""
    out, done = [], set()
    mline = -1
    for line in sdp.splitlines():
        if line.startswith("m="):
            mline += 1
        if line.startswith("a=candidate:"):
            if mline not in done:
                done.add(mline)
                out.append(f"a=candidate:1 1 udp 2130706431 {addr[0]} {addr[1]} typ host")
            continue
        if line.startswith("c=IN IP4 "):
            line = f"c=IN IP4 {addr[0]}"
        out.append(line)
    return "\r\n".join(out) + "\r\n"


def _seen_from(relay_side: tuple[str, int], peer: tuple[str, int]) -> tuple[str, int]:
    """The relay's address as ``peer`` should use it: a relay bound to every address is
    advertised at the peer's own address (a browser pairs a candidate only with remote
    candidates it can reach the same way: not loopback from a LAN address)."""
    host, port = relay_side
    return (peer[0], port) if host == "0.0.0.0" else (host, port)


def rewrite_offer(sdp: str, relay: UdpRelay, server_host: str = "127.0.0.1") -> str:
    """The viewer's offer as the server should see it: the viewer is at the relay."""
    relay.viewer_addr = _first_udp_host(sdp)
    return _only_candidate(sdp, _seen_from(relay.server_side, (server_host, 0)))


def rewrite_answer(sdp: str, relay: UdpRelay) -> str:
    """The server's answer as the viewer should see it: the server is at the relay."""
    relay.server_addr = _first_udp_host(sdp)
    return _only_candidate(sdp, _seen_from(relay.viewer_side, relay.viewer_addr))


class RelayedPlayer(WhepPlayer):
    """A WHEP viewer whose every media packet crosses ``relay``."""

    def __init__(self, url: str, relay: UdpRelay, **kwargs) -> None:
        super().__init__(url, **kwargs)
        self.relay = relay

    async def start(self, http: aiohttp.ClientSession) -> None:
        self.started_at = time.monotonic()
        pc = self.pc
        await pc.setLocalDescription(await pc.createOffer())
        for transceiver in pc.getTransceivers():  # the viewer's own ICE sockets
            for protocol in transceiver.receiver.transport.transport._connection._protocols:
                roomy(protocol.transport)
        offer = rewrite_offer(pc.localDescription.sdp, self.relay)
        async with http.post(
            self.url, data=offer, headers={"Content-Type": "application/sdp"}
        ) as resp:
            body = await resp.text()
            if resp.status != 201:
                raise WhipError(resp.status, body[:300])
            self.location = urljoin(self.url, resp.headers["Location"])
        await pc.setRemoteDescription(
            RTCSessionDescription(rewrite_answer(body, self.relay), "answer")
        )
