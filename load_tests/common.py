"""Shared helpers for benchmarks: percentiles, tables, and BENCHMARKS.md sections."""

from __future__ import annotations

import contextlib
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import textwrap
import threading
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "BENCHMARKS.md"
RESULTS = ROOT / "load_tests" / "results"


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = (len(ordered) - 1) * q / 100
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def table(headers: list[str], rows: list[list[object]]) -> str:
    """A Markdown table (also readable printed to a terminal)."""
    cells = [[str(h) for h in headers]] + [[_fmt(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = [
        "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in cells
    ]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
    return f"{cpu}, {cores} cores, Python {platform.python_version()}"


def write_section(name: str, command: str, body: str) -> None:
    """Replace (or add) the section for benchmark ``name`` in BENCHMARKS.md."""
    start, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    section = f"{start}\n## {name}\n\nCommand: `{command}`  \nMachine: {machine()}\n\n{body.strip()}\n{end}"
    text = (
        BENCHMARKS.read_text()
        if BENCHMARKS.exists()
        else "# Benchmarks\n\nFigures measured on this project's machines; each section names the command that produced it.\n"
    )
    pattern = re.compile(re.escape(start) + ".*?" + re.escape(end), re.S)
    text = (
        pattern.sub(lambda _m: section, text)
        if pattern.search(text)
        else text.rstrip() + "\n\n" + section + "\n"
    )
    BENCHMARKS.write_text(text)


LISTENING = re.compile(r"showroom listening on (http://\S+)")


def spawn_serve(
    args: list[str],
    *,
    env: dict[str, str] | None = None,
    log_path: Path | None = None,
    timeout: float = 60,
    command: str = "serve",
) -> tuple[subprocess.Popen, str]:
    """``showroom serve ARGS`` (or another ``command``: ``edge``) as a child process;
    returns it and its URL once it listens.

    Its output keeps being drained (into ``log_path``, or nowhere) so a full pipe never
    blocks the server; a server that hangs without a word is killed after ``timeout``.
    """
    proc = subprocess.Popen(
        [sys.executable, "-m", "server.cli", command, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=ROOT,
        env=env,
    )
    assert proc.stdout is not None
    lines: list[str] = []
    watchdog = threading.Timer(timeout, proc.kill)
    watchdog.start()
    try:
        for line in proc.stdout:
            lines.append(line)
            m = LISTENING.search(line)
            if m:
                threading.Thread(target=_drain, args=(proc, log_path), daemon=True).start()
                return proc, m.group(1)
    finally:
        watchdog.cancel()
    proc.kill()
    proc.wait()
    raise RuntimeError(f"showroom {command} did not start:\n" + "".join(lines[-30:]))


def _drain(proc: subprocess.Popen, log_path: Path | None) -> None:
    assert proc.stdout is not None
    if log_path is None:
        for _ in proc.stdout:
            pass
        return
    with log_path.open("a") as out:
        for line in proc.stdout:
            out.write(line)


@dataclass(frozen=True)
class VideoSize:
    width: int = 640
    height: int = 360
    fps: int = 30
    bitrate_kbps: int = 1000


# One product, for shows whose tests and benchmarks are about something else.
ONE_MUG = """
[[products]]
sku = "MUG-01"
name = "Stoneware mug"
price = "18.00"
stock = 40
"""


def manifest_toml(
    show_id: str,
    *,
    title: str,
    stream_key: str,
    staff_password: str,
    products: str,
    video: VideoSize | None = None,
    printers: str = "",
    show_extra: str = "",
) -> str:
    """A show manifest for tests and benchmarks; ``products``/``printers`` are TOML tables."""
    parts = [
        f'[show]\nid = "{show_id}"\ntitle = "{title}"\nstream_key = "{stream_key}"\ncurrency = "usd"\n',
        textwrap.dedent(show_extra).strip() + "\n" if show_extra.strip() else "",
    ]
    if video is not None:
        parts.append(
            f"[show.video]\nwidth = {video.width}\nheight = {video.height}\n"
            f"fps = {video.fps}\nbitrate_kbps = {video.bitrate_kbps}\n"
        )
    parts += [textwrap.dedent(products), textwrap.dedent(printers)]
    parts.append(f'\n[staff]\npassword = "{staff_password}"\n')
    return "\n".join(parts)


CLK_TCK = os.sysconf("SC_CLK_TCK")


def _stat(pid: int, task: int | None = None) -> list[str]:
    """The fields of /proc/PID/stat (or of one thread's) after the command name."""
    path = f"/proc/{pid}/stat" if task is None else f"/proc/{pid}/task/{task}/stat"
    return Path(path).read_text().rsplit(")", 1)[1].split()


def proc_cpu_s(pid: int, thread: int | None = None) -> float:
    """CPU seconds (user + system) of one process (or one of its threads), from /proc;
    0.0 once it is gone."""
    try:
        fields = _stat(pid, thread)
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def tree_pids(pid: int) -> list[int]:
    """``pid`` and its live descendants (a server and its workers, a show's pushers)."""
    pids, todo = [], [pid]
    while todo:
        p = todo.pop()
        pids.append(p)
        with contextlib.suppress(OSError):
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
    return pids


def tree_cpu_s(pid: int) -> float:
    """CPU seconds of ``pid`` and its live descendants (``serve --workers`` is a parent
    and its workers)."""
    return sum(proc_cpu_s(p) for p in tree_pids(pid))


def stop_process(proc: subprocess.Popen, timeout: float = 15) -> None:
    """SIGTERM (a server drains), then SIGKILL if it has not gone within ``timeout``."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
