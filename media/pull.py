"""An edge node's side of a show: pulled from the origin over standard WHEP, sent on to
the edge's own viewers by the lean path, with no decode and no encode.

- ``WhepPull`` is one WHEP session to the origin (an aiortc peer, recvonly H.264 +
  Opus). Its receivers' RTP handler is replaced (``_handle_rtp_packet`` on the
  instances), so aiortc neither reassembles nor decodes: each packet's payload (the
  origin's own H.264 FU-A/STAP-A or Opus payload) goes straight into a ``FrameAssembler``
  and whole frames into the edge's ``Fanout``s, exactly as the origin's encoder feeds
  its own. The edge's ``Broadcast`` then writes them to its viewers with their own SSRC,
  sequence numbers and timestamp offset.
- Keyframe requests of the edge's viewers (joins, PLI/FIR, a lagging viewer) go upstream
  as one RTCP PLI on the pull session (at most one per ``PLI_MIN_INTERVAL_S``; requests
  in between are sent as one when it has passed); the origin's ``KeyframeGate``
  coalesces them with everyone else's.
- A lost packet is asked for again upstream (RTCP NACK; the origin resends it as RTX),
  and the frames behind it wait for it up to ``NACK_WAIT_S``: the link between origin
  and edge may cross the internet. A packet that does not come in time drops its frame
  and every frame after it until the next keyframe (and asks for one): a decoder never
  sees a broken reference. Viewers' NACKs are answered from the edge's own history.
- The session is re-opened with backoff whenever it fails or stalls (no video for
  ``STALL_S``, e.g. the origin restarting); meanwhile viewers keep their connection and
  see the slate ("We'll be right back"), encoded here at ``SLATE_FPS`` only while the
  origin is away (the one encode an edge ever does). Timestamps are rebased (``Timeline``) so a new upstream session
  continues the viewers' RTP clock instead of jumping.

aiortc internals used here (besides those of ``media.lean``): ``RTCRtpReceiver``'s
``_handle_rtp_packet(packet, arrival_time_ms)`` (called by the DTLS transport's RTP
router), ``_send_rtcp_pli(media_ssrc)``, ``_send_rtcp_nack(media_ssrc, lost)`` and its
name-mangled codec map
``_RTCRtpReceiver__codecs`` (payload type -> codec, to tell RTX apart); checked by
``tests/test_edges.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urljoin

import aiohttp
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.codecs import is_rtx
from aiortc.rtp import unwrap_rtx

from media import tasks
from media.adapt import Adapter
from media.client import prefer_codec
from media.encoders import VideoEncoder
from media.fanout import Fanout
from media.ice import parse_link_headers, peer_connection
from media.ladder import Rung
from media.lean import Broadcast
from media.relay import RelayedPacket
from media.runtime import blend_target
from media.slate import slate_frame

log = logging.getLogger("showroom.media.pull")

STALL_S = 2.0  # no video from the origin this long: the session is re-opened
CONNECT_TIMEOUT_S = 10.0
PLI_MIN_INTERVAL_S = 0.2
BACKOFF_S = (0.25, 0.5, 1.0, 2.0, 3.0)
VIDEO_CLOCK, AUDIO_CLOCK = 90000, 48000
VIDEO_RING = 60  # two seconds at 30 fps (the origin's ring is 2 x fps)
# The slate while the origin is away: small and slow (a still picture), a keyframe each
# second for viewers who join meanwhile; its own timeline (no real SSRC is negative).
SLATE_SIZE = (640, 360)
SLATE_FPS = 5
SLATE_KBPS = 200
SLATE_SSRC = -1


def now_ms() -> int:
    return int(time.time() * 1000)


def h264_keyframe(payload: bytes) -> bool:
    """Pure: whether an H.264 RTP payload (RFC 6184) starts or carries an IDR or SPS."""
    if not payload:
        return False
    nal = payload[0] & 0x1F
    if nal in (5, 7):
        return True
    if nal == 24:  # STAP-A: [2-byte size, NAL] ...
        i = 1
        while i + 2 < len(payload):
            size = int.from_bytes(payload[i : i + 2], "big")
            if payload[i + 2] & 0x1F in (5, 7):
                return True
            i += 2 + size
        return False
    if nal == 28 and len(payload) > 1:  # FU-A: the start fragment names the NAL type
        return bool(payload[1] & 0x80) and payload[1] & 0x1F in (5, 7)
    return False


@dataclass
class Frame:
    timestamp: int
    payloads: list[bytes]
    keyframe: bool


FILLER_NAL = 12  # what the origin resends in place of a packet no decoder needs any more
NACK_WAIT_S = 0.25  # how long a missing packet is waited for (two resends, 0.1 s apart)
RENACK_S = 0.1  # asked again this often while missing (the origin resends at most that often)
MAX_HELD = 1024  # packets held behind a gap at most: past that, the gap is given up at once


@dataclass
class FrameAssembler:
    """Pure: RTP packets of one video stream -> whole frames (same timestamp, ending with
    the marker bit), in order. Packets may come out of order or resent (RTX, unwrapped):
    behind a gap, frames are held until the missing packets come (``nacks`` says which
    to ask for) or ``wait_s`` has passed; then the gap is given up and frames are dropped
    until the next keyframe, so a decoder never sees a broken reference."""

    wait_s: float = NACK_WAIT_S
    need_keyframe: bool = True  # nothing decodable before the first keyframe
    lost: int = 0  # packets given up on
    recovered: int = 0  # packets that came after they were missed
    dropped: int = 0  # frames dropped while waiting for a keyframe
    _packets: dict[int, tuple[int, bool, bytes]] = field(default_factory=dict)
    _next: int | None = None  # extended sequence number of the next packet to emit
    _highest: int = 0
    _missing: dict[int, float] = field(default_factory=dict)  # seq -> when missed
    _asked: dict[int, float] = field(default_factory=dict)  # seq -> when last NACKed
    _skipping: bool = False  # dropping up to the end of a frame broken by a lost packet

    def reset(self) -> None:
        self.need_keyframe, self._next, self._skipping = True, None, False
        self._packets.clear()
        self._missing.clear()
        self._asked.clear()

    def add(
        self, seq: int, timestamp: int, marker: bool, payload: bytes, now: float
    ) -> list[Frame]:
        """The frames this packet completes (with any held behind it)."""
        if self._next is None:
            self._next = self._highest = seq
        ext = self._extend(seq)
        if ext < self._next or ext in self._packets:
            return []  # late (given up on) or a duplicate
        if ext - self._highest > MAX_HELD:  # a jump: nothing before it is coming
            self.reset()
            self._next = self._highest = ext
        if ext > self._highest:
            for missed in range(self._highest + 1, ext):
                self._missing[missed] = now
            self._highest = ext
        elif self._missing.pop(ext, None) is not None:
            self.recovered += 1
            self._asked.pop(ext, None)
        self._packets[ext] = (timestamp, marker, payload)
        return self.drain(now)

    def nacks(self, now: float) -> list[int]:
        """Sequence numbers to ask for now: missing, not asked within ``RENACK_S``."""
        due = [s for s in self._missing if now - self._asked.get(s, -1e9) >= RENACK_S]
        for s in due:
            self._asked[s] = now
        return [s & 0xFFFF for s in sorted(due)]

    def drain(self, now: float) -> list[Frame]:
        """Frames ready now; a gap older than ``wait_s`` is given up on."""
        frames: list[Frame] = []
        packets = self._packets
        while self._next is not None and self._next <= self._highest:
            first = self._next
            if first not in packets:
                if not self._give_up(first, now):
                    break
                continue
            if self._skipping:
                if h264_keyframe(packets[first][2]):  # a keyframe starts here: keep it
                    self._skipping = False
                    continue
                _ts, marker, _payload = packets.pop(first)
                self._next = first + 1
                self._skipping = not marker
                continue
            end = first  # the frame's packets: contiguous, one timestamp, up to the marker
            ts = packets[first][0]
            while end in packets and packets[end][0] == ts and not packets[end][1]:
                end += 1
            if end not in packets:
                if not self._give_up(end, now):
                    break
                continue
            if packets[end][0] != ts:  # a frame without its marker: broken
                self._drop(first, end - 1)
                continue
            payloads = [packets.pop(i)[2] for i in range(first, end + 1)]
            self._next = end + 1
            frame = self._frame(ts, payloads)
            if frame is not None:
                frames.append(frame)
        return frames

    # --- helpers ---------------------------------------------------------------------
    def _extend(self, seq: int) -> int:
        """The 16-bit sequence number as a count that does not wrap (near the highest)."""
        delta = (seq - self._highest) & 0xFFFF
        return self._highest + delta - (0x10000 if delta >= 0x8000 else 0)

    def _give_up(self, seq: int, now: float) -> bool:
        """Whether missing packet ``seq`` (the first one the next frame waits for) is
        given up on now; if so, its frame is dropped and frames until a keyframe."""
        since = self._missing.get(seq, now)
        held = self._highest - seq
        if now - since < self.wait_s and held < MAX_HELD:
            return False
        # Everything missing up to the next packet that did come is lost.
        nxt = seq
        while nxt <= self._highest and nxt not in self._packets:
            self._missing.pop(nxt, None)
            self._asked.pop(nxt, None)
            self.lost += 1
            nxt += 1
        self._drop(self._next, seq - 1)
        self._next = nxt
        self.need_keyframe = True
        # The packets after the gap up to the next marker belong to the broken frame
        # (or start one whose beginning was lost).
        self._skipping = True
        return True

    def _drop(self, first: int | None, last: int) -> None:
        if first is None:
            return
        for i in range(first, last + 1):
            self._packets.pop(i, None)
        self._next = max(self._next or 0, last + 1)
        self.need_keyframe = True

    def _frame(self, ts: int, payloads: list[bytes]) -> Frame | None:
        if any(p and p[0] & 0x1F == FILLER_NAL for p in payloads):
            self.need_keyframe = True  # resent as filler: a keyframe came after it
            return None
        keyframe = h264_keyframe(payloads[0])
        if self.need_keyframe and not keyframe:
            self.dropped += 1
            return None
        self.need_keyframe = False
        return Frame(ts, payloads, keyframe)


@dataclass
class Timeline:
    """Rebases one stream's RTP timestamps: each new upstream session (a new SSRC)
    continues from where the previous one left off, by elapsed wall time."""

    clock_rate: int
    ssrc: int | None = None
    offset: int = 0
    last_out: int | None = None
    last_at: float = 0.0

    def map(self, ssrc: int, timestamp: int, now: float) -> int:
        if ssrc != self.ssrc:
            self.ssrc = ssrc
            if self.last_out is None:
                self.offset = 0
            else:
                elapsed = max(1, int((now - self.last_at) * self.clock_rate))
                self.offset = (self.last_out + elapsed - timestamp) & 0xFFFFFFFF
        out = (timestamp + self.offset) & 0xFFFFFFFF
        self.last_out, self.last_at = out, now
        return out


@dataclass(frozen=True)
class EdgeShowInfo:
    """What a viewer's peer needs of the show on an edge (``Viewer`` reads ``show``)."""

    id: str
    ice_servers: tuple = ()


class EdgeShow:
    """Stands in for ``ShowRuntime`` on an edge: the same fan-outs, lean broadcasts and
    viewers, fed by a ``WhepPull`` instead of an encoder."""

    egress = "lean"
    origin = False

    def __init__(
        self,
        show_id: str,
        make_pull: Callable[[EdgeShow], WhepPull],
        linger_s: float = 10.0,
    ) -> None:
        self.show = EdgeShowInfo(show_id)
        self.make_pull = make_pull
        self.linger_s = linger_s
        self.video = {"H264": Fanout(capacity=VIDEO_RING, keyframes=True)}
        self.video["H264"].on_need_keyframe = lambda: self.request_keyframe("lagging")
        self.audio = Fanout(capacity=25, keyframes=False, max_lag=10)
        self.viewers: dict[str, Any] = {}
        self.broadcasts: dict[int, Broadcast] = {}
        self.pull: WhepPull | None = None
        self.pulls_opened = 0
        self.viewer_skips = 0
        self._linger: asyncio.TimerHandle | None = None
        self._closing: set[asyncio.Task] = set()
        # One rung: an edge relays the origin's full-size stream only (the lower rungs
        # of the origin's ladder are not pulled), so its viewers' rung never changes.
        self.ladder = (Rung(0, 0, 0),)
        self.adapter = Adapter(self, lambda: None)

    @property
    def ice_servers(self) -> tuple:
        return self.show.ice_servers

    @ice_servers.setter
    def ice_servers(self, servers: tuple) -> None:
        if servers != self.show.ice_servers:
            self.show = EdgeShowInfo(self.show.id, servers)

    def video_fanout(self, codec: str) -> Fanout:
        if codec != "H264":
            raise ValueError("an edge relays H.264 only")
        return self.video["H264"]

    def rung_broadcast(self, codec: str, rung: int) -> Broadcast:
        return self.broadcast(self.video_fanout(codec), "video")

    def rung_of(self, broadcast: Broadcast) -> int:
        return 0

    def broadcast(self, fanout: Fanout, kind: str) -> Broadcast:
        broadcast = self.broadcasts.get(id(fanout))
        if broadcast is None:
            clock_rate = VIDEO_CLOCK if kind == "video" else AUDIO_CLOCK
            broadcast = self.broadcasts[id(fanout)] = Broadcast(
                fanout, kind, clock_rate, self.request_keyframe, self.viewer_skipped
            )
        return broadcast

    @property
    def audience(self) -> int:
        return len(self.viewers)

    def add_viewer(self, viewer: Any) -> None:
        self.viewers[viewer.id] = viewer
        if self._linger is not None:
            self._linger.cancel()
            self._linger = None
        if self.pull is None:
            self.pull = self.make_pull(self)
            self.pulls_opened += 1
            self.pull.start()

    def remove_viewer(self, viewer: Any) -> None:
        if self.viewers.pop(viewer.id, None) is None:
            return
        if not self.viewers and self.pull is not None:
            # Closed a while after the last viewer: a reload or a quick return rejoins
            # the running session instead of waiting for a new one.
            loop = asyncio.get_running_loop()
            self._linger = loop.call_later(self.linger_s, self._close_pull)

    def _close_pull(self) -> None:
        self._linger = None
        if self.viewers or self.pull is None:
            return
        pull, self.pull = self.pull, None
        task = asyncio.get_running_loop().create_task(pull.stop())
        self._closing.add(task)  # held until done (the loop keeps only weak references)
        task.add_done_callback(self._closing.discard)

    def request_keyframe(self, reason: str = "join") -> None:
        if self.pull is not None:
            self.pull.request_keyframe()

    def viewer_skipped(self, kind: str) -> None:
        self.viewer_skips += 1

    def stats(self) -> dict:
        pull = self.pull
        return {
            "viewers": self.audience,
            "pulls_opened": self.pulls_opened,
            "viewer_skips": self.viewer_skips,
            "pull": pull.stats() if pull is not None else None,
        }

    async def stop(self) -> None:
        await asyncio.gather(*(v.close() for v in list(self.viewers.values())))
        if self._linger is not None:  # set again as the last viewer left
            self._linger.cancel()
        if self.pull is not None:
            await self.pull.stop()
            self.pull = None
        for broadcast in self.broadcasts.values():
            broadcast.stop()
        self.adapter.stop()


class WhepPull:
    """One show pulled from the origin's WHEP endpoint into an ``EdgeShow``'s fan-outs,
    re-opened with backoff until ``stop``."""

    def __init__(
        self,
        show: EdgeShow,
        url: str,
        http: aiohttp.ClientSession,
        headers: Callable[[], dict[str, str]],
    ) -> None:
        self.show = show
        self.url = url
        self.http = http
        self.headers = headers  # extra request headers for each session's POST
        self.state = "connecting"  # connecting | live | retrying
        self.sessions = 0  # WHEP sessions opened at the origin
        self.frames = 0
        self.video_bytes = 0  # RTP payload bytes of the frames relayed
        self.audio_packets = 0
        self.keyframes = 0
        self.plis_sent = 0
        self.last_error: str | None = None
        self.last_video = 0.0
        self.location: str | None = None
        self._assembler = FrameAssembler()
        self._dropped_seen = 0
        self.nacks_sent = 0
        self._video_clock = Timeline(VIDEO_CLOCK)
        self._audio_clock = Timeline(AUDIO_CLOCK)
        self._pc: RTCPeerConnection | None = None
        self._video_receiver: Any = None
        self._video_ssrc: int | None = None
        self._last_pli = 0.0
        self._pli_later: asyncio.TimerHandle | None = None
        self._task: asyncio.Task | None = None
        self._slate_task: asyncio.Task | None = None
        self.slate_frames = 0
        self._closing: set[asyncio.Task] = set()

    def start(self) -> None:
        name = self.show.show.id
        self._task = asyncio.create_task(self._run(), name=f"whep-pull-{name}")
        self._slate_task = asyncio.create_task(self._slate_while_away(), name=f"slate-{name}")

    async def stop(self) -> None:
        if self._pli_later is not None:
            self._pli_later.cancel()
        await tasks.stop(self._task, self._slate_task)
        await self._end_session()

    def away(self, now: float) -> bool:
        """The origin sent video once and has been silent for ``STALL_S``."""
        return self.frames > 0 and now - self.last_video > STALL_S

    async def _slate_while_away(self) -> None:
        """While the origin is away, the viewers see the slate instead of a frozen
        picture; the origin's first keyframe after it is back replaces it."""
        encoder: VideoEncoder | None = None
        n = 0
        while True:
            await asyncio.sleep(1 / SLATE_FPS)
            if not self.away(time.monotonic()):
                encoder = None  # the next outage starts with a keyframe again
                continue
            if encoder is None:
                encoder, n = VideoEncoder("H264", *SLATE_SIZE, SLATE_FPS, SLATE_KBPS), 0
                # Its own copy: the encoder stamps each frame it is given.
                picture = blend_target(slate_frame(*SLATE_SIZE))
            pts = n * VIDEO_CLOCK // SLATE_FPS
            out = await asyncio.to_thread(encoder.encode, picture, pts, n % SLATE_FPS == 0)
            n += 1
            now = time.monotonic()
            if not self.away(now):
                continue  # the origin came back while this frame was encoded
            for enc in out:
                ts = self._video_clock.map(SLATE_SSRC, enc.timestamp, now)
                self.show.video["H264"].publish(
                    enc.packet, enc.keyframe, now_ms(), payloads=enc.payloads, timestamp=ts
                )
                self.slate_frames += 1

    def stats(self) -> dict:
        return {
            "state": self.state,
            "sessions": self.sessions,
            "frames": self.frames,
            "video_bytes": self.video_bytes,
            "keyframes": self.keyframes,
            "audio_packets": self.audio_packets,
            "lost_packets": self._assembler.lost,
            "recovered_packets": self._assembler.recovered,
            "nacks_sent": self.nacks_sent,
            "plis_sent": self.plis_sent,
            "slate_frames": self.slate_frames,
            "last_error": self.last_error,
        }

    # --- keyframes upstream -------------------------------------------------------------
    def request_keyframe(self) -> None:
        """One PLI upstream now, or (coalesced) when ``PLI_MIN_INTERVAL_S`` has passed."""
        receiver, ssrc = self._video_receiver, self._video_ssrc
        if receiver is None or ssrc is None:
            return  # the next session starts with a keyframe anyway
        now = time.monotonic()
        wait = self._last_pli + PLI_MIN_INTERVAL_S - now
        if wait > 0:
            if self._pli_later is None:
                loop = asyncio.get_running_loop()
                self._pli_later = loop.call_later(wait, self._deferred_pli)
            return
        self._last_pli = now
        self.plis_sent += 1
        task = asyncio.get_running_loop().create_task(receiver._send_rtcp_pli(ssrc))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    def _deferred_pli(self) -> None:
        self._pli_later = None
        self.request_keyframe()

    # --- the session loop ---------------------------------------------------------------
    async def _run(self) -> None:
        attempt = 0
        while True:
            started = time.monotonic()
            try:
                await self._session()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the origin away, refusing, or a torn answer
                self.last_error = f"{type(exc).__name__}: {exc}"[:300]
                log.info("edge pull of %s: %s", self.show.show.id, self.last_error)
            await self._end_session()
            self.state = "retrying"
            if time.monotonic() - started > 10:
                attempt = 0  # it was up for a while: retry quickly
            await asyncio.sleep(BACKOFF_S[min(attempt, len(BACKOFF_S) - 1)])
            attempt += 1

    async def _session(self) -> None:
        self.state = "connecting"
        pc = self._pc = peer_connection()
        video = pc.addTransceiver("video", direction="recvonly")
        audio = pc.addTransceiver("audio", direction="recvonly")
        prefer_codec(pc, "video", "video/H264")
        self._assembler.reset()
        self._video_ssrc = None
        self._video_receiver = video.receiver
        video.receiver._handle_rtp_packet = self._rtp_handler(video.receiver, "video")
        audio.receiver._handle_rtp_packet = self._rtp_handler(audio.receiver, "audio")
        await pc.setLocalDescription(await pc.createOffer())
        async with self.http.post(
            self.url,
            data=pc.localDescription.sdp,
            headers={"Content-Type": "application/sdp", **self.headers()},
            timeout=aiohttp.ClientTimeout(total=CONNECT_TIMEOUT_S),
            allow_redirects=False,  # the origin never sends an edge elsewhere
        ) as resp:
            body = await resp.text()
            if resp.status in (301, 302, 303, 307, 308):  # treated as a viewer, not an edge
                raise RuntimeError(
                    "the origin redirected the pull: it does not accept this edge's token "
                    "(the same Redis and SHOWROOM_SECRET as the origin?)"
                )
            if resp.status != 201:
                raise RuntimeError(f"origin answered {resp.status}: {body[:200]}")
            self.location = urljoin(self.url, resp.headers.get("Location", ""))
            # The show's STUN/TURN servers (manifest [ice]): the edge's own viewer peers
            # gather with them and pass them on in their answers.
            self.show.ice_servers = parse_link_headers(resp.headers.getall("Link", []))
        self.sessions += 1
        await pc.setRemoteDescription(RTCSessionDescription(body, "answer"))
        self.last_video = time.monotonic()
        deadline = self.last_video + CONNECT_TIMEOUT_S
        while True:
            await asyncio.sleep(0.1)
            if pc.connectionState in ("failed", "closed"):
                raise RuntimeError(f"pull session {pc.connectionState}")
            now = time.monotonic()
            # Frames held behind a gap nothing has filled: given up on in time.
            self._frames_out(self._assembler.drain(now), now)
            if self.frames and self.state == "connecting" and self.last_video > now - STALL_S:
                self.state = "live"
            if self.state == "live" and now - self.last_video > STALL_S:
                raise RuntimeError(f"no video from the origin for {STALL_S:.0f} s")
            if self.state == "connecting" and now > deadline:
                raise RuntimeError("no video from the origin after connecting")

    async def _end_session(self) -> None:
        pc, location = self._pc, self.location
        self._pc = self._video_receiver = None
        self.location = None
        if location:
            with contextlib.suppress(Exception):
                async with self.http.delete(location, timeout=aiohttp.ClientTimeout(total=2)):
                    pass
        if pc is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(pc.close(), 5)

    def _frames_out(self, frames: list[Frame], now: float) -> None:
        """Whole frames into the edge's fan-out; NACKs for what is missing; a keyframe
        asked for while frames are dropped for want of one (a gap given up on, or a
        session whose first keyframe lost its start)."""
        assembler = self._assembler
        for frame in frames:
            ts = self._video_clock.map(self._video_ssrc, frame.timestamp, now)
            size = sum(map(len, frame.payloads))
            self.show.video["H264"].publish(
                RelayedPacket(size), frame.keyframe, now_ms(), payloads=frame.payloads, timestamp=ts
            )
            self.frames += 1
            self.video_bytes += size
            self.keyframes += frame.keyframe
        if assembler.dropped != self._dropped_seen:  # waiting for a keyframe: ask for one
            self._dropped_seen = assembler.dropped
            self.request_keyframe()
        lost = assembler.nacks(now)
        receiver, ssrc = self._video_receiver, self._video_ssrc
        if lost and receiver is not None and ssrc is not None:
            self.nacks_sent += 1
            task = asyncio.get_running_loop().create_task(receiver._send_rtcp_nack(ssrc, lost))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    def _rtp_handler(self, receiver: Any, kind: str):
        codecs = receiver._RTCRtpReceiver__codecs  # payload type -> codec, set on receive()
        video = kind == "video"
        show = self.show

        async def handle(packet: Any, arrival_time_ms: int = 0) -> None:
            codec = codecs.get(packet.payload_type)
            if codec is None or not packet.payload:
                return  # unknown, or padding only (a probe)
            now = time.monotonic()
            if not video:
                if is_rtx(codec):
                    return
                ts = self._audio_clock.map(packet.ssrc, packet.timestamp, now)
                show.audio.publish(
                    RelayedPacket(len(packet.payload)),
                    True,
                    now_ms(),
                    payloads=[packet.payload],
                    timestamp=ts,
                )
                self.audio_packets += 1
                return
            if is_rtx(codec):  # a resend we asked for: the original packet inside
                apt = codec.parameters.get("apt")
                if self._video_ssrc is None or apt not in codecs or len(packet.payload) < 2:
                    return
                packet = unwrap_rtx(packet, payload_type=apt, ssrc=self._video_ssrc)
            else:
                self._video_ssrc = packet.ssrc
            self.last_video = now
            frames = self._assembler.add(
                packet.sequence_number, packet.timestamp, packet.marker, packet.payload, now
            )
            self._frames_out(frames, now)

        return handle
