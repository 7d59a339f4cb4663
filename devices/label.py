"""The order label: a pure layout, then ESC/POS bytes (python-escpos) or a PNG preview.

``build_label`` turns an order into a ``Label`` (lines of text with a style, a QR payload
and a cut) without touching any device, so the same layout is printed, previewed on the
staff page and written next to the demo's virtual printer output.

Text that the printer's code pages cannot show (e.g. Greek or Cyrillic on a profile
without those pages) is printed as a raster image of that line instead of as "?".
"""

from __future__ import annotations

import codecs
import functools
import io
import os
import textwrap
from dataclasses import dataclass, field
from datetime import datetime, tzinfo
from pathlib import Path
from typing import Literal

import qrcode
from escpos.printer import Dummy
from PIL import Image, ImageDraw, ImageFont

from checkout.orders import Order, OrderItem, cents_str
from checkout.text import clean

Style = Literal["number", "title", "big", "bold", "normal", "small", "rule"]

# Font A is 12 dots wide: 48 columns fill 576 dots (80 mm at 203 dpi), 32 fill 384 (58 mm).
COLUMNS = {80: 48, 58: 32}
DOT_WIDTH = 12
# How many columns a character of each style takes, and how many lines tall it is.
SCALE: dict[str, tuple[int, int]] = {
    "number": (4, 4),
    "title": (1, 2),
    "big": (2, 2),
    "bold": (1, 1),
    "normal": (1, 1),
    "small": (1, 1),
    "rule": (1, 1),
}
PRICE_COLS = 10


@dataclass(frozen=True)
class Line:
    text: str
    style: Style = "normal"
    align: Literal["left", "center", "right"] = "left"

    def __post_init__(self) -> None:
        # Every printed line passes here: a control character in a stored name (an order
        # taken before the API rejected them) must not reach the printer as a command.
        object.__setattr__(self, "text", clean(self.text))


@dataclass(frozen=True)
class Label:
    """Everything printed on one label, top to bottom; the QR and the cut come last."""

    paper_mm: int
    columns: int
    lines: tuple[Line, ...]
    qr: str
    footer: tuple[Line, ...] = field(default_factory=tuple)

    @property
    def dots(self) -> int:
        return self.columns * DOT_WIDTH


def columns_for(paper_mm: int, profile_columns: int | None = None) -> int:
    """Columns of font A on this paper (a profile may have fewer, e.g. 42 on a TM-T88V)."""
    cols = COLUMNS.get(paper_mm, 48)
    return min(cols, profile_columns) if profile_columns else cols


@functools.lru_cache(maxsize=32)
def profile_columns(profile: str) -> int | None:
    """Font A columns the python-escpos profile declares (None when unknown)."""
    try:
        return int(Dummy(profile=profile).profile.get_columns("a"))
    except Exception:
        return None


def staff_url(base_url: str, order_id: str) -> str:
    return f"{base_url.rstrip('/')}/staff/orders/{order_id}"


def _wrap(text: str, width: int) -> list[str]:
    width = max(width, 4)
    return textwrap.wrap(text, width, break_long_words=True, break_on_hyphens=True) or [""]


def _item_lines(item: OrderItem, columns: int) -> list[Line]:
    """`2 x Stoneware mug      36.00` then the SKU; long names wrap under the name."""
    head = f"{item.quantity} x "
    name_cols = columns - len(head) - PRICE_COLS
    wrapped = _wrap(item.name, name_cols)
    price = cents_str(item.total_cents).rjust(PRICE_COLS)
    out = [Line((head + wrapped[0]).ljust(columns - PRICE_COLS) + price, "bold")]
    indent = " " * len(head)
    out += [Line(indent + rest) for rest in wrapped[1:]]
    out.append(Line(indent + f"SKU {item.sku}", "small"))
    return out


def build_label(
    order: Order,
    *,
    show_title: str,
    pickup_note: str,
    base_url: str,
    paper_mm: int = 80,
    profile_columns: int | None = None,
    items: list[OrderItem] | None = None,
    part: tuple[int, int] = (1, 1),
    reprint: bool = False,
    tz: tzinfo | None = None,
) -> Label:
    """The label for ``order`` (or, for a split order, the ``items`` of one printer)."""
    cols = columns_for(paper_mm, profile_columns)
    rule = Line("-" * cols, "rule")
    items = order.items if items is None else items
    when = datetime.fromtimestamp(order.paid_at or order.created_at, tz or None)
    if tz is None:
        when = when.astimezone()
    lines: list[Line] = [Line(f"#{order.number}", "number", "center")]
    if order.sandbox:
        lines.append(Line("TEST - sandbox payment, not paid", "bold", "center"))
    if reprint:
        lines.append(Line("REPRINT", "bold", "center"))
    if order.status == "refunded":
        lines.append(Line("REFUNDED - do not hand over", "bold", "center"))
    if order.channel == "in_person":
        paid_by = {"cash": "cash", "card_present": "card"}.get(order.payment_method, "")
        lines.append(Line(f"IN PERSON - paid {paid_by}".strip(), "bold", "center"))
    lines += [Line(t, "title", "center") for t in _wrap(show_title, cols)]
    lines.append(Line(when.strftime("%d %b %Y %H:%M"), "normal", "center"))
    lines.append(rule)
    buyer = order.buyer_name.strip() or "(no name)"
    lines += [Line(t, "big") for t in _wrap(buyer, cols // 2)]
    lines.append(rule)
    for item in items:
        lines += _item_lines(item, cols)
    lines.append(rule)
    total = f"{order.currency.upper()} {cents_str(order.amount_cents)}"
    lines.append(Line("TOTAL".ljust(cols - len(total)) + total, "bold"))
    if part[1] > 1:
        note = f"Part {part[0]} of {part[1]}: other items print elsewhere"
        lines += [Line(t, "small") for t in _wrap(note, cols)]
    lines.append(rule)
    lines += [Line(t, "normal", "center") for t in _wrap(pickup_note, cols)]
    footer = tuple(Line(t, "small", "center") for t in _wrap(f"Order {order.order_id}", cols))
    qr = clean(staff_url(base_url, order.order_id))
    return Label(paper_mm, cols, tuple(lines), qr, footer)


# --- ESC/POS ------------------------------------------------------------------------

# Single-byte code pages a printer profile may offer that cover Western, Central
# European, Cyrillic and Greek text; multi-byte pages (CP932...) are not used for text.
_SINGLE_BYTE_OK = (
    "cp437",
    "cp850",
    "cp852",
    "cp858",
    "cp866",
    "cp1252",
    "cp737",
    "cp1253",
    "cp1250",
    "cp1251",
    "cp1254",
    "cp1257",
    "cp857",
    "cp855",
    "cp869",
    "cp860",
    "cp863",
    "cp865",
    "cp861",
    "cp862",
)


@functools.lru_cache(maxsize=32)
def _profile_codecs(profile: str) -> tuple[str, ...]:
    pages = Dummy(profile=profile).profile.profile_data.get("codePages", {}).values()
    found = []
    for name in pages:
        norm = str(name).lower().replace("_", "").replace("-", "")
        for ok in _SINGLE_BYTE_OK:
            if norm == ok or norm == "wpc" + ok[2:]:
                found.append(codecs.lookup(ok).name)
    return tuple(dict.fromkeys(found)) or ("cp437",)


def printable_as_text(text: str, profile: str) -> bool:
    """True when every character exists in one of the profile's code pages."""
    pages = _profile_codecs(profile)
    for ch in text:
        if ch.isascii():
            continue
        if not any(_encodes(ch, cp) for cp in pages):
            return False
    return True


def _encodes(ch: str, codec: str) -> bool:
    try:
        ch.encode(codec)
        return True
    except UnicodeEncodeError:
        return False


def _escpos_style(p: Dummy, line: Line) -> None:
    w, h = SCALE[line.style]
    p.set(
        align=line.align,
        bold=line.style in ("number", "title", "big", "bold"),
        font="b" if line.style == "small" else "a",
        custom_size=(w, h) != (1, 1),
        width=w,
        height=h,
        normal_textsize=(w, h) == (1, 1),
    )


def render_escpos(label: Label, profile: str = "TM-T88V", native_qr: bool | None = None) -> bytes:
    """ESC/POS bytes for the label: init, text lines, QR (native ``GS ( k`` when the
    profile supports it, else a raster image), and a cut."""
    p = Dummy(profile=profile)
    p.hw("INIT")
    for line in (*label.lines, None, *label.footer):
        if line is None:
            _escpos_qr(p, label, profile, native_qr)
            continue
        if printable_as_text(line.text, profile):
            _escpos_style(p, line)
            p.textln(line.text)
        else:
            p.set(align=line.align, normal_textsize=True)
            p.image(_line_image(line, min(label.dots, _max_dots(p))), center=False)
    p.set_with_default()
    p.cut()
    return p.output


def _max_dots(p: Dummy) -> int:
    """The widest image the profile's paper takes (python-escpos refuses wider ones)."""
    try:
        return int(p.profile.profile_data["media"]["width"]["pixels"])
    except (KeyError, TypeError, ValueError):
        return 576


def _escpos_qr(p: Dummy, label: Label, profile: str, native_qr: bool | None) -> None:
    native = p.profile.supports("qrCode") if native_qr is None else native_qr
    size = 6 if label.paper_mm >= 80 else 5
    p.set(align="center", normal_textsize=True)
    p.ln()
    if native:
        p.qr(label.qr, size=size, native=True)
        p.ln()
    else:
        p.image(_qr_image(label.qr, size), center=False)


# --- PNG preview --------------------------------------------------------------------

FONT_CANDIDATES = (
    "/usr/share/fonts/truetype/dejavu/DejaVuSansMono.ttf",
    "/usr/share/fonts/truetype/dejavu/DejaVuSansMono-Bold.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationMono-Regular.ttf",
)
BOLD_CANDIDATES = (
    "/usr/share/fonts/truetype/dejavu/DejaVuSansMono-Bold.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationMono-Bold.ttf",
)
LINE_DOTS = 24  # font A is 12x24 dots


# East Asian scripts need a CJK font; SHOWROOM_LABEL_FONT can name any other font file.
CJK_CANDIDATES = (
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc",
    "/usr/share/fonts/truetype/droid/DroidSansFallbackFull.ttf",
)


@functools.lru_cache(maxsize=64)
def _font(size: int, bold: bool, cjk: bool = False) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    custom = os.environ.get("SHOWROOM_LABEL_FONT")
    candidates = (custom,) if custom else ()
    candidates += CJK_CANDIDATES if cjk else ()
    candidates += BOLD_CANDIDATES if bold else FONT_CANDIDATES
    for path in candidates:
        if path and Path(path).is_file():
            return ImageFont.truetype(path, size)
    return ImageFont.load_default(size)


def _needs_cjk(text: str) -> bool:
    return any(ord(ch) >= 0x2E80 for ch in text)


def _line_image(line: Line, width: int) -> Image.Image:
    """One line drawn as the printer would: monospace, scaled like the ESC/POS size."""
    w, h = SCALE[line.style]
    height = LINE_DOTS * h
    # DejaVu Sans Mono advances 0.6 em: 20 px gives the 12-dot column of font A.
    size = 20 * h
    font = _font(size, line.style in ("number", "title", "big", "bold"), _needs_cjk(line.text))
    img = Image.new("L", (width, height), 255)
    draw = ImageDraw.Draw(img)
    text_w = draw.textlength(line.text, font=font)
    if w != h:  # double height only: draw wide, then squeeze horizontally
        wide = Image.new("L", (max(1, int(text_w) + 2), height), 255)
        ImageDraw.Draw(wide).text((0, height // 2), line.text, font=font, fill=0, anchor="lm")
        wide = wide.resize((max(1, int(text_w * w / h) + 1), height))
        x = _x(line.align, wide.width, width)
        img.paste(wide, (x, 0))
        return img
    x = _x(line.align, int(text_w), width)
    draw.text((x, height // 2), line.text, font=font, fill=0, anchor="lm")
    return img


def _x(align: str, content: int, width: int) -> int:
    if align == "center":
        return max(0, (width - content) // 2)
    if align == "right":
        return max(0, width - content)
    return 0


def _qr_image(data: str, box: int) -> Image.Image:
    code = qrcode.QRCode(box_size=box, border=2, error_correction=qrcode.constants.ERROR_CORRECT_M)
    code.add_data(data)
    code.make(fit=True)
    return code.make_image(fill_color="black", back_color="white").get_image().convert("L")


def render_image(label: Label) -> Image.Image:
    """The label as the paper would look (1 px = 1 printer dot)."""
    width = label.dots
    parts = [_line_image(line, width) for line in label.lines]
    qr = _qr_image(label.qr, 6 if label.paper_mm >= 80 else 5)
    footer = [_line_image(line, width) for line in label.footer]
    margin = 16
    cut = 40
    height = margin * 2 + sum(p.height for p in parts) + qr.height + 16
    height += sum(p.height for p in footer) + cut
    page = Image.new("L", (width + 2 * margin, height), 255)
    y = margin
    for part in parts:
        page.paste(part, (margin, y))
        y += part.height
    y += 8
    page.paste(qr, (margin + (width - qr.width) // 2, y))
    y += qr.height + 8
    for part in footer:
        page.paste(part, (margin, y))
        y += part.height
    draw = ImageDraw.Draw(page)
    cut_y = y + cut // 2
    for x in range(0, page.width, 12):  # the cut, as a dashed line
        draw.line((x, cut_y, x + 6, cut_y), fill=0, width=2)
    return page


def render_png(label: Label) -> bytes:
    buf = io.BytesIO()
    render_image(label).save(buf, "PNG", optimize=False)
    return buf.getvalue()
