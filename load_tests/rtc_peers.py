"""aiortc peers for the latency benchmark: a time-coded source, a WHIP publisher,
WHEP viewers that read the time code back, and a direct peer-to-peer floor.

Every time is wall-clock epoch ms on this machine, so the publisher's stamp and the
viewer's read share one clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import logging
import socket
import time
from dataclasses import dataclass, field

import aiohttp
import av
import numpy as np
from aiortc import (
    MediaStreamTrack,
    RTCPeerConnection,
    RTCRtpSender,
    RTCRtpTransceiver,
    RTCSessionDescription,
)

from media import timecode
from media.ice import peer_connection

VIDEO_CLOCK = fractions.Fraction(1, 90000)
log = logging.getLogger("load_tests.latency")


def now_ms() -> float:
    return time.time() * 1000


def prefer_h264(transceiver: RTCRtpTransceiver) -> None:
    """Offer H.264 only: the server's shared encoder is H.264 first."""
    caps = RTCRtpSender.getCapabilities("video").codecs
    transceiver.setCodecPreferences([c for c in caps if c.mimeType == "video/H264"])


def test_pattern(width: int, height: int, n: int) -> list[np.ndarray]:
    """``n`` yuv420p frames (as (h*3/2, w) arrays) of moving bars and noise."""
    rng = np.random.default_rng(7)
    xx, yy = np.arange(width)[None, :], np.arange(height)[:, None]
    frames = []
    for i in range(n):
        y = ((xx + i * 9) // 40 % 2 * 120 + 40 + (yy * 60 // height)).astype(np.int16)
        y = np.clip(y + rng.integers(-12, 12, (height, width)), 0, 255).astype(np.uint8)
        uv = np.full((height // 2, width), 128, np.uint8)
        uv[: height // 4, :] = (80 + i * 3) % 256
        frames.append(np.concatenate([y, uv]))
    return frames


class StampedSource(MediaStreamTrack):
    """A paced test pattern whose every frame carries its capture time (epoch ms)."""

    kind = "video"

    def __init__(self, width: int, height: int, fps: int) -> None:
        super().__init__()
        self.width, self.height, self.fps = width, height, fps
        self._pattern = test_pattern(width, height, fps)
        self._start: float | None = None
        self._count = 0

    async def recv(self) -> av.VideoFrame:
        loop = asyncio.get_running_loop()
        if self._start is None:
            self._start = loop.time()
        self._count += 1
        delay = self._start + self._count / self.fps - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        elif delay < -0.2:  # fell far behind (busy machine): restart the pacing clock
            self._start, self._count = loop.time(), 1
        frame = av.VideoFrame.from_ndarray(
            self._pattern[self._count % len(self._pattern)], format="yuv420p"
        )
        frame.pts = int(self._count * 90000 / self.fps)
        frame.time_base = VIDEO_CLOCK
        timecode.stamp(frame, int(now_ms()))  # the capture instant
        return frame


@dataclass
class Publisher:
    pc: RTCPeerConnection
    location: str | None


async def whip_publish(
    http: aiohttp.ClientSession, url: str, key: str, source: MediaStreamTrack
) -> Publisher:
    pc = peer_connection()
    prefer_h264(pc.addTransceiver(source, direction="sendonly"))
    await pc.setLocalDescription(await pc.createOffer())
    headers = {"Content-Type": "application/sdp", "Authorization": f"Bearer {key}"}
    async with http.post(url, data=pc.localDescription.sdp, headers=headers) as resp:
        body = await resp.text()
        if resp.status != 201:
            await pc.close()
            raise RuntimeError(f"WHIP {url} answered {resp.status}: {body[:200]}")
        location = resp.headers.get("Location")
    await pc.setRemoteDescription(RTCSessionDescription(body, "answer"))
    return Publisher(pc, location)


class Counter(asyncio.DatagramProtocol):
    """Counts a viewer's RTP packets before aiortc would see them; passes the rest on
    (and, with ``passthrough``, the RTP packets too: a decoding viewer's byte count)."""

    def __init__(
        self,
        inner: asyncio.DatagramProtocol,
        shared: Counter | None = None,
        passthrough: bool = False,
    ) -> None:
        self.inner = inner
        self.passthrough = passthrough
        self.totals = shared or self  # one viewer's sockets count into one place
        self.packets = 0
        self.bytes = 0
        self.lost = 0
        self.last: dict[bytes, int] = {}

    def datagram_received(self, data: bytes, addr) -> None:
        if 127 < data[0] < 192 and not 191 < data[1] < 224:  # SRTP, not SRTCP
            t = self.totals
            t.packets += 1
            t.bytes += len(data)
            seq = (data[2] << 8) | data[3]
            ssrc = data[8:12]
            last = t.last.get(ssrc)
            gap = 1 if last is None else (seq - last) & 0xFFFF
            if 0 < gap <= 0x8000:  # not a duplicate or a late packet
                t.lost += gap - 1
                t.last[ssrc] = seq
            if not self.passthrough:
                return
        self.inner.datagram_received(data, addr)

    def error_received(self, exc: Exception) -> None:
        self.inner.error_received(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self.inner.connection_lost(exc)


def count_instead_of_aiortc(pc: RTCPeerConnection) -> Counter:
    """Put one ``Counter`` in front of every UDP socket of ``pc``'s ICE connection (the
    server may send on any pair that succeeded), with room for a keyframe's burst: its
    RTP packets are counted and dropped before SRTP."""
    return _count_sockets(pc, passthrough=False)


def count_before_aiortc(pc: RTCPeerConnection) -> Counter:
    """``count_instead_of_aiortc`` for a viewer that still decodes: every packet is
    counted, then goes on to aiortc."""
    return _count_sockets(pc, passthrough=True)


def _count_sockets(pc: RTCPeerConnection, passthrough: bool) -> Counter:
    counter: Counter | None = None
    for transceiver in pc.getTransceivers():
        connection = transceiver.receiver.transport.transport._connection
        for protocol in connection._protocols:
            transport = protocol.transport
            if isinstance(transport.get_protocol(), Counter):
                continue
            with contextlib.suppress(OSError, AttributeError):
                transport.get_extra_info("socket").setsockopt(
                    socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20
                )
            wrapper = Counter(protocol, counter, passthrough)
            counter = counter or wrapper
            transport.set_protocol(wrapper)
    assert counter is not None, "no ICE sockets"
    return counter


@dataclass
class ViewerStats:
    """What one viewer saw: its join time and (arrival wall s, latency ms) per frame."""

    join_ms: float | None = None
    answer_ms: float | None = None  # WHEP POST -> answer received
    connected_ms: float | None = None  # WHEP POST -> ICE+DTLS connected
    samples: list[tuple[float, float]] = field(default_factory=list)
    frames: int = 0
    unreadable: int = 0
    error: str | None = None
    worker: str | None = None  # X-Showroom-Worker of the WHEP answer (serve --workers)
    # Its RTP packets and bytes from its first frame on (a non-decoding viewer's are then
    # dropped before SRTP).
    counter: Counter | None = None

    def latencies(self, start: float, end: float) -> list[float]:
        return [lat for t, lat in self.samples if start <= t <= end]


async def run_viewer(
    base: str, show: str, stats: ViewerStats, stop: asyncio.Event, decode: bool = True
) -> None:
    """Watch ``show`` over WHEP until ``stop`` is set, reading every decoded frame's code.

    With ``decode=False`` the viewer decodes only its first frame (its join time), then
    counts every packet (``stats.counter``) and drops it before SRTP, as the fan-out
    benchmark's load viewers do: the server's cost is the same, and one measuring process
    can hold many viewers on a small machine without its own backlog polluting the
    figures of the decoding ones.
    """
    pc = peer_connection()
    transceiver = pc.addTransceiver("video", direction="recvonly")
    prefer_h264(transceiver)
    track_ready: asyncio.Future[MediaStreamTrack] = asyncio.get_running_loop().create_future()

    @pc.on("track")
    def on_track(track: MediaStreamTrack) -> None:
        if track.kind == "video" and not track_ready.done():
            track_ready.set_result(track)

    location = None
    t0 = time.perf_counter()

    @pc.on("connectionstatechange")
    def on_state() -> None:
        if pc.connectionState == "connected" and stats.connected_ms is None:
            stats.connected_ms = (time.perf_counter() - t0) * 1000

    timeout = aiohttp.ClientTimeout(total=15)
    async with aiohttp.ClientSession(base, timeout=timeout) as http:
        try:
            await pc.setLocalDescription(await pc.createOffer())
            t0 = time.perf_counter()
            async with http.post(
                f"/whep/{show}",
                data=pc.localDescription.sdp,
                headers={"Content-Type": "application/sdp"},
            ) as resp:
                body = await resp.text()
                if resp.status != 201:
                    stats.error = f"WHEP answered {resp.status}: {body[:120]}"
                    return
                location = resp.headers.get("Location")
                stats.worker = resp.headers.get("X-Showroom-Worker")
            stats.answer_ms = (time.perf_counter() - t0) * 1000
            await pc.setRemoteDescription(RTCSessionDescription(body, "answer"))
            async with asyncio.timeout(10):
                track = await track_ready
            while not stop.is_set():
                # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancel.
                async with asyncio.timeout(10):
                    frame = await track.recv()
                arrived = time.time()
                if stats.join_ms is None:
                    stats.join_ms = (time.perf_counter() - t0) * 1000
                    if decode:
                        stats.counter = count_before_aiortc(pc)
                    else:
                        # From here its packets are counted and dropped before SRTP: the
                        # server sends it everything, and the measuring process spends
                        # its CPU on the decoding viewers, not on 40 others' decryption.
                        stats.counter = count_instead_of_aiortc(pc)
                        await stop.wait()
                        break
                stats.frames += 1
                code = timecode.read(frame)
                if code is None:
                    stats.unreadable += 1
                else:
                    stats.samples.append((arrived, arrived * 1000 - code))
        except Exception as exc:  # noqa: BLE001 - one viewer's failure is a result, not a crash
            stats.error = f"{type(exc).__name__}: {exc}"
        finally:
            if location:
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(5), http.delete(location):
                        pass
            with contextlib.suppress(Exception):
                async with asyncio.timeout(5):
                    await pc.close()


async def report_to_server(base: str, show: str, stats: ViewerStats, start: float, end: float):
    """Send this viewer's figures to the server, as a browser viewer would (/metrics)."""
    lats = sorted(stats.latencies(start, end))
    body: dict[str, float] = {}
    if lats:
        body["glass_to_glass_ms"] = round(lats[len(lats) // 2], 3)
    if stats.join_ms is not None:
        body["join_ms"] = round(stats.join_ms, 3)
    if not body:
        return
    async with aiohttp.ClientSession(base, timeout=aiohttp.ClientTimeout(total=10)) as http:
        async with http.post(f"/api/shows/{show}/stats", json=body) as resp:
            await resp.read()


@dataclass
class FloorResult:
    join_ms: float | None
    latencies: list[float]
    unreadable: int


async def direct_peer_to_peer(width: int, height: int, fps: int, seconds: float) -> FloorResult:
    """The aiortc stack's own floor: the same source straight to one viewer, no server
    (one encode, packetise, loopback, jitter buffer, decode)."""
    source = StampedSource(width, height, fps)
    pub, sub = peer_connection(), peer_connection()
    prefer_h264(pub.addTransceiver(source, direction="sendonly"))
    stats = ViewerStats()
    track_ready: asyncio.Future[MediaStreamTrack] = asyncio.get_running_loop().create_future()

    @sub.on("track")
    def on_track(track: MediaStreamTrack) -> None:
        if not track_ready.done():
            track_ready.set_result(track)

    try:
        await pub.setLocalDescription(await pub.createOffer())
        t0 = time.perf_counter()
        await sub.setRemoteDescription(pub.localDescription)
        await sub.setLocalDescription(await sub.createAnswer())
        await pub.setRemoteDescription(sub.localDescription)
        async with asyncio.timeout(10):
            track = await track_ready
        deadline = time.time() + seconds + 1.0
        settle = None
        while time.time() < deadline:
            async with asyncio.timeout(10):
                frame = await track.recv()
            arrived = time.time()
            if stats.join_ms is None:
                stats.join_ms = (time.perf_counter() - t0) * 1000
                settle = arrived + 1.0  # the first second includes the encoder's ramp-up
            code = timecode.read(frame)
            if code is None:
                stats.unreadable += 1
            elif settle is not None and arrived >= settle:
                stats.samples.append((arrived, arrived * 1000 - code))
    finally:
        await pub.close()
        await sub.close()
    return FloorResult(stats.join_ms, [lat for _, lat in stats.samples], stats.unreadable)


async def loopback_udp_rtt(count: int = 200) -> list[float]:
    """Round trips (ms) of a small UDP datagram through 127.0.0.1 and back."""
    loop = asyncio.get_running_loop()

    class Echo(asyncio.DatagramProtocol):
        def connection_made(self, transport):
            self.transport = transport

        def datagram_received(self, data, addr):
            self.transport.sendto(data, addr)

    class Pinger(asyncio.DatagramProtocol):
        def __init__(self) -> None:
            self.waiter: asyncio.Future | None = None

        def datagram_received(self, data, addr):
            if self.waiter and not self.waiter.done():
                self.waiter.set_result(time.perf_counter())

    echo, _ = await loop.create_datagram_endpoint(Echo, local_addr=("127.0.0.1", 0))
    port = echo.get_extra_info("sockname")[1]
    ping_t, pinger = await loop.create_datagram_endpoint(Pinger, remote_addr=("127.0.0.1", port))
    rtts = []
    try:
        for _ in range(count):
            pinger.waiter = loop.create_future()
            t0 = time.perf_counter()
            ping_t.sendto(b"x" * 1200)
            with contextlib.suppress(TimeoutError):
                rtts.append((await asyncio.wait_for(pinger.waiter, 1.0) - t0) * 1000)
    finally:
        ping_t.close()
        echo.close()
    return rtts


def encode_decode_ms(width: int, height: int, fps: int, frames: int = 60) -> list[float]:
    """One H.264 encode + decode per frame (ms) at the show's size: a single hop's codec cost."""
    enc = av.CodecContext.create("libx264", "w")
    enc.width, enc.height, enc.pix_fmt = width, height, "yuv420p"
    enc.bit_rate = 1_500_000
    enc.framerate = fractions.Fraction(fps, 1)
    enc.time_base = fractions.Fraction(1, fps)
    enc.options = {"preset": "ultrafast", "tune": "zerolatency"}
    dec = av.CodecContext.create("h264", "r")
    out = []
    for i, data in enumerate(test_pattern(width, height, frames)):
        frame = av.VideoFrame.from_ndarray(data, format="yuv420p")
        frame.pts, frame.time_base = i, enc.time_base
        timecode.stamp(frame, int(now_ms()))
        t0 = time.perf_counter()
        for packet in enc.encode(frame):
            dec.decode(packet)
        out.append((time.perf_counter() - t0) * 1000)
    return out[5:]  # skip the encoder's start-up frames
