"""Smoke run of the overlay benchmark: the full scene blended in place vs the naive path."""

from __future__ import annotations

import re

import numpy as np
import pytest
from PIL import Image

from load_tests.common import RESULTS
from overlays.layout import make_layout
from tests.conftest import run_benchmark


@pytest.mark.timeout(120)
def test_overlay_benchmark_quick_run():
    out = run_benchmark("overlays", "--quick", timeout=110)
    for size in ("1280x720", "1920x1080"):
        row = next(line for line in out.splitlines() if line.startswith(f"| {size} "))
        speedup = float(re.search(r"\|\s*([\d.]+)x\s*\|\s*$", row).group(1))
        assert speedup >= 20, f"in-place blend only {speedup}x faster than the RGB round trip"
    assert "| product card " in out and "| drop banner (each second) " in out
    assert "Target >= 20x faster than the naive path at 1080p: met" in out
    assert (RESULTS / "overlays-quick.png").stat().st_size > 10_000
    # the composed picture really carries the scene: card and title panels in place
    img = np.asarray(Image.open(RESULTS / "overlays-frame-1920x1080-quick.png").convert("RGB"))
    lay = make_layout(1920, 1080)
    card = img[lay.card.y + 4 : lay.card.bottom - 4, lay.card.x + 4 : lay.card.right - 4]
    assert (card.min(axis=-1) > 235).mean() > 0.3, "white product card"
    title = img[lay.title.y + 4 : lay.title.bottom - 4, lay.title.x + 4 : lay.title.right - 4]
    assert (title.max(axis=-1) < 40).mean() > 0.5, "dark lower third"
