"""A machine-readable wall-clock time code drawn into a video frame's pixels.

The publisher stamps the capture time (epoch ms) into each frame; a viewer reads
it back from the decoded, composed picture, so ``now - code`` is glass-to-glass
latency on one clock.

Layout: one row of cells in the top margin, between 1 % and 4 % of the height and
5 % to 95 % of the width. Overlays keep to the title-safe area (5 % margins, see
``overlays/layout.py``), so nothing is ever drawn over the code. The row is

    W B W B | 48 bits of time (ms) | CRC-16 of them | B W B W

(white = 1, MSB first). The guard cells at both ends prove a code is present and give
the reader its own black and white levels: an adaptive threshold that survives
compression, scaling and range or colour conversion. Positions are fractions of the
frame's width and height, so the code survives any rescale of the whole frame.
Cells are 1.25 % of the width by 3 % of the height: 8x11 px at 640x360, 16x22 px at
1280x720; H.264 at 1.5 Mbps keeps every one readable (see tests/test_timecode.py).
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import av

DATA_BITS = 48
CRC_BITS = 16
START_GUARD = (1, 0, 1, 0)
END_GUARD = (0, 1, 0, 1)
CELLS = len(START_GUARD) + DATA_BITS + CRC_BITS + len(END_GUARD)
X0, X1 = 0.05, 0.95  # strip extent, fractions of the width
Y0, Y1 = 0.01, 0.04  # and of the height: inside the 5 % top margin
BLACK, WHITE = 16, 235  # video-range luma
MIN_CONTRAST = 40  # guard white minus guard black, in luma steps
MIN_CELL_PX = 3  # below this a cell cannot be read reliably

_LUMA_FIRST = ("yuv420p", "yuvj420p", "nv12", "nv21", "yuv422p", "yuv444p", "gray")
_GUARD_WHITE = np.array(
    [i for i, b in enumerate(START_GUARD) if b]
    + [CELLS - len(END_GUARD) + i for i, b in enumerate(END_GUARD) if b]
)
_GUARD_BLACK = np.array(
    [i for i, b in enumerate(START_GUARD) if not b]
    + [CELLS - len(END_GUARD) + i for i, b in enumerate(END_GUARD) if not b]
)
_PAYLOAD = np.arange(len(START_GUARD), len(START_GUARD) + DATA_BITS + CRC_BITS)


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


def strip_cells(t_ms: int) -> list[int]:
    """Every cell of the row, left to right (guards included)."""
    return [*START_GUARD, *encode_bits(t_ms), *END_GUARD]


@functools.lru_cache(maxsize=32)
def geometry(height: int, width: int) -> tuple[int, int, np.ndarray]:
    """Pixel rows (y0, y1) of the strip and the CELLS + 1 column edges, for one size."""
    xs = np.round(np.linspace(X0 * width, X1 * width, CELLS + 1)).astype(int)
    return int(round(Y0 * height)), int(round(Y1 * height)), xs


def fits(height: int, width: int) -> bool:
    return (X1 - X0) * width / CELLS >= MIN_CELL_PX and (Y1 - Y0) * height >= MIN_CELL_PX


def stamp_y(y: np.ndarray, t_ms: int) -> None:
    """Draw the code for ``t_ms`` into a luma plane (h, w) uint8, in place."""
    h, w = y.shape
    if not fits(h, w):
        raise ValueError(f"frame {w}x{h} is too small for a time code")
    y0, y1, xs = geometry(h, w)
    row = np.where(np.array(strip_cells(t_ms), dtype=bool), WHITE, BLACK).astype(np.uint8)
    # Each cell's value repeated over its columns, then over the strip's rows.
    y[y0:y1, xs[0] : xs[-1]] = np.repeat(row, np.diff(xs))[None, :]


@functools.lru_cache(maxsize=32)
def _sample_index(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows and per-cell columns of the central half of every cell, for one size."""
    y0, y1, xs = geometry(height, width)
    span = y1 - y0
    rows = np.arange(y0 + span // 4, max(y1 - span // 4, y0 + span // 4 + 1))
    cell = (xs[-1] - xs[0]) / CELLS
    size = max(1, round(cell / 2))
    starts = np.floor(xs[:-1] + (cell - size) / 2).astype(int)
    cols = np.clip(starts[:, None] + np.arange(size)[None, :], 0, width - 1)
    return rows, cols


def cell_means(y: np.ndarray) -> np.ndarray:
    """Mean luma of the central half of every cell, shape (CELLS,)."""
    rows, cols = _sample_index(*y.shape)
    block = y[rows[:, None, None], cols[None, :, :]]  # (rows, CELLS, size)
    return block.mean(axis=(0, 2), dtype=np.float32)


def read_y(y: np.ndarray) -> int | None:
    """The time code in a luma plane (h, w), or None when absent or damaged."""
    h, w = y.shape
    if not fits(h, w):
        return None
    means = cell_means(y)
    whites, blacks = means[_GUARD_WHITE], means[_GUARD_BLACK]
    # Every guard white must be clearly brighter than every guard black.
    if whites.min() - blacks.max() < MIN_CONTRAST:
        return None
    threshold = (float(whites.mean()) + float(blacks.mean())) / 2
    return decode_bits((means[_PAYLOAD] > threshold).tolist())


def _plane_view(frame: av.VideoFrame, index: int, height: int, width: int) -> np.ndarray:
    plane = frame.planes[index]
    rows = np.frombuffer(plane, dtype=np.uint8).reshape(-1, plane.line_size)
    return rows[:height, :width]


def stamp(frame: av.VideoFrame, t_ms: int) -> None:
    """Stamp ``t_ms`` (epoch ms) into a YUV frame, in place.

    The strip's chroma is set to neutral too, so the code stays black and white
    (no clipping when a browser converts it to RGB).
    """
    name = frame.format.name
    if name not in _LUMA_FIRST:
        raise ValueError(f"cannot stamp a {name} frame; use a YUV format")
    h, w = frame.height, frame.width
    stamp_y(_plane_view(frame, 0, h, w), t_ms)
    y0, y1, xs = geometry(h, w)
    if name in ("yuv420p", "yuvj420p"):
        for index in (1, 2):
            uv = _plane_view(frame, index, (h + 1) // 2, (w + 1) // 2)
            uv[y0 // 2 : (y1 + 1) // 2, xs[0] // 2 : (xs[-1] + 1) // 2] = 128
    elif name in ("nv12", "nv21"):
        uv = _plane_view(frame, 1, (h + 1) // 2, 2 * ((w + 1) // 2))
        uv[y0 // 2 : (y1 + 1) // 2, (xs[0] // 2) * 2 : ((xs[-1] + 1) // 2) * 2] = 128


def read(frame: av.VideoFrame) -> int | None:
    """The time code in a decoded frame (any pixel format), or None."""
    if frame.format.name in _LUMA_FIRST:
        return read_y(_plane_view(frame, 0, frame.height, frame.width))
    return read_y(frame.to_ndarray(format="gray"))


def rgb_to_luma(pixels: np.ndarray) -> np.ndarray:
    """BT.601 luma of an (h, w, 3|4) RGB(A) array (alpha ignored)."""
    rgb = pixels[..., :3].astype(np.float32)
    return rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114


def read_rgb(pixels: bytes | bytearray | np.ndarray, width: int, height: int) -> int | None:
    """The time code in RGBA (canvas ``getImageData``) or RGB pixels, or None."""
    if isinstance(pixels, np.ndarray):
        arr = np.asarray(pixels, dtype=np.uint8)
    else:
        arr = np.frombuffer(bytes(pixels), dtype=np.uint8)
    if arr.size == width * height * 4:
        arr = arr.reshape(height, width, 4)
    elif arr.size == width * height * 3:
        arr = arr.reshape(height, width, 3)
    else:
        raise ValueError(f"{arr.size} bytes is not {width}x{height} RGB or RGBA")
    return read_y(rgb_to_luma(arr))
