"""A machine-readable wall-clock time code drawn into a video frame's pixels.

The publisher stamps the capture time (epoch ms) into each frame; a viewer reads
it back from the decoded, composed picture, so ``now - code`` is glass-to-glass
latency on one clock.

Layout: a 10x10 grid of cells in the top-left corner (the LIVE badge sits
top-right and the lower third at the bottom, so overlays never cover it). The
outer ring is a black/white checker: it proves a code is present and gives the
reader its own black and white levels (an adaptive threshold that survives
compression, scaling and range conversion). The inner 8x8 cells carry 64 bits:
48 bits of time (ms) then a CRC-16 over them, row-major, MSB first; white = 1.

Positions are fractions of the frame's width and height, so the code survives
any rescale of the whole frame (including a change of aspect ratio). Cells are
1/80 of the width by 1/45 of the height: 8 px at 640x360, 16 px at 1280x720,
which is large enough for H.264 at 1.5 Mbps to keep every edge readable.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import av

GRID = 10  # cells per side, including the guard ring
DATA_BITS = 48
CRC_BITS = 16
CELLS_PER_WIDTH = 80
CELLS_PER_HEIGHT = 45
ORIGIN_CELLS = 1.0  # margin from the top-left corner, in cells
BLACK, WHITE = 16, 235  # video-range luma
MIN_CONTRAST = 40  # guard white minus guard black, in luma steps
MIN_SIZE = 3  # pixels per cell below which the code cannot be read reliably

_YUV_FORMATS = ("yuv420p", "yuvj420p", "nv12", "nv21", "yuv422p", "yuv444p", "gray")


def crc16(data: bytes) -> int:
    """CRC-16/CCITT-FALSE (poly 0x1021, init 0xFFFF)."""
    crc = 0xFFFF
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else (crc << 1)
            crc &= 0xFFFF
    return crc


def encode_bits(t_ms: int) -> list[int]:
    """The 64 payload bits (time then CRC) for ``t_ms`` (kept modulo 2**48)."""
    value = int(t_ms) & ((1 << DATA_BITS) - 1)
    word = (value << CRC_BITS) | crc16(value.to_bytes(DATA_BITS // 8, "big"))
    total = DATA_BITS + CRC_BITS
    return [(word >> (total - 1 - i)) & 1 for i in range(total)]


def decode_bits(bits: list[int]) -> int | None:
    """The time from 64 payload bits, or None when the CRC does not match."""
    word = int("".join("1" if bit else "0" for bit in bits), 2)
    value, crc = word >> CRC_BITS, word & ((1 << CRC_BITS) - 1)
    if crc16(value.to_bytes(DATA_BITS // 8, "big")) != crc:
        return None
    return value


def _guard_cells() -> list[tuple[int, int, int]]:
    """(row, col, colour bit) of the outer ring: a checker, top-left cell white."""
    ring = []
    for r in range(GRID):
        for c in range(GRID):
            if r in (0, GRID - 1) or c in (0, GRID - 1):
                ring.append((r, c, 1 if (r + c) % 2 == 0 else 0))
    return ring


_GUARD = _guard_cells()
_DATA = [(1 + i // 8, 1 + i % 8) for i in range(DATA_BITS + CRC_BITS)]
# Flat (row * GRID + col) indices for the vectorised reader.
_GUARD_WHITE = np.array([r * GRID + c for r, c, b in _GUARD if b])
_GUARD_BLACK = np.array([r * GRID + c for r, c, b in _GUARD if not b])
_DATA_FLAT = np.array([r * GRID + c for r, c in _DATA])


def _edges(n_pixels: int, cells_across: int) -> np.ndarray:
    """Pixel boundaries of the grid's cells along one axis (GRID + 1 of them)."""
    cell = n_pixels / cells_across
    return (ORIGIN_CELLS + np.arange(GRID + 1)) * cell


def _fits(height: int, width: int) -> bool:
    return width / CELLS_PER_WIDTH >= MIN_SIZE and height / CELLS_PER_HEIGHT >= MIN_SIZE


def stamp_y(y: np.ndarray, t_ms: int) -> None:
    """Draw the code for ``t_ms`` into a luma plane (h, w) uint8, in place."""
    h, w = y.shape
    if not _fits(h, w):
        raise ValueError(f"frame {w}x{h} is too small for a time code")
    ys = np.round(_edges(h, CELLS_PER_HEIGHT)).astype(int)
    xs = np.round(_edges(w, CELLS_PER_WIDTH)).astype(int)
    cells = [(r, c, b) for r, c, b in _GUARD]
    cells += [(r, c, b) for (r, c), b in zip(_DATA, encode_bits(t_ms), strict=True)]
    for r, c, bit in cells:
        y[ys[r] : ys[r + 1], xs[c] : xs[c + 1]] = WHITE if bit else BLACK


@functools.lru_cache(maxsize=32)
def _sample_index(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Row and column indices of the central half of every cell, for one frame size."""

    def axis(n_pixels: int, cells_across: int) -> np.ndarray:
        edges = _edges(n_pixels, cells_across)
        cell = n_pixels / cells_across
        size = max(1, round(cell / 2))
        starts = np.floor(edges[:-1] + (cell - size) / 2).astype(int)
        return np.clip(starts[:, None] + np.arange(size)[None, :], 0, n_pixels - 1)

    return axis(height, CELLS_PER_HEIGHT), axis(width, CELLS_PER_WIDTH)


def _cell_means(y: np.ndarray) -> np.ndarray:
    """Mean luma of the central half of every grid cell, shape (GRID, GRID)."""
    rows, cols = _sample_index(*y.shape)
    block = y[rows[:, :, None, None], cols[None, None, :, :]]  # (GRID, sy, GRID, sx)
    return block.mean(axis=(1, 3), dtype=np.float32)


def read_y(y: np.ndarray) -> int | None:
    """The time code in a luma plane (h, w), or None when absent or damaged."""
    h, w = y.shape
    if not _fits(h, w):
        return None
    means = _cell_means(y).ravel()
    whites, blacks = means[_GUARD_WHITE], means[_GUARD_BLACK]
    # Every guard white must be clearly brighter than every guard black.
    if whites.min() - blacks.max() < MIN_CONTRAST:
        return None
    threshold = (float(np.median(whites)) + float(np.median(blacks))) / 2
    return decode_bits((means[_DATA_FLAT] > threshold).tolist())


def _luma_view(frame: av.VideoFrame) -> np.ndarray:
    """A writable (h, w) view of the frame's own luma plane (no copy)."""
    if frame.format.name not in _YUV_FORMATS:
        raise ValueError(f"cannot stamp a {frame.format.name} frame; use a YUV format")
    plane = frame.planes[0]
    rows = np.frombuffer(plane, dtype=np.uint8).reshape(-1, plane.line_size)
    return rows[: frame.height, : frame.width]


def stamp(frame: av.VideoFrame, t_ms: int) -> None:
    """Stamp ``t_ms`` (epoch ms) into a YUV frame's luma plane, in place."""
    stamp_y(_luma_view(frame), t_ms)


def read(frame: av.VideoFrame) -> int | None:
    """The time code in a decoded frame (any pixel format), or None."""
    if frame.format.name in _YUV_FORMATS:
        return read_y(_luma_view(frame))
    return read_y(frame.to_ndarray(format="gray"))


def rgb_to_luma(pixels: np.ndarray) -> np.ndarray:
    """BT.601 luma of an (h, w, 3|4) RGB(A) array (alpha ignored)."""
    rgb = pixels[..., :3].astype(np.float32)
    return rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114


def read_rgb(pixels: bytes | bytearray | np.ndarray, width: int, height: int) -> int | None:
    """The time code in RGBA (canvas ``getImageData``) or RGB pixels, or None."""
    arr = np.asarray(pixels, dtype=np.uint8) if isinstance(pixels, np.ndarray) else None
    if arr is None:
        arr = np.frombuffer(bytes(pixels), dtype=np.uint8)
    if arr.size == width * height * 4:
        arr = arr.reshape(height, width, 4)
    elif arr.size == width * height * 3:
        arr = arr.reshape(height, width, 3)
    else:
        raise ValueError(f"{arr.size} bytes is not {width}x{height} RGB or RGBA")
    return read_y(rgb_to_luma(arr))
