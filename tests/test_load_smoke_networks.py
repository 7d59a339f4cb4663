"""Smoke run of the networks benchmark: a real server with a laddered and a single-rung
copy of one show, time-coded publishers of noise, and aiortc viewers behind lossy UDP
relays."""

from __future__ import annotations

import json

import pytest

from load_tests.common import RESULTS
from tests.conftest import run_benchmark


@pytest.mark.timeout(150)
def test_networks_benchmark_quick_run_compares_the_ladder_with_one_rung():
    out = run_benchmark("networks", "--quick", "--profiles", "clean,cap700", timeout=140)
    assert "| clean (loopback)" in out and "| 700 kbps cap" in out
    assert "Encode cost per composed frame" in out
    data = json.loads((RESULTS / "networks-quick.json").read_text())
    for name in ("clean", "cap700"):
        for path in ("ladder", "single"):
            row = data["profiles"][name][path]
            assert row["error"] is None, (name, path, row)
            assert row["frames"] > 0, (name, path)
    for path in ("ladder", "single"):
        row = data["profiles"]["clean"][path]
        # The picture carried the publisher's clock through the server.
        assert 0 < row["g2g_p50_ms"] < 3000, (path, row)
        assert row["freezes_per_min"] < 30, (path, row)
    # The single rung only ever has its 540p.
    assert set(data["profiles"]["cap700"]["single"]["on_rung_share"]) <= {"540p"}
    assert data["encode"]["ladder_ms"] > data["encode"]["single_ms"]
    assert (RESULTS / "networks-quick.png").stat().st_size > 10_000
