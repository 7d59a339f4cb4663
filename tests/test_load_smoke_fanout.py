"""Smoke run of the fan-out benchmark: both servers, real WHIP/WHEP peers, CPU from /proc."""

from __future__ import annotations

import re

import pytest

from load_tests.common import ROOT
from tests.conftest import run_benchmark


@pytest.mark.timeout(180)
def test_fanout_benchmark_quick_run_measures_both_paths():
    out = run_benchmark("fanout", "--quick", timeout=170)
    assert "| encode once (Showroom) " in out and "| naive: MediaRelay + encoder per viewer " in out
    # Every viewer of both paths actually received video at the show's frame rate or more.
    rows = re.findall(r"^\| (ours|naive) +\| (\d+) +\| [\d.]+ +\| ([\d.]+) +\| (\d+) ", out, re.M)
    assert len(rows) == 6, out
    for path, viewers, fps, pps in rows:
        if int(viewers) > 0:
            assert int(pps) >= 10, f"viewers got {pps} packets/s"
            if path == "ours":
                assert float(fps) >= 10, f"encode-once viewers got {fps} fps of a 15 fps show"
    m = re.search(r"p50 ([\d.]+) ms, p99 ([\d.]+) ms \((\d+) frames\)", out)
    assert m and int(m.group(3)) > 30, out
    assert (ROOT / "load_tests" / "results" / "fanout-quick.png").stat().st_size > 10_000
