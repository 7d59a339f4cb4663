"""Smoke run of the label benchmark: real server, real webhooks, a real printer socket."""

from __future__ import annotations

import pytest

from load_tests.common import ROOT
from tests.conftest import run_benchmark


@pytest.mark.timeout(150)
def test_labels_benchmark_quick_run_prints_every_label_once():
    out = run_benchmark("labels", "--quick", "--orders", "10", timeout=140)
    assert "| webhook -> first label byte, one at a time " in out
    assert "| 10/10 " in out and "duplicate labels at the printer: 0" in out
    assert "Target p99 one at a time <= 250 ms: met" in out
    assert (ROOT / "load_tests" / "results" / "labels-quick.png").stat().st_size > 10_000
