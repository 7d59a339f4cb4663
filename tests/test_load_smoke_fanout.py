"""Smoke run of the fan-out benchmark: the lean path, the aiortc sender path and the naive
path, real WHIP/WHEP peers counting every packet, server CPU from /proc."""

from __future__ import annotations

import re

import pytest

from load_tests.common import ROOT
from tests.conftest import run_benchmark


@pytest.mark.timeout(240)
def test_fanout_benchmark_quick_run_measures_all_paths():
    out = run_benchmark("fanout", "--quick", timeout=230)
    for path in ("lean", "lean, Python send loop", "aiortc sender", "naive"):
        assert re.search(rf"^\| {path} +\| 1 +\| [\d.]+ ", out, re.M), out
    # Points: path, workers, viewers, cpu, cost, loop, kbps, pkt/s, loss, sample fps/size
    rows = re.findall(
        r"^\| (lean|lean, Python send loop|aiortc sender|naive) +\| 1 +\| (\d+) +\| [\d.]+ +\| [-\d.]+ +\| [\d.]+ +\| "
        r"(\d+) +\| "
        r"(\d+) +\| ([\d.]+) +\| ([^|]+)\|",
        out,
        re.M,
    )
    assert len(rows) == 13, out
    for path, viewers, kbps, pps, loss, sample in rows:
        if int(viewers) > 0:
            assert int(pps) >= 10 and int(kbps) >= 100, f"{path}: {kbps} kbps, {pps} pkt/s"
            assert float(loss) < 5, f"{path} lost {loss} % of its packets"
            if path != "naive":
                fps, size = sample.split()
                assert float(fps) >= 8 and size == "320x180", f"{path} samples: {sample}"
    # (a tiny run on a busy machine can give any slope; the line must be there)
    assert re.search(r"costs \*\*[\d.]+ % of a core per viewer: (\d+|inf) viewers per core", out)
    assert (ROOT / "load_tests" / "results" / "fanout-quick.png").stat().st_size > 10_000
