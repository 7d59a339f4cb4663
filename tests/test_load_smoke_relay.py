"""The relay benchmark runs end to end at a small size and reports both rows."""

from __future__ import annotations

import re

import pytest

from load_tests.common import RESULTS
from tests.conftest import run_benchmark


@pytest.mark.timeout(180)
def test_relay_benchmark_quick():
    out = run_benchmark("relay", "--quick", timeout=170)
    rows = [
        line
        for line in out.splitlines()
        if line.startswith("| ") and line.split("|")[2].strip().isdigit()
    ]
    names = [r.split("|")[1].strip() for r in rows]
    assert any(n.startswith("relay:") for n in names) and any(n.startswith("raw") for n in names)
    assert "other worker (forwarded)" in names and "same worker" in names
    for row in rows:
        cells = [c.strip() for c in row.split("|")[1:-1]]
        assert int(cells[1]) > 20, row  # frames measured
        assert 0 < float(cells[2]) < 1000, row  # p50 ms
    assert re.search(r"Target relay-added latency p95 <= 10 ms: (met|NOT met)", out)
    assert (RESULTS / "relay_quick.png").stat().st_size > 1000
