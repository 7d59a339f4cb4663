"""Blending premultiplied YUVA sprites in place, checked against a float RGB composite."""

from __future__ import annotations

import av
import numpy as np
import pytest
from PIL import Image, ImageDraw

from overlays.text import font
from overlays.yuv import (
    blend_sprite,
    flat_view,
    frame_planes,
    make_plan,
    rgb_to_yuv,
    run_plan,
    sprite_from_rgba,
    yuv_to_rgb,
)

RNG = np.random.default_rng(7)


def background(width: int, height: int) -> av.VideoFrame:
    """A busy picture (gradients + noise) as a yuv420p frame, via libswscale."""
    yy, xx = np.mgrid[0:height, 0:width]
    rgb = np.stack(
        [
            (xx * 255 / width),
            (yy * 255 / height),
            128 + 100 * np.sin(xx / 17.0) * np.cos(yy / 23.0),
        ],
        axis=-1,
    )
    rgb += RNG.normal(0, 12, rgb.shape)
    rgb = np.clip(rgb, 0, 255).astype(np.uint8)
    return av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p")


def overlay_image(w: int, h: int) -> Image.Image:
    """An overlay with everything a layer has: an opaque rounded panel, translucent
    areas, soft alpha gradients, coloured anti-aliased text and a photo-like patch."""
    img = Image.new("RGBA", (w, h), (0, 0, 0, 0))
    d = ImageDraw.Draw(img)
    d.rounded_rectangle((0, 0, w * 0.6, h - 1), radius=14, fill=(250, 250, 252, 255))
    d.rounded_rectangle((w * 0.62, 4, w - 1, h * 0.5), radius=9, fill=(226, 32, 48, 200))
    grad = np.zeros((h // 2, w // 3, 4), np.uint8)
    grad[..., 0] = 30
    grad[..., 1] = np.linspace(0, 255, w // 3)[None, :]
    grad[..., 2] = 200
    grad[..., 3] = np.linspace(0, 255, h // 2)[:, None]
    img.alpha_composite(Image.fromarray(grad, "RGBA"), (int(w * 0.62), h // 2))
    d.text((12, 40), "Café Crème €18", font=font(28, True), fill=(20, 20, 24, 255))
    d.text((12, 80), "Ελληνικά Привет", font=font(22), fill=(0, 120, 60, 255))
    d.text((int(w * 0.64), 12), "LIVE", font=font(20, True), fill=(255, 255, 255, 255))
    photo = RNG.integers(0, 255, (30, 40, 3), dtype=np.uint8)
    img.paste(Image.fromarray(photo, "RGB").resize((80, 40)), (14, h - 50))
    return img


def reference_composite(frame_yuv: tuple, overlay: Image.Image, x: int, y: int):
    """Float RGB composite: frame to RGB (each chroma sample over its 2x2 pixels),
    'over' in RGB with straight alpha, back to Y'CbCr, chroma averaged per 2x2 block
    of the frame's grid. Returns float Y, U, V planes."""
    yp, up, vp = (p.astype(np.float64) for p in frame_yuv)
    h, w = yp.shape
    u_full = np.repeat(np.repeat(up, 2, 0), 2, 1)[:h, :w]
    v_full = np.repeat(np.repeat(vp, 2, 0), 2, 1)[:h, :w]
    rgb = yuv_to_rgb(np.stack([yp, u_full, v_full], axis=-1))
    ov = np.asarray(overlay, np.float64) / 255.0
    oh, ow = ov.shape[:2]
    a = ov[..., 3:4]
    region = rgb[y : y + oh, x : x + ow]
    rgb[y : y + oh, x : x + ow] = ov[..., :3] * a + region * (1 - a)
    out = rgb_to_yuv(rgb)
    ch, cw = up.shape
    pad = np.zeros((ch * 2, cw * 2, 3))
    pad[:h, :w] = out
    pad[h:, :] = pad[h - 1 : h, :]  # odd sizes: edge rows/cols count as themselves
    pad[:, w:] = pad[:, w - 1 : w]
    chroma = pad.reshape(ch, 2, cw, 2, 3).mean(axis=(1, 3))
    return out[..., 0], chroma[..., 1], chroma[..., 2]


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


@pytest.mark.parametrize("x,y", [(100, 60), (101, 61), (101, 60), (100, 61)])
def test_blend_matches_float_rgb_reference(x, y):
    """Even and odd positions: PSNR >= 40 dB on Y, U and V over the overlay area."""
    frame = background(642, 362)  # line_size padding: the planes are strided views
    planes = frame_planes(frame)
    assert planes[0].strides[0] > planes[0].shape[1] or planes[1].strides[0] > planes[1].shape[1]
    before = tuple(p.copy() for p in planes)
    overlay = overlay_image(300, 150)
    ref_y, ref_u, ref_v = reference_composite(before, overlay, x, y)

    blend_sprite(planes, sprite_from_rgba(overlay, x, y))

    out = frame.to_ndarray(format="yuv420p")  # read back through PyAV: in place for real
    got_y = out[:362]
    got_u = out[362:].reshape(-1)[: 321 * 181].reshape(181, 321)
    assert np.array_equal(got_y, planes[0])
    assert np.array_equal(got_u, planes[1])
    ys, xs = slice(y, y + 150), slice(x, x + 300)
    cys, cxs = slice(y // 2, (y + 150 + 1) // 2), slice(x // 2, (x + 300 + 1) // 2)
    assert psnr(planes[0][ys, xs], ref_y[ys, xs]) >= 40
    assert psnr(planes[1][cys, cxs], ref_u[cys, cxs]) >= 40
    assert psnr(planes[2][cys, cxs], ref_v[cys, cxs]) >= 40
    # the overlay really changed the picture, and nothing outside its box moved
    assert np.abs(planes[0][ys, xs].astype(int) - before[0][ys, xs]).mean() > 20
    outside = np.ones(planes[0].shape, bool)
    outside[ys, xs] = False
    assert np.array_equal(planes[0][outside], before[0][outside])
    c_out = np.ones(planes[1].shape, bool)
    c_out[cys, cxs] = False
    assert np.array_equal(planes[1][c_out], before[1][c_out])
    assert np.array_equal(planes[2][c_out], before[2][c_out])


def test_odd_position_chroma_is_sited_on_the_frame_grid():
    """A single opaque red column at odd x colours only the chroma sample it falls in,
    at half strength (it covers half of the 2x2 block)."""
    frame = background(64, 64)
    planes = frame_planes(frame)
    before = [p.copy() for p in planes]
    img = Image.new("RGBA", (1, 2), (255, 0, 0, 255))
    blend_sprite(planes, sprite_from_rgba(img, 21, 31))  # column 21, rows 31-32
    changed_v = np.argwhere(planes[2] != before[2])
    # rows 31 and 32 sit in chroma rows 15 and 16; column 21 in chroma column 10
    assert {tuple(p) for p in changed_v} <= {(15, 10), (16, 10)}
    assert len(changed_v) == 2
    red_v = rgb_to_yuv(np.array([1.0, 0, 0]))[2]
    for cy in (15, 16):
        expected = 0.75 * before[2][cy, 10] + 0.25 * red_v  # one of four pixels is red
        assert abs(int(planes[2][cy, 10]) - expected) <= 1


def test_opaque_panel_is_copied_exactly_and_corners_blend():
    img = Image.new("RGBA", (200, 80), (0, 0, 0, 0))
    ImageDraw.Draw(img).rounded_rectangle((0, 0, 199, 79), radius=16, fill=(18, 18, 24, 255))
    sprite = sprite_from_rgba(img, 40, 20)
    y = sprite.planes[0]
    # most of the panel is a few plain copies, the corners a small gather
    assert 1 <= len(y.copies) <= 7
    copied = sum((c.r1 - c.r0) * (c.c1 - c.c0) for c in y.copies)
    assert copied > 0.85 * 200 * 80
    assert y.rows.size < 0.15 * 200 * 80
    frame = background(320, 180)
    planes = frame_planes(frame)
    corner_before = planes[0][20, 40]
    blend_sprite(planes, sprite)
    expected = rgb_to_yuv(np.array([18, 18, 24]) / 255.0)[0]
    assert abs(int(planes[0][60, 140]) - expected) <= 1
    assert planes[0][20, 40] == corner_before  # transparent corner pixel untouched


def test_merged_plan_equals_layer_by_layer_and_handles_moves_and_clipping():
    a = sprite_from_rgba(overlay_image(200, 100), 10, 10)
    b = sprite_from_rgba(overlay_image(120, 90), 301, 151)
    f1, f2 = background(480, 270), background(480, 270)
    p1, p2 = frame_planes(f1), frame_planes(f2)
    for src, dst in zip(p1, p2, strict=True):
        dst[...] = src  # the same picture in both frames
    blend_sprite(p1, a)
    blend_sprite(p1, b)
    plan = make_plan((a, b), p2)
    assert plan is not None
    run_plan(plan, p2, tuple(flat_view(p) for p in p2))
    for x, y in zip(p1, p2, strict=True):
        assert np.array_equal(x, y)
    # overlapping sprites cannot be merged (order matters)
    assert make_plan((a, sprite_from_rgba(overlay_image(50, 50), 20, 20)), p2) is None
    # a sprite sliding off the right edge is clipped, never wrapped onto the next row
    f3 = background(480, 270)
    p3 = frame_planes(f3)
    left_before = p3[0][:, :100].copy()
    blend_sprite(p3, sprite_from_rgba(overlay_image(200, 100), 400, 100), 128, dx=40)
    assert np.array_equal(p3[0][:, :100], left_before)


def test_fade_scales_alpha():
    img = Image.new("RGBA", (64, 64), (255, 255, 255, 255))
    sprite = sprite_from_rgba(img, 0, 0)
    frame = av.VideoFrame.from_ndarray(np.zeros((64, 64, 3), np.uint8), format="rgb24")
    frame = frame.reformat(format="yuv420p")
    planes = frame_planes(frame)
    black = int(planes[0][10, 10])
    blend_sprite(planes, sprite, opacity=128)
    half = int(planes[0][10, 10])
    white = rgb_to_yuv(np.array([1.0, 1.0, 1.0]))[0]
    assert abs(half - (black + white) / 2) <= 2
