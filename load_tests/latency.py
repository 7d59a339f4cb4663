"""Glass-to-glass latency and join time, as viewers feel them.

    python -m load_tests.latency [--quick] [--viewers 1,10,50] [--seconds 15] [--workers 2]

Starts a real ``showroom serve`` (embedded Redis and Stripe sandbox, as the CLI does),
publishes a time-coded test pattern over WHIP from a separate process (the PocketCam,
``showroom pocketcam --source testsrc``, or this module's own aiortc publisher), then
connects N aiortc viewers over WHEP that decode the frames and read the capture time
back: glass-to-glass = arrival of the decoded frame - stamped capture time, join =
WHEP POST -> first decoded frame (beyond 10 viewers, the others decode only their first
frame, then receive without decoding, so one measuring process keeps up). The same code is read in headless Chromium from the
viewer page. The comparison rows are floors measured in the same run: UDP loopback
RTT, one H.264 encode+decode, and the same source sent straight from one aiortc peer
to another with no server in between.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import aiohttp
from yarl import URL

from load_tests.common import (
    RESULTS,
    ROOT,
    VideoSize,
    manifest_toml,
    median,
    percentile,
    spawn_serve,
    stop_process,
    table,
    tree_cpu_s,
    write_section,
)
from load_tests.rtc_peers import (
    StampedSource,
    ViewerStats,
    direct_peer_to_peer,
    encode_decode_ms,
    loopback_udp_rtt,
    report_to_server,
    run_viewer,
    whip_publish,
)
from server.embedded import free_port

SHOW = "latency"
STREAM_KEY = "latency-bench-key"
TARGET_G2G_P95_MS = 150
TARGET_JOIN_P95_MS = 500
# The server forces at most one keyframe a second per show.
KEYFRAME_GAP_S = 1.5
PUBLISHERS = {
    "builtin": "this module's aiortc publisher, moving bars and noise",
    "pocketcam": "the PocketCam's test pattern (flat: the stream stays below its bitrate)",
}
# Viewers beyond this many receive every packet but decode only their first frame.
PROBES = 10


@dataclass
class Options:
    viewers: list[int]
    seconds: float
    width: int
    height: int
    fps: int
    publisher: str  # "pocketcam" | "builtin"
    browser: bool
    quick: bool
    write: bool = True
    workers: int = 1  # with more, a row of its own for the viewers on non-origin workers


@dataclass
class PhaseResult:
    name: str
    viewers: int
    latencies: list[float] = field(default_factory=list)
    joins: list[float] = field(default_factory=list)
    answers: list[float] = field(default_factory=list)  # WHEP POST -> answer
    connects: list[float] = field(default_factory=list)  # WHEP POST -> connected
    frames: int = 0
    unreadable: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)
    server_cpu: float = float("nan")  # % of one core
    client_cpu: float = float("nan")
    publisher_cpu: float = float("nan")
    machine_busy: float = float("nan")  # % of all cores, everything on the machine
    server_added: list[float] = field(default_factory=list)  # server's own per-frame ms
    note: str = ""
    relayed: PhaseResult | None = None  # the same phase, viewers on non-origin workers only


# --- processes --------------------------------------------------------------------------


def manifest(opts: Options) -> str:
    return manifest_toml(
        SHOW,
        title="Latency bench",
        stream_key=STREAM_KEY,
        staff_password="latency-bench-staff",
        video=VideoSize(opts.width, opts.height, opts.fps, 1500),
        products='[[products]]\nsku = "MUG-01"\nname = "Stoneware mug"\nprice = "18.00"\nstock = 40\n',
    )


def start_server(workdir: Path, opts: Options) -> tuple[subprocess.Popen, str]:
    path = workdir / f"{SHOW}.toml"
    path.write_text(manifest(opts))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SHOWROOM_", "STRIPE_"))}
    args = ["--manifest", str(path), "--port", str(free_port()), "--data-dir", str(workdir / "var")]
    if opts.workers > 1:
        args += ["--workers", str(opts.workers)]
    return spawn_serve([*args, "--no-print-worker"], env=env, log_path=workdir / "server.log")


def start_publisher(base: str, opts: Options, workdir: Path) -> subprocess.Popen:
    url = f"{base}/whip/{SHOW}"
    size = f"{opts.width}x{opts.height}"
    if opts.publisher == "pocketcam":
        cmd = [sys.executable, "-m", "server.cli", "pocketcam", url, "--key", STREAM_KEY]
        cmd += ["--source", "testsrc", "--size", size, "--fps", str(opts.fps)]
    else:
        cmd = [sys.executable, "-m", "load_tests.latency", "--publish-to", url]
        cmd += ["--size", size, "--fps", str(opts.fps)]
    log = (workdir / "publisher.log").open("w")
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)


async def publish_forever(url: str, width: int, height: int, fps: int) -> None:
    """This module's own WHIP publisher (``--publish-to``): runs until SIGTERM."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with aiohttp.ClientSession() as http:
        pub = await whip_publish(http, url, STREAM_KEY, StampedSource(width, height, fps))
        try:
            await stop.wait()
        finally:
            if pub.location:
                with contextlib.suppress(Exception):
                    async with http.delete(
                        URL(url).join(URL(pub.location)),
                        headers={"Authorization": f"Bearer {STREAM_KEY}"},
                    ):
                        pass
            await pub.pc.close()


# --- CPU accounting -----------------------------------------------------------------------


def cpu_seconds(pid: int | None = None) -> float:
    """User + system CPU seconds of a process and its live children (``serve --workers``
    is a parent and its workers); this process alone when ``pid`` is None."""
    if pid is None:
        t = os.times()
        return t.user + t.system
    if not Path(f"/proc/{pid}").exists():
        return float("nan")
    return tree_cpu_s(pid)


def machine_jiffies() -> tuple[int, int]:
    """(busy, total) CPU jiffies of the whole machine, all cores, from /proc/stat."""
    try:
        first = Path("/proc/stat").read_text().split("\n", 1)[0]
        fields = [int(v) for v in first.split()[1:9]]
    except (OSError, ValueError):
        return 0, 0
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


class CpuMeter:
    """CPU use of some processes (% of one core) and of the whole machine (% of all)."""

    def __init__(self, pids: dict[str, int | None]) -> None:
        self.pids = pids
        self.t0 = time.monotonic()
        self.c0 = {name: cpu_seconds(pid) for name, pid in pids.items()}
        self.m0 = machine_jiffies()

    def percent(self) -> dict[str, float]:
        wall = time.monotonic() - self.t0
        out = {
            name: 100 * (cpu_seconds(pid) - self.c0[name]) / wall for name, pid in self.pids.items()
        }
        m1 = machine_jiffies()
        busy, total = m1[0] - self.m0[0], m1[1] - self.m0[1]
        out["machine"] = 100 * busy / total if total else float("nan")
        return out


# --- phases -------------------------------------------------------------------------------


async def wait_for_picture(base: str, limit_s: float = 30) -> None:
    """Until one viewer reads a time code (the publisher is live and composed)."""
    deadline = time.monotonic() + limit_s
    stats = ViewerStats()
    while time.monotonic() < deadline and not stats.samples:
        stats, stop = ViewerStats(), asyncio.Event()
        task = asyncio.create_task(run_viewer(base, SHOW, stats, stop))
        while time.monotonic() < deadline and not stats.samples and not task.done():
            await asyncio.sleep(0.1)
        stop.set()
        await task
        if not stats.samples:
            await asyncio.sleep(0.5)
    if not stats.samples:
        raise RuntimeError(
            f"no time-coded frame reached a viewer within {limit_s:.0f}s "
            f"(frames seen: {stats.frames}, unreadable: {stats.unreadable}, "
            f"error: {stats.error})"
        )


async def server_added_ms(base: str, start: float, end: float) -> list[float]:
    """The server's own per-frame figures (source frame in -> packets handed to the
    fan-out, ms) for frames composed between ``start`` and ``end`` (epoch s)."""
    try:
        async with aiohttp.ClientSession(base, timeout=aiohttp.ClientTimeout(total=10)) as http:
            staff = {"Authorization": "Bearer latency-bench-staff"}  # operator figures
            async with http.get(f"/api/shows/{SHOW}/media", headers=staff) as resp:
                if resp.status != 200:
                    return []
                data = await resp.json()
    except (aiohttp.ClientError, TimeoutError, ValueError):
        return []
    return [
        float(ms)
        for wall, ms in data.get("server_latency_ms", [])
        if start * 1000 <= wall <= end * 1000
    ]


async def viewer_phase(
    base: str, n: int, opts: Options, pids: dict[str, int | None]
) -> PhaseResult:
    """n viewers join (spread over a ramp), then all watch for ``opts.seconds``."""
    stats = [ViewerStats() for _ in range(n)]
    stop = asyncio.Event()
    tasks: list[asyncio.Task] = []
    ramp = min(0.1 * n, 5.0)
    result = PhaseResult(name="server, aiortc viewers", viewers=n)
    try:
        for i, s in enumerate(stats):
            decode = i < PROBES
            tasks.append(asyncio.create_task(run_viewer(base, SHOW, s, stop, decode)))
            await asyncio.sleep(ramp / n)
        join_deadline = time.monotonic() + 20
        while time.monotonic() < join_deadline:
            if all(s.join_ms is not None or s.error for s in stats):
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(1.0)  # let the last joiners' first keyframe settle
        meter = CpuMeter(pids)
        start = time.time()
        counted0 = _counted(stats)
        await asyncio.sleep(opts.seconds)
        end = time.time()
        cpu = meter.percent()
        counted = _counted(stats)
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
    result.server_added = await server_added_ms(base, start, end)
    result.server_cpu, result.client_cpu = cpu["server"], cpu["measuring"]
    result.publisher_cpu, result.machine_busy = cpu["publisher"], cpu["machine"]
    if opts.workers > 1:
        origin = await origin_worker(base)
        relayed = [s for s in stats if s.worker is not None and s.worker != origin]
        result.relayed = PhaseResult(name="non-origin worker (relayed)", viewers=len(relayed))
        _collect(result.relayed, relayed, start, end)
        result.note = f"origin worker {origin}"
    _collect(result, stats, start, end)
    if counting := _counting_note(counted0, counted, end - start):
        result.note = f"{result.note}; {counting}" if result.note else counting
    # Viewers report what they felt, as browser viewers do: /metrics sees it too.
    await asyncio.gather(
        *(report_to_server(base, SHOW, s, start, end) for s in stats[:20]),
        return_exceptions=True,
    )
    return result


async def origin_worker(base: str) -> str | None:
    """The worker index (as in X-Showroom-Worker) of the process composing the show."""
    headers = {"Authorization": "Bearer latency-bench-staff"}
    async with aiohttp.ClientSession(base) as http:
        for _ in range(10):
            async with http.get("/api/nodes", headers=headers) as resp:
                nodes = (await resp.json()).get("nodes", [])
            for node in nodes:
                match = re.search(r"-w(\d+)$", node.get("id", ""))
                if node.get("role") == "origin" and match:
                    return match.group(1)
            await asyncio.sleep(0.5)
    return None


def _counted(stats: list[ViewerStats]) -> dict[int, tuple[int, int, int]]:
    """(packets, bytes, lost) so far of each viewer's video, by its index."""
    return {
        i: (s.counter.packets, s.counter.bytes, s.counter.lost)
        for i, s in enumerate(stats)
        if s.counter
    }


def _counting_note(
    before: dict[int, tuple[int, int, int]],
    after: dict[int, tuple[int, int, int]],
    seconds: float,
) -> str:
    """What the viewers received in the window: the stream's bitrate as it reached them,
    and (for the ones that do not decode) proof that they kept receiving."""
    both = [(after[i], before[i]) for i in after if i in before]
    if not both:
        return ""
    rates = [(a[0] - b[0]) / seconds for a, b in both]
    kbps = [(a[1] - b[1]) * 8 / seconds / 1000 for a, b in both]
    got = sum(a[0] - b[0] for a, b in both)
    lost = sum(a[2] - b[2] for a, b in both)
    return (
        f"video as received (SRTP, {len(both)} viewers): median {median(kbps):.0f} kbps, "
        f"{median(rates):.0f} RTP packets/s each, {100 * lost / max(1, got + lost):.2f}% lost"
    )


def _collect(result: PhaseResult, stats: list[ViewerStats], start: float, end: float) -> None:
    for s in stats:
        result.latencies += s.latencies(start, end)
        if s.answer_ms is not None:
            result.answers.append(s.answer_ms)
        if s.connected_ms is not None:
            result.connects.append(s.connected_ms)
        if s.join_ms is not None:
            result.joins.append(s.join_ms)
        else:
            result.failed += 1
        result.frames += s.frames
        result.unreadable += s.unreadable
        if s.error and s.join_ms is None:
            result.errors.append(s.error)


async def browser_phase(
    base: str, opts: Options, pids: dict[str, int | None], mdns: bool = True
) -> PhaseResult:
    from load_tests.browser_probe import BrowserResult, measure_in_chromium

    meter = CpuMeter(pids)
    try:
        async with asyncio.timeout(opts.seconds + 90):
            got = await measure_in_chromium(base, SHOW, opts.seconds, mdns=mdns)
    except TimeoutError:
        got = BrowserResult(page="none", error="Chromium measurement timed out")
    cpu = meter.percent()
    end = time.time()
    label = got.page if mdns else f"{got.page}, no mDNS candidates"
    result = PhaseResult(name=f"server, Chromium ({label})", viewers=1)
    result.latencies, result.frames, result.unreadable = got.latencies, got.frames, got.unreadable
    result.joins = [got.join_ms] if got.join_ms is not None else []
    result.server_cpu, result.publisher_cpu = cpu["server"], cpu["publisher"]
    result.machine_busy = cpu["machine"]
    # The page measures over the last `seconds` of this window.
    result.server_added = await server_added_ms(base, end - opts.seconds, end)
    result.note = got.error or ""
    if got.page == "none":
        result.errors.append(got.error or "browser failed")
        result.failed = 1
    return result


@dataclass
class Floors:
    udp_rtt: list[float]
    codec: list[float]
    p2p: PhaseResult


async def measure_floors(opts: Options) -> Floors:
    rtt = await loopback_udp_rtt(100 if opts.quick else 300)
    codec = await asyncio.to_thread(
        encode_decode_ms, opts.width, opts.height, opts.fps, 20 if opts.quick else 90
    )
    meter = CpuMeter({"measuring": None})
    floor = await direct_peer_to_peer(opts.width, opts.height, opts.fps, opts.seconds)
    p2p = PhaseResult(name="direct aiortc peer-to-peer (no server)", viewers=1)
    p2p.latencies, p2p.unreadable = floor.latencies, floor.unreadable
    p2p.joins = [floor.join_ms] if floor.join_ms is not None else []
    p2p.frames = len(floor.latencies) + floor.unreadable
    cpu = meter.percent()
    p2p.client_cpu, p2p.machine_busy = cpu["measuring"], cpu["machine"]
    return Floors(rtt, codec, p2p)


# --- the run ------------------------------------------------------------------------------


async def run(opts: Options) -> tuple[Floors, list[PhaseResult], dict]:
    floors = await measure_floors(opts)
    phases: list[PhaseResult] = []
    with tempfile.TemporaryDirectory(prefix="showroom-latency-") as tmp:
        workdir = Path(tmp)
        server, base = await asyncio.to_thread(start_server, workdir, opts)
        publisher = None
        try:
            publisher = start_publisher(base, opts, workdir)
            try:
                await wait_for_picture(base, 20 if opts.quick else 40)
            except RuntimeError as exc:
                logs = "\n".join(
                    f"--- {n}\n" + (workdir / n).read_text()[-3000:]
                    for n in ("server.log", "publisher.log")
                    if (workdir / n).exists()
                )
                raise RuntimeError(f"{exc}\n{logs}") from None
            pids = {"server": server.pid, "publisher": publisher.pid, "measuring": None}
            for n in opts.viewers:
                # Start each row clear of the last keyframe forced for the previous
                # viewers, so the first joiner's wait is not an artefact of the harness.
                await asyncio.sleep(KEYFRAME_GAP_S)
                phases.append(await viewer_phase(base, n, opts, pids))
                if phases[-1].relayed is not None:
                    phases.append(phases[-1].relayed)
            if opts.browser:
                await asyncio.sleep(KEYFRAME_GAP_S)
                phases.append(await browser_phase(base, opts, pids))
                if not opts.quick:
                    await asyncio.sleep(KEYFRAME_GAP_S)
                    phases.append(await browser_phase(base, opts, pids, mdns=False))
            async with aiohttp.ClientSession(base) as http:
                async with http.get(f"/api/shows/{SHOW}/stats") as resp:
                    server_view = await resp.json()
        finally:
            if publisher is not None:
                await asyncio.to_thread(stop_process, publisher)
            await asyncio.to_thread(stop_process, server)
    return floors, phases, server_view


def _row(p: PhaseResult, floor_p50: float) -> list[object]:
    p50 = percentile(p.latencies, 50)
    return [
        p.name,
        p.viewers,
        len(p.latencies),
        p50,
        percentile(p.latencies, 95),
        percentile(p.latencies, 99),
        p50 - floor_p50,
        percentile(p.server_added, 50),
        percentile(p.server_added, 95),
        percentile(p.joins, 50),
        percentile(p.joins, 95),
        p.server_cpu,
        p.client_cpu,
        p.machine_busy,
    ]


HEADERS = [
    "path",
    "viewers",
    "frames read",
    "g2g p50 ms",
    "g2g p95 ms",
    "g2g p99 ms",
    "added over p2p floor (p50) ms",
    "in server p50 ms",
    "in server p95 ms",
    "join p50 ms",
    "join p95 ms",
    "server CPU %",
    "measuring proc CPU %",
    "whole machine busy %",
]


def render(opts: Options, floors: Floors, phases: list[PhaseResult], server_view: dict) -> str:
    floor_p50 = percentile(floors.p2p.latencies, 50)
    rows = [_row(floors.p2p, floor_p50)] + [_row(p, floor_p50) for p in phases]
    floor_rows = [
        [
            "UDP loopback round trip (1200 B)",
            median(floors.udp_rtt),
            percentile(floors.udp_rtt, 99),
        ],
        [
            f"one H.264 encode+decode {opts.width}x{opts.height} (libx264 ultrafast/zerolatency)",
            median(floors.codec),
            percentile(floors.codec, 99),
        ],
        [
            "aiortc peer-to-peer glass-to-glass, no server",
            floor_p50,
            percentile(floors.p2p.latencies, 99),
        ],
    ]
    viewer_phases = [p for p in phases if p.name.startswith("server, aiortc")]
    worst_g2g = max((percentile(p.latencies, 95) for p in viewer_phases), default=float("nan"))
    worst_join = max((percentile(p.joins, 95) for p in viewer_phases), default=float("nan"))
    verdict = (
        f"Targets (loopback): g2g p95 <= {TARGET_G2G_P95_MS} ms: "
        f"{'met' if worst_g2g <= TARGET_G2G_P95_MS else 'MISSED'} (worst p95 {worst_g2g:.0f} ms); "
        f"join p95 <= {TARGET_JOIN_P95_MS} ms: "
        f"{'met' if worst_join <= TARGET_JOIN_P95_MS else 'MISSED'} (worst p95 {worst_join:.0f} ms)."
    )
    notes = []
    for p in phases:
        if p.failed or p.unreadable or p.note:
            notes.append(
                f"- {p.name} x{p.viewers}: {p.failed} viewer(s) never got a frame, "
                f"{p.unreadable} of {p.frames} frames without a readable code"
                + (f"; {p.note}" if p.note else "")
                + (f"; first error: {p.errors[0]}" if p.errors else "")
            )
    chromium = {("no mDNS" in p.name): p for p in phases if "Chromium" in p.name and p.joins}
    if True in chromium and False in chromium:
        extra = median(chromium[False].joins) - median(chromium[True].joins)
        notes.append(
            "- Chromium hides its local addresses behind mDNS `.local` names by default; "
            f"the two Chromium rows differ by {extra:.0f} ms of join time, which is the "
            "server resolving those names before it answers the WHEP offer."
        )
    join_rows = [
        [
            f"{p.name} x{p.viewers}",
            percentile(p.answers, 50),
            percentile(p.connects, 50),
            percentile(p.joins, 50),
            percentile(p.answers, 95),
            percentile(p.connects, 95),
            percentile(p.joins, 95),
        ]
        for p in viewer_phases
    ]
    g2g_view = server_view.get("glass_to_glass_ms", {})
    join_view = server_view.get("join_ms", {})
    publisher_cpu = median([p.publisher_cpu for p in phases if p.publisher_cpu == p.publisher_cpu])
    return "\n".join(
        [
            f"Show composed at {opts.width}x{opts.height}@{opts.fps} (H.264, 1.5 Mbps), "
            f"publisher: {PUBLISHERS[opts.publisher]} ({opts.width}x{opts.height}@{opts.fps}, "
            f"~{publisher_cpu:.0f}% of a core); each row's note gives the video bitrate its "
            f"viewers received. {opts.seconds:g} s measured per row after "
            f"all viewers joined (joins spread over min(0.1 s x N, 5 s)). "
            f"Glass-to-glass comes from up to {PROBES} decoding viewers per row; the others "
            "(40 of the 50) decode their first frame (join time), then count every packet "
            "they receive and drop it before SRTP, as the fan-out benchmark's load viewers "
            "do (the server sends them everything), so the measuring process spends its CPU "
            "on the decoding viewers. "
            "Glass-to-glass = decoded frame in the viewer (aiortc: frame out of the decoder; "
            "Chromium: `requestVideoFrameCallback` expected display time) minus the capture "
            "time stamped into the publisher's pixels; join = WHEP POST -> first decoded frame "
            "(Chromium: -> first `playing`). Every process runs on this one machine; "
            "the measuring process decodes the probe viewers' video itself, so its CPU "
            "competes with the server's. The last column is the whole machine's CPU use "
            "(all cores, anything running) during the row: p95/p99 are sensitive to "
            "other load on a 2-core machine, the medians much less.",
            "",
            table(HEADERS, rows),
            "",
            verdict,
            "",
            "Floors measured in the same run (the comparison):",
            "",
            table(["floor", "p50 ms", "p99 ms"], floor_rows),
            "",
            "Where join time goes (aiortc viewers; ms from the WHEP POST):",
            "",
            table(
                [
                    "row",
                    "answer p50",
                    "connected p50",
                    "first frame p50",
                    "answer p95",
                    "connected p95",
                    "first frame p95",
                ],
                join_rows,
            ),
            "",
            "Between 'connected' and 'first frame' a viewer waits for the shared encoder's "
            "next keyframe; the server forces at most one per second per show (coalescing "
            "every join and PLI), so while viewers keep arriving a join can wait up to "
            "~1 s for its keyframe.",
            "",
            "'in server' is the server's own per-frame figure for the same window (source "
            "frame received -> its packets handed to the fan-out: decode wait, compose, "
            "one shared encode), from `GET /api/shows/{show}/media`.",
            "",
            "aiortc's receiver releases a frame only when the next frame's first packet "
            "arrives, so every aiortc receiver holds a frame for up to one frame interval "
            f"({1000 / opts.fps:.0f} ms) that a browser does not. The peer-to-peer floor "
            "pays that once; the server path pays it twice, because the server's WHIP "
            "ingest is an aiortc receiver too. So 'added over floor' is that second hold "
            "plus the server's decode, and the 'in server' columns (compose + one shared "
            "encode + fan-out) are the rest.",
            "",
            f"Server's own view from viewer reports (`GET /api/shows/{{show}}/stats`, "
            f"per-viewer medians): g2g p50 {g2g_view.get('p50')} ms, p95 {g2g_view.get('p95')} ms "
            f"({g2g_view.get('count')} reports); join p50 {join_view.get('p50')} ms, "
            f"p95 {join_view.get('p95')} ms.",
            *(["", "Notes:", *notes] if notes else []),
        ]
    )


def section_name(opts: Options) -> str:
    """The BENCHMARKS.md section of a run, and the stem of its results files: a run at
    several workers must not overwrite the 1-worker figures the summary reads."""
    name = "latency_workers" if opts.workers > 1 else "latency"
    return f"{name}-quick" if opts.quick else name


def save_results(opts: Options, floors: Floors, phases: list[PhaseResult]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{section_name(opts)}.json"
    data = {
        "options": asdict(opts),
        "floors": {
            "udp_rtt_ms": floors.udp_rtt,
            "encode_decode_ms": floors.codec,
            "p2p": asdict(floors.p2p),
        },
        "phases": [asdict(p) for p in phases],
    }
    path.write_text(json.dumps(data, allow_nan=True))
    return path


def _short(p: PhaseResult) -> str:
    name = p.name.replace("server, ", "").replace("aiortc viewers", "aiortc")
    name = name.replace("Chromium (viewer page, no mDNS candidates)", "Chromium\nno mDNS")
    name = name.replace("Chromium (viewer page)", "Chromium")
    return f"{name}\nx{p.viewers}"


def plot(opts: Options, floors: Floors, phases: list[PhaseResult]) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    series = [(f"{floors.p2p.name}", floors.p2p.latencies)]
    series += [(f"{p.name} x{p.viewers}", p.latencies) for p in phases]
    for label, values in series:
        if values:
            xs = sorted(values)
            ys = [(i + 1) / len(xs) for i in range(len(xs))]
            ax1.plot(xs, ys, label=label)
    ax1.axvline(TARGET_G2G_P95_MS, color="grey", linestyle="--", label="target p95")
    ax1.set_xlabel("glass-to-glass latency (ms)")
    ax1.set_ylabel("fraction of frames")
    ax1.set_title("Glass-to-glass latency (CDF)")
    ax1.legend(fontsize=7)
    labels = [_short(p) for p in phases if p.joins]
    data = [p.joins for p in phases if p.joins]
    if data:
        ax2.boxplot(data, whis=(5, 95))
        ax2.set_xticks(range(1, len(labels) + 1), labels, fontsize=7)
    ax2.axhline(TARGET_JOIN_P95_MS, color="grey", linestyle="--")
    ax2.set_ylabel("join time (ms): WHEP POST -> first frame")
    ax2.set_title("Join time")
    fig.tight_layout()
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{section_name(opts)}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def parse(argv: list[str] | None) -> tuple[Options, argparse.Namespace]:
    p = argparse.ArgumentParser(prog="python -m load_tests.latency", description=__doc__)
    p.add_argument("--quick", action="store_true", help="tiny sizes, seconds (smoke test)")
    p.add_argument("--viewers", help="comma-separated viewer counts (default 1,10,50)")
    p.add_argument("--seconds", type=float, help="measured seconds per row")
    p.add_argument("--size", default="640x360", help="show and publisher size")
    p.add_argument("--fps", type=int, default=30)
    # builtin (moving bars and noise) carries the show's bitrate; the PocketCam's flat test
    # pattern encodes to a quarter of it whatever the setting.
    p.add_argument("--publisher", choices=sorted(PUBLISHERS), default="builtin")
    p.add_argument("--no-browser", action="store_true", help="skip the Chromium row")
    p.add_argument("--no-write", action="store_true", help="do not touch BENCHMARKS.md")
    p.add_argument("--workers", type=int, default=1, help="serve --workers N")
    p.add_argument("--publish-to", help=argparse.SUPPRESS)  # internal: the publisher child
    args = p.parse_args(argv)
    width, height = (int(v) for v in args.size.lower().split("x"))
    viewers = [int(v) for v in args.viewers.split(",")] if args.viewers else None
    opts = Options(
        viewers=viewers or ([1, 3] if args.quick else [1, 10, 50]),
        seconds=args.seconds or (2.0 if args.quick else 15.0),
        width=width,
        height=height,
        fps=args.fps,
        publisher=args.publisher,
        browser=not args.no_browser,
        quick=args.quick,
        write=not args.no_write,
        workers=args.workers,
    )
    return opts, args


def main(argv: list[str] | None = None) -> int:
    opts, args = parse(argv)
    if args.publish_to:
        asyncio.run(publish_forever(args.publish_to, opts.width, opts.height, opts.fps))
        return 0
    floors, phases, server_view = asyncio.run(run(opts))
    body = render(opts, floors, phases, server_view)
    print(body)
    if opts.write or opts.quick:  # --no-write leaves the recorded figures and plot alone
        save_results(opts, floors, phases)
        png = plot(opts, floors, phases)
    command = "python -m load_tests.latency" + (" --quick" if opts.quick else "")
    if opts.workers > 1:
        command += f" --workers {opts.workers}"
    if opts.write and not opts.quick:
        write_section(section_name(opts), command, body + f"\n\nPlot: `{png.relative_to(ROOT)}`")
    ok = all(not p.failed and p.latencies for p in phases)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
