"""The label layout and what it becomes: ESC/POS bytes and the PNG preview."""

from __future__ import annotations

import io
import logging
import re
import time
from pathlib import Path

import numpy as np
import pytest
import redis.asyncio as aioredis
from PIL import Image

from checkout.orders import Order, OrderItem, Status
from devices.label import _qr_image, build_label, render_escpos, render_png
from tests.conftest import manifest_text, wait_until
from tests.test_printing_worker import has_status, paid_order

RASTER = re.compile(rb"\x1dv0\x00(..)(..)", re.S)


def order(**kw) -> Order:
    items = kw.pop(
        "items",
        [
            OrderItem("MUG-01", "Stoneware mug", 2, 1800),
            OrderItem(
                "TEE-02",
                "Crewneck tee — Café édition with an extraordinarily long name",
                1,
                3200,
            ),
        ],
    )
    return Order(
        order_id=kw.pop("order_id", "o123456789abcdef"),
        show="demo",
        viewer="v",
        status=Status.PAID,
        items=items,
        amount_cents=sum(i.total_cents for i in items),
        currency="usd",
        buyer_name=kw.pop("buyer_name", "Zoë Müller"),
        number=kw.pop("number", 1042),
        paid_at=time.time(),
        **kw,
    )


def label(o: Order, paper: int = 80, cols: int | None = None):
    return build_label(
        o,
        show_title="Friday Night Drop",
        pickup_note="Pick up at the counter by the door",
        base_url="http://shop.test/",
        paper_mm=paper,
        profile_columns=cols,
    )


def text_lines(data: bytes) -> list[bytes]:
    return re.findall(rb"([\x20-\xff]+)\n", data)


def without_rasters(data: bytes) -> bytes:
    out, pos = b"", 0
    for m in RASTER.finditer(data):
        w = m.group(1)[0] + 256 * m.group(1)[1]
        h = m.group(2)[0] + 256 * m.group(2)[1]
        out += data[pos : m.start()]
        pos = m.end() + w * h
    return out + data[pos:]


def rasters(data: bytes) -> list[tuple[int, int, bytes]]:
    """(width in bytes, height, bits) of every GS v 0 raster image."""
    out = []
    for m in RASTER.finditer(data):
        w = m.group(1)[0] + 256 * m.group(1)[1]
        h = m.group(2)[0] + 256 * m.group(2)[1]
        out.append((w, h, data[m.end() : m.end() + w * h]))
    return out


@pytest.mark.parametrize(("paper", "cols"), [(80, 48), (58, 32)])
def test_layout_fits_the_paper_and_wraps_long_names(paper, cols):
    lab = label(order(), paper)
    assert lab.columns == cols
    for line in lab.lines:
        scale = {"number": 4, "big": 2}.get(line.style, 1)
        assert len(line.text) * scale <= cols, line
    texts = [line.text for line in lab.lines]
    assert texts[0] == "#1042"
    assert "Friday Night Drop" in texts and "Zoë Müller" in texts
    assert any(t.startswith("2 x Stoneware mug") and t.endswith("36.00") for t in texts)
    tee = next(i for i, t in enumerate(texts) if t.startswith("1 x Crewneck"))
    assert texts[tee].endswith("32.00")
    assert "long" in " ".join(texts[tee : tee + 4])  # wrapped onto the following lines
    assert any("SKU TEE-02" in t for t in texts)
    assert any(t.startswith("TOTAL") and t.endswith("USD 68.00") for t in texts)
    assert lab.qr == "http://shop.test/staff/orders/o123456789abcdef"

    data = render_escpos(lab, "TM-T88V")
    assert all(len(line) <= cols for line in text_lines(data) if b"\x1b" not in line)
    assert data.startswith(b"\x1b@") and data.endswith((b"\x1dVA", b"\x1dV\x00"))


def test_accented_names_print_as_text_in_a_code_page():
    data = render_escpos(label(order()), "TM-T88V")
    assert b"Z" in data and b"M\x81ller" in data  # ü in CP437 after ESC t selects a page
    assert b"\x1bt\x10\x97 Caf\xe9" in data  # the dash switched to CP1252, where é is 0xE9
    assert b"?" not in data
    assert rasters(data) == []  # nothing needed the image fallback; QR is native


def test_names_outside_the_code_pages_print_as_an_image_not_question_marks():
    data = render_escpos(label(order(buyer_name="山田 花子")), "TM-T88V")
    assert b"?" not in without_rasters(data)
    [(width, height, bits)] = rasters(data)  # the buyer line, drawn
    assert width * 8 == 512  # as wide as the TM-T88V paper takes
    assert height == 48 and any(bits)  # double-height line with ink on it


def test_native_qr_when_supported_raster_otherwise():
    lab = label(order(), 58)
    native = render_escpos(lab, "TM-T88V")
    assert b"\x1d(k" in native and lab.qr.encode() in native
    raster = render_escpos(lab, "POS-5890")  # a 58 mm printer without GS ( k
    assert b"\x1d(k" not in raster
    [*_, (width, height, bits)] = rasters(raster)
    # the printed bitmap is exactly the QR matrix of the staff URL
    expected = _qr_image(lab.qr, 5).convert("1")
    assert height == expected.height
    printed = Image.frombytes("1", (width * 8, height), bits)
    for y in range(0, expected.height, 3):
        for x in range(0, expected.width, 3):
            assert (printed.getpixel((x, y)) != 0) == (expected.getpixel((x, y)) == 0)


def test_png_preview_is_the_paper(tmp_path):
    png = render_png(label(order(), 80))
    img = Image.open(io.BytesIO(png))
    assert img.format == "PNG" and img.width == 48 * 12 + 32 and img.height > 600
    narrow = Image.open(io.BytesIO(render_png(label(order(), 58))))
    assert narrow.width == 32 * 12 + 32 and narrow.height > img.height  # wraps more
    dark = int((np.asarray(img.convert("L")) < 128).sum())
    assert dark > 10_000  # text and QR are drawn


@pytest.mark.timeout(30)
async def test_virtual_printer_writes_a_file_and_a_preview_per_label(
    make_app, redis_url, tmp_path, caplog
):
    caplog.set_level(logging.INFO, logger="showroom.print")
    labels = tmp_path / "labels"
    labels.mkdir()
    path = tmp_path / "demo.toml"
    path.write_text(
        manifest_text(
            "demo",
            printers=f"""
            [[printers]]
            name = "counter"
            connection = "file://{labels}/counter.bin"
            paper_mm = 80
            default = true
            """,
        )
    )
    await make_app([path])
    redis = aioredis.Redis.from_url(redis_url)
    try:
        o = await paid_order(redis, buyer="Demo Buyer")
        await wait_until(lambda: has_status(redis, o.order_id, Status.PRINTED), 10)
    finally:
        await redis.aclose()
    [binary] = list(labels.glob("counter-*.bin"))
    [preview] = list(labels.glob("counter-*.png"))
    assert binary.stem == preview.stem and binary.stem.startswith(f"counter-{o.number:04d}-")
    data = binary.read_bytes()
    assert f"#{o.number}".encode() in data and b"Demo Buyer" in data
    assert Image.open(preview).width == 42 * 12 + 32
    assert any(str(binary) in r.getMessage() for r in caplog.records)


def test_label_files_are_not_left_half_written(tmp_path):
    from devices.connections import FileConnection, LabelFile

    conn = FileConnection(Path(tmp_path) / "x" / "counter.bin")
    where = conn.send(b"\x1b@hello\x1dV\x00", 5, LabelFile("0001-a"))
    assert Path(where).read_bytes() == b"\x1b@hello\x1dV\x00"
    assert sorted(p.name for p in (tmp_path / "x").iterdir()) == ["counter-0001-a.bin"]
