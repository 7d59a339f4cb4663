"""Smoke run of the card-sync benchmark: real server, host page on a fake camera, a
viewer page in headless Chromium, feature switches measured against presented frames."""

from __future__ import annotations

import subprocess
import sys

import pytest

from load_tests.common import ROOT


@pytest.mark.timeout(150)
def test_card_sync_benchmark_quick_run_measures_both_buffers():
    proc = subprocess.run(
        [sys.executable, "-m", "load_tests.card_sync", "--quick", "--switches", "4"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=140,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "| page card (media_ts + playout), default jitter buffer " in out
    assert "| naive (on event), 300 ms jitter buffer (phone-like) " in out
    assert "switches measured" in out
    assert (ROOT / "load_tests" / "results" / "card_sync-quick.png").stat().st_size > 10_000
