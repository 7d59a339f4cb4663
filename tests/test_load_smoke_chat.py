"""The chat benchmark runs end to end at tiny sizes and reports sane figures."""

from __future__ import annotations

import pytest

from load_tests.common import RESULTS
from tests.conftest import run_benchmark


@pytest.mark.timeout(180)
def test_chat_benchmark_quick():
    out = run_benchmark("chat", "--quick", timeout=170)
    rows = {
        line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
        for line in out.splitlines()
        if line.startswith("| ")
    }
    ours = rows["chat via server SSE (2 processes)"]
    floor = rows["raw limit: Redis pub/sub via redis-py"]
    for row in (ours, floor):
        got, expected = row[2].split("/")
        assert int(expected) > 0 and got == expected, row  # every message to everyone
    assert float(ours[4]) > 0  # p99 ms
    assert rows["failed posts / deletes"] == ["0 / 0"]
    got, total = rows["deletes that reached every subscriber"][0].split("/")
    assert int(total) >= 1 and got == total
    assert float(rows["server CPU per 1,000 subscribers (cores)"][0]) > 0
    assert (RESULTS / "chat_quick.png").stat().st_size > 1000
