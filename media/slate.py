"""The slate shown while no publisher is live: "We'll be right back".

Rendered once per output size with Pillow and kept as yuv420p planes; each slate tick
copies it into a fresh frame, and the overlays are blended on top like on a live frame.
"""

from __future__ import annotations

from functools import lru_cache

import av
from PIL import Image, ImageDraw, ImageFont

BACKGROUND = (22, 26, 38)
TEXT = "We'll be right back"


@lru_cache(maxsize=8)
def slate_frame(width: int, height: int) -> av.VideoFrame:
    """The slate as a yuv420p frame; shared, so never blended into (copy it first)."""
    img = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default(size=max(12, height // 12))
    box = draw.textbbox((0, 0), TEXT, font=font)
    x = (width - (box[2] - box[0])) // 2 - box[0]
    y = (height - (box[3] - box[1])) // 2 - box[1] - height // 10
    draw.text((x, y), TEXT, font=font, fill=(235, 238, 245))
    return av.VideoFrame.from_image(img).reformat(format="yuv420p")
