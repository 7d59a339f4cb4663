"""Premultiplied YUV 4:2:0 + alpha sprites, and blending them into frames in place.

A sprite is an RGBA image converted *once* (when its content changes) into per-plane
arrays at its frame position:

- ``inv = 256 - a`` and ``pre = a * c + 128`` (uint16, alpha on a 0..256 scale) so a
  pixel blends as ``(bg * inv + pre) >> 8``. The largest value is 255 * 256 + 128, so
  the whole blend stays in uint16;
- the chroma arrays are built on the frame's own 2x2 chroma grid: a sprite at an odd x
  or y is padded by one transparent pixel first, so each chroma sample averages exactly
  the luma pixels it covers in the frame;
- each plane is cut into rectangles that are fully opaque (a plain copy per frame) and
  rectangles that need blending; fully transparent areas are skipped.

Colours use BT.601 limited range, libswscale's default for yuv420p.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

# BT.601 limited range, RGB in 0..1 -> Y'CbCr in 0..255 (ITU-R BT.601 / libswscale default).
RGB_TO_YUV = np.array(
    [
        [65.481, 128.553, 24.966],
        [-37.797, -74.203, 112.0],
        [112.0, -93.786, -18.214],
    ],
    dtype=np.float64,
)
YUV_OFFSET = np.array([16.0, 128.0, 128.0])
YUV_TO_RGB = np.linalg.inv(RGB_TO_YUV)

# Row bands used to classify a plane into copy / blend / skip rectangles.
BAND_ROWS = 16


@dataclass(frozen=True)
class Rect:
    """Sprite-local rectangle in a plane: rows r0..r1, columns c0..c1 (exclusive)."""

    r0: int
    r1: int
    c0: int
    c1: int


@dataclass(frozen=True)
class SpritePlane:
    x: int  # plane coordinates of the array's top-left corner
    y: int
    inv: np.ndarray  # uint16, 256 - alpha
    pre: np.ndarray  # uint16, alpha * colour + 128
    alpha: np.ndarray  # uint16, 0..256 (used when fading)
    solid: np.ndarray  # uint8 colour, valid where alpha == 256
    copies: tuple[Rect, ...]
    blends: tuple[Rect, ...]
    bbox: Rect | None  # everything with alpha > 0


@dataclass(frozen=True)
class Sprite:
    """A layer ready to blend: frame position of its top-left pixel plus Y, U, V planes."""

    x: int
    y: int
    width: int
    height: int
    planes: tuple[SpritePlane, SpritePlane, SpritePlane]


def rgb_to_yuv(rgb: np.ndarray) -> np.ndarray:
    """Float RGB (0..1, ... x 3) to float Y'CbCr (0..255)."""
    return rgb @ RGB_TO_YUV.T + YUV_OFFSET


def yuv_to_rgb(yuv: np.ndarray) -> np.ndarray:
    """Float Y'CbCr (0..255) to float RGB (0..1), unclipped."""
    return (yuv - YUV_OFFSET) @ YUV_TO_RGB.T


def _bands(alpha: np.ndarray) -> tuple[tuple[Rect, ...], tuple[Rect, ...], Rect | None]:
    """Split a plane's alpha (0..256) into opaque rectangles and blend rectangles.

    Rows are taken in bands; in each band the widest column run that is opaque in
    every row is copied, and what has alpha > 0 on either side of it is blended.
    Consecutive bands with the same columns are merged, so a panel with rounded
    corners costs a few small blends plus one large copy.
    """
    h, w = alpha.shape
    visible = alpha > 0
    if not visible.any():
        return (), (), None
    rows_any = np.flatnonzero(visible.any(axis=1))
    cols_any = np.flatnonzero(visible.any(axis=0))
    bbox = Rect(int(rows_any[0]), int(rows_any[-1]) + 1, int(cols_any[0]), int(cols_any[-1]) + 1)
    opaque = alpha >= 256
    spans: list[tuple[int, int, tuple[int, int, int, int]]] = []
    for r0 in range(bbox.r0, bbox.r1, BAND_ROWS):
        r1 = min(r0 + BAND_ROWS, bbox.r1)
        vis_cols = np.flatnonzero(visible[r0:r1].any(axis=0))
        if vis_cols.size == 0:
            continue
        lo, hi = int(vis_cols[0]), int(vis_cols[-1]) + 1
        full = opaque[r0:r1].all(axis=0)
        # longest run of columns opaque in every row of the band
        best = (0, 0)
        if full.any():
            padded = np.concatenate(([False], full, [False]))
            edges = np.flatnonzero(padded[1:] != padded[:-1])
            starts, ends = edges[::2], edges[1::2]
            k = int(np.argmax(ends - starts))
            best = (int(starts[k]), int(ends[k]))
        if best[1] - best[0] < 8:  # not worth a separate copy
            best = (lo, lo)
        key = (lo, best[0], best[1], hi)
        if spans and spans[-1][1] == r0 and spans[-1][2] == key:
            spans[-1] = (spans[-1][0], r1, key)
        else:
            spans.append((r0, r1, key))
    copies: list[Rect] = []
    blends: list[Rect] = []
    for r0, r1, (lo, c0, c1, hi) in spans:
        if c1 > c0:
            copies.append(Rect(r0, r1, c0, c1))
            if c0 > lo:
                blends.append(Rect(r0, r1, lo, c0))
            if hi > c1:
                blends.append(Rect(r0, r1, c1, hi))
        else:
            blends.append(Rect(r0, r1, lo, hi))
    return tuple(copies), tuple(blends), bbox


def _plane(x: int, y: int, alpha: np.ndarray, premult: np.ndarray) -> SpritePlane:
    """alpha: float 0..256; premult: float alpha * colour (same scale)."""
    a = np.rint(alpha).astype(np.uint16)
    pre = np.rint(premult).astype(np.uint16) + np.uint16(128)
    inv = (np.uint16(256) - a).astype(np.uint16)
    # Straight colour for opaque pixels: exactly what the blend would give with a = 256.
    solid = (pre >> 8).astype(np.uint8)
    copies, blends, bbox = _bands(a)
    return SpritePlane(x, y, inv, pre, a, solid, copies, blends, bbox)


def sprite_from_rgba(image: Image.Image, x: int, y: int) -> Sprite:
    """Convert a straight-alpha RGBA image placed at frame (x, y) into a sprite."""
    rgba = np.asarray(image.convert("RGBA"), dtype=np.float64) / 255.0
    h, w = rgba.shape[:2]
    a = rgba[..., 3] * 256.0
    yuv = rgb_to_yuv(rgba[..., :3])
    luma = _plane(x, y, a, a * yuv[..., 0])
    # Chroma on the frame's grid: pad so the sprite starts on an even frame pixel and
    # covers whole 2x2 blocks, then average alpha and premultiplied colour per block.
    px, py = x & 1, y & 1
    hh, ww = (h + py + 1) // 2 * 2, (w + px + 1) // 2 * 2
    pa = np.zeros((hh, ww))
    pa[py : py + h, px : px + w] = a
    chroma = []
    for ch in (1, 2):
        pc = np.zeros((hh, ww))
        pc[py : py + h, px : px + w] = a * yuv[..., ch]
        chroma.append(pc.reshape(hh // 2, 2, ww // 2, 2).mean(axis=(1, 3)))
    ca = pa.reshape(hh // 2, 2, ww // 2, 2).mean(axis=(1, 3))
    cx, cy = (x - px) // 2, (y - py) // 2
    u = _plane(cx, cy, ca, chroma[0])
    v = _plane(cx, cy, ca, chroma[1])
    return Sprite(x, y, w, h, (luma, u, v))


def frame_planes(frame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Writable numpy views (height x width) on a yuv420p av.VideoFrame's own buffers."""
    views = []
    for plane in frame.planes[:3]:
        buf = np.frombuffer(plane, dtype=np.uint8)
        views.append(buf.reshape(plane.height, plane.line_size)[:, : plane.width])
    return views[0], views[1], views[2]


def _clip(
    sp: SpritePlane, rect: Rect, dx: int, dy: int, pw: int, ph: int
) -> tuple[int, int, int, int, int, int] | None:
    """Intersect a sprite-local rect (shifted by dx, dy plane pixels) with the plane.

    Returns (frame row0, frame col0, local row0, local col0, rows, cols) or None.
    """
    fy0 = sp.y + dy + rect.r0
    fx0 = sp.x + dx + rect.c0
    r0, c0 = rect.r0, rect.c0
    rows, cols = rect.r1 - rect.r0, rect.c1 - rect.c0
    if fy0 < 0:
        r0, rows, fy0 = r0 - fy0, rows + fy0, 0
    if fx0 < 0:
        c0, cols, fx0 = c0 - fx0, cols + fx0, 0
    rows = min(rows, ph - fy0)
    cols = min(cols, pw - fx0)
    if rows <= 0 or cols <= 0:
        return None
    return fy0, fx0, r0, c0, rows, cols


def blend_plane(plane: np.ndarray, sp: SpritePlane, dx: int = 0, dy: int = 0) -> None:
    """Blend one sprite plane into a frame plane in place, fully opaque areas copied."""
    ph, pw = plane.shape
    for rect in sp.copies:
        c = _clip(sp, rect, dx, dy, pw, ph)
        if c is not None:
            fy, fx, r, k, n, m = c
            plane[fy : fy + n, fx : fx + m] = sp.solid[r : r + n, k : k + m]
    for rect in sp.blends:
        c = _clip(sp, rect, dx, dy, pw, ph)
        if c is not None:
            fy, fx, r, k, n, m = c
            region = plane[fy : fy + n, fx : fx + m]
            acc = np.multiply(region, sp.inv[r : r + n, k : k + m], dtype=np.uint16)
            acc += sp.pre[r : r + n, k : k + m]
            acc >>= 8
            region[...] = acc


def blend_plane_faded(
    plane: np.ndarray, sp: SpritePlane, opacity: int, dx: int = 0, dy: int = 0
) -> None:
    """Blend with the sprite's alpha scaled by opacity (0..256): used while animating."""
    if sp.bbox is None or opacity <= 0:
        return
    if opacity >= 256:
        blend_plane(plane, sp, dx, dy)
        return
    ph, pw = plane.shape
    c = _clip(sp, sp.bbox, dx, dy, pw, ph)
    if c is None:
        return
    fy, fx, r, k, n, m = c
    region = plane[fy : fy + n, fx : fx + m]
    a = sp.alpha[r : r + n, k : k + m].astype(np.uint32)
    pre = sp.pre[r : r + n, k : k + m].astype(np.uint32) - 128  # a * colour
    a = (a * opacity) >> 8
    acc = region * (256 - a) + ((pre * opacity) >> 8) + 128
    region[...] = acc >> 8


def blend_sprite(
    planes: tuple[np.ndarray, np.ndarray, np.ndarray],
    sprite: Sprite,
    opacity: int = 256,
    dx: int = 0,
    dy: int = 0,
) -> None:
    """Blend a sprite into (Y, U, V) plane views in place. dx, dy: luma pixels (even
    offsets keep the chroma grid; odd ones are rounded down to the chroma grid)."""
    for i, (plane, sp) in enumerate(zip(planes, sprite.planes, strict=True)):
        ox, oy = (dx, dy) if i == 0 else (dx // 2, dy // 2)
        if opacity >= 256:
            blend_plane(plane, sp, ox, oy)
        else:
            blend_plane_faded(plane, sp, opacity, ox, oy)
