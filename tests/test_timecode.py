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
    flat = np.full((540, 640), 128, np.uint8)
    assert timecode.read(av.VideoFrame.from_ndarray(flat, "yuv420p")) is None
    for i in range(20):
        assert timecode.read(busy_frame(640, 360, i, rng)) is None
    # One flipped payload cell breaks the checksum.
    frame = busy_frame(640, 360, 0, rng)
    timecode.stamp(frame, T0)
    y = np.frombuffer(frame.planes[0], np.uint8).reshape(-1, frame.planes[0].line_size)
    y0, y1, xs = timecode.geometry(360, 640)
    cell = len(timecode.START_GUARD) + 10
    y[y0:y1, xs[cell] : xs[cell + 1]] = 255 - y[(y0 + y1) // 2, (xs[cell] + xs[cell + 1]) // 2]
    assert timecode.read(frame) is None
    # Guards without a valid payload are not a code.
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


def test_code_stays_in_the_top_margin_outside_every_overlay():
    """Overlays keep to the 5 % title-safe area; the code must never be under one."""
    from overlays.layout import make_layout

    for w, h in ((640, 360), (1280, 720), (1920, 1080), (720, 1280)):
        y0, y1, xs = timecode.geometry(h, w)
        layout = make_layout(w, h)
        assert y1 <= layout.safe.y
        assert 0 < xs[0] and xs[-1] < w
        frame = av.VideoFrame.from_ndarray(np.zeros((h * 3 // 2, w), np.uint8), "yuv420p")
        timecode.stamp(frame, T0)
        assert timecode.read(frame) == T0
        # Nothing below the margin was touched.
        y = frame.to_ndarray()[:h]
        assert not y[layout.safe.y :].any()


def test_chroma_under_the_code_is_neutral_so_rgb_stays_black_and_white():
    frame = busy_frame(640, 360, 3, np.random.default_rng(6))
    v = np.frombuffer(frame.planes[2], np.uint8).reshape(-1, frame.planes[2].line_size)
    v[:] = 230  # a strongly coloured picture
    timecode.stamp(frame, T0 + 5)
    rgb = frame.to_ndarray(format="rgb24")
    assert timecode.read_rgb(rgb, 640, 360) == T0 + 5
