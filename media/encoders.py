"""The show's shared encoders: one per codec in use, fed the composed frames.

Packets get their RTP-clock ``pts``/``time_base`` set here (90 kHz video, 48 kHz audio),
because aiortc's packetiser derives the RTP timestamp from them; every viewer's sender
adds its own random offset.
"""

from __future__ import annotations

import fractions
import time
from dataclasses import dataclass

import av
import numpy as np
from aiortc.codecs.h264 import H264Encoder
from aiortc.codecs.vpx import Vp8Encoder

VIDEO_CLOCK = fractions.Fraction(1, 90000)
AUDIO_RATE = 48000
AUDIO_CLOCK = fractions.Fraction(1, AUDIO_RATE)
AUDIO_SAMPLES = 960  # 20 ms Opus frames


@dataclass
class Encoded:
    packet: av.Packet
    keyframe: bool
    payloads: list[bytes]  # RTP payloads, packetised once for all viewers
    timestamp: int  # RTP timestamp in the codec clock
    seconds: float  # encode time


class VideoEncoder:
    """libx264 (ultrafast, zerolatency, baseline) or libvpx (realtime) at a fixed size."""

    def __init__(
        self,
        codec: str,
        width: int,
        height: int,
        fps: int,
        bitrate_kbps: int,
        buffer_s: float = 1.0,
    ) -> None:
        """``buffer_s``: the rate control's buffer (VBV), which bounds a keyframe's size:
        a smaller one keeps keyframes small enough for a slow link's queue."""
        self.codec_name = codec
        name = {"H264": "libx264", "VP8": "libvpx"}[codec]
        ctx = av.CodecContext.create(name, "w")
        ctx.width, ctx.height = width, height
        ctx.pix_fmt = "yuv420p"
        ctx.time_base = VIDEO_CLOCK
        ctx.framerate = fractions.Fraction(fps, 1)
        ctx.bit_rate = bitrate_kbps * 1000
        # Keyframes are decided by the KeyframeGate, never by the encoder on its own.
        ctx.gop_size = 1_000_000
        if codec == "H264":
            ctx.profile = "Baseline"
            ctx.options = {
                "preset": "ultrafast",
                "tune": "zerolatency",
                "forced-idr": "1",
                "scenecut": "0",
                "level": "31" if width * height <= 1280 * 720 else "41",
                "maxrate": str(bitrate_kbps * 1000),
                "bufsize": str(int(bitrate_kbps * 1000 * buffer_s)),
            }
            ctx.thread_count = 2 if width * height >= 1280 * 720 else 1
            self._packetiser = H264Encoder()
        else:
            ctx.options = {
                "deadline": "realtime",
                "cpu-used": "8",
                "lag-in-frames": "0",
                "error-resilient": "1",
                "bufsize": str(int(bitrate_kbps * 1000 * buffer_s)),
                "minrate": str(bitrate_kbps * 1000),
                "maxrate": str(bitrate_kbps * 1000),
                "undershoot-pct": "100",
                "overshoot-pct": "15",
                "static-thresh": "1",
            }
            ctx.qmin, ctx.qmax = 2, 56
            ctx.thread_count = 2 if width * height >= 1280 * 720 else 1
            self._packetiser = Vp8Encoder()
        self.ctx = ctx

    def encode(self, frame: av.VideoFrame, pts: int, force_keyframe: bool) -> list[Encoded]:
        frame.pts = pts
        frame.time_base = VIDEO_CLOCK
        frame.pict_type = (
            av.video.frame.PictureType.I if force_keyframe else av.video.frame.PictureType.NONE
        )
        start = time.perf_counter()
        packets = self.ctx.encode(frame)
        elapsed = time.perf_counter() - start
        out = []
        for packet in packets:
            packet.pts = pts
            packet.time_base = VIDEO_CLOCK
            payloads, timestamp = self._packetiser.pack(packet)
            out.append(Encoded(packet, bool(packet.is_keyframe), payloads, timestamp, elapsed))
        return out


class AudioEncoder:
    """Opus, 48 kHz stereo, 20 ms frames."""

    def __init__(self, bitrate: int = 64000) -> None:
        ctx = av.CodecContext.create("libopus", "w")
        ctx.sample_rate = AUDIO_RATE
        ctx.layout = "stereo"
        ctx.format = "s16"
        ctx.bit_rate = bitrate
        ctx.time_base = AUDIO_CLOCK
        ctx.options = {"application": "lowdelay", "frame_duration": "20"}
        self.ctx = ctx

    def encode(self, samples: np.ndarray, pts: int) -> list[Encoded]:
        """``samples``: int16 interleaved stereo, shape (1, 2 * AUDIO_SAMPLES)."""
        frame = av.AudioFrame.from_ndarray(samples, format="s16", layout="stereo")
        frame.sample_rate = AUDIO_RATE
        frame.pts = pts
        frame.time_base = AUDIO_CLOCK
        start = time.perf_counter()
        packets = self.ctx.encode(frame)
        elapsed = time.perf_counter() - start
        out = []
        for packet in packets:
            # The encoder's own pts carries its look-ahead offset; the RTP clock is ours.
            packet.pts = pts
            packet.time_base = AUDIO_CLOCK
            out.append(Encoded(packet, True, [bytes(packet)], pts, elapsed))
        return out
