"""Every benchmark, one after the other, and a summary of every figure.

    python -m load_tests.report [--quick] [--only latency,labels] [--skip fanout]

Runs each benchmark that exists (fanout, overlays, card_sync, flash_drop, relay, edge, labels,
latency, recording, chat, abuse) as ``python -m load_tests.NAME`` in its own process, one at a time (the
machine has two cores; benchmarks never share it with each other). Each full run writes its own
BENCHMARKS.md section; this one adds a summary section at the top (machine, command,
each benchmark's main table with its comparison column, and its target lines) and a
summary plot under ``load_tests/results/``: glass-to-glass latency distributions,
server CPU against viewers, and add-to-cart latency against concurrency. The tables
are read from each benchmark's own output, so a benchmark needs nothing special to
take part beyond printing its Markdown tables.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from load_tests.common import BENCHMARKS, RESULTS, ROOT, machine, table

BENCHES = (
    "fanout",
    "overlays",
    "card_sync",
    "flash_drop",
    "relay",
    "edge",
    "labels",
    "latency",
    "networks",
    "recording",
    "chat",
    "abuse",
)
FULL_TIMEOUT_S = 1200
QUICK_TIMEOUT_S = 300
SUMMARY = "summary"


@dataclass
class Run:
    name: str
    command: str
    returncode: int | None = None
    seconds: float = 0.0
    output: str = ""
    tables: list[list[list[str]]] = field(default_factory=list)  # header row first
    verdicts: list[str] = field(default_factory=list)

    @property
    def status(self) -> str:
        if self.returncode is None:
            return "timed out"
        return "ok" if self.returncode == 0 else f"exit {self.returncode}"


# --- reading a benchmark's output ---------------------------------------------------------


def parse_tables(text: str) -> list[list[list[str]]]:
    """Markdown tables in ``text``: each a list of rows (header first), cells stripped."""
    tables: list[list[list[str]]] = []
    current: list[list[str]] = []
    for line in [*text.splitlines(), ""]:
        stripped = line.strip()
        if stripped.startswith("|") and stripped.endswith("|"):
            cells = [c.strip() for c in stripped[1:-1].split("|")]
            if not all(re.fullmatch(r":?-{2,}:?", c) for c in cells):
                current.append(cells)
            continue
        if len(current) >= 2:
            # A cell holding a "|" (e.g. in code) must not shift the columns: pad or fold.
            width = len(current[0])
            tables.append(
                [
                    (r + [""] * width)[:width]
                    if len(r) <= width
                    else r[: width - 1] + [" | ".join(r[width - 1 :])]
                    for r in current
                ]
            )
        current = []
    return tables


def verdict_lines(text: str) -> list[str]:
    """The sentences where a benchmark states its targets and whether they were met."""
    found = []
    for line in text.splitlines():
        if line.strip().startswith("|"):
            continue
        # From "Target(s)" to the end of that sentence (decimals like 75.9 do not end it).
        for m in re.finditer(r"\bTargets?\b.*?(?:\.(?=\s+[A-Z`])|$)", line):
            found.append(m.group().strip())
    return found


def number(cell: str) -> float | None:
    m = re.search(r"-?\d+(?:\.\d+)?(?:e-?\d+)?", cell.replace(",", ""))
    return float(m.group()) if m else None


def column(headers: list[str], *patterns: str) -> int | None:
    for pattern in patterns:
        for i, h in enumerate(headers):
            if re.search(pattern, h, re.I):
                return i
    return None


# --- running -----------------------------------------------------------------------------


def available(only: set[str] | None, skip: set[str]) -> list[str]:
    names = [n for n in BENCHES if (ROOT / "load_tests" / f"{n}.py").exists()]
    return [n for n in names if (not only or n in only) and n not in skip]


def run_one(name: str, quick: bool) -> Run:
    args = ["--quick"] if quick else []
    run = Run(name, " ".join(["python", "-m", f"load_tests.{name}", *args]))
    print(f"== {run.command}", flush=True)
    t0 = time.monotonic()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", f"load_tests.{name}", *args],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=QUICK_TIMEOUT_S if quick else FULL_TIMEOUT_S,
        )
        run.returncode, run.output = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout or b""
        run.output = out.decode(errors="replace") if isinstance(out, bytes) else out
    run.seconds = time.monotonic() - t0
    run.tables = parse_tables(run.output)
    run.verdicts = verdict_lines(run.output)
    print(f"   {run.status} in {run.seconds:.0f} s", flush=True)
    return run


# --- the summary ---------------------------------------------------------------------------


def render(runs: list[Run], plot_path: Path | None, missing: list[str]) -> str:
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    overview = table(
        ["benchmark", "command", "result", "wall time s", "targets"],
        [
            [
                r.name,
                f"`{r.command}`",
                r.status,
                round(r.seconds),
                "; ".join(_short_verdict(v) for v in r.verdicts) or "-",
            ]
            for r in runs
        ],
    )
    parts = [
        f"Run {when}, one benchmark at a time; every server, publisher, viewer and browser "
        "runs on this one machine.",
        "",
        overview,
    ]
    if missing:
        parts += ["", f"Not run (no module yet): {', '.join(missing)}."]
    for r in runs:
        parts += ["", f"### {r.name}", ""]
        if r.tables:
            main = r.tables[0]
            parts.append(table(main[0], main[1:]))
            if r.verdicts:
                parts += ["", *(f"- {v}" for v in r.verdicts)]
            parts.append(f"\nFull figures: the `{r.name}` section below.")
        else:
            tail = "\n".join(r.output.strip().splitlines()[-8:]) or "(no output)"
            parts += [f"No table ({r.status}). Last lines of its output:", "", "```", tail, "```"]
    if plot_path is not None:
        parts += ["", f"Summary plot: `{plot_path.relative_to(ROOT)}`"]
    return "\n".join(parts)


def _short_verdict(line: str) -> str:
    line = re.sub(r"^targets?\s*(\([^)]*\))?:\s*", "", line, flags=re.I)
    return line if len(line) <= 160 else line[:157] + "..."


def write_summary(command: str, body: str, path: Path = BENCHMARKS) -> None:
    """Put the summary section at the top of BENCHMARKS.md (after its title paragraph)."""
    start, end = f"<!-- bench:{SUMMARY} -->", f"<!-- /bench:{SUMMARY} -->"
    section = (
        f"{start}\n## Summary\n\nCommand: `{command}`  \nMachine: {machine()}\n\n"
        f"{body.strip()}\n{end}"
    )
    text = (
        path.read_text()
        if path.exists()
        else "# Benchmarks\n\nFigures measured on this project's machines; each section "
        "names the command that produced it.\n"
    )
    pattern = re.compile(re.escape(start) + ".*?" + re.escape(end), re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _m: section, text)
    else:
        first = text.find("<!-- bench:")
        if first == -1:
            text = text.rstrip() + "\n\n" + section + "\n"
        else:
            text = text[:first] + section + "\n\n" + text[first:]
    path.write_text(text)


# --- plots -------------------------------------------------------------------------------


def cpu_points(runs: list[Run], latency: dict | None) -> dict[str, list[tuple[float, float]]]:
    """Server CPU (cores) against viewers: fan-out's series, and the latency run's."""
    series: dict[str, list[tuple[float, float]]] = {}
    for r in runs:
        if r.name != "fanout":
            continue
        for t in r.tables:
            v, c = column(t[0], r"^viewers$"), column(t[0], r"^server CPU \(cores\)")
            if v is None or c is None or column(t[0], r"^path") is None:
                continue
            for row in t[1:]:
                x, y = number(row[v]), number(row[c])
                if x is not None and y is not None:
                    series.setdefault(f"fanout: {row[0]}", []).append((x, y))
    if latency:
        pts = [
            (p["viewers"], p["server_cpu"] / 100)
            for p in latency["phases"]
            if "aiortc" in p["name"] and p["server_cpu"] == p["server_cpu"]
        ]
        if pts:
            o = latency.get("options", {})
            series[f"latency run: showroom serve, {o.get('width')}x{o.get('height')}"] = pts
    return series


def cart_points(runs: list[Run]) -> dict[str, dict[str, list[tuple[float, float]]]]:
    """Add-to-cart latency (ms) against concurrency, per path and percentile, from the
    flash drop's tables."""
    series: dict[str, dict[str, list[tuple[float, float]]]] = {}
    for r in runs:
        if r.name != "flash_drop":
            continue
        for t in r.tables:
            x = column(t[0], r"concurren", r"buyers", r"clients", r"^users")
            if x is None:
                continue
            for label in ("p50", "p99"):
                y = column(t[0], label)
                if y is None:
                    continue
                for row in t[1:]:
                    xv, yv = number(row[x]), number(row[y])
                    if xv is not None and yv is not None:
                        path = row[0] if column(t[0], r"^path") == 0 else "add-to-cart"
                        series.setdefault(path, {}).setdefault(label, []).append((xv, yv))
    return series


def plot(runs: list[Run], latency: dict | None, quick: bool) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.6))
    ax = axes[0]
    if latency:
        phases = [latency["floors"]["p2p"], *latency["phases"]]
        for p in phases:
            if p["latencies"]:
                xs = sorted(p["latencies"])
                ax.plot(xs, [(i + 1) / len(xs) for i in range(len(xs))], label=_label(p))
        ax.axvline(150, color="grey", linestyle="--", label="target p95 150 ms")
        ax.legend(fontsize=6)
    else:
        _no_data(ax, "latency benchmark did not run")
    ax.set(xlabel="glass-to-glass latency (ms)", ylabel="fraction of frames")
    ax.set_title("Glass-to-glass latency (CDF)")

    ax = axes[1]
    cpu = cpu_points(runs, latency)
    for name, pts in cpu.items():
        pts.sort()
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=name)
    if cpu:
        ax.legend(fontsize=7)
    else:
        _no_data(ax, "no viewers/CPU figures")
    ax.set_ylim(bottom=0)
    ax.set(xlabel="viewers", ylabel="server CPU (cores)")
    ax.set_title("Server CPU vs viewers")

    ax = axes[2]
    cart = cart_points(runs)
    for i, (path, by_pct) in enumerate(cart.items()):
        colour = f"C{i % 10}"
        for pct, style in (("p50", "o-"), ("p99", "s--")):
            pts = sorted(by_pct.get(pct, []))
            if pts:
                ax.plot(
                    [p[0] for p in pts], [p[1] for p in pts], style, color=colour,
                    label=f"{path} {pct}",
                )  # fmt: skip
    if cart:
        ax.set_yscale("log")
        ax.legend(fontsize=6)
    else:
        _no_data(ax, "flash drop benchmark: no table with concurrency")
    ax.set(xlabel="concurrent buyers", ylabel="add-to-cart latency (ms)")
    ax.set_title("Add-to-cart latency vs concurrency")
    fig.tight_layout()
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / ("summary-quick.png" if quick else "summary.png")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _label(phase: dict) -> str:
    return f"{phase['name']} x{phase['viewers']}".replace("server, ", "")


def _no_data(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="grey")


def load_latency(quick: bool) -> dict | None:
    path = RESULTS / ("latency-quick.json" if quick else "latency.json")  # 1 worker
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m load_tests.report", description=__doc__)
    p.add_argument("--quick", action="store_true", help="every benchmark at its --quick size")
    p.add_argument("--only", help="comma-separated benchmark names")
    p.add_argument("--skip", default="", help="comma-separated benchmark names")
    p.add_argument("--output", type=Path, default=None, help="write the summary here")
    p.add_argument(
        "--from-saved", action="store_true", help="rebuild the summary from the last run's outputs"
    )
    args = p.parse_args(argv)
    only = set(args.only.split(",")) if args.only else None
    skip = set(filter(None, args.skip.split(",")))
    names = available(only, skip)
    missing = [n for n in BENCHES if n not in names and (not only or n in only) and n not in skip]
    saved = RESULTS / ("report-runs-quick.json" if args.quick else "report-runs.json")
    if args.from_saved:
        runs = [Run(**r) for r in json.loads(saved.read_text())]
        names = [r.name for r in runs]
    else:
        runs = []
        for name in names:
            runs.append(run_one(name, args.quick))
            # Kept after every run, so a summary can be rebuilt without re-running.
            RESULTS.mkdir(parents=True, exist_ok=True)
            saved.write_text(json.dumps([asdict(r) for r in runs]))
    latency = load_latency(args.quick) if "latency" in names else None
    png = plot(runs, latency, args.quick)
    command = "python -m load_tests.report" + (" --quick" if args.quick else "")
    body = render(runs, png, missing)
    print(body)
    # Quick runs are smoke runs: they never touch BENCHMARKS.md unless told where to write.
    if args.output is not None:
        write_summary(command, body, args.output)
    elif not args.quick:
        write_summary(command, body)
    return 0 if all(r.returncode == 0 for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
