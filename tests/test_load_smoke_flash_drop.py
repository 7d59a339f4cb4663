"""The flash-drop benchmark runs end to end at tiny sizes and reports sane figures."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from load_tests.common import RESULTS, ROOT


@pytest.mark.timeout(180)
def test_flash_drop_benchmark_quick():
    out = subprocess.run(
        [sys.executable, "-m", "load_tests.flash_drop", "--quick"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=170,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    rows = [line for line in out.stdout.splitlines() if line.startswith("| ")][1:]
    kinds = {r.split("|")[1].strip().split(" (")[0].split(":")[0] for r in rows}
    assert {"HTTP closed loop", "HTTP paced", "HTTP burst", "Python client", "raw limit"} <= kinds
    for row in rows:
        cells = [c.strip() for c in row.split("|")[1:-1]]
        assert float(cells[2]) > 0, row  # adds/s
        assert cells[5] == "0", row  # no failed add-to-cart
    assert re.search(r"per core of server CPU", out.stdout)
    assert (RESULTS / "flash_drop_quick.png").stat().st_size > 1000
