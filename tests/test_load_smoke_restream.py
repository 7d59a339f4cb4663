"""Smoke test of ``python -m load_tests.restream --quick`` (nginx RTMP, real serve)."""

from __future__ import annotations

import shutil

import pytest

from tests.conftest import run_benchmark

pytestmark = [
    pytest.mark.timeout(240),
    pytest.mark.skipif(shutil.which("nginx") is None, reason="nginx not installed (make system)"),
]


def test_restream_benchmark_quick_runs():
    out = run_benchmark("restream", "--quick", timeout=220)
    assert "per destination" in out
    assert "start -> first RTMP video tag at nginx" in out
