"""Smoke run of the abuse benchmark: small floods against a real server, every row there."""

from __future__ import annotations

import re

import pytest

from load_tests.common import ROOT
from tests.conftest import run_benchmark


def cells(out: str, flood: str) -> list[str]:
    line = next(line for line in out.splitlines() if line.startswith(f"| {flood} "))
    return [c.strip() for c in line.strip("|").split("|")]


@pytest.mark.timeout(240)
def test_abuse_benchmark_quick_run_shows_what_the_server_held():
    out = run_benchmark("abuse", "--quick", timeout=230)
    slow = cells(out, "slow connections")
    held = int(re.search(r"held open: (\d+)", slow[3]).group(1))
    assert held <= 512 and "429" in slow[3]  # the per-address cap, the rest refused
    streams = cells(out, "event streams")
    assert int(re.search(r"200: (\d+)", streams[3]).group(1)) <= 256
    guesses = cells(out, "login + Bearer guessing")
    assert "form 429" in guesses[3] and "bearer 429" in guesses[3]
    assert "Target /healthz p99 <= 50 ms" in out
    assert (ROOT / "load_tests" / "results" / "abuse-quick.png").stat().st_size > 10_000
