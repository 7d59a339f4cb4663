"""Smoke run of the latency benchmark: a real server, the PocketCam, aiortc viewers and
headless Chromium reading the time code back from the composed picture."""

from __future__ import annotations

import json

import pytest

from load_tests.common import RESULTS
from tests.conftest import run_benchmark


@pytest.mark.timeout(170)
def test_latency_benchmark_quick_run_reads_the_time_code_at_every_viewer():
    out = run_benchmark("latency", "--quick", timeout=160)
    assert "| direct aiortc peer-to-peer (no server)" in out
    assert "| server, aiortc viewers" in out and "| server, Chromium (viewer page)" in out
    assert "Targets (loopback): g2g p95 <= 150 ms" in out
    data = json.loads((RESULTS / "latency-quick.json").read_text())
    phases = data["phases"]
    assert [p["viewers"] for p in phases] == [1, 3, 1]
    for phase in phases:
        # Every viewer joined, and the picture it decoded carried the publisher's clock:
        # the frames came through the server, composed, within a sane delay.
        assert phase["failed"] == 0, phase["errors"]
        assert len(phase["latencies"]) >= 10, phase["name"]
        lats = sorted(phase["latencies"])
        assert 0 < lats[len(lats) // 2] < 2000, phase["name"]
        assert phase["joins"] and all(0 < j < 10_000 for j in phase["joins"])
    assert (RESULTS / "latency-quick.png").stat().st_size > 10_000
