"""The flash-drop benchmark runs end to end at tiny sizes and reports sane figures."""

from __future__ import annotations

import re

import pytest

from load_tests.common import RESULTS
from tests.conftest import run_benchmark


@pytest.mark.timeout(180)
def test_flash_drop_benchmark_quick():
    out = run_benchmark("flash_drop", "--quick", timeout=170)
    rows = [line for line in out.splitlines() if line.startswith("| ")][1:]
    kinds = {r.split("|")[1].strip().split(" (")[0].split(":")[0] for r in rows}
    assert {"HTTP closed loop", "HTTP paced", "HTTP burst", "Python client", "raw limit"} <= kinds
    for row in rows:
        cells = [c.strip() for c in row.split("|")[1:-1]]
        assert float(cells[2]) > 0, row  # adds/s
        assert cells[5] == "0", row  # no failed add-to-cart
    assert re.search(r"per core of server CPU", out)
    assert (RESULTS / "flash_drop_quick.png").stat().st_size > 1000


@pytest.mark.timeout(180)
def test_flash_drop_workers_comparison_quick():
    out = run_benchmark("flash_drop", "--quick", "--workers", "2", timeout=170)
    rows = [line for line in out.splitlines() if line.startswith("| ")][1:]
    names = {r.split("|")[1].strip() for r in rows}
    assert names == {"HTTP closed loop, 1 worker", "HTTP closed loop, 2 workers"}
    for row in rows:
        cells = [c.strip() for c in row.split("|")[1:-1]]
        assert float(cells[2]) > 0 and cells[5] == "0", row  # adds/s, no errors
    assert re.search(r"at 2 workers vs 1 \(\d+ buyers\): (met|NOT met) \(\d", out)
