"""Premultiplied YUV 4:2:0 + alpha sprites, and blending them into frames in place.

A sprite is an RGBA image converted *once* (when its content changes) into per-plane
arrays at its frame position:

- ``inv = 256 - a`` and ``pre = a * c + 128`` (uint16, alpha on a 0..256 scale) so a
  pixel blends as ``(bg * inv + pre) >> 8``. The largest value is 255 * 256 + 128, so
  the whole blend stays in uint16;
- the chroma arrays are built on the frame's own 2x2 chroma grid: a sprite at an odd x
  or y is padded by one transparent pixel first, so each chroma sample averages exactly
  the luma pixels it covers in the frame;
- each plane is cut into a few fully opaque rectangles (a plain copy per frame) and the
  remaining visible pixels (rounded corners, anti-aliased edges), blended per frame
  with one gather and one scatter; fully transparent pixels are never touched.

Colours use BT.601 limited range, libswscale's default for yuv420p.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numpy.lib.stride_tricks import as_strided
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

# A copy rectangle is worth its per-frame call only if it is at least this wide.
MIN_RUN = 16
# See _copy_rects: pixels a band may leave to the blend, smallest copy worth a call.
JOIN_LOST_PX = 1500
MIN_COPY_AREA = 1024

# Y = 16 + kr R + kg G + kb B with R, G, B in 0..255 (BT.601 limited range).
# (Python floats: NumPy scalars would promote the float32 arrays to float64.)
_KY = [float(v) / 255.0 for v in RGB_TO_YUV[0]]
_KU = [float(v) / 255.0 for v in RGB_TO_YUV[1]]
_KV = [float(v) / 255.0 for v in RGB_TO_YUV[2]]


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
    alpha: np.ndarray  # uint16, 0..256
    pre: np.ndarray  # uint16, alpha * colour + 128
    solid: np.ndarray  # uint8 colour, valid where alpha == 256
    copies: tuple[Rect, ...]  # fully opaque rectangles: a plain copy per frame
    rows: np.ndarray  # the other visible pixels (sprite-local), blended per frame
    cols: np.ndarray
    inv_px: np.ndarray  # uint16 256 - alpha at those pixels
    pre_px: np.ndarray  # uint16 pre at those pixels
    bbox: Rect | None  # everything with alpha > 0
    _flat: dict = field(default_factory=dict, compare=False, repr=False)

    def flat_index(self, stride: int) -> np.ndarray:
        """Indices of the blended pixels in a plane with this row stride (cached)."""
        idx = self._flat.get(stride)
        if idx is None:
            idx = (self.rows + self.y) * stride + (self.cols + self.x)
            self._flat[stride] = idx
        return idx

    def inside(self, height: int, width: int) -> bool:
        b = self.bbox
        return b is None or (
            self.y + b.r0 >= 0
            and self.x + b.c0 >= 0
            and self.y + b.r1 <= height
            and self.x + b.c1 <= width
        )


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


def _runs(row: np.ndarray) -> list[tuple[int, int]]:
    """Opaque column runs of one row that are at least MIN_RUN wide."""
    padded = np.concatenate(([False], row, [False]))
    edges = np.flatnonzero(padded[1:] != padded[:-1])
    return [
        (int(s), int(e)) for s, e in zip(edges[::2], edges[1::2], strict=True) if e - s >= MIN_RUN
    ]


def _copy_rects(opaque: np.ndarray) -> list[Rect]:
    """Cover most opaque pixels with few rectangles.

    Consecutive rows whose opaque runs line up form a band, cut to the columns opaque in
    every row of it. A row joins the band while the opaque pixels this cut leaves to the
    per-pixel blend stay under JOIN_LOST_PX (a gather of that many pixels costs about
    what one more rectangle does); bands under MIN_COPY_AREA are left to the blend too.
    So a rounded panel is one big copy plus a few thin ones, its corners blended.
    """
    h = opaque.shape[0]
    if h == 0:
        return []
    # identical consecutive rows are handled once
    changes = np.flatnonzero((opaque[1:] != opaque[:-1]).any(axis=1)) + 1
    bounds = [0, *changes.tolist(), h]
    rects: list[Rect] = []
    band_start, band_runs, lost = 0, [], 0

    def close(end: int) -> None:
        rects.extend(
            Rect(band_start, end, c0, c1)
            for c0, c1 in band_runs
            if (end - band_start) * (c1 - c0) >= MIN_COPY_AREA
        )

    for g0, g1 in zip(bounds[:-1], bounds[1:], strict=True):
        runs = _runs(opaque[g0])
        if band_runs and len(runs) == len(band_runs):
            merged, extra = [], lost
            for (a0, a1), (b0, b1) in zip(band_runs, runs, strict=True):
                c0, c1 = max(a0, b0), min(a1, b1)
                if c1 <= c0:
                    break
                extra += (g0 - band_start) * ((a1 - a0) - (c1 - c0))
                extra += (g1 - g0) * ((b1 - b0) - (c1 - c0))
                merged.append((c0, c1))
            else:
                if extra <= JOIN_LOST_PX:
                    band_runs, lost = merged, extra
                    continue
        close(g0)
        band_start, band_runs, lost = g0, runs, 0
    close(h)
    return rects


def _plane(x: int, y: int, alpha: np.ndarray, premult: np.ndarray) -> SpritePlane:
    """alpha: float 0..256; premult: float alpha * colour (same scale)."""
    a = (alpha + 0.5).astype(np.uint16)  # both are >= 0: truncation rounds
    pre = (premult + 128.5).astype(np.uint16)
    # Straight colour for opaque pixels: exactly what the blend would give with a = 256.
    solid = (pre >> 8).astype(np.uint8)
    visible = a > 0
    if not visible.any():
        empty = np.zeros(0, np.intp)
        return SpritePlane(
            x,
            y,
            a,
            pre,
            solid,
            (),
            empty,
            empty,
            empty.astype(np.uint16),
            empty.astype(np.uint16),
            None,
        )
    rows_any = np.flatnonzero(visible.any(axis=1))
    cols_any = np.flatnonzero(visible.any(axis=0))
    bbox = Rect(int(rows_any[0]), int(rows_any[-1]) + 1, int(cols_any[0]), int(cols_any[-1]) + 1)
    copies = _copy_rects(a >= 256)
    rest = visible.copy()
    for c in copies:
        rest[c.r0 : c.r1, c.c0 : c.c1] = False
    rows, cols = np.nonzero(rest)
    inv_px = (256 - a[rows, cols]).astype(np.uint16)
    return SpritePlane(
        x,
        y,
        a,
        pre,
        solid,
        tuple(copies),
        rows.astype(np.intp),
        cols.astype(np.intp),
        inv_px,
        pre[rows, cols],
        bbox,
    )


def _block_sum(p: np.ndarray, py: int, px: int, hh: int, ww: int) -> np.ndarray:
    """Sum of each 2x2 block on the frame's chroma grid (sprite padded by py, px)."""
    h, w = p.shape
    q = np.zeros((hh, ww), np.float32)
    q[py : py + h, px : px + w] = p
    return q[0::2, 0::2] + q[1::2, 0::2] + q[0::2, 1::2] + q[1::2, 1::2]


def sprite_from_rgba(image: Image.Image, x: int, y: int) -> Sprite:
    """Convert a straight-alpha RGBA image placed at frame (x, y) into a sprite."""
    rgba = np.asarray(image if image.mode == "RGBA" else image.convert("RGBA"))
    h, w = rgba.shape[:2]
    a = rgba[..., 3].astype(np.float32) * (256.0 / 255.0)
    r, g, b = (rgba[..., i].astype(np.float32) for i in range(3))
    luma = 16.0 + _KY[0] * r + _KY[1] * g + _KY[2] * b
    y_plane = _plane(x, y, a, a * luma)
    # Chroma on the frame's grid: pad so the sprite starts on an even frame pixel and
    # covers whole 2x2 blocks; premultiplied chroma is linear in (a, aR, aG, aB), so
    # block sums of those give each chroma sample exactly.
    px, py = x & 1, y & 1
    hh, ww = (h + py + 1) // 2 * 2, (w + px + 1) // 2 * 2
    sa = _block_sum(a, py, px, hh, ww)
    sr, sg, sb = (_block_sum(a * c, py, px, hh, ww) for c in (r, g, b))
    cx, cy = (x - px) // 2, (y - py) // 2
    planes = [y_plane]
    for k in (_KU, _KV):
        pre = 128.0 * sa + k[0] * sr + k[1] * sg + k[2] * sb
        planes.append(_plane(cx, cy, sa * 0.25, pre * 0.25))
    return Sprite(x, y, w, h, (planes[0], planes[1], planes[2]))


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


def flat_view(plane: np.ndarray) -> np.ndarray:
    """A 1-D writable view over a 2-D plane's rows, including the padding between them
    (index = row * stride + column), for gathering scattered pixels in one call."""
    h, w = plane.shape
    stride = plane.strides[0]
    return as_strided(plane, shape=((h - 1) * stride + w,), strides=(1,))


def blend_plane(
    plane: np.ndarray, sp: SpritePlane, dx: int = 0, dy: int = 0, flat: np.ndarray | None = None
) -> None:
    """Blend one sprite plane into a frame plane in place: opaque rectangles are copied,
    the remaining visible pixels (edges, anti-aliasing) are blended in one gather."""
    if sp.bbox is None:
        return
    ph, pw = plane.shape
    if dx or dy or plane.strides[1] != 1 or not sp.inside(ph, pw):
        _blend_box(plane, sp, 256, dx, dy)  # moved or partly outside: clip, blend the box
        return
    x, y = sp.x, sp.y
    for c in sp.copies:
        plane[y + c.r0 : y + c.r1, x + c.c0 : x + c.c1] = sp.solid[c.r0 : c.r1, c.c0 : c.c1]
    if sp.rows.size:
        if flat is None:
            flat = flat_view(plane)
        idx = sp.flat_index(plane.strides[0])
        acc = flat[idx] * sp.inv_px  # uint8 * uint16 -> uint16, cannot overflow (see top)
        acc += sp.pre_px
        acc >>= 8
        flat[idx] = acc


def _blend_box(plane: np.ndarray, sp: SpritePlane, opacity: int, dx: int, dy: int) -> None:
    """Blend the sprite's whole visible box, alpha scaled by opacity (0..256), clipped to
    the plane. Used while a layer animates (a few frames), never for a still scene."""
    if sp.bbox is None or opacity <= 0:
        return
    ph, pw = plane.shape
    c = _clip(sp, sp.bbox, dx, dy, pw, ph)
    if c is None:
        return
    fy, fx, r, k, n, m = c
    region = plane[fy : fy + n, fx : fx + m]
    a = sp.alpha[r : r + n, k : k + m].astype(np.uint32)
    pre = sp.pre[r : r + n, k : k + m].astype(np.uint32) - 128  # alpha * colour
    if opacity < 256:
        a = (a * opacity) >> 8
        pre = (pre * opacity) >> 8
    acc = region * (256 - a) + pre + 128
    region[...] = acc >> 8


def blend_sprite(
    planes: tuple[np.ndarray, np.ndarray, np.ndarray],
    sprite: Sprite,
    opacity: int = 256,
    dx: int = 0,
    dy: int = 0,
    flats: tuple[np.ndarray, ...] | None = None,
) -> None:
    """Blend a sprite into (Y, U, V) plane views in place. dx, dy move it (luma pixels,
    rounded down to even so the chroma grid still lines up)."""
    dx, dy = dx & ~1, dy & ~1
    for i, (plane, sp) in enumerate(zip(planes, sprite.planes, strict=True)):
        ox, oy = (dx, dy) if i == 0 else (dx // 2, dy // 2)
        if opacity >= 256:
            blend_plane(plane, sp, ox, oy, flats[i] if flats is not None else None)
        else:
            _blend_box(plane, sp, opacity, ox, oy)


@dataclass(frozen=True)
class BlendPlan:
    """Still sprites merged for one frame geometry: every opaque rectangle as a ready
    slice pair, and per plane all remaining pixels in one gather. Per frame that is a
    handful of copies and three gathers, whatever the number of layers."""

    sprites: tuple[Sprite, ...]
    geometry: tuple
    copies: tuple[tuple[int, int, int, int, int, np.ndarray], ...]  # plane, y0, y1, x0, x1, src
    gathers: tuple[tuple[np.ndarray, np.ndarray, np.ndarray], ...]  # idx, inv, pre per plane


def geometry(planes: tuple[np.ndarray, ...]) -> tuple:
    return tuple((p.shape, p.strides) for p in planes)


def make_plan(sprites: tuple[Sprite, ...], planes: tuple[np.ndarray, ...]) -> BlendPlan | None:
    """A merged plan, or None when sprites overlap (order would matter) or do not fit
    inside the planes (they need clipping)."""
    boxes = []
    for sprite in sprites:
        for i, sp in enumerate(sprite.planes):
            ph, pw = planes[i].shape
            if planes[i].strides[1] != 1 or not sp.inside(ph, pw):
                return None
        b = sprite.planes[0].bbox
        if b is not None:
            boxes.append((sprite.y + b.r0, sprite.y + b.r1, sprite.x + b.c0, sprite.x + b.c1))
    for i, (a0, a1, a2, a3) in enumerate(boxes):
        for b0, b1, b2, b3 in boxes[i + 1 :]:
            if a0 < b1 and b0 < a1 and a2 < b3 and b2 < a3:
                return None
    copies = []
    gathers = []
    for i in range(3):
        stride = planes[i].strides[0]
        idx, inv, pre = [], [], []
        for sprite in sprites:
            sp = sprite.planes[i]
            for c in sp.copies:
                src = sp.solid[c.r0 : c.r1, c.c0 : c.c1]
                copies.append((i, sp.y + c.r0, sp.y + c.r1, sp.x + c.c0, sp.x + c.c1, src))
            if sp.rows.size:
                idx.append(sp.flat_index(stride))
                inv.append(sp.inv_px)
                pre.append(sp.pre_px)
        if idx:
            gathers.append((np.concatenate(idx), np.concatenate(inv), np.concatenate(pre)))
        else:
            gathers.append((np.zeros(0, np.intp), np.zeros(0, np.uint16), np.zeros(0, np.uint16)))
    return BlendPlan(tuple(sprites), geometry(planes), tuple(copies), tuple(gathers))


def run_plan(
    plan: BlendPlan, planes: tuple[np.ndarray, ...], flats: tuple[np.ndarray, ...]
) -> None:
    for i, y0, y1, x0, x1, src in plan.copies:
        planes[i][y0:y1, x0:x1] = src
    for flat, (idx, inv, pre) in zip(flats, plan.gathers, strict=True):
        if idx.size:
            acc = flat[idx] * inv
            acc += pre
            acc >>= 8
            flat[idx] = acc
