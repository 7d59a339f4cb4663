"""Product images for the pages: the manifest's image as PNG, or a generated placeholder.

Pure, blocking functions (Pillow): callers run them in a worker thread and cache the bytes.
"""

from __future__ import annotations

import hashlib
import io
import textwrap
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont, ImageOps

SIZE = 480
# Dark, saturated backgrounds: white text on them keeps a contrast ratio above 4.5:1.
PALETTE = ((31, 58, 147), (124, 29, 111), (20, 99, 82), (143, 45, 26), (67, 56, 140), (30, 80, 110))


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # very old Pillow: bitmap font only
        return ImageFont.load_default()


def placeholder_png(name: str, sku: str) -> bytes:
    """A square card with the product's initials and name; colour stable per SKU."""
    digest = hashlib.sha1(sku.encode()).digest()
    bg = PALETTE[digest[0] % len(PALETTE)]
    img = Image.new("RGB", (SIZE, SIZE), bg)
    draw = ImageDraw.Draw(img)
    initials = "".join(w[0] for w in name.split()[:2]).upper() or sku[:2].upper()
    draw.text((SIZE / 2, SIZE * 0.4), initials, font=_font(150), fill="white", anchor="mm")
    lines = textwrap.wrap(name, 22)[:2]
    y = SIZE * 0.72
    for line in lines:
        draw.text((SIZE / 2, y), line, font=_font(30), fill="white", anchor="mm")
        y += 40
    out = io.BytesIO()
    img.save(out, "PNG", optimize=True)
    return out.getvalue()


def image_png(path: Path) -> bytes:
    """The manifest image, scaled to fit SIZE x SIZE, as PNG."""
    with Image.open(path) as src:
        img = ImageOps.exif_transpose(src).convert("RGBA")
    img.thumbnail((SIZE, SIZE))
    out = io.BytesIO()
    img.save(out, "PNG", optimize=True)
    return out.getvalue()


def product_png(name: str, sku: str, image: Path | None) -> bytes:
    if image is not None:
        try:
            return image_png(image)
        except (OSError, ValueError):  # unreadable file: still show something sensible
            pass
    return placeholder_png(name, sku)
