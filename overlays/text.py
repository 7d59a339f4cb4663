"""Fonts and text that fits its box (shrink first, then ellipsis)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from PIL import ImageDraw, ImageFont

FONT_DIR = Path(__file__).resolve().parent / "fonts"
REGULAR = FONT_DIR / "DejaVuSans.ttf"
BOLD = FONT_DIR / "DejaVuSans-Bold.ttf"
ELLIPSIS = "\u2026"


@lru_cache(maxsize=256)
def font(size: int, bold: bool = False) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(str(BOLD if bold else REGULAR), max(6, int(size)))


@lru_cache(maxsize=8)
def _cmap(bold: bool) -> frozenset[int]:
    """Code points the bundled font has glyphs for (to avoid drawing tofu boxes)."""
    path = BOLD if bold else REGULAR
    return frozenset(_read_cmap(path.read_bytes()))


def _read_cmap(data: bytes) -> set[int]:
    """Parse a TrueType 'cmap' (format 4 and 12 subtables) into a set of code points."""
    import struct

    num_tables = struct.unpack_from(">H", data, 4)[0]
    cmap_off = None
    for i in range(num_tables):
        tag, _sum, off, _len = struct.unpack_from(">4sIII", data, 12 + 16 * i)
        if tag == b"cmap":
            cmap_off = off
    points: set[int] = set()
    if cmap_off is None:
        return points
    n = struct.unpack_from(">H", data, cmap_off + 2)[0]
    for i in range(n):
        _pid, _eid, sub = struct.unpack_from(">HHI", data, cmap_off + 4 + 8 * i)
        base = cmap_off + sub
        fmt = struct.unpack_from(">H", data, base)[0]
        if fmt == 4:
            segx2 = struct.unpack_from(">H", data, base + 6)[0]
            ends = struct.unpack_from(f">{segx2 // 2}H", data, base + 14)
            starts = struct.unpack_from(f">{segx2 // 2}H", data, base + 16 + segx2)
            for s, e in zip(starts, ends, strict=True):
                if s != 0xFFFF:
                    points.update(range(s, e + 1))
        elif fmt == 12:
            groups = struct.unpack_from(">I", data, base + 12)[0]
            for g in range(groups):
                s, e, _gid = struct.unpack_from(">III", data, base + 16 + 12 * g)
                points.update(range(s, e + 1))
    return points


def covered(text: str, bold: bool = False) -> bool:
    """True if the bundled font has a glyph for every character of text."""
    cmap = _cmap(bold)
    return all(ord(ch) in cmap or ch.isspace() for ch in text)


def printable(text: str, bold: bool = False) -> str:
    """Replace characters the font cannot draw with '?' rather than drawing tofu."""
    cmap = _cmap(bold)
    return "".join(ch if ord(ch) in cmap or ch.isspace() else "?" for ch in text)


def text_width(text: str, size: int, bold: bool = False) -> int:
    return int(round(font(size, bold).getlength(text)))


@dataclass(frozen=True)
class FittedText:
    text: str
    size: int
    bold: bool
    width: int


def fit_text(
    text: str,
    max_width: int,
    size: int,
    *,
    bold: bool = False,
    min_size: int | None = None,
) -> FittedText:
    """Largest size (down to min_size, default 70 % of size) at which text fits
    max_width; if it still doesn't fit, cut it and end with an ellipsis."""
    text = printable(" ".join(text.split()), bold)
    min_size = max(6, min_size if min_size is not None else int(size * 0.7))
    s = size
    while s > min_size and text_width(text, s, bold) > max_width:
        s -= max(1, s // 12)
    s = max(s, min_size)
    if text_width(text, s, bold) <= max_width:
        return FittedText(text, s, bold, text_width(text, s, bold))
    # binary search the longest prefix that fits with an ellipsis
    lo, hi = 0, len(text)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if text_width(text[:mid].rstrip() + ELLIPSIS, s, bold) <= max_width:
            lo = mid
        else:
            hi = mid - 1
    cut = text[:lo].rstrip() + ELLIPSIS if lo > 0 else ELLIPSIS
    return FittedText(cut, s, bold, text_width(cut, s, bold))


def draw_text(
    draw: ImageDraw.ImageDraw,
    xy: tuple[float, float],
    fitted: FittedText,
    fill,
    anchor: str = "ls",
) -> None:
    draw.text(xy, fitted.text, font=font(fitted.size, fitted.bold), fill=fill, anchor=anchor)


def wrap_lines(
    text: str, max_width: int, size: int, max_lines: int, *, bold: bool = False
) -> list[str]:
    """Greedy word wrap into at most max_lines; the last line ends with an ellipsis if cut."""
    words = printable(" ".join(text.split()), bold).split(" ")
    lines: list[str] = []
    current = ""
    i = 0
    while i < len(words) and len(lines) < max_lines:
        trial = f"{current} {words[i]}".strip()
        if text_width(trial, size, bold) <= max_width or not current:
            current = trial
            i += 1
        else:
            lines.append(current)
            current = ""
    if current and len(lines) < max_lines:
        lines.append(current)
    if i < len(words) or any(text_width(line, size, bold) > max_width for line in lines):
        last = " ".join([lines[-1], *words[i:]]) if lines else " ".join(words)
        lines[-1:] = [fit_text(last + " ", max_width, size, bold=bold, min_size=size).text]
        # a long single word on an earlier line: cut it too
        lines = [
            line
            if text_width(line, size, bold) <= max_width
            else fit_text(line, max_width, size, bold=bold, min_size=size).text
            for line in lines
        ]
    return lines
