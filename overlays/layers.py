"""Pillow drawings of each layer (RGBA, straight alpha). Called only when content changes.

Every function is pure: content + box size in, image out. Panels are opaque so that,
once converted, most of a layer is a plain copy per frame (only rounded corners and
anti-aliased edges are blended).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from decimal import Decimal
from functools import lru_cache
from pathlib import Path

import qrcode
from PIL import Image, ImageDraw, ImageOps

from overlays.text import fit_text, font, printable, text_width, wrap_lines

WHITE = (255, 255, 255, 255)
INK = (20, 20, 24, 255)
MUTED = (96, 98, 108, 255)
PANEL_DARK = (18, 18, 24, 255)
ACCENT = (255, 196, 0, 255)  # drop / highlight yellow
LIVE_RED = (226, 32, 48, 255)
GREEN = (22, 140, 72, 255)
ORANGE = (222, 104, 0, 255)
SOLD_RED = (200, 24, 36, 255)

LOW_STOCK = 5  # at or below: "Only N left"

CURRENCY_SYMBOLS = {
    "usd": "$",
    "cad": "CA$",
    "aud": "A$",
    "eur": "\u20ac",
    "gbp": "\u00a3",
    "jpy": "\u00a5",
    "inr": "\u20b9",
    "krw": "\u20a9",
    "chf": "CHF\u00a0",
}
ZERO_DECIMAL = {"jpy", "krw"}


@dataclass(frozen=True)
class ProductInfo:
    """What the card shows about a product (from the manifest and live stock)."""

    sku: str
    name: str
    price: Decimal
    available: int | None = None
    image: Path | None = None


@dataclass(frozen=True)
class DropInfo:
    sku: str
    name: str
    price: Decimal
    remaining: int
    ends_at_ms: int
    quantity: int = 0


def format_price(price: Decimal | str | float, currency: str) -> str:
    """'$18.00', '€18.00', '¥1800'; unknown currencies as '18.00 SEK'."""
    cur = currency.lower()
    value = Decimal(str(price))
    amount = f"{value:,.0f}" if cur in ZERO_DECIMAL else f"{value:,.2f}"
    symbol = CURRENCY_SYMBOLS.get(cur)
    return f"{symbol}{amount}" if symbol else f"{amount} {cur.upper()}"


def stock_line(available: int | None) -> tuple[str, tuple[int, int, int, int]] | None:
    if available is None:
        return None
    if available <= 0:
        return "Sold out", SOLD_RED
    if available <= LOW_STOCK:
        return f"Only {available} left", ORANGE
    return "In stock", GREEN


def countdown(ms_left: int) -> str:
    """'mm:ss', rounded up so the display reads 00:00 only when time is up."""
    secs = max(0, -(-ms_left // 1000))
    return f"{secs // 60:02d}:{secs % 60:02d}"


def _panel(w: int, h: int, fill, radius: int) -> Image.Image:
    img = Image.new("RGBA", (w, h), (0, 0, 0, 0))
    ImageDraw.Draw(img).rounded_rectangle((0, 0, w - 1, h - 1), radius=radius, fill=fill)
    return img


# --- product images --------------------------------------------------------------


@lru_cache(maxsize=64)
def _load_image(path: str, mtime: float) -> Image.Image | None:
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except (OSError, ValueError):
        return None


def placeholder_image(sku: str, name: str, w: int, h: int) -> Image.Image:
    """A tidy generated tile (colour from the sku, the product's initials) for products
    without a picture."""
    digest = hashlib.sha256(sku.encode()).digest()
    c1 = (60 + digest[0] % 140, 60 + digest[1] % 140, 60 + digest[2] % 140)
    c2 = tuple(max(0, v - 50) for v in c1)
    img = Image.new("RGB", (w, h), c1)
    draw = ImageDraw.Draw(img)
    for row in range(h):  # vertical gradient, a line per row: cheap at card sizes
        t = row / max(1, h - 1)
        draw.line(
            [(0, row), (w, row)],
            fill=tuple(int(a + (b - a) * t) for a, b in zip(c1, c2, strict=True)),
        )
    initials = "".join(word[0] for word in printable(name).split()[:2]).upper() or "?"
    size = int(min(w, h) * 0.42)
    draw.text((w / 2, h / 2), initials, font=font(size, True), fill=(255, 255, 255), anchor="mm")
    return img


def product_image(product: ProductInfo, w: int, h: int) -> Image.Image:
    if product.image is not None:
        path = Path(product.image)
        try:
            mtime = path.stat().st_mtime
        except OSError:
            mtime = -1.0
        img = _load_image(str(path), mtime) if mtime >= 0 else None
        if img is not None:
            return ImageOps.fit(img, (w, h), Image.Resampling.LANCZOS)
    return placeholder_image(product.sku, product.name, w, h)


def _sold_out_stamp(img: Image.Image, unit: float) -> Image.Image:
    """Dim the picture and put a tilted red SOLD OUT stamp across it."""
    w, h = img.size
    dimmed = Image.blend(img.convert("RGB"), Image.new("RGB", (w, h), (255, 255, 255)), 0.55)
    label = "SOLD OUT"
    size = max(10, int(min(w * 0.16, h * 0.22)))
    tw = text_width(label, size, True)
    pad = max(4, int(size * 0.35))
    stamp = Image.new("RGBA", (tw + 2 * pad, int(size * 1.5) + pad), (0, 0, 0, 0))
    d = ImageDraw.Draw(stamp)
    border = max(2, int(size * 0.12))
    d.rounded_rectangle(
        (0, 0, stamp.width - 1, stamp.height - 1),
        radius=int(size * 0.25),
        outline=SOLD_RED,
        width=border,
        fill=(255, 255, 255, 230),
    )
    d.text(
        (stamp.width / 2, stamp.height / 2),
        label,
        font=font(size, True),
        fill=SOLD_RED,
        anchor="mm",
    )
    stamp = stamp.rotate(12, resample=Image.Resampling.BICUBIC, expand=True)
    out = dimmed.convert("RGBA")
    out.alpha_composite(stamp, ((w - stamp.width) // 2, (h - stamp.height) // 2))
    return out


# --- layers ------------------------------------------------------------------------


def render_card(
    product: ProductInfo,
    w: int,
    h: int,
    currency: str,
    unit: float,
    regular_price: Decimal | None = None,
) -> Image.Image:
    """Featured product card: picture, name, price, live stock line, SOLD OUT stamp.
    With ``regular_price`` (a drop's own price is ``product.price``) the regular price
    follows, struck through, as on the viewer page."""
    u = lambda v: max(1, int(round(v * unit)))  # noqa: E731
    card = _panel(w, h, WHITE, u(16))
    pad = u(14)
    wide = w > h * 1.4  # vertical output: picture on the left, text on the right
    if wide:
        img_w = img_h = h - 2 * pad
        text_x, text_w = pad + img_w + u(16), w - img_w - 3 * pad - u(4)
        img_box = (pad, pad)
    else:
        img_w, img_h = w - 2 * pad, int((w - 2 * pad) * 0.62)
        text_x, text_w = pad, w - 2 * pad
        img_box = (pad, pad)
    picture = product_image(product, img_w, img_h)
    sold_out = product.available is not None and product.available <= 0
    if sold_out:
        picture = _sold_out_stamp(picture, unit)
    # rounded picture corners
    mask = Image.new("L", (img_w, img_h), 0)
    ImageDraw.Draw(mask).rounded_rectangle((0, 0, img_w - 1, img_h - 1), radius=u(10), fill=255)
    card.paste(picture.convert("RGB"), img_box, mask)

    draw = ImageDraw.Draw(card)
    name_size = u(24)
    lines = wrap_lines(product.name, text_w, name_size, 2, bold=True)
    price = fit_text(format_price(product.price, currency), text_w, u(34), bold=True)
    stock = stock_line(product.available)
    s = fit_text(stock[0], text_w - u(18), u(20), bold=True) if stock else None
    block = len(lines) * int(name_size * 1.15) + int(price.size * 1.25)
    block += int(s.size * 1.5) if s else 0
    # wide card: text block centred beside the picture; tall card: under the picture
    y = pad + max(0, (img_h - block) // 2) if wide else pad + img_h + u(10)
    for line in lines:
        y += int(name_size * 1.15)
        draw.text((text_x, y), line, font=font(name_size, True), fill=INK, anchor="ls")
    y += int(price.size * 1.25)
    draw.text((text_x, y), price.text, font=font(price.size, True), fill=INK, anchor="ls")
    if regular_price is not None and regular_price != product.price:
        gap = u(10)
        rx = text_x + text_width(price.text, price.size, True) + gap
        was = fit_text(format_price(regular_price, currency), text_w - (rx - text_x), u(24))
        if was.text and rx < text_x + text_w:
            draw.text((rx, y), was.text, font=font(was.size), fill=MUTED, anchor="ls")
            mid = y - int(was.size * 0.36)
            rw = text_width(was.text, was.size, False)
            draw.line((rx, mid, rx + rw, mid), fill=MUTED, width=max(2, u(3)))
    if stock is not None and s is not None:
        colour = stock[1]
        y += int(s.size * 1.5)
        dot = u(6)
        cy = y - s.size * 0.36
        draw.ellipse((text_x, cy - dot / 2, text_x + dot, cy + dot / 2), fill=colour)
        draw.text(
            (text_x + dot + u(8), y), s.text, font=font(s.size, True), fill=colour, anchor="ls"
        )
    return card


@lru_cache(maxsize=128)
def qr_matrix(url: str) -> tuple[tuple[bool, ...], ...]:
    """The QR modules for a URL (cached: a show features the same few products often)."""
    qr = qrcode.QRCode(border=0, error_correction=qrcode.constants.ERROR_CORRECT_M)
    qr.add_data(url)
    qr.make(fit=True)
    return tuple(tuple(row) for row in qr.get_matrix())


def render_qr(url: str, w: int, h: int, unit: float, label: str = "Scan to buy") -> Image.Image:
    """QR code of the buy URL on a white panel, with a short label under it."""
    panel = _panel(w, h, WHITE, max(1, int(round(12 * unit))))
    pad = max(4, int(round(10 * unit)))
    label_h = max(10, int(round(24 * unit)))
    matrix = qr_matrix(url)
    modules = len(matrix)
    side = min(w - 2 * pad, h - 2 * pad - label_h)
    scale = max(1, side // modules)  # whole pixels per module: crisp edges for scanners
    code = Image.new("L", (modules, modules), 255)
    code.putdata([0 if cell else 255 for row in matrix for cell in row])
    code = code.resize((modules * scale, modules * scale), Image.Resampling.NEAREST)
    ox = (w - code.width) // 2
    oy = pad + (side - code.height) // 2
    panel.paste(code.convert("RGBA"), (ox, oy))
    f = fit_text(label, w - 2 * pad, int(label_h * 0.7), bold=True)
    ImageDraw.Draw(panel).text(
        (w / 2, h - pad - label_h / 2),
        f.text,
        font=font(f.size, True),
        fill=INK,
        anchor="mm",
    )
    return panel


def render_drop(
    drop: DropInfo, ms_left: int, w: int, h: int, currency: str, unit: float
) -> Image.Image:
    """Drop banner: DROP tag, product, price, mm:ss countdown and how many are left."""
    u = lambda v: max(1, int(round(v * unit)))  # noqa: E731
    img = _panel(w, h, PANEL_DARK, u(14))
    draw = ImageDraw.Draw(img)
    pad = u(12)
    # yellow DROP tag on the left
    tag_w = u(84)
    draw.rounded_rectangle((pad, pad, pad + tag_w, h - pad - 1), radius=u(10), fill=ACCENT)
    draw.text((pad + tag_w / 2, h / 2), "DROP", font=font(u(24), True), fill=INK, anchor="mm")
    x = pad + tag_w + u(14)
    avail_w = w - x - pad
    clock = countdown(ms_left)
    clock_size = u(34)
    clock_w = text_width("00:00", clock_size, True)
    name = fit_text(drop.name, avail_w - clock_w - u(12), u(20), bold=True)
    top = pad + u(24)
    draw.text((x, top), name.text, font=font(name.size, True), fill=WHITE, anchor="ls")
    price = fit_text(
        format_price(drop.price, currency), avail_w - clock_w - u(12), u(30), bold=True
    )
    bottom = h - pad - u(6)
    draw.text((x, bottom), price.text, font=font(price.size, True), fill=ACCENT, anchor="ls")
    right = w - pad
    ending = ms_left <= 10_000
    draw.text(
        (right, top + u(8)),
        clock,
        font=font(clock_size, True),
        fill=LIVE_RED if ending else WHITE,
        anchor="rs",
    )
    left = "Sold out" if drop.remaining <= 0 else f"{drop.remaining} left"
    rem = fit_text(left, clock_w + u(20), u(18), bold=True)
    draw.text(
        (right, bottom),
        rem.text,
        font=font(rem.size, True),
        fill=SOLD_RED if drop.remaining <= 0 else (220, 220, 226, 255),
        anchor="rs",
    )
    return img


def render_title(title: str, subtitle: str, w: int, h: int, unit: float) -> Image.Image:
    """Lower third: show title, with an optional second line (where to shop)."""
    u = lambda v: max(1, int(round(v * unit)))  # noqa: E731
    img = _panel(w, h, PANEL_DARK, u(14))
    draw = ImageDraw.Draw(img)
    bar = u(8)
    draw.rectangle((u(16), u(16), u(16) + bar, h - u(16)), fill=ACCENT)
    x = u(16) + bar + u(16)
    tw = w - x - u(20)
    if subtitle:
        t = fit_text(title, tw, u(32), bold=True)
        draw.text((x, h * 0.5), t.text, font=font(t.size, True), fill=WHITE, anchor="ls")
        s = fit_text(subtitle, tw, u(20))
        draw.text(
            (x, h * 0.5 + u(28)), s.text, font=font(s.size), fill=(200, 200, 210, 255), anchor="ls"
        )
    else:
        t = fit_text(title, tw, u(34), bold=True)
        draw.text((x, h / 2), t.text, font=font(t.size, True), fill=WHITE, anchor="lm")
    return img


def render_badge(live: bool, viewers: int, w: int, h: int, unit: float) -> Image.Image:
    """LIVE (red) or OFFLINE (grey) pill and a viewer count pill; as wide as needed."""
    u = lambda v: max(1, int(round(v * unit)))  # noqa: E731
    size = int(h * 0.46)
    label = "LIVE" if live else "OFFLINE"
    dot = int(h * 0.24)
    pad = u(14)
    live_w = pad + dot + u(8) + text_width(label, size, True) + pad
    count = f"{viewers:,} watching" if viewers != 1 else "1 watching"
    count_w = pad + text_width(count, size, True) + pad
    total = min(w, live_w + u(8) + count_w)
    img = Image.new("RGBA", (total, h), (0, 0, 0, 0))
    draw = ImageDraw.Draw(img)
    r = h // 2
    draw.rounded_rectangle(
        (0, 0, live_w - 1, h - 1), radius=r, fill=LIVE_RED if live else (90, 90, 98, 255)
    )
    draw.ellipse((pad, (h - dot) / 2, pad + dot, (h + dot) / 2), fill=WHITE)
    draw.text((pad + dot + u(8), h / 2), label, font=font(size, True), fill=WHITE, anchor="lm")
    cx = live_w + u(8)
    if cx < total:
        draw.rounded_rectangle((cx, 0, total - 1, h - 1), radius=r, fill=(18, 18, 24, 255))
        c = fit_text(count, total - cx - 2 * pad, size, bold=True)
        draw.text((cx + pad, h / 2), c.text, font=font(c.size, True), fill=WHITE, anchor="lm")
    return img


def render_ticker(text: str, w: int, h: int, unit: float) -> Image.Image:
    """Host message line (one line: shrinks, then ellipsis)."""
    u = lambda v: max(1, int(round(v * unit)))  # noqa: E731
    img = _panel(w, h, (250, 250, 252, 255), u(10))
    draw = ImageDraw.Draw(img)
    tag = "HOST"
    tag_size = int(h * 0.42)
    tag_w = u(12) + text_width(tag, tag_size, True) + u(12)
    draw.rounded_rectangle((u(6), u(6), u(6) + tag_w, h - u(6) - 1), radius=u(8), fill=LIVE_RED)
    draw.text((u(6) + tag_w / 2, h / 2), tag, font=font(tag_size, True), fill=WHITE, anchor="mm")
    x = u(6) + tag_w + u(12)
    t = fit_text(text, w - x - u(12), int(h * 0.5))
    draw.text((x, h / 2), t.text, font=font(t.size), fill=INK, anchor="lm")
    return img


@dataclass(frozen=True)
class PinnedInfo:
    """A pinned chat message as the picture shows it."""

    name: str
    text: str
    role: str = "viewer"  # host and moderator names are drawn in the host's red


def render_pinned(pin: PinnedInfo, w: int, h: int, unit: float) -> Image.Image:
    """Pinned message: a PINNED tag, the author's name, up to two lines of the text."""
    u = lambda v: max(1, int(round(v * unit)))  # noqa: E731
    img = _panel(w, h, (250, 250, 252, 255), u(12))
    draw = ImageDraw.Draw(img)
    tag_size = u(16)
    tag_w = u(12) + text_width("PINNED", tag_size, True) + u(12)
    draw.rounded_rectangle((u(8), u(8), u(8) + tag_w, u(8) + u(26)), radius=u(8), fill=ACCENT)
    draw.text(
        (u(8) + tag_w / 2, u(8) + u(13)), "PINNED", font=font(tag_size, True), fill=INK, anchor="mm"
    )
    x = u(8) + tag_w + u(10)
    name = fit_text(pin.name, w - x - u(12), u(18), bold=True)
    colour = LIVE_RED if pin.role in ("host", "moderator") else MUTED
    draw.text((x, u(8) + u(20)), name.text, font=font(name.size, True), fill=colour, anchor="ls")
    size = u(19)
    lines = wrap_lines(pin.text, w - 2 * u(14), size, 2)
    y = u(8) + u(26) + u(2)
    for line in lines:
        y += int(size * 1.15)
        draw.text((u(14), y), line, font=font(size), fill=INK, anchor="ls")
    return img


@dataclass(frozen=True)
class AuctionInfo:
    """What the auction card shows (from the auction's live events)."""

    id: str
    name: str  # the product
    status: str  # running | settling | sold | unsold | cancelled
    start: Decimal
    current: Decimal | None
    leader: str | None
    ends_at_ms: int
    bids: int = 0
    winner: str | None = None
    sold_for: Decimal | None = None


def auction_text_box(w: int, h: int, unit: float) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) inside the auction card of the bid and leader lines: the part
    that changes with each bid (and not with the clock)."""
    u = lambda v: max(1, int(round(v * unit)))  # noqa: E731
    pad = u(12)
    return pad, u(44), w - pad - text_width("00:00", u(34), True) - u(10), h - pad


def render_auction(
    info: AuctionInfo, ms_left: int, w: int, h: int, currency: str, unit: float
) -> Image.Image:
    """Auction card: AUCTION tag, product, the current bid and its leader, mm:ss; once
    over, "SOLD to Ana — $42" (or no sale)."""
    u = lambda v: max(1, int(round(v * unit)))  # noqa: E731
    img = _panel(w, h, PANEL_DARK, u(14))
    draw = ImageDraw.Draw(img)
    pad = u(12)
    tag = "AUCTION"
    tag_size = u(18)
    tag_w = u(10) + text_width(tag, tag_size, True) + u(10)
    draw.rounded_rectangle((pad, pad, pad + tag_w, pad + u(26)), radius=u(8), fill=ACCENT)
    draw.text((pad + tag_w / 2, pad + u(13)), tag, font=font(tag_size, True), fill=INK, anchor="mm")
    nx = pad + tag_w + u(10)
    clock_size = u(34)
    clock_w = text_width("00:00", clock_size, True)
    running = info.status in ("running", "settling")
    name = fit_text(info.name, w - nx - pad - (clock_w + u(10) if running else 0), u(18), bold=True)
    draw.text(
        (nx, pad + u(20)),
        name.text,
        font=font(name.size, True),
        fill=(220, 220, 226, 255),
        anchor="ls",
    )
    x0, _y0, x1, _y1 = auction_text_box(w, h, unit)
    text_w = (x1 if running else w - pad) - x0
    if running:
        clock = countdown(ms_left)
        draw.text(
            (w - pad, h - pad - u(8)),
            clock,
            font=font(clock_size, True),
            fill=LIVE_RED if ms_left <= 10_000 else WHITE,
            anchor="rs",
        )
        if info.current is None:
            big = f"Starting bid {format_price(info.start, currency)}"
            small = "No bids yet"
        else:
            big = format_price(info.current, currency)
            small = (
                f"{info.leader or ''} leads \u00b7 {info.bids} bid{'s' if info.bids != 1 else ''}"
            )
        colour = ACCENT
    elif info.status == "sold":
        amount = format_price(
            info.sold_for if info.sold_for is not None else info.current or 0, currency
        )
        big = f"SOLD to {info.winner or info.leader or ''} \u2014 {amount}"
        small = f"{info.bids} bid{'s' if info.bids != 1 else ''}"
        colour = GREEN
    else:
        big = "No sale"
        small = "Auction ended" if info.status == "unsold" else "Auction cancelled"
        colour = WHITE
    b = fit_text(big, text_w, u(36), bold=True)
    draw.text((x0, u(44) + u(38)), b.text, font=font(b.size, True), fill=colour, anchor="ls")
    s = fit_text(small, text_w, u(20), bold=True)
    draw.text((x0, h - pad - u(6)), s.text, font=font(s.size, True), fill=WHITE, anchor="ls")
    return img
