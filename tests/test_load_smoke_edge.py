"""The edge benchmark runs end to end at a small size: both viewers see frames, the
per-frame edge cost is reported, and the stream carries about its nominal bitrate."""

from __future__ import annotations

import re

import pytest

from load_tests.common import RESULTS
from tests.conftest import run_benchmark


@pytest.mark.timeout(180)
def test_edge_benchmark_quick():
    out = run_benchmark("edge", "--quick", timeout=170)
    rows = {
        cells[0]: cells
        for line in out.splitlines()
        if line.startswith("| ")
        for cells in [[c.strip() for c in line.split("|")[1:-1]]]
    }
    for name in ("straight from the origin", "through the edge", "per frame"):
        assert int(rows[name][1]) > 30, rows[name]  # frames measured
        assert 0 < float(rows[name][3]) < 1000, rows[name]  # p95 ms
    assert re.search(r"the edge adds <= 15 ms p95 glass-to-glass: (met|NOT met)", out)
    # Capacity: counting viewers joined on each (too few here for a steady CPU slope).
    for name in ("origin", "edge"):
        assert rows[name][5] == "0" and float(rows[name][4]) > 500, rows[name]  # kbps each
    assert re.search(r"viewers per core on an edge match the origin's lean path: (met|NOT)", out)
    kbps = float(re.search(r"measured at the edge's pull (\d+) kbps", out).group(1))
    assert 500 <= kbps <= 2000, out  # nominal 1000 kbps: the stream is not a still picture
    assert (RESULTS / "edge_quick.png").stat().st_size > 1000
