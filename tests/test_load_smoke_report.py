"""The report runs real benchmarks and puts their tables in a summary at the top."""

from __future__ import annotations

import pytest

from load_tests.common import RESULTS
from load_tests.report import parse_tables, verdict_lines, write_summary
from tests.conftest import run_benchmark


@pytest.mark.timeout(150)
def test_quick_report_summarises_a_real_benchmark_at_the_top(tmp_path):
    out_md = tmp_path / "BENCHMARKS.md"
    out_md.write_text(
        "# Benchmarks\n\nIntro.\n\n<!-- bench:labels -->\n## labels\nold\n<!-- /bench:labels -->\n"
    )
    run_benchmark("report", "--quick", "--only", "labels", "--output", str(out_md), timeout=140)
    text = out_md.read_text()
    # The summary sits above every benchmark's own section, which is left alone.
    assert text.index("<!-- bench:summary -->") < text.index("<!-- bench:labels -->")
    assert "## labels\nold" in text
    summary = text[text.index("<!-- bench:summary -->") : text.index("<!-- /bench:summary -->")]
    assert "Machine: " in summary and "`python -m load_tests.report --quick`" in summary
    assert "| labels    | `python -m load_tests.labels --quick` | ok " in summary
    tables = parse_tables(summary)
    assert tables[0][0][:3] == ["benchmark", "command", "result"]
    # The labels benchmark's own table, with its comparison rows, made it in.
    assert any(row[0].startswith("comparison:") for t in tables for row in t)
    assert (RESULTS / "summary-quick.png").stat().st_size > 10_000


def test_reading_tables_and_targets_from_a_benchmark_output(tmp_path):
    out = "\n".join(
        [
            "intro",
            "| path | p50 ms |",
            "|------|--------|",
            "| ours | 1.5    |",
            "| naive | 30    |",
            "",
            "Targets: p95 <= 150 ms: met (worst 120.5 ms). Next sentence.",
        ]
    )
    assert parse_tables(out) == [[["path", "p50 ms"], ["ours", "1.5"], ["naive", "30"]]]
    assert verdict_lines(out) == ["Targets: p95 <= 150 ms: met (worst 120.5 ms)."]
    # Rewriting the summary replaces it in place.
    md = tmp_path / "B.md"
    write_summary("cmd", "first", md)
    write_summary("cmd", "second", md)
    text = md.read_text()
    assert text.count("<!-- bench:summary -->") == 1 and "second" in text and "first" not in text
