"""Smoke run of the label benchmark: real server, real webhooks, a real printer socket."""

from __future__ import annotations

import subprocess
import sys

import pytest

from load_tests.common import ROOT


@pytest.mark.timeout(150)
def test_labels_benchmark_quick_run_prints_every_label_once():
    proc = subprocess.run(
        [sys.executable, "-m", "load_tests.labels", "--quick", "--orders", "10"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=140,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "| webhook -> first label byte, one at a time " in out
    assert "| 10/10 " in out and "duplicate labels at the printer: 0" in out
    assert "Target p99 one at a time <= 250 ms: met" in out
    assert (ROOT / "load_tests" / "results" / "labels-quick.png").stat().st_size > 10_000
