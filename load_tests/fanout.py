"""Fan-out benchmark: server CPU per viewer for the lean viewer path, the aiortc sender
path it replaced, and aiortc's default one-encoder-per-viewer path.

    python -m load_tests.fanout [--quick] [--lean 100,200,300] [--old 50,100,150] [--rounds 4]

Every server runs in its own process and gets the same publisher: a replayed loop of
moving bars + noise, 720p30 H.264 at 1.5 Mbps, plus an Opus tone (audio + video). The
viewers come from ``load_tests.lean_viewers``: real aiortc peers (WHEP, ICE, DTLS) whose
RTP packets are counted (and their loss from the sequence numbers) without decrypting,
so one process holds hundreds; two sample viewers decode everything to prove the
picture. Server CPU is all server processes' (the ``serve`` process and its children)
utime + stime from /proc over a fixed window at each viewer count; the least-squares
slope of CPU against viewers is the cost of one viewer.

- **lean** (``SHOWROOM_EGRESS=lean``, the default): one pass per frame writes every
  viewer's packets (RTP header, SRTP, sendto), ``media/lean.py``, each viewer's frame in
  one call of the C send loop (``media/fastsend.py``).
- **lean, Python send loop** (``SHOWROOM_FASTSEND=0``): the same pass with the per-packet
  steps in Python.
- **lean, one write per packet** (``SHOWROOM_UDP_GSO=0``): no GSO writes.
- **aiortc sender** (``SHOWROOM_EGRESS=aiortc``): the shared packets, but each viewer's
  aiortc ``RTCRtpSender`` loop packs and sends them on its own.
- **naive**: aiortc's default, a ``MediaRelay`` and one H.264 encoder per viewer.

With ``serve --workers`` available, the lean path is also measured at 2 workers, in
alternating rounds (``--rounds``, 4 each by default: 1, 2, 2, 1, ...); viewers per core
and the 2-worker scaling ratio are medians over the rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

import aiohttp
from aiortc import MediaStreamTrack, RTCSessionDescription
from aiortc.contrib.media import MediaRelay

from load_tests.common import (
    RESULTS,
    ROOT,
    VideoSize,
    manifest_toml,
    median,
    percentile,
    proc_cpu_s,
    table,
    tree_cpu_s,
    tree_pids,
    write_section,
)
from load_tests.lean_viewers import Crowd, Publisher, Samples
from media.ice import peer_connection

STREAM_KEY = "bench-stream-key"
TARGET_PER_CORE = 500
TARGET_SCALING = 1.8


@dataclass
class Config:
    width: int = 1280
    height: int = 720
    fps: int = 30
    bitrate_kbps: int = 1500
    # The smallest count > 0 is the sample viewers and one counting viewer: the base
    # with the shared encoder running.
    lean_counts: tuple[int, ...] = (0, 3, 100, 200, 300)
    old_counts: tuple[int, ...] = (0, 3, 50, 100, 150)
    nogso_counts: tuple[int, ...] = (0, 3, 100, 200)
    naive_counts: tuple[int, ...] = (0, 1, 2)
    samples: int = 2  # viewers that decode (part of each count)
    warmup_s: float = 3.0
    window_s: float = 6.0
    workers: tuple[int, ...] = (1,)
    quick: bool = False
    load_before: str = ""
    pyloop_counts: tuple[int, ...] = (0, 3, 100, 200)
    # Lean series per worker count, in alternating order (1, 2, 2, 1, ...): the machine's
    # noise falls on both, and the scaling ratio is the median over the rounds.
    rounds: int = 1


QUICK = replace(
    Config(
        320, 180, 15, 300, (0, 2, 4, 8), (0, 2, 4), (0, 2, 4), (0, 1, 2), 1, 1.5, 2.0, (1,), True
    ),
    pyloop_counts=(0, 2, 4),
)


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def thread_cpu_seconds(root: int) -> float:
    """The main threads (event loops) of ``root`` and its descendants."""
    return sum(proc_cpu_s(pid, thread=pid) for pid in tree_pids(root))


# The packet sizes of one 720p frame of the show's encoder at 1.5 Mbps: two slices, each
# split evenly by aiortc's packetiser (one GSO write per viewer, with RTP padding).
FRAME_PACKETS = (988, 988, 987, 965, 965, 965)


async def hot_path_us_per_packet(
    viewers: int = 300, frames: int = 90, gso: bool = True, native: bool = True
) -> float:
    """The lean path's own floor: ``Broadcast.send`` of 720p-sized frames
    (``FRAME_PACKETS``) to ``viewers`` real LeanSenders, each with its own libsrtp session
    and UDP socket to a loopback receiver; process CPU time per packet sent (us). ``gso``:
    GSO writes, or one write per packet; ``native``: the C send loop, or the Python one."""
    import socket

    from aiortc import RTCCertificate, RTCDtlsTransport, RTCIceGatherer, RTCIceTransport
    from aiortc.rtcrtpsender import RTCRtpSender
    from pylibsrtp import Policy, Session

    from media.fanout import Fanout
    from media.lean import Broadcast, LeanSender, SrtpProtector

    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    fanout = Fanout(capacity=60)
    broadcast = Broadcast(fanout, "video", 90000, lambda _r: None, lambda _k: None)
    cert = RTCCertificate.generateCertificate()
    dtls = RTCDtlsTransport(RTCIceTransport(RTCIceGatherer()), [cert])
    socks = []
    for _ in range(viewers):
        lean = LeanSender(RTCRtpSender("video", dtls), broadcast)
        lean.pt, lean.profile, lean.b0, lean.waiting = 102, (1, b"0", 3), 0x90, False
        policy = Policy(key=os.urandom(30), ssrc_type=Policy.SSRC_ANY_OUTBOUND)
        lean.protect = SrtpProtector(Session(policy))
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setblocking(False)
        lean.use_socket(sock, sink.getsockname(), gso, native=native)
        socks.append(sock)
        broadcast.viewers.append(lean)
    payloads = [os.urandom(n) for n in FRAME_PACKETS]
    start = time.process_time()
    for i in range(frames):
        entry = fanout.publish(None, i == 0, 0, payloads=payloads, timestamp=i * 3000)
        broadcast.send(entry)
    spent = time.process_time() - start
    for sock in [*socks, sink]:
        sock.close()
    return spent / (frames * len(payloads) * viewers) * 1e6


def serve_supports_workers() -> bool:
    out = subprocess.run(
        [sys.executable, "-m", "server.cli", "serve", "--help"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    return "--workers" in out.stdout


# --- the naive server (aiortc's default: one encoder per viewer) --------------------


def naive_app() -> aiohttp.web.Application:
    from aiohttp import web
    from aiortc.codecs.h264 import H264Encoder

    relay = MediaRelay()
    state: dict = {"source": None, "pcs": set()}

    async def whip(request: web.Request) -> web.Response:
        pc = peer_connection()
        state["pcs"].add(pc)

        @pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            if track.kind == "video":
                state["source"] = track

        await pc.setRemoteDescription(RTCSessionDescription(await request.text(), "offer"))
        await pc.setLocalDescription(await pc.createAnswer())
        return web.Response(
            status=201, text=pc.localDescription.sdp, headers={"Location": "/whip/demo/1"}
        )

    async def whep(request: web.Request) -> web.Response:
        pc = peer_connection()
        state["pcs"].add(pc)
        await pc.setRemoteDescription(RTCSessionDescription(await request.text(), "offer"))
        sender = pc.addTrack(relay.subscribe(state["source"], buffered=False))
        encoder = H264Encoder()
        encoder.target_bitrate = int(request.app["bitrate"])  # same bitrate as ours
        sender._RTCRtpSender__encoder = encoder
        await pc.setLocalDescription(await pc.createAnswer())
        session = f"/whep/demo/{id(pc)}"
        request.app["sessions"][session] = pc
        return web.Response(status=201, text=pc.localDescription.sdp, headers={"Location": session})

    async def whep_delete(request: web.Request) -> web.Response:
        pc = request.app["sessions"].pop(request.path, None)
        if pc is not None:
            await pc.close()
            state["pcs"].discard(pc)
        return web.Response(status=200)

    app = web.Application()
    app["sessions"] = {}
    app.router.add_post("/whip/demo", whip)
    app.router.add_post("/whep/demo", whep)
    app.router.add_delete("/whep/demo/{id}", whep_delete)
    return app


def run_naive_server(port: int, bitrate_kbps: int) -> None:
    from aiohttp import web

    app = naive_app()
    app["bitrate"] = bitrate_kbps * 1000
    print(f"naive listening on {port}", flush=True)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


# --- the run -------------------------------------------------------------------------


@dataclass
class Point:
    viewers: int
    cpu_cores: float  # server CPU seconds per wall second, all server processes
    loop_cores: float = 0.0  # of which the first process's main thread (its event loop)
    pps_per_viewer: float = 0.0  # RTP packets/s each counting viewer received (median)
    kbps_per_viewer: float = 0.0  # SRTP bytes each counting viewer received, as kbit/s
    loss_pct: float = 0.0  # packets missing from the sequence numbers
    sample_fps: float = 0.0  # decoded video frames/s at a sample viewer (mean)
    sample_size: str = ""
    publisher_fps: float = 0.0  # frames/s the publisher sent (its own process)
    show_fps: float = float("nan")  # frames/s the show composed (the origin's)
    latency_ms: list[float] = field(default_factory=list)
    skips: int = 0  # the origin's viewers that fell behind and skipped ahead (cumulative)


@dataclass
class Series:
    name: str
    workers: int = 1
    round: int = 1
    points: list[Point] = field(default_factory=list)
    join_ms: list[float] = field(default_factory=list)
    failures: int = 0

    def slope(self) -> tuple[float, float]:
        """Least-squares (base cores, cores per viewer) over the points with viewers
        (with none, nothing is encoded), each viewer weighted by the share of packets it
        received, so a starved path is not mistaken for a cheap one."""
        pts = [p for p in self.points if p.viewers > 0]
        xs = [p.viewers * (1 - p.loss_pct / 100) for p in pts]
        ys = [p.cpu_cores for p in pts]
        if len(xs) < 2:
            return (ys[0] if ys else 0.0), float("nan")
        mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
        var = sum((x - mx) ** 2 for x in xs) or 1.0
        k = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var
        return my - k * mx, k

    def packet_slope(self) -> tuple[float, float]:
        """Least-squares (base cores, cores per RTP packet/s delivered) over the points
        with viewers: on a busy machine a starved server sends fewer frames, so the cost
        of a viewer is its packets times the cost of one."""
        pts = [p for p in self.points if p.viewers > 0]
        xs = [p.viewers * p.pps_per_viewer for p in pts]
        ys = [p.cpu_cores for p in pts]
        if len(xs) < 2:
            return (ys[0] if ys else 0.0), float("nan")
        mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
        var = sum((x - mx) ** 2 for x in xs) or 1.0
        k = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var
        return my - k * mx, k

    @property
    def per_core(self) -> float:
        """Viewers per core as delivered (the plain slope of CPU against viewers)."""
        k = self.slope()[1]
        return 1 / k if k > 0 else float("inf")

    @property
    def base(self) -> Point | None:
        """The point with the fewest viewers (> 0): compose, publisher decode and the
        shared encode, which runs only while someone watches."""
        return min((p for p in self.points if p.viewers > 0), key=lambda p: p.viewers, default=None)

    @property
    def base_cores(self) -> float:
        return self.base.cpu_cores if self.base else 0.0

    def point_cost(self, p: Point, nominal_pps: float) -> float:
        """Cores per full-rate viewer at one point, over the base point. A starved server
        (this machine is shared) composes fewer frames and sends fewer packets: with r =
        the packets a viewer got / the full rate, CPU ~ base x r/r_base + added viewers x
        r x cost."""
        b = self.base
        if b is None or p is b or p.viewers <= b.viewers or not nominal_pps:
            return float("nan")
        r, rb = p.pps_per_viewer / nominal_pps, b.pps_per_viewer / nominal_pps
        if r <= 0 or rb <= 0:
            return float("nan")
        return (p.cpu_cores - b.cpu_cores * min(1.0, r / rb)) / ((p.viewers - b.viewers) * r)

    def cost_at(self, nominal_pps: float) -> float:
        """Median cost per full-rate viewer over the points with >= 50 viewers that got at
        least half the full rate (all points with viewers if none did)."""
        good = [p for p in self.points if p.viewers >= 50 and p.pps_per_viewer >= nominal_pps / 2]
        pts = good or [p for p in self.points if p.viewers > 0]
        costs = [c for c in (self.point_cost(p, nominal_pps) for p in pts) if c == c]
        return median(costs) if costs else float("nan")

    def per_core_at(self, nominal_pps: float) -> float:
        """Viewers per core at the stream's full rate."""
        k = self.cost_at(nominal_pps)
        return 1 / k if k > 0 else float("inf")


PRODUCT = """
[[products]]
sku = "MUG-01"
name = "Stoneware mug"
price = "18.00"
stock = 40
"""


def write_manifest(folder: Path, cfg: Config) -> Path:
    path = folder / "bench.toml"
    video = VideoSize(cfg.width, cfg.height, cfg.fps, cfg.bitrate_kbps)
    path.write_text(
        manifest_toml("demo", title="Fan-out benchmark", stream_key=STREAM_KEY,
                      staff_password="bench-staff", video=video, products=PRODUCT)
    )  # fmt: skip
    return path


def start_server(kind: str, cfg: Config, folder: Path, redis_url: str, port: int, workers: int):
    env = os.environ.copy()
    if kind == "naive":
        cmd = [sys.executable, "-m", "load_tests.fanout", "--naive-server", str(port),
               "--bitrate", str(cfg.bitrate_kbps)]  # fmt: skip
    else:
        env["SHOWROOM_EGRESS"] = "lean" if kind.startswith("lean") else kind
        if kind == "lean-nogso":
            env["SHOWROOM_UDP_GSO"] = "0"
        if kind == "lean-py":
            env["SHOWROOM_FASTSEND"] = "0"
        cmd = [sys.executable, "-m", "server.cli", "serve", "--port", str(port),
               "--redis", redis_url, "--data-dir", str(folder / f"var-{kind}-{workers}"),
               "--manifest", str(write_manifest(folder, cfg)), "--max-viewers", "10000",
               "--no-print-worker"]  # fmt: skip
        if workers > 1:
            cmd += ["--workers", str(workers)]
    proc = subprocess.Popen(
        cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env
    )
    from server.embedded import wait_for_port

    wait_for_port("127.0.0.1", port, 60, proc)
    return proc


async def measure(kind: str, counts: tuple[int, ...], cfg: Config, folder: Path,
                  redis_url: str, workers: int = 1) -> Series:  # fmt: skip
    from server.embedded import free_port

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = await asyncio.to_thread(start_server, kind, cfg, folder, redis_url, port, workers)
    name = {"lean": "lean", "lean-nogso": NOGSO, "lean-py": PYLOOP, "aiortc": "aiortc sender",
            "naive": "naive"}[kind]  # fmt: skip
    series = Series(name, workers)
    crowd = Crowd(base, "demo")
    samples = Samples(base, "demo", cfg.samples if kind != "naive" else 0)
    connector = aiohttp.TCPConnector(limit=64)
    async with aiohttp.ClientSession(connector=connector) as http:
        pub = Publisher(f"{base}/whip/demo", STREAM_KEY, cfg.width, cfg.height, cfg.fps,
                        cfg.bitrate_kbps)  # fmt: skip
        try:
            await pub.start()
            await asyncio.sleep(1.5)
            for count in counts:
                if count and samples.count and samples.proc is None:
                    await samples.start()
                missing = count - samples.latest["joined"] - len(crowd.viewers)
                had = len(crowd.viewers)
                if missing > 0:
                    await crowd.add(http, missing)
                joined = [v.join_s * 1000 for v in crowd.viewers[had:]]
                await asyncio.sleep(cfg.warmup_s)
                point = await window(kind, crowd, samples, pub, proc.pid, base, http, cfg, workers)
                series.points.append(point)
                print(
                    f"  {name:13} workers={workers} viewers={point.viewers:3d} "
                    f"cpu={point.cpu_cores:.3f} cores (loop {point.loop_cores:.3f}) "
                    f"{point.kbps_per_viewer:.0f} kbps/viewer "
                    f"{point.pps_per_viewer:.0f} pkt/s/viewer loss={point.loss_pct:.2f}% "
                    f"sample={point.sample_fps:.1f} fps {point.sample_size} skips={point.skips} "
                    f"publisher={point.publisher_fps:.1f} fps show={point.show_fps:.1f} fps "
                    f"failed joins={len(crowd.failures)}"
                    + (
                        f" (these {len(joined)} joined in p50 {percentile(joined, 50):.0f} ms, "
                        f"p95 {percentile(joined, 95):.0f} ms)"
                        if joined
                        else ""
                    ),
                    flush=True,
                )
            series.join_ms = [v.join_s * 1000 for v in crowd.viewers]
            series.failures = len(crowd.failures)
        finally:
            await samples.stop()
            await crowd.close(http)
            await pub.stop()
            proc.terminate()
            with contextlib.suppress(Exception):
                await asyncio.to_thread(proc.wait, 20)
            if proc.poll() is None:
                proc.kill()
    return series


async def window(
    kind: str, crowd: Crowd, samples: Samples, pub: Publisher, pid: int, base: str, http,
    cfg: Config, workers: int = 1,
) -> Point:  # fmt: skip
    counted = crowd.per_viewer()
    sent0 = pub.latest["frames"]
    media0 = await origin_media(kind, base, http)
    lost0 = crowd.totals()[2]
    frames0 = samples.latest["frames"]
    c0, l0, t0 = tree_cpu_s(pid), thread_cpu_seconds(pid), time.monotonic()
    wall0 = time.time() * 1000
    await asyncio.sleep(cfg.window_s)
    c1, l1, t1 = tree_cpu_s(pid), thread_cpu_seconds(pid), time.monotonic()
    dt = t1 - t0
    after = crowd.per_viewer()
    frames1 = samples.latest["frames"]
    sent1 = pub.latest["frames"]
    media1 = await origin_media(kind, base, http)
    lost1 = crowd.totals()[2]
    pps = [(b[0] - a[0]) / dt for a, b in zip(counted, after, strict=False)]
    kbps = [(b[1] - a[1]) * 8 / dt / 1000 for a, b in zip(counted, after, strict=False)]
    received = sum(b[0] - a[0] for a, b in zip(counted, after, strict=False))
    lost = lost1 - lost0
    joined = samples.latest["joined"]
    point = Point(len(crowd.viewers) + joined, (c1 - c0) / dt, (l1 - l0) / dt)
    if pps:
        point.pps_per_viewer, point.kbps_per_viewer = median(pps), median(kbps)
        point.loss_pct = 100 * lost / max(1, received + lost)
    if joined:
        point.sample_fps = (frames1 - frames0) / dt / joined
        point.sample_size = ",".join(samples.latest["sizes"])
    point.publisher_fps = (sent1 - sent0) / dt
    if media0 is not None and media1 is not None:
        point.show_fps = (media1["frames_out"] - media0["frames_out"]) / dt
        point.latency_ms = [ms for wall, ms in media1["server_latency_ms"] if wall >= wall0]
        point.skips = media1["viewer_skips"]
    return point


async def origin_media(kind: str, base: str, http) -> dict | None:
    """The origin's ``/api/shows/{show}/media`` (its compositor's frames and latency;
    None for naive, which has none). With workers, a request lands on any of them:
    asked again until the origin answers (None if it never did)."""
    if kind == "naive":
        return None
    # An operator figure; a new connection each time, so the kernel may pick another
    # worker (SO_REUSEPORT spreads connections, not requests).
    staff = {"Authorization": "Bearer bench-staff", "Connection": "close"}
    for _ in range(16):
        async with http.get(f"{base}/api/shows/demo/media", headers=staff) as resp:
            stats = await resp.json()
        if stats.get("origin", True):
            return stats
    return None


def plot(series: list[Series], quick: bool) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / ("fanout-quick.png" if quick else "fanout.png")
    fig, ax = plt.subplots(figsize=(9.5, 4))
    # One colour and style per path and worker count; its rounds share them (one label).
    rounds = Counter((s.name, s.workers) for s in series)
    kinds = list(rounds)  # in order of first appearance
    styles = ("o-", "s--", "^-.", "d:", "v-", "x--", "p-.")
    for s in series:
        i = kinds.index((s.name, s.workers))
        base, k = s.slope()
        xs = [p.viewers for p in s.points]
        label = f"{s.name} ({s.workers} worker{'s' if s.workers > 1 else ''})"
        n = rounds[(s.name, s.workers)]
        label += f", {n} rounds" if n > 1 else ""
        ax.plot(
            xs, [p.cpu_cores for p in s.points], styles[i % len(styles)],
            color=f"C{i}", label=label if s.round == 1 else None, alpha=0.8,
        )  # fmt: skip
        if k == k:  # not NaN
            ax.plot(xs, [base + k * x for x in xs], ":", color="grey")
    ax.set_xlabel("viewers")
    ax.set_ylabel("server CPU (cores)")
    ax.set_title("Server CPU vs viewers, 720p30 1.5 Mbps audio+video")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


HOT_PATH: dict[str, float] = {}  # us per packet, measured in this run
NOGSO = "lean, one write per packet"
PYLOOP = "lean, Python send loop"
# (label, key, GSO, C send loop) of the in-process rows
HOT_VARIANTS = (
    ("C send loop, GSO writes", "C", True, True),
    ("Python send loop, GSO writes", "GSO", True, False),
    ("Python send loop, one write per packet", "plain", False, False),
)


async def run(cfg: Config) -> list[Series]:
    from server.embedded import EmbeddedRedis

    # Alternating rounds, the median of each: the machine's noise hits both alike.
    rounds: dict[str, list[float]] = {key: [] for _l, key, _g, _n in HOT_VARIANTS}
    for _ in range(3):
        for _label, key, gso, native in HOT_VARIANTS:
            n = 30 if cfg.quick else 300
            rounds[key].append(await hot_path_us_per_packet(n, gso=gso, native=native))
    for label, key, _g, _n in HOT_VARIANTS:
        HOT_PATH[key] = median(rounds[key])
        print(f"lean hot path alone, {label}: {HOT_PATH[key]:.2f} us per packet", flush=True)
    out: list[Series] = []
    with tempfile.TemporaryDirectory(prefix="fanout-") as tmp:
        folder = Path(tmp)
        redis = EmbeddedRedis(folder / "redis")
        redis.start()
        try:
            for i in range(cfg.rounds):
                order = cfg.workers if i % 2 == 0 else tuple(reversed(cfg.workers))
                for workers in order:
                    print(f"lean viewer path, {workers} worker(s), round {i + 1}:", flush=True)
                    series = await measure("lean", cfg.lean_counts, cfg, folder, redis.url, workers)
                    series.round = i + 1
                    out.append(series)
            if cfg.pyloop_counts:
                print("lean viewer path, Python send loop (SHOWROOM_FASTSEND=0):", flush=True)
                out.append(await measure("lean-py", cfg.pyloop_counts, cfg, folder, redis.url))
            if cfg.nogso_counts:
                print("lean viewer path without GSO (one write per packet):", flush=True)
                out.append(await measure("lean-nogso", cfg.nogso_counts, cfg, folder, redis.url))
            if cfg.old_counts:
                print("aiortc sender per viewer (the path lean replaced):", flush=True)
                out.append(await measure("aiortc", cfg.old_counts, cfg, folder, redis.url))
            if cfg.naive_counts:
                print("naive (MediaRelay + one encoder per viewer):", flush=True)
                out.append(await measure("naive", cfg.naive_counts, cfg, folder, redis.url))
        finally:
            redis.stop()
    return out


def report(cfg: Config, series: list[Series], workers_note: str) -> str:
    rounds1 = [s for s in series if s.name == "lean" and s.workers == 1]
    rounds2 = [s for s in series if s.name == "lean" and s.workers == 2]
    old = next((s for s in series if s.name == "aiortc sender"), None)
    ours = [s for s in series if s.name != "naive"]
    # The stream's full rate: the most any viewer got (at the lightest load of the run).
    full = max((p for s in ours for p in s.points if p.viewers), key=lambda p: p.pps_per_viewer)
    nominal_pps, nominal_kbps = full.pps_per_viewer, full.kbps_per_viewer
    summary_rows, rows = [], []
    for s in series:
        _base, k = s.slope()
        pbase, pk = s.packet_slope()
        top = s.points[-1] if s.points else None
        us = f"{pk * 1e6:.1f}" if s.name != "naive" and pk == pk else "-"
        per_core = s.per_core_at(nominal_pps) if s.name != "naive" else s.per_core
        summary_rows.append(
            [_label(s), s.workers, f"{s.base_cores:.3f}", us,
             f"{1 / per_core * 100 if per_core else 0:.3f}", f"{per_core:.0f}",
             f"{s.per_core:.0f}", top.viewers if top else 0,
             f"{top.cpu_cores:.2f}" if top else "-", f"{top.kbps_per_viewer:.0f}" if top else "-",
             f"{top.loss_pct:.2f}" if top else "-"]
        )  # fmt: skip
        for p in s.points:
            lat = [f"{percentile(p.latency_ms, 50):.1f}", f"{percentile(p.latency_ms, 99):.1f}"]
            cost = s.point_cost(p, nominal_pps) if s.name != "naive" else float("nan")
            rows.append(
                [_label(s), s.workers, p.viewers, f"{p.cpu_cores:.3f}",
                 f"{cost * 100:.3f}" if cost == cost else "-", f"{p.loop_cores:.3f}",
                 f"{p.kbps_per_viewer:.0f}", f"{p.pps_per_viewer:.0f}", f"{p.loss_pct:.2f}",
                 f"{p.sample_fps:.1f} {p.sample_size}" if p.sample_size else "-",
                 f"{p.publisher_fps:.1f}",
                 f"{p.show_fps:.1f}" if p.show_fps == p.show_fps else "-", p.skips]
                + (lat if p.latency_ms else ["-", "-"])
            )  # fmt: skip
    points = table(
        ["path", "workers", "viewers", "server CPU (cores)",
         "CPU per full-rate viewer (% of a core)", "event loop threads (cores)",
         "kbps per viewer", "RTP pkt/s per viewer", "loss %", "sample viewers: fps, size",
         "publisher fps", "show fps", "skips", "server latency p50 ms", "p99 ms"],
        rows,
    )  # fmt: skip
    for label, key, _g, _n in HOT_VARIANTS:
        floor_us = HOT_PATH.get(key, float("nan"))
        summary_rows.append(
            [f"lean hot path alone, {label} (in process, no ICE/DTLS)", "-", "-",
             f"{floor_us:.1f}", f"{floor_us * nominal_pps / 1e4:.3f}",
             f"{1e6 / (floor_us * nominal_pps):.0f}", "-", "-", "-", "-", "-"]
        )  # fmt: skip
    summary = table(
        ["path", "workers", "base CPU (cores)", "us per packet", "CPU per viewer (% of a core)",
         "viewers per core", "viewers per core as delivered", "most viewers held",
         "server CPU there (cores)", "kbps per viewer there", "loss %"],
        summary_rows,
    )  # fmt: skip
    cores1 = [s.per_core_at(nominal_pps) for s in rounds1]
    cores2 = [s.per_core_at(nominal_pps) for s in rounds2]
    per_core = median(cores1)
    old_core = old.per_core_at(nominal_pps) if old else 0.0
    ratio_old = per_core / old_core if old_core not in (0, float("inf")) else 0.0

    def per_core_of(name: str) -> float:
        found = next((s for s in series if s.name == name), None)
        return found.per_core_at(nominal_pps) if found else 0.0

    nogso_core, py_core = per_core_of(NOGSO), per_core_of(PYLOOP)
    joins = [j for s in rounds1 for j in s.join_ms]
    failures = sum(s.failures for s in rounds1)
    ok_core = per_core >= TARGET_PER_CORE
    lines = [
        f"{cfg.width}x{cfg.height} at {cfg.fps} fps, {cfg.bitrate_kbps} kbps H.264 + Opus "
        f"(moving bars + noise); viewers count every SRTP packet (loss from sequence "
        f"numbers), {cfg.samples} per run decode everything (in their own process); "
        f"{cfg.window_s:.0f} s CPU window per point after {cfg.warmup_s:.0f} s warm-up; "
        f"server CPU = all server processes from /proc.",
        "",
        f"Full rate of the stream, as measured at a viewer (SRTP, audio + video): "
        f"**{nominal_kbps:.0f} kbps, {nominal_pps:.0f} packets/s**. On this shared machine "
        f"a starved server composes fewer frames at high counts (show fps and kbps per "
        f"viewer in the points below), so each point's CPU is read as base x r + added "
        f"viewers x r x cost over the base point (the sample viewers and one more: compose, "
        f"publisher decode and the shared encode), r = the share of the full rate a viewer "
        f"got relative to the base point's: 'CPU per viewer' is the "
        f"median of that cost over the points with >= 50 viewers that got at least half "
        f"the full rate; 'as delivered' is the plain slope of CPU against viewers; 'us per "
        f"packet' is the slope of CPU against packets delivered.",
        "",
        summary,
        "",
        f"The lean path costs **{1 / per_core * 100 if per_core else 0:.3f} % of a core per "
        f"viewer: {per_core:.0f} viewers per core**, {ratio_old:.1f}x the aiortc sender path "
        f"measured in the same run"
        + "".join(
            f", {per_core / other:.2f}x the same path with {what} ({other:.0f} viewers per core)"
            for what, other in (
                ("its Python send loop", py_core),
                ("one write per packet", nogso_core),
            )
            if other not in (0, float("inf"))
        )  # fmt: skip
        + f". Viewer join (WHEP POST -> ICE+DTLS connected, load "
        f"generator joining 12 at a time) at 1 worker: p50 {percentile(joins, 50):.0f} ms, "
        f"p95 {percentile(joins, 95):.0f} ms ({len(joins)} joins, {failures} failed). "
        f"Load average (all processes on the machine) {cfg.load_before} before the run, "
        f"{load_average()} after.",
        "",
        f"Targets: >= {TARGET_PER_CORE} viewers per core: "
        f"{'met' if ok_core else 'NOT met'} ({per_core:.0f}).",
    ]
    if rounds2:
        per_core2 = median(cores2)
        scale = 2 * per_core2 / per_core if per_core else 0.0
        verdict = "met" if scale >= TARGET_SCALING else "NOT met"
        each = ""
        if len(cores1) > 1 or len(cores2) > 1:
            each = (
                f"; the median over {len(cores1)} and {len(cores2)} alternating rounds: "
                f"{per_core:.0f} and {per_core2:.0f} viewers per core; each round: 1 worker "
                + ", ".join(f"{c:.0f}" for c in cores1)
                + "; 2 workers "
                + ", ".join(f"{c:.0f}" for c in cores2)
            )
        lines.append(
            f"2 workers serve >= {TARGET_SCALING}x the viewers of 1 at the same CPU per viewer: "
            f"{verdict} ({scale:.2f}x{each})."
        )
    else:
        lines.append(f"2 workers vs 1: not measured ({workers_note}).")
    lines += ["", points, ""]
    return "\n".join(lines)


def _label(s: Series) -> str:
    return f"{s.name} (round {s.round})" if s.round > 1 else s.name


def parse_counts(text: str) -> tuple[int, ...]:
    return tuple(sorted({0, *(int(x) for x in text.split(",") if x)}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run of seconds")
    p.add_argument("--lean", help="viewer counts for the lean path, e.g. 100,200,300")
    p.add_argument("--old", help="viewer counts for the aiortc sender path ('' to skip)")
    p.add_argument("--nogso", help="viewer counts for the lean path without GSO ('' to skip)")
    p.add_argument("--pyloop", help="viewer counts for the Python send loop ('' to skip)")
    p.add_argument("--naive", help="viewer counts for the naive path ('' to skip)")
    p.add_argument("--workers", help="worker counts for the lean path, e.g. 1,2")
    p.add_argument("--rounds", type=int, help="lean series per worker count (default 4)")
    p.add_argument("--no-write", action="store_true", help="do not update BENCHMARKS.md")
    p.add_argument("--naive-server", type=int, metavar="PORT", help=argparse.SUPPRESS)
    p.add_argument("--bitrate", type=int, default=1500, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.naive_server:
        run_naive_server(args.naive_server, args.bitrate)
        return
    cfg = QUICK if args.quick else Config()
    if args.lean:
        cfg.lean_counts = parse_counts(args.lean)
    if args.old is not None:
        cfg.old_counts = parse_counts(args.old) if args.old else ()
    if args.nogso is not None:
        cfg.nogso_counts = parse_counts(args.nogso) if args.nogso else ()
    if args.pyloop is not None:
        cfg.pyloop_counts = parse_counts(args.pyloop) if args.pyloop else ()
    if args.naive is not None:
        cfg.naive_counts = parse_counts(args.naive) if args.naive else ()
    has_workers = serve_supports_workers()
    note = "serve has no --workers yet" if not has_workers else ""
    if args.workers:
        cfg.workers = tuple(int(x) for x in args.workers.split(","))
    elif has_workers and not cfg.quick:
        cfg.workers = (1, 2)
    if not has_workers:
        cfg.workers = (1,)
    if args.rounds:
        cfg.rounds = args.rounds
    elif len(cfg.workers) > 1:
        # Single rounds of one worker count differ by up to 25 % on a shared 2-core
        # machine; four each make the median steady enough to read a ratio from.
        cfg.rounds = 4
    cfg.load_before = load_average()
    try:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:
        runner = asyncio.Runner()
    with runner:
        series = runner.run(run(cfg))
    body = report(cfg, series, note)
    print()
    print(body)
    if cfg.quick or not args.no_write:  # --no-write leaves the recorded plot alone
        print(f"Plot: {plot(series, cfg.quick).relative_to(ROOT)}")
    if not cfg.quick and not args.no_write:
        command = "python -m load_tests.fanout"
        write_section("fanout", command, body + "\nPlot: `load_tests/results/fanout.png`\n")


if __name__ == "__main__":
    main()
