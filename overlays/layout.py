"""Where each layer goes, for landscape (16:9) and vertical (9:16) output.

Everything stays inside the title-safe area (5 % of the width and of the height on each
side, EBU R 95 "graphics safe"). Sizes scale with the frame: ``unit`` is one pixel of a
720-line (or 720-column, vertical) picture.
"""

from __future__ import annotations

from dataclasses import dataclass

SAFE_FRACTION = 0.05


@dataclass(frozen=True)
class Box:
    x: int
    y: int
    w: int
    h: int

    @property
    def right(self) -> int:
        return self.x + self.w

    @property
    def bottom(self) -> int:
        return self.y + self.h

    def contains(self, other: Box) -> bool:
        return (
            self.x <= other.x
            and self.y <= other.y
            and other.right <= self.right
            and other.bottom <= self.bottom
        )

    def overlaps(self, other: Box) -> bool:
        return not (
            other.x >= self.right
            or other.right <= self.x
            or other.y >= self.bottom
            or other.bottom <= self.y
        )


@dataclass(frozen=True)
class Layout:
    width: int
    height: int
    vertical: bool
    unit: float
    safe: Box
    badge: Box
    drop: Box
    card: Box
    qr: Box
    title: Box
    ticker: Box
    pinned: Box  # the pinned chat message: clear of the card, QR and drop banner
    auction: Box  # the auction card: under the drop banner, clear of the product card

    def px(self, value: float) -> int:
        """A length given for a 720-line picture, scaled to this frame."""
        return max(1, int(round(value * self.unit)))


def _even(v: float) -> int:
    """Layers start on even pixels so their chroma lines up without padding."""
    return int(v) & ~1


def make_layout(width: int, height: int) -> Layout:
    vertical = height > width
    unit = (width if vertical else height) / 720.0
    mx, my = _even(round(width * SAFE_FRACTION)), _even(round(height * SAFE_FRACTION))
    safe = Box(mx, my, width - 2 * mx, height - 2 * my)

    def u(v: float) -> int:
        return max(2, _even(round(v * unit)))

    badge = Box(mx, my, min(u(340), safe.w), u(44))
    qr_w, qr_h = u(150), u(176)
    if not vertical:
        card_w = min(u(300), safe.w // 3)
        card = Box(_even(safe.right - card_w), my, card_w, u(344))
        qr = Box(_even(safe.right - qr_w), card.bottom + u(12), qr_w, qr_h)
        title_h = u(88)
        title = Box(mx, _even(safe.bottom - title_h), min(u(720), _even(safe.w * 0.6)), title_h)
        ticker = Box(mx, title.y - u(10) - u(40), title.w, u(40))
        drop = Box(mx, badge.bottom + u(12), min(u(400), _even(safe.w * 0.4)), u(96))
        pinned_h = u(92)
        pinned = Box(mx, _even(ticker.y - u(12) - pinned_h), title.w, pinned_h)
        auction = Box(
            mx, drop.bottom + u(12), drop.w, min(u(132), pinned.y - u(12) - drop.bottom - u(12))
        )
    else:
        qr = Box(_even(safe.right - qr_w), my, qr_w, qr_h)
        drop_w = _even(qr.x - u(12) - mx)
        drop = Box(mx, badge.bottom + u(12), drop_w, u(96))
        title_h = u(96)
        title = Box(mx, _even(safe.bottom - title_h), safe.w, title_h)
        ticker = Box(mx, title.y - u(10) - u(40), safe.w, u(40))
        card_h = u(184)
        card = Box(mx, ticker.y - u(14) - card_h, safe.w, card_h)
        pinned_h = u(92)
        pinned = Box(mx, _even(card.y - u(14) - pinned_h), safe.w, pinned_h)
        auction = Box(mx, drop.bottom + u(12), drop.w, u(132))
    return Layout(
        width, height, vertical, unit, safe, badge, drop, card, qr, title, ticker, pinned, auction
    )
