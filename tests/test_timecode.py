"""The time code survives a real H.264 encode/decode at 1.5 Mbps, rescaling and RGB."""

from __future__ import annotations

import fractions

import av
import numpy as np
import pytest

from media import timecode

T0 = 1_795_000_000_000  # an epoch-ms time in 2026


def busy_frame(width: int, height: int, i: int, rng: np.random.Generator) -> av.VideoFrame:
    """A moving gradient with noise: hard for the encoder, like a real picture."""
    xx = np.arange(width)[None, :]
    yy = np.arange(height)[:, None]
    y = ((xx * 2 + yy + i * 7) % 256).astype(np.uint8)
    y = np.clip(y.astype(np.int16) + rng.integers(-40, 40, (height, width)), 0, 255).astype(
        np.uint8
    )
    u = np.full((height // 2, width // 2), 128, np.uint8)
    v = ((np.arange(width // 2)[None, :] + i) % 256).astype(np.uint8).repeat(height // 2, 0)
    frame = av.VideoFrame(width, height, "yuv420p")
    for plane, data in zip(frame.planes, (y, u, v), strict=True):
        view = np.frombuffer(plane, np.uint8).reshape(-1, plane.line_size)
        view[: data.shape[0], : data.shape[1]] = data
    return frame


def h264_roundtrip(frames: list[av.VideoFrame], bitrate: int = 1_500_000) -> list[av.VideoFrame]:
    """Encode with libx264 (real-time settings, as the server does) and decode back."""
    width, height = frames[0].width, frames[0].height
    enc = av.CodecContext.create("libx264", "w")
    enc.width, enc.height, enc.pix_fmt = width, height, "yuv420p"
    enc.bit_rate = bitrate
    enc.framerate = fractions.Fraction(30, 1)
    enc.time_base = fractions.Fraction(1, 30)
    enc.options = {"preset": "ultrafast", "tune": "zerolatency", "g": "60"}
    dec = av.CodecContext.create("h264", "r")
    out: list[av.VideoFrame] = []
    for i, frame in enumerate(frames):
        frame.pts = i
        frame.time_base = enc.time_base
        for packet in enc.encode(frame):
            for decoded in dec.decode(packet):
                out.append(decoded)
    for packet in enc.encode(None):
        out.extend(dec.decode(packet))
    return out


def test_stamp_then_read_exactly_on_a_raw_frame():
    frame = busy_frame(640, 360, 0, np.random.default_rng(1))
    assert timecode.read(frame) is None
    timecode.stamp(frame, T0 + 1234)
    assert timecode.read(frame) == T0 + 1234


@pytest.mark.timeout(60)
@pytest.mark.parametrize("size", [(1280, 720), (640, 360)])
def test_every_frame_reads_back_after_h264_at_1_5_mbps(size):
    rng = np.random.default_rng(2)
    times = [T0 + i * 33 + (i * 7919) % 1000 for i in range(45)]
    frames = []
    for i, t in enumerate(times):
        frame = busy_frame(*size, i, rng)
        timecode.stamp(frame, t)
        frames.append(frame)
    decoded = h264_roundtrip(frames)
    assert len(decoded) == len(times)
    assert [timecode.read(f) for f in decoded] == times


@pytest.mark.timeout(60)
@pytest.mark.parametrize("target", [(640, 360), (960, 540), (480, 270), (640, 480)])
def test_reads_back_after_rescaling_and_h264(target):
    """The compositor may scale the publisher's 720p to the show's size (even its aspect)."""
    rng = np.random.default_rng(3)
    times = [T0 + 50 * i for i in range(20)]
    scaled = []
    for i, t in enumerate(times):
        frame = busy_frame(1280, 720, i, rng)
        timecode.stamp(frame, t)
        scaled.append(frame.reformat(width=target[0], height=target[1], format="yuv420p"))
    decoded = h264_roundtrip(scaled, bitrate=1_000_000)
    assert [timecode.read(f) for f in decoded] == times


def test_read_rgb_from_canvas_style_rgba_pixels():
    frame = busy_frame(1280, 720, 5, np.random.default_rng(4))
    timecode.stamp(frame, T0 + 99)
    rgba = frame.reformat(width=640, height=360, format="rgba").to_ndarray()
    assert timecode.read_rgb(rgba.tobytes(), 640, 360) == T0 + 99
    assert timecode.read_rgb(rgba[..., :3].copy(), 640, 360) == T0 + 99
    with pytest.raises(ValueError):
        timecode.read_rgb(b"\0" * 10, 640, 360)


def test_absent_or_damaged_code_reads_as_none():
    rng = np.random.default_rng(5)
    # Plain pictures: flat, noise, and a real gradient never pass as a code.
    assert timecode.read(av.VideoFrame(640, 360, "yuv420p")) is None
    for i in range(20):
        assert timecode.read(busy_frame(640, 360, i, rng)) is None
    # One flipped data cell breaks the checksum.
    frame = busy_frame(640, 360, 0, rng)
    timecode.stamp(frame, T0)
    y = np.frombuffer(frame.planes[0], np.uint8).reshape(-1, frame.planes[0].line_size)
    cell = 8  # 640 / 80
    r0, c0 = (1 + 1) * cell, (1 + 3) * cell  # grid row 1, column 3 (a data cell)
    y[r0 : r0 + cell, c0 : c0 + cell] = 255 - y[r0 + cell // 2, c0 + cell // 2]
    assert timecode.read(frame) is None
    # A checker without valid data (e.g. a picture of a chessboard) is not a code.
    flipped = timecode.encode_bits(T0)
    flipped[-1] ^= 1
    assert timecode.decode_bits(flipped) is None


def test_bits_roundtrip_and_wrap():
    for t in (0, 1, T0, (1 << 48) - 1):
        assert timecode.decode_bits(timecode.encode_bits(t)) == t
    assert timecode.decode_bits(timecode.encode_bits(1 << 48)) == 0


def test_too_small_frames_are_refused_to_stamp_and_read_as_none():
    tiny = av.VideoFrame(160, 90, "yuv420p")
    with pytest.raises(ValueError):
        timecode.stamp(tiny, T0)
    assert timecode.read(tiny) is None
    with pytest.raises(ValueError):
        timecode.stamp(av.VideoFrame(640, 360, "rgb24"), T0)
