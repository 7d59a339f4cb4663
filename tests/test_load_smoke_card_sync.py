"""Smoke run of the card-sync benchmark: real server, host page on a fake camera, a
viewer page in headless Chromium, feature switches measured against presented frames."""

from __future__ import annotations

import pytest

from load_tests.common import ROOT
from tests.conftest import run_benchmark


@pytest.mark.timeout(320)
def test_card_sync_benchmark_quick_run_measures_both_buffers():
    out = run_benchmark("card_sync", "--quick", "--switches", "4", timeout=300)
    assert "| page card (media_ts + playout), default jitter buffer " in out
    assert "| naive (on event), 300 ms jitter buffer (phone-like) " in out
    assert "switches measured" in out
    assert (ROOT / "load_tests" / "results" / "card_sync-quick.png").stat().st_size > 10_000
