"""Restreams: the composed show, sent on to other services (manifest ``[[restream]]``).

Nothing is encoded a second time for video. Every destination takes the show's shared
H.264 packets, the same ones its viewers and its recording get.

- **RTMP/RTMPS** (YouTube, Facebook, Twitch, ...): FLV needs AAC, so the show's audio is
  encoded to AAC once per show (``AacEncoder``), from the same mixed PCM the Opus encoder
  gets on the show's audio clock. Chosen over transcoding the shared Opus because it
  costs no decode and one lossy generation instead of two. Each destination is a child
  process (``media.flv_push``) that muxes FLV with PyAV and pushes it; the loop writes
  framed packets to its stdin without blocking. When more than ``PUSH_LIMIT_BYTES`` wait
  unsent (a slow or stalled destination) packets are dropped and the video restarts at
  the next keyframe; the show and its viewers never wait. A pusher that says nothing for
  ``STALL_S`` is killed and the destination reconnects with backoff.
- **WHIP** (SFUs and CDNs): an aiortc client PeerConnection whose tracks read the shared
  H.264 and Opus fan-outs, packetised once for all (as for a viewer, ``media.egress``).

The server decides which destinations run (``Restreams.start``/``stop``); the runtime
calls ``video`` and ``audio_pcm`` on the loop and encodes while ``active``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

import av
import numpy as np

from media.flv_push import AUDIO, CONFIG, HEADER, VIDEO

if TYPE_CHECKING:
    from media.runtime import ShowRuntime

log = logging.getLogger("showroom.restream")

STATES = ("off", "connecting", "live", "error")
PUSH_LIMIT_BYTES = 500_000  # unsent bytes for one destination (~2.5 s at 1.6 Mb/s) before it drops
CONNECT_TIMEOUT_S = 10.0
STALL_S = 8.0  # a live pusher silent this long is stuck: killed, then reconnect
BACKOFF_S = (0.5, 1.0, 2.0, 4.0, 8.0)
STABLE_S = 10.0  # live this long: the next failure starts the backoff over
SEED_MAX_AGE_MS = 1000  # a (re)connecting destination starts at a keyframe this recent
AAC_BITRATE = 128000
AAC_FRAME = 1024
AUDIO_RATE = 48000
PUSHER = Path(__file__).with_name("flv_push.py")


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(frozen=True)
class Destination:
    """One ``[[restream]]`` of the manifest. ``key`` is secret: never shown or logged."""

    name: str
    url: str
    key: str = field(repr=False)
    autostart: bool = False

    @property
    def kind(self) -> str:
        return "whip" if urlsplit(self.url).scheme in ("https", "http") else "rtmp"

    @property
    def target(self) -> str:
        """The URL as the host may see it: no key, no credentials, no query."""
        parts = urlsplit(self.url)
        host = parts.hostname or ""
        if parts.port:
            host = f"{host}:{parts.port}"
        return urlunsplit((parts.scheme, host, parts.path, "", ""))

    @property
    def push_url(self) -> str:
        """RTMP: the key is the stream name after the application path."""
        return f"{self.url.rstrip('/')}/{self.key}" if self.kind == "rtmp" else self.url


def destination_problem(url: str) -> str | None:
    """Why ``url`` cannot be a restream destination (None when it can)."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (raises on a bad port)
    except ValueError as exc:
        return f"not a valid URL: {exc}"
    if parts.scheme not in ("rtmp", "rtmps", "https", "http"):
        return "must start with rtmp://, rtmps:// or https:// (a WHIP endpoint)"
    if not parts.hostname:
        return "has no host"
    if any(c.isspace() for c in url):
        return "must not contain spaces"
    if parts.scheme == "http" and parts.hostname not in ("127.0.0.1", "localhost", "::1"):
        return "a WHIP endpoint must be https:// (the key is sent as a Bearer token)"
    if parts.scheme in ("rtmp", "rtmps") and not parts.path.strip("/"):
        return "needs the application path, e.g. rtmp://a.rtmp.youtube.com/live2"
    return None


class AacEncoder:
    """The show's audio as AAC-LC 48 kHz stereo, once per show (for every RTMP destination).

    Fed the show's 20 ms int16 frames; AAC takes 1024-sample frames, so they are re-cut."""

    def __init__(self, bitrate: int = AAC_BITRATE) -> None:
        ctx = av.CodecContext.create("aac", "w")
        ctx.sample_rate = AUDIO_RATE
        ctx.layout = "stereo"
        ctx.format = "fltp"
        ctx.bit_rate = bitrate
        ctx.time_base = Fraction(1, AUDIO_RATE)
        ctx.options = {"aac_coder": "fast"}  # half the CPU of the default coder
        ctx.open()
        self.ctx = ctx
        self.fifo = av.AudioFifo()
        self._base = 0  # show audio pts of the first sample in the fifo

    def encode(self, interleaved: np.ndarray, pts: int) -> list[tuple[int, bytes]]:
        """(pts in 48 kHz, AAC frame) for each frame completed by these samples."""
        planar = np.ascontiguousarray(interleaved.reshape(-1, 2).T.astype(np.float32) * (1 / 32768))
        if self.fifo.samples == 0 or pts != self._base + self.fifo.samples:
            self.fifo = av.AudioFifo()  # a gap in the show's clock: start again here
            self._base = pts
        frame = av.AudioFrame.from_ndarray(planar, format="fltp", layout="stereo")
        frame.sample_rate = AUDIO_RATE
        self.fifo.write(frame)
        out = []
        while self.fifo.samples >= AAC_FRAME:
            chunk = self.fifo.read(AAC_FRAME)
            chunk.pts = self._base
            chunk.time_base = self.ctx.time_base
            self._base += AAC_FRAME
            for packet in self.ctx.encode(chunk):
                out.append((int(packet.pts), bytes(packet)))
        return out


class Sender:
    """One destination's connection: state, reconnects with backoff, bitrate."""

    def __init__(self, dest: Destination, hub: Restreams) -> None:
        self.dest = dest
        self.hub = hub
        self.state = "off"
        self.since = now_ms()
        self.last_error: str | None = None
        self.dropped = 0
        self.bytes = 0
        self._samples: deque[tuple[float, int]] = deque(maxlen=32)
        self._task: asyncio.Task | None = None

    @property
    def running(self) -> bool:
        return self._task is not None

    def _set(self, state: str, error: str | None = None) -> None:
        if error is not None:
            # FFmpeg's messages name the URL, and an RTMP URL carries the key.
            error = error.replace(self.dest.push_url, self.dest.target)
            self.last_error = error.replace(self.dest.key, "<key>")[:300]
            error = self.last_error
        if state != self.state:
            self.state, self.since = state, now_ms()
            log.info(
                "restream %s (%s): %s%s",
                self.dest.name,
                self.dest.target,
                state,
                f" ({error})" if error else "",
            )

    def _count(self, total: int) -> None:
        self.bytes = total
        self._samples.append((time.monotonic(), total))

    @property
    def kbps(self) -> float:
        if self.state != "live" or len(self._samples) < 2:
            return 0.0
        now = time.monotonic()
        recent = [(t, b) for t, b in self._samples if now - t <= 3.0]
        if len(recent) < 2 or recent[-1][0] - recent[0][0] <= 0:
            return 0.0
        (t0, b0), (t1, b1) = recent[0], recent[-1]
        return round((b1 - b0) * 8 / 1000 / (t1 - t0), 1)

    def status(self) -> dict:
        return {
            "name": self.dest.name,
            "kind": self.dest.kind,
            "target": self.dest.target,
            "state": self.state,
            "since": self.since,
            "last_error": self.last_error,
            "kbps": self.kbps,
            "dropped": self.dropped,  # packets a slow destination could not take
            "autostart": self.dest.autostart,
        }

    def start(self) -> None:
        if self._task is None:
            self._set("connecting")
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name=f"restream-{self.dest.name}"
            )

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._task is None:  # not started again meanwhile
            self._samples.clear()
            self._set("off")

    async def _run(self) -> None:
        attempt = 0
        while True:
            started = time.monotonic()
            try:
                await self._session()
                error = "the destination ended the stream"
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                error = str(exc) or type(exc).__name__
            if time.monotonic() - started >= STABLE_S:
                attempt = 0
            self._samples.clear()
            self._set("error", error)
            await asyncio.sleep(BACKOFF_S[min(attempt, len(BACKOFF_S) - 1)])
            attempt += 1
            self._set("connecting")

    async def _session(self) -> None:
        raise NotImplementedError

    def offer(self, kind: int, pts: int, keyframe: bool, data: bytes) -> None:
        """A packet for this destination (RTMP only)."""


class RtmpSender(Sender):
    def __init__(self, dest: Destination, hub: Restreams) -> None:
        super().__init__(dest, hub)
        self._stdin: asyncio.StreamWriter | None = None
        self._need_keyframe = True
        self.pid: int | None = None  # the pusher process

    async def _session(self) -> None:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(PUSHER),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
            env={**os.environ, "AV_LOG_FORCE_NOCOLOR": "1"},
        )
        assert proc.stdin is not None and proc.stdout is not None
        error = None
        try:
            # The URL (it carries the key) goes on stdin, never on a command line.
            config = json.dumps({"url": self.dest.push_url, "aac_bitrate": AAC_BITRATE}).encode()
            proc.stdin.write(HEADER.pack(CONFIG, 0, 0, len(config)) + config)
            stdin = proc.stdin
            self._stdin, self._need_keyframe = stdin, True
            self.pid = proc.pid
            self.hub.seed(self)
            while True:
                wait = STALL_S if self.state == "live" else CONNECT_TIMEOUT_S
                try:
                    # asyncio.timeout, not wait_for: Python 3.11's wait_for can swallow a
                    # cancel that lands as the line arrives, and stop() would wait forever.
                    async with asyncio.timeout(wait):
                        line = await proc.stdout.readline()
                except TimeoutError:
                    error = (
                        "the destination stopped taking data"
                        if self.state == "live"
                        else "timed out connecting"
                    )
                    break
                if not line:
                    break
                text = line.decode(errors="replace").strip()
                if text == "live":
                    self._set("live")
                elif text.startswith("bytes "):
                    self._count(int(text[6:]))
                elif text.startswith("error "):
                    error = text[6:]
        finally:
            if self._stdin is proc.stdin:  # never another session's pipe
                self._stdin = None
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(proc.wait(), 5)
        raise ConnectionError(error or f"the pusher exited ({proc.returncode})")

    def offer(self, kind: int, pts: int, keyframe: bool, data: bytes) -> None:
        w = self._stdin
        if w is None or w.is_closing():
            return
        if self._need_keyframe and not (kind == VIDEO and keyframe):
            return  # audio too: the stream starts (again) with a picture
        if w.transport.get_write_buffer_size() > PUSH_LIMIT_BYTES:
            # Slow destination: drop, and start again at a keyframe once it catches up.
            self.dropped += 1
            if not self._need_keyframe:
                self._need_keyframe = True
                self.hub.runtime.request_keyframe("restream")
            return
        self._need_keyframe = False
        w.write(HEADER.pack(kind, int(keyframe), pts, len(data)))
        w.write(data)


class WhipSender(Sender):
    """A WHIP client: the shared H.264 and Opus packets, as a viewer would get them."""

    async def _session(self) -> None:
        import aiohttp

        from media.client import delete_session, negotiate, prefer_codec
        from media.egress import FanoutTrack, SharedPacketiser
        from media.ice import peer_connection

        runtime = self.hub.runtime
        pc = peer_connection()
        sender_self = self

        class Counting(FanoutTrack):
            async def recv(self):
                packet = await super().recv()
                sender_self._count(sender_self.bytes + packet.size)
                return packet

        video_fanout = runtime.video_fanout("H264")
        tracks = [
            Counting("video", video_fanout, runtime),
            Counting("audio", runtime.audio, runtime),
        ]
        video = pc.addTransceiver(tracks[0], direction="sendonly")
        audio = pc.addTransceiver(tracks[1], direction="sendonly")
        prefer_codec(pc, "video", "video/H264")
        prefer_codec(pc, "audio", "audio/opus")
        # Packetised once for everybody; aiortc only makes its own encoder when none is set.
        video.sender._RTCRtpSender__encoder = SharedPacketiser(video_fanout, "H264")
        audio.sender._RTCRtpSender__encoder = SharedPacketiser(runtime.audio, "opus")
        video.sender._send_keyframe = lambda: runtime.request_keyframe("pli")
        ended = asyncio.Event()
        connected = asyncio.Event()

        @pc.on("connectionstatechange")
        def on_state() -> None:
            if pc.connectionState == "connected":
                connected.set()
            elif pc.connectionState in ("failed", "closed"):
                ended.set()

        location = None
        async with aiohttp.ClientSession() as http:
            try:
                location = await negotiate(
                    http, pc, self.dest.url, self.dest.key, CONNECT_TIMEOUT_S
                )
                async with asyncio.timeout(CONNECT_TIMEOUT_S):
                    await connected.wait()
                runtime.request_keyframe("join")
                self._set("live")
                await ended.wait()
                raise ConnectionError(f"WHIP connection {pc.connectionState}")
            except TimeoutError:
                raise ConnectionError("timed out connecting") from None
            finally:
                for track in tracks:
                    track.stop()
                if location is not None:
                    await delete_session(http, location, self.dest.key)
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(pc.close(), 5)


class Restreams:
    """A show's destinations. Lives on the process that composes the show."""

    def __init__(self, runtime: ShowRuntime, destinations: tuple[Destination, ...]) -> None:
        self.runtime = runtime
        self.senders: dict[str, Sender] = {
            d.name: (RtmpSender if d.kind == "rtmp" else WhipSender)(d, self) for d in destinations
        }
        self._aac: AacEncoder | None = None

    @property
    def active(self) -> bool:
        """Some destination runs: the show is encoded even with no viewer."""
        return any(s.running for s in self.senders.values())

    def _rtmp(self) -> list[Sender]:
        return [s for s in self.senders.values() if s.running and isinstance(s, RtmpSender)]

    # --- from the runtime, on the loop ---------------------------------------------------
    def video(self, packet: av.Packet, keyframe: bool) -> None:
        senders = self._rtmp()
        if senders:
            data = bytes(packet)  # one copy for every destination
            for s in senders:
                s.offer(VIDEO, int(packet.pts), keyframe, data)

    def audio_pcm(self, interleaved: np.ndarray, pts: int) -> None:
        senders = self._rtmp()
        if not senders:
            self._aac = None
            return
        if self._aac is None:
            self._aac = AacEncoder()
        for apts, data in self._aac.encode(interleaved, pts):
            for s in senders:
                s.offer(AUDIO, apts, True, data)

    def seed(self, sender: Sender) -> None:
        """A (re)connecting destination starts at the newest keyframe if it is recent,
        with the packets since then; otherwise at the next one, asked for now."""
        fanout = self.runtime.video.get("H264")
        kf = fanout.latest_keyframe() if fanout is not None else None
        if fanout is None or kf is None or now_ms() - kf.wall_ms > SEED_MAX_AGE_MS:
            self.runtime.request_keyframe("restream")
            return
        for entry in list(fanout.ring):
            if entry.seq >= kf.seq:
                sender.offer(VIDEO, int(entry.packet.pts), entry.keyframe, bytes(entry.packet))

    # --- from the server -----------------------------------------------------------------
    def start(self, name: str) -> None:
        self.senders[name].start()

    async def stop(self, name: str) -> None:
        await self.senders[name].stop()

    async def aclose(self) -> None:
        await asyncio.gather(*(s.stop() for s in self.senders.values()))

    def status(self) -> list[dict]:
        return [s.status() for s in self.senders.values()]
