"""Fan-out benchmark: server CPU per added viewer, encode-once vs one encoder per viewer.

    python -m load_tests.fanout [--quick]

Both servers run in their own process and get the same publisher (720p30 H.264 at
1.5 Mbps by default) and the same WHEP viewers; the CPU time of the server process is
read from /proc/PID/stat over a fixed window at several viewer counts, and the slope of
CPU against viewers is the cost of one viewer.

- **encode once** (Showroom): ``showroom serve``; the compositor encodes each composed
  frame once and every viewer sends the shared packets.
- **naive** (aiortc's default path): the same WHIP/WHEP exchange, the publisher's decoded
  frames shared with aiortc's ``MediaRelay``, and every viewer's sender encoding them
  with its own H.264 encoder (aiortc issues #449, #544). It does not even compose
  overlays, so the comparison flatters it.

Viewers are aiortc peers that receive and acknowledge RTP but skip decoding (their CPU
is the load generator's, not the server's). Server-added latency (source frame received
-> its packets handed to the fan-out) comes from the server's own per-frame samples.
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
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from aiortc import MediaStreamTrack, RTCPeerConnection, RTCSessionDescription
from aiortc.contrib.media import MediaRelay

from load_tests.common import (
    RESULTS,
    ROOT,
    VideoSize,
    manifest_toml,
    median,
    percentile,
    table,
    write_section,
)
from media.client import WhipPublisher, delete_session, negotiate, prefer_codec
from media.encoders import VideoEncoder
from media.testsrc import TestPatternTrack

STREAM_KEY = "bench-stream-key"
CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass
class Config:
    width: int = 1280
    height: int = 720
    fps: int = 30
    bitrate_kbps: int = 1500
    ours_counts: tuple[int, ...] = (0, 1, 10, 20, 40)
    naive_counts: tuple[int, ...] = (0, 1, 2, 3)
    warmup_s: float = 3.0
    window_s: float = 6.0
    quick: bool = False
    load_before: str = ""


QUICK = Config(320, 180, 15, 300, (0, 1, 4), (0, 1, 2), 1.5, 2.0, True)


# --- load generator: a cheap publisher and viewers that do not decode ---------------


class EncodedPattern(MediaStreamTrack):
    """The test pattern, encoded once here with x264 ultrafast: aiortc sends the packets
    as they are, so the load generator's publisher costs little CPU."""

    kind = "video"

    def __init__(self, cfg: Config) -> None:
        super().__init__()
        self.src = TestPatternTrack(cfg.width, cfg.height, cfg.fps)
        self.encoder = VideoEncoder("H264", cfg.width, cfg.height, cfg.fps, cfg.bitrate_kbps)
        self.n = 0
        self.fps = cfg.fps

    async def recv(self):
        frame = await self.src.recv()
        # A keyframe every 2 s so the server's decoder can (re)start at any time.
        force = self.n % (2 * self.fps) == 0
        self.n += 1
        out = await asyncio.to_thread(self.encoder.encode, frame, frame.pts, force)
        return out[0].packet


DELIVERED = [0]  # complete video frames reassembled by all load-generator viewers


class _NoDecode:
    """Load-generator viewers receive and reassemble frames, but do not decode."""

    def decode(self, encoded_frame) -> list:
        DELIVERED[0] += 1
        return []


def disable_viewer_decoding() -> None:
    import aiortc.rtcrtpreceiver as receiver

    receiver.get_decoder = lambda codec: _NoDecode()


async def start_viewer(http: aiohttp.ClientSession, base: str) -> tuple[RTCPeerConnection, str]:
    pc = RTCPeerConnection()
    pc.addTransceiver("video", direction="recvonly")
    prefer_codec(pc, "video", "video/H264")
    location = await negotiate(http, pc, f"{base}/whep/demo")
    return pc, location


async def packets_received(pc: RTCPeerConnection) -> int:
    total = 0
    for receiver in pc.getReceivers():
        report = await receiver.getStats()
        for stat in report.values():
            if getattr(stat, "type", "") == "inbound-rtp":
                total += stat.packetsReceived
    return total


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


# --- the naive server (aiortc's default: one encoder per viewer) --------------------


def naive_app() -> aiohttp.web.Application:
    from aiohttp import web
    from aiortc.codecs.h264 import H264Encoder

    relay = MediaRelay()
    state: dict = {"source": None, "pcs": set()}

    async def whip(request: web.Request) -> web.Response:
        pc = RTCPeerConnection()
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
        pc = RTCPeerConnection()
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
    cpu_cores: float  # server CPU seconds per wall second
    kpps_per_viewer: float  # RTP packets/s each viewer received (x1000)
    fps_per_viewer: float = 0.0  # video frames/s each viewer received (mean)
    full_rate_viewers: float = 0.0  # viewers x received fps / show fps
    latency_ms: list[float] = field(default_factory=list)
    encode_ms: list[float] = field(default_factory=list)
    skips: int = 0  # viewers that fell behind and skipped to a keyframe (cumulative)


@dataclass
class Series:
    name: str
    points: list[Point] = field(default_factory=list)

    def slope(self) -> tuple[float, float]:
        """Least-squares (base cores, cores per full-rate viewer) over the points with
        viewers (with none, neither path encodes at all). A viewer counts by the share of
        the show's frames it received, so a starved naive encoder that skips frames is
        not mistaken for a cheap one."""
        pts = [p for p in self.points if p.viewers > 0]
        xs = [p.full_rate_viewers for p in pts]
        ys = [p.cpu_cores for p in pts]
        mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
        var = sum((x - mx) ** 2 for x in xs) or 1.0
        k = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var
        return my - k * mx, k


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


def start_server(kind: str, cfg: Config, folder: Path, redis_url: str, port: int):
    if kind == "ours":
        cmd = [sys.executable, "-m", "server.cli", "serve", "--port", str(port),
               "--redis", redis_url, "--data-dir", str(folder / "var"),
               "--manifest", str(write_manifest(folder, cfg)), "--max-viewers", "10000",
               "--no-print-worker"]  # fmt: skip
    else:
        cmd = [sys.executable, "-m", "load_tests.fanout", "--naive-server", str(port),
               "--bitrate", str(cfg.bitrate_kbps)]  # fmt: skip
    proc = subprocess.Popen(
        cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=os.environ.copy()
    )
    from server.embedded import wait_for_port

    wait_for_port("127.0.0.1", port, 30, proc)
    return proc


async def measure(kind: str, cfg: Config, folder: Path, redis_url: str) -> Series:
    from server.embedded import free_port

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = await asyncio.to_thread(start_server, kind, cfg, folder, redis_url, port)
    series = Series(kind)
    viewers: list[tuple[RTCPeerConnection, str]] = []
    async with aiohttp.ClientSession() as http:
        pub = WhipPublisher(f"{base}/whip/demo", STREAM_KEY, EncodedPattern(cfg), codec="H264")
        try:
            await pub.start(http)
            await asyncio.sleep(1.0)
            counts = cfg.ours_counts if kind == "ours" else cfg.naive_counts
            for count in counts:
                while len(viewers) < count:
                    viewers.append(await start_viewer(http, base))
                await asyncio.sleep(cfg.warmup_s)
                pk0 = [await packets_received(pc) for pc, _ in viewers]
                f0 = DELIVERED[0]
                c0, t0 = cpu_seconds(proc.pid), time.monotonic()
                wall0 = time.time() * 1000
                await asyncio.sleep(cfg.window_s)
                c1, t1 = cpu_seconds(proc.pid), time.monotonic()
                f1 = DELIVERED[0]
                pk1 = [await packets_received(pc) for pc, _ in viewers]
                rates = [(b - a) / (t1 - t0) for a, b in zip(pk0, pk1, strict=True)]
                point = Point(count, (c1 - c0) / (t1 - t0), median(rates) / 1000 if rates else 0)
                if count:
                    point.fps_per_viewer = (f1 - f0) / (t1 - t0) / count
                    point.full_rate_viewers = count * min(1.0, point.fps_per_viewer / cfg.fps)
                if kind == "ours":
                    async with http.get(f"{base}/api/shows/demo/media") as resp:
                        stats = await resp.json()
                    point.latency_ms = [
                        ms for wall, ms in stats["server_latency_ms"] if wall >= wall0
                    ]
                    point.encode_ms = [ms for wall, ms in stats["encode_ms"] if wall >= wall0]
                    point.skips = stats["viewer_skips"]
                series.points.append(point)
                print(
                    f"  {kind:5} viewers={count:3d} cpu={point.cpu_cores:.3f} cores "
                    f"rx={point.kpps_per_viewer * 1000:.0f} pkt/s/viewer "
                    f"{point.fps_per_viewer:.1f} fps/viewer skips={point.skips}",
                    flush=True,
                )
        finally:
            for pc, location in viewers:
                await delete_session(
                    http, f"{base}{location}" if location.startswith("/") else location
                )
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(pc.close(), 5)
            await pub.close(http)
            proc.terminate()
            with contextlib.suppress(Exception):
                await asyncio.to_thread(proc.wait, 15)
            if proc.poll() is None:
                proc.kill()
    return series


def plot(ours: Series, naive: Series, quick: bool) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / ("fanout-quick.png" if quick else "fanout.png")
    fig, ax = plt.subplots(figsize=(7, 4))
    for series, style in ((ours, "o-"), (naive, "s--")):
        base, k = series.slope()
        xs = [p.viewers for p in series.points]
        ax.plot(xs, [p.cpu_cores for p in series.points], style, label=f"{series.name}")
        ax.plot(xs, [base + k * x for x in xs], ":", color="grey")
    ax.set_xlabel("viewers")
    ax.set_ylabel("server CPU (cores)")
    ax.set_title("Server CPU vs viewers: encode once vs one encoder per viewer")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


async def run(cfg: Config) -> tuple[Series, Series]:
    from server.embedded import EmbeddedRedis

    disable_viewer_decoding()
    with tempfile.TemporaryDirectory(prefix="fanout-") as tmp:
        folder = Path(tmp)
        redis = EmbeddedRedis(folder / "redis")
        redis.start()
        try:
            print("encode once (showroom serve):", flush=True)
            ours = await measure("ours", cfg, folder, redis.url)
            print("naive (MediaRelay + one encoder per viewer):", flush=True)
            naive = await measure("naive", cfg, folder, redis.url)
        finally:
            redis.stop()
    return ours, naive


def report(cfg: Config, ours: Series, naive: Series) -> tuple[str, bool]:
    base_o, k_o = ours.slope()
    base_n, k_n = naive.slope()
    per_core_o = 1 / k_o if k_o > 0 else float("inf")
    per_core_n = 1 / k_n if k_n > 0 else float("inf")
    ratio = per_core_o / per_core_n if per_core_n not in (0, float("inf")) else float("nan")
    lat = [ms for p in ours.points for ms in p.latency_ms]
    enc = [ms for p in ours.points for ms in p.encode_ms]
    p50, p99 = percentile(lat, 50), percentile(lat, 99)
    rows = []
    for series in (ours, naive):
        for p in series.points:
            lat_cells = (
                [f"{percentile(p.latency_ms, 50):.1f}", f"{percentile(p.latency_ms, 99):.1f}"]
                if p.latency_ms
                else ["-", "-"]
            )
            rows.append(
                [series.name, p.viewers, f"{p.cpu_cores:.3f}", f"{p.fps_per_viewer:.1f}",
                 f"{p.kpps_per_viewer * 1000:.0f}"]
                + lat_cells
            )  # fmt: skip
    points = table(
        ["path", "viewers", "server CPU (cores)", "fps per viewer", "RTP pkt/s per viewer",
         "latency p50 ms", "latency p99 ms"],
        rows,
    )  # fmt: skip
    summary = table(
        ["path", "base CPU (cores)", "CPU per viewer (% of a core)", "viewers per core"],
        [
            ["encode once (Showroom)", f"{base_o:.3f}", f"{k_o * 100:.2f}", f"{per_core_o:.0f}"],
            ["naive: MediaRelay + encoder per viewer", f"{base_n:.3f}", f"{k_n * 100:.2f}",
             f"{per_core_n:.1f}"],
        ],
    )  # fmt: skip
    ok_core, ok_ratio, ok_lat = per_core_o >= 100, ratio >= 20, p99 < 40
    body = (
        f"{cfg.width}x{cfg.height} at {cfg.fps} fps, {cfg.bitrate_kbps} kbps H.264, video-only "
        f"viewers that skip decoding; {cfg.window_s:.0f} s CPU window per point after "
        f"{cfg.warmup_s:.0f} s warm-up.\n\n{summary}\n\n"
        f"Encode once serves **{ratio:.0f}x** the viewers per core of the naive path. "
        f"Server-added latency (source frame received -> packets in the fan-out), all "
        f"encode-once points: p50 {p50:.1f} ms, p99 {p99:.1f} ms ({len(lat)} frames); of "
        f"which the H.264 encode: p50 {percentile(enc, 50):.1f} ms, p99 "
        f"{percentile(enc, 99):.1f} ms. Load average (all processes on the machine) "
        f"{cfg.load_before} before the run, {load_average()} after. Times a viewer fell "
        f"behind and skipped ahead to a keyframe: {ours.points[-1].skips if ours.points else 0}."
        f"\n\n"
        f"Targets: >= 100 viewers/core: {'met' if ok_core else 'NOT met'}; >= 20x naive: "
        f"{'met' if ok_ratio else 'NOT met'}; p99 < 40 ms: {'met' if ok_lat else 'NOT met'}.\n\n"
        f"{points}\n"
    )
    return body, ok_core and ok_ratio and ok_lat


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run of seconds")
    p.add_argument("--naive-server", type=int, metavar="PORT", help=argparse.SUPPRESS)
    p.add_argument("--bitrate", type=int, default=1500, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.naive_server:
        run_naive_server(args.naive_server, args.bitrate)
        return
    cfg = QUICK if args.quick else Config()
    cfg.load_before = load_average()
    ours, naive = asyncio.run(run(cfg))
    body, _ok = report(cfg, ours, naive)
    path = plot(ours, naive, cfg.quick)
    print()
    print(body)
    print(f"Plot: {path.relative_to(ROOT)}")
    if not args.quick:
        command = "python -m load_tests.fanout"
        write_section("fanout", command, body + "\nPlot: `load_tests/results/fanout.png`\n")


if __name__ == "__main__":
    main()
