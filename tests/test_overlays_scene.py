"""The scene: layouts, text that fits, layers that render only on change, animation,
countdown, SOLD OUT, and media_ts bookkeeping (no server involved)."""

from __future__ import annotations

import time
from decimal import Decimal

import av
import numpy as np
import pytest
from PIL import Image

from overlays import layers
from overlays.layers import DropInfo, ProductInfo, countdown, format_price, stock_line
from overlays.layout import make_layout
from overlays.scene import ANIM_MS, Scene
from overlays.text import ELLIPSIS, covered, fit_text, font, printable, text_width, wrap_lines
from overlays.yuv import frame_planes, rgb_to_yuv

SIZES = [(1280, 720), (1920, 1080), (640, 360), (720, 1280), (1080, 1920)]
MUG = ProductInfo("MUG-01", "Stoneware mug", Decimal("18.00"), 40)


def grey_frame(w: int, h: int, level: int = 100) -> av.VideoFrame:
    rgb = np.full((h, w, 3), level, np.uint8)
    return av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p")


def region(frame: av.VideoFrame, box, plane: int = 0) -> np.ndarray:
    p = frame_planes(frame)[plane]
    if plane == 0:
        return p[box.y : box.y + box.h, box.x : box.x + box.w].copy()
    return p[box.y // 2 : (box.y + box.h) // 2, box.x // 2 : (box.x + box.w) // 2].copy()


@pytest.mark.parametrize("w,h", SIZES)
def test_layouts_keep_layers_title_safe_and_apart(w, h):
    lay = make_layout(w, h)
    assert lay.vertical == (h > w)
    assert lay.safe.x >= 0.05 * w - 2 and lay.safe.y >= 0.05 * h - 2
    boxes = {
        "badge": lay.badge,
        "drop": lay.drop,
        "card": lay.card,
        "qr": lay.qr,
        "title": lay.title,
        "ticker": lay.ticker,
        "pinned": lay.pinned,
    }
    for name, box in boxes.items():
        assert lay.safe.contains(box), f"{name} {box} outside title-safe {lay.safe} at {w}x{h}"
        assert box.x % 2 == 0 and box.y % 2 == 0
    names = list(boxes)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert not boxes[a].overlaps(boxes[b]), f"{a} overlaps {b} at {w}x{h}"
    if lay.vertical:  # thumb zone: the product card sits in the lower half
        assert lay.card.y > h / 2
    else:
        assert lay.card.x > w / 2


def test_text_shrinks_then_ellipsises_and_latin1_has_no_tofu():
    fitted = fit_text("Stoneware mug", 170, 24, bold=True)
    assert fitted.width <= 170 and fitted.size < 24 and fitted.text == "Stoneware mug"
    long = fit_text("Hand-thrown stoneware mug with speckled glaze " * 3, 200, 24, bold=True)
    assert long.text.endswith(ELLIPSIS) and long.width <= 200 and long.size >= 16
    lines = wrap_lines("Hand-thrown stoneware mug with speckled glaze and gift box", 200, 24, 2)
    assert len(lines) == 2 and lines[-1].endswith(ELLIPSIS)
    assert all(text_width(line, 24) <= 200 for line in lines)

    latin1 = "".join(chr(c) for c in range(0xA1, 0x100) if c != 0xAD)
    assert covered(latin1) and covered(latin1, bold=True)
    assert covered("Ελληνικά Привет Ünïcödé €")
    # no tofu: every Latin-1 letter draws a different bitmap than a missing glyph does
    f = font(24)
    tofu = bytes(f.getmask("\ue000"))
    for ch in latin1:
        assert bytes(f.getmask(ch)) != tofu, f"{ch!r} would draw as a box"
    # characters the font lacks are replaced, not drawn as boxes
    assert printable("Mug 東京") == "Mug ??"


def test_prices_stock_and_countdown_wording():
    assert format_price(Decimal("18"), "usd") == "$18.00"
    assert format_price(Decimal("1234.5"), "eur") == "\u20ac1,234.50"
    assert format_price(Decimal("1800"), "jpy") == "\u00a51,800"
    assert format_price(Decimal("5"), "sek") == "5.00 SEK"
    assert stock_line(40)[0] == "In stock"
    assert stock_line(3)[0] == "Only 3 left"
    assert stock_line(0)[0] == "Sold out"
    assert countdown(95_000) == "01:35"
    assert countdown(94_001) == "01:35"  # rounds up: 00:00 only once time is up
    assert countdown(0) == "00:00"


def test_product_picture_from_manifest_or_placeholder(tmp_path):
    path = tmp_path / "mug.png"
    Image.new("RGB", (300, 200), (10, 200, 30)).save(path)
    with_image = layers.render_card(
        ProductInfo("MUG-01", "Mug", Decimal("18"), 40, path), 300, 340, "usd", 1.0
    )
    placeholder = layers.render_card(
        ProductInfo("MUG-01", "Mug", Decimal("18"), 40, None), 300, 340, "usd", 1.0
    )
    px = np.asarray(with_image)[80, 150]
    assert tuple(px[:3]) == (10, 200, 30)  # the manifest's picture is on the card
    assert tuple(np.asarray(placeholder)[80, 150][:3]) != (10, 200, 30)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    card = layers.render_card(ProductInfo("X", "Mug", Decimal("1"), 1, broken), 300, 340, "usd", 1)
    assert card.size == (300, 340)  # a broken picture falls back to the placeholder


def test_feature_shows_card_in_first_frame_animates_and_unfeature_removes_it():
    scene = Scene(1280, 720, title="Show", show_id="demo", base_url="http://x", threaded=False)
    card = scene.layout.card
    frame = grey_frame(1280, 720)
    empty = region(frame, card)
    scene.blend_into(frame, 1000)
    assert np.array_equal(region(frame, card), empty), "no card before a product is featured"

    scene.set_featured(MUG)
    frames = []
    for i in range(12):  # 30 fps for 400 ms
        f = grey_frame(1280, 720)
        scene.blend_into(f, 2000 + i * 33)
        frames.append(region(f, card).astype(int))
    first = np.abs(frames[0] - empty).mean()
    assert first > 5, "the first composed frame after the change shows the card"
    assert np.abs(frames[1] - empty).mean() > first, "it slides/fades in"
    assert np.array_equal(frames[-1], frames[-2]), "at rest after ~250 ms"
    assert np.abs(frames[-1] - empty).mean() > 50

    scene.set_featured(None)
    f = grey_frame(1280, 720)
    scene.blend_into(f, 3000)
    assert np.abs(region(f, card).astype(int) - empty).mean() > 5, "fades out, not cut"
    f = grey_frame(1280, 720)
    scene.blend_into(f, 3000 + ANIM_MS + 40)
    assert np.array_equal(region(f, card), empty), "gone once the animation ends"


def test_layers_render_only_when_content_changes():
    scene = Scene(1280, 720, title="Show", show_id="demo", threaded=False)
    scene.set_featured(MUG)
    scene.set_live(True)
    now = int(time.time() * 1000)
    baseline = scene.renders.copy()
    frame = grey_frame(1280, 720)
    for i in range(60):
        scene.blend_into(frame, now + i * 33)
    assert scene.renders == baseline, "blending renders nothing"
    scene.set_viewers(5)
    scene.set_viewers(5)  # unchanged: no render
    scene.set_stock("OTHER", 1)  # not the featured product: no render
    assert scene.renders - baseline == {"badge": 1}
    scene.set_stock("MUG-01", 2)
    assert scene.renders["card"] == baseline["card"] + 1
    assert scene.renders["qr"] == baseline["qr"], "same product: the QR code is kept"


def test_sold_out_stamp_and_low_stock_line():
    scene = Scene(1280, 720, title="Show", show_id="demo", threaded=False)
    scene.set_featured(MUG)
    card = scene.layout.card
    f = grey_frame(1280, 720)
    scene.blend_into(f, 0)
    scene.blend_into(f, 1000)
    in_stock_v = region(f, card, plane=2)
    scene.set_stock("MUG-01", 0)
    f = grey_frame(1280, 720)
    scene.blend_into(f, 2000)
    sold_v = region(f, card, plane=2).astype(int)
    red_v = rgb_to_yuv(np.array([200, 24, 36]) / 255.0)[2]
    # the picture area (top of the card) now carries the red stamp
    pic = slice(0, card.h // 4)
    reds = (np.abs(sold_v[pic] - red_v) < 12).mean()
    assert reds > 0.03, "SOLD OUT stamp is drawn over the picture"
    assert (np.abs(in_stock_v[pic].astype(int) - red_v) < 12).mean() < reds / 3


def test_drop_countdown_ticks_every_second_without_rendering_on_the_frame():
    scene = Scene(1280, 720, title="Show", show_id="demo", threaded=True)
    scene.render_threads.clear()  # the constructor renders its first layers in place
    now = int(time.time() * 1000)
    ends = now + 65_000
    scene.set_drop(DropInfo("MUG-01", "Mug", Decimal("12"), 7, ends, 20))
    scene.flush()
    box = scene.layout.drop
    shots = []
    for t in (now, now + 100, now + 1100, now + 2100):
        f = grey_frame(1280, 720)
        scene.blend_into(f, t)
        shots.append(region(f, box))
        time.sleep(0.05)  # the render thread prepares the next seconds meanwhile
    assert np.array_equal(shots[0], shots[1]), "same second, same banner"
    assert scene.renders["drop"] >= 4, "each second's banner is rendered..."
    assert scene.render_threads and all(
        name.startswith("overlay-render") for name in scene.render_threads
    ), "...on the render thread, never inside blend_into"
    assert not np.array_equal(shots[1], shots[2]), "the countdown moved on a second"
    assert not np.array_equal(shots[2], shots[3])
    f = grey_frame(1280, 720)
    scene.blend_into(f, ends + 10_000)
    assert np.array_equal(region(f, box), region(grey_frame(1280, 720), box)), "ended: hidden"


def test_when_shown_reports_the_first_frame_with_the_change():
    scene = Scene(640, 360, title="Show", show_id="demo", threaded=True)
    frame = grey_frame(640, 360)
    scene.blend_into(frame, 500)
    version = scene.set_featured(MUG).result(5)
    seen: list[int] = []
    scene.when_shown(version, seen.append)
    assert seen == []
    scene.blend_into(frame, 1234)
    scene.blend_into(frame, 1267)
    assert seen == [1234]
    late: list[int] = []
    scene.when_shown(version, late.append)  # already on screen: answered at once
    assert late == [1234]


def test_vertical_scene_blends_card_in_lower_half():
    scene = Scene(720, 1280, title="Vertical", show_id="demo", threaded=False)
    scene.set_featured(MUG)
    scene.blend_into(grey_frame(720, 1280), 0)
    f = grey_frame(720, 1280)
    scene.blend_into(f, 1000)
    y = frame_planes(f)[0]
    card = scene.layout.card
    untouched = y[scene.layout.qr.bottom + 4 : card.y - 4]
    assert (untouched == untouched[0, 0]).all(), "the middle of the picture stays clear"
    assert np.abs(region(f, card).astype(int) - int(untouched[0, 0])).mean() > 30


def test_drop_on_the_featured_product_shows_its_price_and_strikes_the_regular_one():
    """The card in the picture says what the page says: the drop price, with the regular
    price struck through next to it; when the drop ends the card reads the regular price."""
    plain = layers.render_card(MUG, 300, 344, "usd", 1.0)
    drop_price = replace_price(MUG, "12.00")
    struck = layers.render_card(drop_price, 300, 344, "usd", 1.0, regular_price=MUG.price)
    unstruck = layers.render_card(drop_price, 300, 344, "usd", 1.0)
    assert struck.tobytes() != unstruck.tobytes() != plain.tobytes()
    # The struck regular price is drawn in the muted grey beside the price.
    grey = np.all(np.abs(np.asarray(struck)[..., :3].astype(int) - (96, 98, 108)) < 30, axis=-1)
    grey_plain = np.all(np.abs(np.asarray(unstruck)[..., :3].astype(int) - (96, 98, 108)) < 30, -1)
    assert grey.sum() > grey_plain.sum() + 40

    scene = Scene(1280, 720, title="Show", show_id="demo", threaded=False)
    scene.set_featured(MUG)
    box = scene.layout.card

    def card_now(t: int) -> np.ndarray:
        scene.blend_into(grey_frame(1280, 720), t)
        f = grey_frame(1280, 720)
        scene.blend_into(f, t + 1000)  # past the entry animation
        return region(f, box)

    regular = card_now(0)
    before = scene.renders["card"]
    ends = int(time.time() * 1000) + 60_000
    scene.set_drop(DropInfo("MUG-01", "Stoneware mug", Decimal("12.00"), 5, ends, 5))
    assert scene.renders["card"] == before + 1
    on_drop = card_now(5000)
    assert not np.array_equal(on_drop, regular)
    scene.set_drop(DropInfo("TEE-02", "Tee", Decimal("9.00"), 5, ends, 5))  # another product
    assert np.array_equal(card_now(9000), regular)
    scene.set_drop(None)
    assert np.array_equal(card_now(12000), regular)


def replace_price(product: ProductInfo, price: str) -> ProductInfo:
    from dataclasses import replace

    return replace(product, price=Decimal(price))
