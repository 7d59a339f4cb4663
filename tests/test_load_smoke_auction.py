"""The auction benchmark runs end to end at tiny sizes and reports sane figures."""

from __future__ import annotations

import pytest

from tests.conftest import run_benchmark


@pytest.mark.timeout(180)
def test_auction_benchmark_quick():
    out = run_benchmark("auction", "--quick", timeout=170)
    rows = {
        line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
        for line in out.splitlines()
        if line.startswith("| ")
    }
    accepted = rows["accepted (201)"]
    assert int(accepted[0]) > 0 and float(accepted[2]) > 0  # some bids won, p99 measured
    picture = rows["accepted -> leader in composed picture"]
    assert int(picture[0]) > 0 and 0 < float(picture[2]) < 2000  # media_ts after acceptance
    assert float(rows["EVALSHA pipelined (100 per round trip), every bid accepted"][0]) > 0
    assert "connection errors" in out and ", 0 connection errors" in out
