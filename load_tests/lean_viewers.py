"""A load generator that holds hundreds of WebRTC viewers in one process.

    python -m load_tests.lean_viewers --sample BASE_URL [--show demo] [--count 2]

    python -m load_tests.lean_viewers --publish WHIP_URL --key KEY [--size 1280x720] ...

(the ``--sample`` form runs decoding viewers in their own process and prints one JSON
line a second: decoded video frames, audio frames and frame sizes so far; the
``--publish`` form is the publisher, in its own process so that a busy load generator
never slows the show's source).

Each viewer is a real aiortc peer: it offers over WHEP, completes ICE and DTLS, and keeps
answering ICE consent checks and sending RTCP receiver reports. Once connected, its UDP
socket's datagrams go to a ``Counter`` first: RTP packets are counted (packets, bytes,
and loss from the sequence numbers, which SRTP leaves in the clear) and dropped there,
without decrypting; STUN, DTLS and RTCP still go to aiortc. A few ``sample`` viewers keep
aiortc's whole receive path (SRTP, jitter buffer, H.264 decode) to prove the picture.

The publisher replays a pre-encoded loop of a moving-noise pattern, so publishing costs
this process almost nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fractions
import json
import sys
import time
from dataclasses import dataclass, field

import aiohttp
import av
from aiortc import MediaStreamTrack, RTCPeerConnection

from load_tests.rtc_peers import Counter, count_instead_of_aiortc, test_pattern
from media.client import WhepPlayer, delete_session, negotiate, prefer_codec
from media.encoders import VideoEncoder
from media.ice import peer_connection

VIDEO_CLOCK = fractions.Fraction(1, 90000)


class LoopedVideo(MediaStreamTrack):
    """``seconds`` of moving bars + noise, encoded once at the show's bitrate, replayed."""

    kind = "video"

    def __init__(self, width: int, height: int, fps: int, kbps: int, seconds: float = 2.0):
        super().__init__()
        self.fps = fps
        encoder = VideoEncoder("H264", width, height, fps, kbps)
        self.packets: list[av.Packet] = []
        for i, data in enumerate(test_pattern(width, height, int(seconds * fps))):
            frame = av.VideoFrame.from_ndarray(data, format="yuv420p")
            for enc in encoder.encode(frame, i * 90000 // fps, i == 0):
                self.packets.append(enc.packet)
        self.bytes_per_loop = sum(p.size for p in self.packets)
        self.n = 0
        self._start: float | None = None

    @property
    def kbps(self) -> float:
        return self.bytes_per_loop * 8 / (len(self.packets) / self.fps) / 1000

    async def recv(self) -> av.Packet:
        loop = asyncio.get_running_loop()
        if self._start is None:
            self._start = loop.time()
        delay = self._start + self.n / self.fps - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        packet = self.packets[self.n % len(self.packets)]
        packet.pts = self.n * 90000 // self.fps
        packet.time_base = VIDEO_CLOCK
        self.n += 1
        return packet


@dataclass
class LeanViewer:
    pc: RTCPeerConnection
    location: str
    counter: Counter
    join_s: float = 0.0


@dataclass
class Crowd:
    """All viewers of one run, joined in batches."""

    base: str
    show: str
    viewers: list[LeanViewer] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    async def add(self, http: aiohttp.ClientSession, count: int, parallel: int = 12) -> None:
        gate = asyncio.Semaphore(parallel)

        async def one() -> None:
            async with gate:
                try:
                    self.viewers.append(await self._join(http))
                except Exception as exc:  # noqa: BLE001 - a failed join is a figure
                    self.failures.append(f"{type(exc).__name__}: {exc}")

        await asyncio.gather(*(one() for _ in range(count)))

    async def _join(self, http: aiohttp.ClientSession) -> LeanViewer:
        pc = peer_connection()
        pc.addTransceiver("video", direction="recvonly")
        pc.addTransceiver("audio", direction="recvonly")
        prefer_codec(pc, "video", "video/H264")
        connected = asyncio.get_running_loop().create_future()

        @pc.on("connectionstatechange")
        def on_state() -> None:
            if pc.connectionState in ("connected", "failed") and not connected.done():
                connected.set_result(pc.connectionState)

        t0 = time.monotonic()
        location = await negotiate(http, pc, f"{self.base}/whep/{self.show}")
        async with asyncio.timeout(20):
            state = await connected
        if state != "connected":
            await pc.close()
            raise ConnectionError("ICE/DTLS failed")
        # aiortc's receivers now wait for RTP that never reaches them; that is fine.
        counter = count_instead_of_aiortc(pc)
        return LeanViewer(pc, location, counter, time.monotonic() - t0)

    def totals(self) -> tuple[int, int, int]:
        """(packets, bytes, lost) over the counting viewers."""
        p = b = lost = 0
        for v in self.viewers:
            if v.counter is not None:
                p += v.counter.packets
                b += v.counter.bytes
                lost += v.counter.lost
        return p, b, lost

    def per_viewer(self) -> list[tuple[int, int]]:
        return [(v.counter.packets, v.counter.bytes) for v in self.viewers if v.counter]

    async def close(self, http: aiohttp.ClientSession) -> None:
        everyone = self.viewers
        gate = asyncio.Semaphore(32)

        async def one(v: LeanViewer) -> None:
            async with gate:
                await delete_session(http, v.location)
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(v.pc.close(), 5)

        await asyncio.gather(*(one(v) for v in everyone))
        self.viewers = []


class Samples:
    """Decoding viewers in a child process (their decode load and frame queues stay out
    of the counting process); ``latest`` is their newest report."""

    def __init__(self, base: str, show: str, count: int) -> None:
        self.base, self.show, self.count = base, show, count
        self.proc: asyncio.subprocess.Process | None = None
        self.latest: dict = {"frames": 0, "audio": 0, "sizes": [], "joined": 0}
        self._reader: asyncio.Task | None = None

    async def start(self, within_s: float = 30) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "load_tests.lean_viewers", "--sample", self.base,
            "--show", self.show, "--count", str(self.count),
            stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        self._reader = asyncio.create_task(self._read())
        end = time.monotonic() + within_s
        while self.latest["joined"] < self.count and time.monotonic() < end:
            await asyncio.sleep(0.2)

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        async for line in self.proc.stdout:
            with contextlib.suppress(ValueError):
                self.latest = json.loads(line)

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.terminate()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.proc.wait(), 15)
            if self.proc.returncode is None:
                self.proc.kill()
        if self._reader is not None:
            self._reader.cancel()


async def run_samples(base: str, show: str, count: int) -> None:
    async with aiohttp.ClientSession() as http:
        players = [
            WhepPlayer(f"{base}/whep/{show}", audio=True, codec="H264") for _ in range(count)
        ]
        joined = 0
        try:
            for player in players:
                await player.start(http)
                await player.wait_first_frame(20)
                joined += 1
            while True:
                report = {
                    "joined": joined,
                    "frames": sum(p.stats.video_frames for p in players),
                    "audio": sum(p.stats.audio_frames for p in players),
                    "sizes": sorted({f"{w}x{h}" for p in players for w, h in p.stats.sizes}),
                }
                print(json.dumps(report), flush=True)
                await asyncio.sleep(1.0)
        finally:
            for player in players:
                await player.close(http)


async def publish(url: str, key: str, width: int, height: int, fps: int, kbps: int) -> None:
    """Publish the looped pattern and a tone over WHIP until SIGTERM; one JSON line a
    second with the frames sent."""
    import signal

    from media.client import WhipPublisher
    from media.testsrc import ToneTrack

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    video = LoopedVideo(width, height, fps, kbps)
    async with aiohttp.ClientSession() as http:
        pub = WhipPublisher(url, key, video, ToneTrack(), codec="H264")
        await pub.start(http)
        try:
            while not stop.is_set():
                print(json.dumps({"frames": video.n, "kbps": round(video.kbps)}), flush=True)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 1.0)
        finally:
            await pub.close(http)


class Publisher:
    """The publisher child process; ``latest`` is its newest report."""

    def __init__(self, url: str, key: str, width: int, height: int, fps: int, kbps: int):
        self.args = ["--publish", url, "--key", key, "--size", f"{width}x{height}",
                     "--fps", str(fps), "--kbps", str(kbps)]  # fmt: skip
        self.proc: asyncio.subprocess.Process | None = None
        self.latest: dict = {"frames": 0, "kbps": 0}
        self._reader: asyncio.Task | None = None

    async def start(self, within_s: float = 60) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "load_tests.lean_viewers", *self.args,
            stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        self._reader = asyncio.create_task(self._read())
        end = time.monotonic() + within_s
        while self.latest["frames"] == 0 and time.monotonic() < end:
            if self.proc.returncode is not None:
                raise RuntimeError("the publisher exited")
            await asyncio.sleep(0.2)

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        async for line in self.proc.stdout:
            with contextlib.suppress(ValueError):
                self.latest = json.loads(line)

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.terminate()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.proc.wait(), 15)
            if self.proc.returncode is None:
                self.proc.kill()
        if self._reader is not None:
            self._reader.cancel()


def main() -> None:
    p = argparse.ArgumentParser(description="decoding sample viewers, or the publisher")
    p.add_argument("--sample", metavar="BASE_URL")
    p.add_argument("--show", default="demo")
    p.add_argument("--count", type=int, default=2)
    p.add_argument("--publish", metavar="WHIP_URL")
    p.add_argument("--key", default="")
    p.add_argument("--size", default="1280x720")
    p.add_argument("--fps", type=int, default=30)
    p.add_argument("--kbps", type=int, default=1500)
    args = p.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        if args.publish:
            width, height = (int(v) for v in args.size.split("x"))
            asyncio.run(publish(args.publish, args.key, width, height, args.fps, args.kbps))
        else:
            asyncio.run(run_samples(args.sample, args.show, args.count))


if __name__ == "__main__":
    main()
