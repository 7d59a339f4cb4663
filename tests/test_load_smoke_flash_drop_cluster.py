"""The single Redis vs Redis Cluster add-to-cart benchmark runs end to end, tiny sizes."""

from __future__ import annotations

import re

import pytest

from load_tests.common import RESULTS
from tests.conftest import run_benchmark


@pytest.mark.timeout(180)
def test_flash_drop_cluster_comparison_quick():
    out = run_benchmark("flash_drop", "--quick", "--cluster", timeout=170)
    rows = [line for line in out.splitlines() if line.startswith("| ")][1:]
    names = {r.split("|")[1].strip() for r in rows}
    assert names == {
        "HTTP closed loop, single Redis",
        "HTTP closed loop, Redis Cluster (3 masters)",
        "Python client, coalesced (no HTTP), single Redis",
        "Python client, coalesced (no HTTP), Redis Cluster (3 masters)",
        "Python client, one EVALSHA per call (no HTTP), Redis Cluster (3 masters)",
    }
    for row in rows:
        cells = [c.strip() for c in row.split("|")[1:-1]]
        assert float(cells[2]) > 0 and cells[5] == "0", row  # adds/s, no failed add
    assert re.search(r"cluster \d+/s vs single Redis \d+/s \(\d", out)
    assert re.search(r"Coalescing on the cluster: \d+/s coalesced vs \d+/s", out)
    assert (RESULTS / "flash_drop_cluster_quick.png").stat().st_size > 1000
