"""The publisher (mediasoup's Producer): the WHIP ingest PeerConnection of one show.

aiortc decodes the incoming H.264/VP8 video and Opus audio; decoded video goes to the
show's latest-frame slot and audio samples to its bounded FIFO. The publisher reports
itself gone when its connection fails or closes (the compositor also notices when frames
stop for a second).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from typing import TYPE_CHECKING

import av
from aiortc import MediaStreamTrack, RTCPeerConnection, RTCRtpReceiver, RTCSessionDescription
from aiortc.jitterbuffer import JitterBuffer
from aiortc.mediastreams import MediaStreamError
from aiortc.sdp import candidate_from_sdp

from media.dtls import DtlsInterop
from media.ice import peer_connection
from media.sdp import SdpFrag, parse_offer

if TYPE_CHECKING:
    from media.runtime import ShowRuntime

log = logging.getLogger("showroom.media.ingest")


class IceRestartRequired(Exception):
    """A trickle fragment asked for an ICE restart, which we do not do (422)."""


async def add_trickle(pc: RTCPeerConnection, remote_ufrag: str | None, frag: SdpFrag) -> None:
    """Add trickled candidates to a session (shared by WHIP and WHEP)."""
    if frag.ufrag is not None and remote_ufrag is not None and frag.ufrag != remote_ufrag:
        raise IceRestartRequired()
    mids = [t.mid for t in pc.getTransceivers()]
    for mid, line in frag.candidates:
        candidate = candidate_from_sdp(line.split(":", 1)[1])
        candidate.sdpMid = mid if mid is not None else (mids[0] if mids else None)
        with contextlib.suppress(Exception):  # a candidate we cannot use is not an error
            await pc.addIceCandidate(candidate)


def shorten_audio_jitter_buffer(receiver: RTCRtpReceiver) -> None:
    """aiortc holds 4 audio packets (80 ms) before decoding; on the media path that puts
    audio 50 ms behind the video it belongs to. One packet is enough on a LAN/loopback
    ingest, and the show's own audio FIFO absorbs jitter."""
    receiver._RTCRtpReceiver__jitter_buffer = JitterBuffer(capacity=16, prefetch=1)  # type: ignore[attr-defined]


class Publisher:
    def __init__(self, runtime: ShowRuntime) -> None:
        self.runtime = runtime
        self.id = secrets.token_urlsafe(12)
        self.etag = f'"{secrets.token_hex(8)}"'
        self.pc = peer_connection(runtime.show.ice_servers)
        self.dtls = DtlsInterop(self.pc, f"WHIP publisher {self.id} of show {runtime.show.id}")
        self.created = time.monotonic()
        self.remote_ufrag: str | None = None
        self.frames = 0
        self.audio_frames = 0
        self._tasks: list[asyncio.Task] = []
        self._closed = False

        @self.pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            reader = self._read_video if track.kind == "video" else self._read_audio
            self._tasks.append(asyncio.create_task(reader(track), name=f"ingest-{track.kind}"))

        @self.pc.on("connectionstatechange")
        async def on_state() -> None:
            if self.pc.connectionState in ("failed", "closed"):
                await self.close()

    async def accept(self, offer_sdp: str, remote_ufrag: str | None) -> str:
        """Apply the WHIP offer; return the SDP answer (ICE candidates included)."""
        self.remote_ufrag = remote_ufrag
        await self.pc.setRemoteDescription(RTCSessionDescription(offer_sdp, "offer"))
        self.dtls.answer_passive(parse_offer(offer_sdp))
        for transceiver in self.pc.getTransceivers():
            if transceiver.kind == "audio":
                shorten_audio_jitter_buffer(transceiver.receiver)
        answer = await self.pc.createAnswer()
        await self.pc.setLocalDescription(answer)
        return self.pc.localDescription.sdp

    async def _read_video(self, track: MediaStreamTrack) -> None:
        with contextlib.suppress(MediaStreamError, asyncio.CancelledError):
            while True:
                frame = await track.recv()
                self.frames += 1
                self.runtime.on_video_frame(self, frame)

    async def _read_audio(self, track: MediaStreamTrack) -> None:
        resampler = av.AudioResampler(format="s16", layout="stereo", rate=48000)
        with contextlib.suppress(MediaStreamError, asyncio.CancelledError):
            while True:
                frame = await track.recv()
                self.audio_frames += 1
                for out in resampler.resample(frame):
                    self.runtime.on_audio_samples(self, out.to_ndarray())

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.runtime.publisher_gone(self)
        for task in self._tasks:
            task.cancel()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.pc.close(), 5)
