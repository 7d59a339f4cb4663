"""Viewers (mediasoup's Consumers): WHEP PeerConnections that send the shared packets.

Two ways to send, chosen per show (``ShowRuntime.egress``):

- ``lean`` (the default): aiortc negotiates ICE, DTLS and SDP, then each of the viewer's
  senders is taken over by a ``media.lean.LeanSender``; the show's ``Broadcast`` writes
  every frame to all its viewers in one pass (RTP header, SRTP, socket write per packet).
- ``aiortc`` (kept for comparison): each viewer's aiortc ``RTCRtpSender`` runs its own
  loop; its track's ``recv()`` returns the show's shared ``av.Packet``s and its
  packetiser is replaced by ``SharedPacketiser``, which hands back the RTP payloads the
  show packetised once for everybody.

Keyframes: aiortc ignores PLI/FIR for pre-encoded packets, so either way PLI/FIR go to the
show's coalescing ``KeyframeGate``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from typing import TYPE_CHECKING

from aiortc import MediaStreamTrack, RTCRtpSender, RTCSessionDescription
from aiortc.codecs.h264 import H264Encoder
from aiortc.codecs.opus import OpusEncoder
from aiortc.codecs.vpx import Vp8Encoder
from aiortc.mediastreams import MediaStreamError

from media.dtls import DtlsInterop
from media.fanout import Cursor, Fanout
from media.ice import peer_connection
from media.lean import LeanSender
from media.sdp import parse_offer

if TYPE_CHECKING:
    from media.runtime import ShowRuntime

log = logging.getLogger("showroom.media.egress")


def now_ms() -> int:
    return int(time.time() * 1000)


class FanoutTrack(MediaStreamTrack):
    """A viewer's track: reads the shared packets of one fan-out at its own pace."""

    def __init__(self, kind: str, fanout: Fanout, runtime: ShowRuntime) -> None:
        super().__init__()
        self.kind = kind
        self.fanout = fanout
        self.runtime = runtime
        self.cursor: Cursor | None = None
        self.packets = 0
        self.first_packet_at: float | None = None

    async def recv(self):
        if self.readyState != "live":
            raise MediaStreamError
        if self.cursor is None:
            # Created on the sender's first read (after DTLS), so a join keyframe is fresh.
            self.cursor = self.fanout.cursor(now_ms=now_ms())
            if self.cursor.waiting_for_keyframe:
                self.runtime.request_keyframe("join")
        skipped = self.cursor.skipped
        entry = await self.cursor.next()
        if self.readyState != "live":
            raise MediaStreamError
        if self.cursor.skipped != skipped:
            self.runtime.viewer_skipped(self.kind)
        self.packets += 1
        if self.first_packet_at is None:
            self.first_packet_at = time.monotonic()
        return entry.packet


class NegotiationTrack(MediaStreamTrack):
    """The track a lean viewer's transceiver is negotiated with (its id is the SDP msid).

    Never read: the ``LeanSender`` replaces the sender's loop before it starts."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind

    async def recv(self):
        raise MediaStreamError


def _capabilities(kind: str, mime: str):
    caps = RTCRtpSender.getCapabilities(kind).codecs
    return [c for c in caps if c.mimeType.lower() in (mime.lower(), f"{kind}/rtx")]


_FALLBACK = {"H264": H264Encoder, "VP8": Vp8Encoder, "opus": OpusEncoder}


class SharedPacketiser:
    """Stands in for aiortc's per-sender encoder: packets arrive already packetised."""

    def __init__(self, fanout: Fanout, codec: str) -> None:
        self.fanout = fanout
        self.fallback = _FALLBACK[codec]()

    def pack(self, packet) -> tuple[list[bytes], int]:
        entry = self.fanout.entry_for(packet)
        if entry is not None and entry.payloads is not None:
            return entry.payloads, entry.timestamp
        return self.fallback.pack(packet)

    def encode(self, frame, force_keyframe: bool = False):  # never called: we send packets
        return self.fallback.encode(frame, force_keyframe)


def _share_packetiser(sender: RTCRtpSender, fanout: Fanout, codec: str) -> None:
    # aiortc creates its encoder lazily only when none is set, so presetting it is enough.
    sender._RTCRtpSender__encoder = SharedPacketiser(fanout, codec)  # type: ignore[attr-defined]


class Viewer:
    def __init__(self, runtime: ShowRuntime, codec: str, preview: bool = False) -> None:
        self.runtime = runtime
        self.codec = codec
        self.preview = preview  # the host watching their own output: not in the audience
        self.edge: str | None = None  # the edge node whose pull session this is, if one
        self.id = secrets.token_urlsafe(12)
        self.etag = f'"{secrets.token_hex(8)}"'
        self.pc = peer_connection(runtime.show.ice_servers)
        self.dtls = DtlsInterop(self.pc, f"WHEP viewer {self.id} of show {runtime.show.id}")
        self.remote_ufrag: str | None = None
        self.lean = runtime.egress == "lean"
        self.video_track: MediaStreamTrack = (
            NegotiationTrack("video")
            if self.lean
            else FanoutTrack("video", runtime.video_fanout(codec), runtime)
        )
        self.audio_track: MediaStreamTrack | None = None
        self.senders: list[LeanSender] = []
        self._closed = False

        @self.pc.on("connectionstatechange")
        async def on_state() -> None:
            if self.pc.connectionState in ("failed", "closed"):
                await self.close()

    async def accept(self, offer_sdp: str, remote_ufrag: str | None, with_audio: bool) -> str:
        self.remote_ufrag = remote_ufrag
        # Transceivers made before the offer is applied are matched to its m-lines, so
        # their codec preferences decide the answer (the shared encoder's codec only).
        video = self.pc.addTransceiver(self.video_track, direction="sendonly")
        video.setCodecPreferences(_capabilities("video", f"video/{self.codec}"))
        fanout = self.runtime.video_fanout(self.codec)
        if self.lean:
            broadcast = self.runtime.broadcast(fanout, "video")
            # PLI/FIR go to the gate of the rung the viewer is on (media/lean.py).
            sender = LeanSender(video.sender, broadcast)
            self.senders.append(sender)
            if self.edge is None:  # an edge's pull stays on the full-size rung it relays
                self.runtime.adapter.add(sender, self.codec)
        else:
            video.sender._send_keyframe = lambda: self.runtime.request_keyframe("pli")
            _share_packetiser(video.sender, fanout, self.codec)
        if with_audio:
            if self.lean:
                self.audio_track = NegotiationTrack("audio")
            else:
                self.audio_track = FanoutTrack("audio", self.runtime.audio, self.runtime)
            audio = self.pc.addTransceiver(self.audio_track, direction="sendonly")
            audio.setCodecPreferences(_capabilities("audio", "audio/opus"))
            if self.lean:
                broadcast = self.runtime.broadcast(self.runtime.audio, "audio")
                self.senders.append(LeanSender(audio.sender, broadcast))
            else:
                _share_packetiser(audio.sender, self.runtime.audio, "opus")
        await self.pc.setRemoteDescription(RTCSessionDescription(offer_sdp, "offer"))
        self.dtls.answer_passive(parse_offer(offer_sdp))
        answer = await self.pc.createAnswer()
        await self.pc.setLocalDescription(answer)
        self.runtime.add_viewer(self)
        return self.pc.localDescription.sdp

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.runtime.remove_viewer(self)
        for sender in self.senders:
            self.runtime.adapter.remove(sender)
            sender.stop()
        for track in (self.video_track, self.audio_track):
            if track is not None:
                track.stop()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.pc.close(), 5)
