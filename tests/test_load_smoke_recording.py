"""Smoke run of the recording benchmark: remux vs re-encoding recorder CPU, clip ready
time and the replay page's first frame in Chromium, on a real server."""

from __future__ import annotations

import pytest

from load_tests.common import ROOT
from tests.conftest import run_benchmark


@pytest.mark.timeout(150)
def test_recording_benchmark_quick_run():
    out = run_benchmark("recording", "--quick", timeout=140)
    assert "| recorder: remux shared packets (shipped)" in out
    assert "| recorder: own encoders (libx264 + AAC; naive)" in out
    assert "| clip ready after its segment ended (s) | 2 " in out
    assert "kbps measured (nominal 800 kbps)" in out
    assert (ROOT / "load_tests" / "results" / "recording-quick.png").stat().st_size > 10_000
