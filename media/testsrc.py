"""PocketCam's test source: a moving pattern with a clock, and a tone.

Frames are built directly in yuv420p with numpy (a cached background, a moving bar, a
clock drawn into a small strip), so a pocket kit can publish 720p30 without spending its
CPU on the pattern. When ``media.timecode`` is available every frame is also stamped with
its capture wall-clock time, so viewers can measure glass-to-glass latency.
"""

from __future__ import annotations

import asyncio
import fractions
import math
import time

import av
import numpy as np
from aiortc import MediaStreamTrack
from PIL import Image, ImageDraw, ImageFont

try:  # written by the latency work; optional until it lands
    from media import timecode as _timecode
except ImportError:  # pragma: no cover - depends on the tree
    _timecode = None

VIDEO_CLOCK = fractions.Fraction(1, 90000)
AUDIO_RATE = 48000
AUDIO_SAMPLES = 960
# Background colour (Y, U, V): a bright teal, far from the dark slate.
BACKGROUND_YUV = (150, 140, 90)


class TestPatternTrack(MediaStreamTrack):
    kind = "video"
    __test__ = False  # not a pytest class, despite the name

    def __init__(self, width: int = 1280, height: int = 720, fps: int = 30) -> None:
        super().__init__()
        self.width, self.height, self.fps = width - width % 2, height - height % 2, fps
        w, h = self.width, self.height
        y = np.full((h, w), BACKGROUND_YUV[0], np.uint8)
        # A soft vertical gradient so scaling/encoding artefacts are visible.
        y += (np.arange(h, dtype=np.uint16) * 40 // max(1, h)).astype(np.uint8)[:, None]
        self._y = y
        self._u = np.full((h // 2, w // 2), BACKGROUND_YUV[1], np.uint8)
        self._v = np.full((h // 2, w // 2), BACKGROUND_YUV[2], np.uint8)
        self._font = ImageFont.load_default(size=max(10, h // 18))
        self._start: float | None = None
        self._n = 0
        self._clock_text = ""
        self._clock_strip: np.ndarray | None = None

    def _clock(self, wall: float) -> np.ndarray:
        text = time.strftime("%H:%M:%S", time.gmtime(wall)) + f".{int(wall * 10) % 10}"
        if text != self._clock_text or self._clock_strip is None:
            size = self._font.getbbox("00:00:00.0")
            img = Image.new("L", (size[2] + 8, size[3] + 8), 16)
            ImageDraw.Draw(img).text((4, 4), text, font=self._font, fill=235)
            self._clock_text, self._clock_strip = text, np.asarray(img)
        return self._clock_strip

    def make_frame(self, n: int, wall: float) -> av.VideoFrame:
        w, h = self.width, self.height
        y = self._y.copy()
        bar_w = max(8, w // 20) & ~1
        x = (n * max(2, w // (self.fps * 4))) % (w - bar_w) & ~1
        y[:, x : x + bar_w] = 235
        strip = self._clock(wall)
        sh, sw = min(strip.shape[0], h), min(strip.shape[1], w)
        y[h // 20 : h // 20 + sh, w - sw - w // 20 : w - w // 20] = strip[:sh, :sw]
        frame = av.VideoFrame(w, h, "yuv420p")
        for plane, data in zip(frame.planes, (y, self._u, self._v), strict=True):
            _copy_plane(plane, data)
        if _timecode is not None:
            _timecode.stamp(frame, int(wall * 1000))
        return frame

    async def recv(self) -> av.VideoFrame:
        if self._start is None:
            self._start = time.monotonic()
        target = self._start + self._n / self.fps
        delay = target - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        elif delay < -0.5:  # fell far behind (suspended?): resync instead of bursting
            self._start = time.monotonic() - self._n / self.fps
        frame = self.make_frame(self._n, time.time())
        frame.pts = int(self._n * 90000 / self.fps)
        frame.time_base = VIDEO_CLOCK
        self._n += 1
        return frame


def _copy_plane(plane, data: np.ndarray) -> None:
    """Copy a 2-D uint8 array into an av plane, honouring its line stride."""
    h, w = data.shape
    stride = plane.line_size
    if stride == w:
        plane.update(np.ascontiguousarray(data))
    else:
        buf = np.frombuffer(plane, np.uint8).reshape(-1, stride)
        buf[:h, :w] = data


class ToneTrack(MediaStreamTrack):
    """A continuous sine tone (stereo s16, 48 kHz, 20 ms frames)."""

    kind = "audio"

    def __init__(self, frequency: float = 440.0, amplitude: float = 0.3) -> None:
        super().__init__()
        self.frequency = frequency
        self.amplitude = amplitude
        self._start: float | None = None
        self._n = 0

    async def recv(self) -> av.AudioFrame:
        if self._start is None:
            self._start = time.monotonic()
        target = self._start + self._n * AUDIO_SAMPLES / AUDIO_RATE
        delay = target - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        t = (np.arange(AUDIO_SAMPLES) + self._n * AUDIO_SAMPLES) / AUDIO_RATE
        wave = (np.sin(2 * math.pi * self.frequency * t) * self.amplitude * 32767).astype(np.int16)
        frame = av.AudioFrame.from_ndarray(
            np.repeat(wave, 2).reshape(1, -1), format="s16", layout="stereo"
        )
        frame.sample_rate = AUDIO_RATE
        frame.pts = self._n * AUDIO_SAMPLES
        frame.time_base = fractions.Fraction(1, AUDIO_RATE)
        self._n += 1
        return frame
