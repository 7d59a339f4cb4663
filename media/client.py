"""WHIP and WHEP clients on aiortc: PocketCam publishes with one, players and load
generators watch with the other.

aiortc gathers all its ICE candidates before ``setLocalDescription`` returns, so the
offer is complete and no trickle PATCH is needed.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from urllib.parse import urljoin

import aiohttp
from aiortc import MediaStreamTrack, RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError

from media.ice import peer_connection, rtc_configuration


class WhipError(Exception):
    def __init__(self, status: int, detail: str) -> None:
        super().__init__(f"{status}: {detail}")
        self.status = status


async def negotiate(
    http: aiohttp.ClientSession,
    pc: RTCPeerConnection,
    url: str,
    token: str | None = None,
    timeout_s: float = 15,
) -> str:
    """Offer from ``pc`` to a WHIP/WHEP endpoint; apply the answer; return the session URL."""
    await pc.setLocalDescription(await pc.createOffer())
    headers = {"Content-Type": "application/sdp"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    async with http.post(
        url,
        data=pc.localDescription.sdp,
        headers=headers,
        timeout=aiohttp.ClientTimeout(total=timeout_s),
    ) as resp:
        body = await resp.text()
        if resp.status != 201:
            raise WhipError(resp.status, body[:300])
        # Relative to where the answer came from: a WHEP server may redirect (307).
        location = urljoin(str(resp.url), resp.headers["Location"])
    await pc.setRemoteDescription(RTCSessionDescription(body, "answer"))
    return location


async def delete_session(
    http: aiohttp.ClientSession, location: str, token: str | None = None
) -> None:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with contextlib.suppress(Exception):
        async with http.delete(location, headers=headers, timeout=aiohttp.ClientTimeout(5)):
            pass


def prefer_codec(pc: RTCPeerConnection, kind: str, mime: str) -> None:
    """Offer only ``mime`` (plus RTX) on the transceivers of ``kind``."""
    from aiortc import RTCRtpSender

    caps = [
        c
        for c in RTCRtpSender.getCapabilities(kind).codecs
        if c.mimeType.lower() in (mime.lower(), f"{kind}/rtx")
    ]
    for t in pc.getTransceivers():
        if t.kind == kind:
            t.setCodecPreferences(caps)


@dataclass
class PlayerStats:
    video_frames: int = 0
    audio_frames: int = 0
    first_video_at: float | None = None
    sizes: set[tuple[int, int]] = field(default_factory=set)
    video_times: list[float] = field(default_factory=list)
    video_widths: list[int] = field(default_factory=list)  # of each frame in video_times


class WhepPlayer:
    """A viewer: receives (and by default decodes) the show's video and audio."""

    def __init__(
        self,
        url: str,
        *,
        audio: bool = True,
        codec: str | None = None,
        configuration: RTCConfiguration | None = None,  # e.g. TURN only, relay policy
    ) -> None:
        self.url = url
        self.pc = RTCPeerConnection(configuration or rtc_configuration())
        self.pc.addTransceiver("video", direction="recvonly")
        if audio:
            self.pc.addTransceiver("audio", direction="recvonly")
        if codec:
            prefer_codec(self.pc, "video", f"video/{codec}")
        self.stats = PlayerStats()
        self.latest_video = None  # the newest decoded av.VideoFrame
        self.latest_audio = None
        self.location: str | None = None
        self.started_at: float | None = None
        self._tasks: list[asyncio.Task] = []
        self._first_video = asyncio.Event()

        @self.pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            self._tasks.append(asyncio.create_task(self._consume(track)))

    async def start(self, http: aiohttp.ClientSession) -> None:
        self.started_at = time.monotonic()
        self.location = await negotiate(http, self.pc, self.url)

    async def _consume(self, track: MediaStreamTrack) -> None:
        with contextlib.suppress(MediaStreamError, asyncio.CancelledError):
            while True:
                frame = await track.recv()
                if track.kind == "video":
                    now = time.monotonic()
                    s = self.stats
                    s.video_frames += 1
                    s.video_times.append(now)
                    s.video_widths.append(frame.width)
                    s.sizes.add((frame.width, frame.height))
                    if s.first_video_at is None:
                        s.first_video_at = now
                        self._first_video.set()
                    self.latest_video = frame
                else:
                    self.stats.audio_frames += 1
                    self.latest_audio = frame

    async def wait_first_frame(self, within_s: float = 10) -> float:
        """Seconds from ``start`` to the first decoded video frame."""
        await asyncio.wait_for(self._first_video.wait(), within_s)
        assert self.stats.first_video_at is not None and self.started_at is not None
        return self.stats.first_video_at - self.started_at

    async def close(self, http: aiohttp.ClientSession | None = None) -> None:
        if http is not None and self.location:
            await delete_session(http, self.location)
        for task in self._tasks:
            task.cancel()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.pc.close(), 5)


class WhipPublisher:
    """Publishes tracks to a WHIP endpoint; ``close`` ends the session with DELETE."""

    def __init__(
        self,
        url: str,
        key: str,
        video: MediaStreamTrack | None,
        audio: MediaStreamTrack | None = None,
        *,
        codec: str | None = None,
    ) -> None:
        self.url, self.key = url, key
        self.pc = peer_connection()
        if video is not None:
            self.pc.addTransceiver(video, direction="sendonly")
        if audio is not None:
            self.pc.addTransceiver(audio, direction="sendonly")
        if codec:
            prefer_codec(self.pc, "video", f"video/{codec}")
        self.location: str | None = None

    async def start(self, http: aiohttp.ClientSession) -> str:
        self.location = await negotiate(http, self.pc, self.url, self.key)
        return self.location

    async def close(self, http: aiohttp.ClientSession | None = None) -> None:
        if http is not None and self.location:
            await delete_session(http, self.location, self.key)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.pc.close(), 5)
