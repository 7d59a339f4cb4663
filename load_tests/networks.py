"""Viewers on real networks: the quality ladder against the single-rung path.

    python -m load_tests.networks [--quick] [--seconds 40] [--profiles clean,cap700,...]

Starts a real ``showroom serve`` with two copies of one show, 960x540 24 fps 1200 kbps:
``ladder`` (the default ladder: plus 640x360 at 400 kbps) and ``single`` (``ladder =
[]``, one rung, as before the ladder). Each gets a time-coded publisher of moving noise
(its own process, so the stream really carries its bitrate). Per link profile, one
aiortc viewer of each show joins through its own lossy UDP relay (``tests/udp_relay.py``:
random loss, a token-bucket cap with a bounded queue, delay) with the same profile at
the same time, decodes every frame and reads the capture time back from the pixels.

Per profile and path: freezes per minute (a gap > 500 ms between decoded frames), the
share of time without a picture, time on each rung, decoded fps and glass-to-glass p50
and p95 (decoded frame arrival minus the stamped capture time). Then the encode cost of
the ladder against one rung: the show's own encoders fed the same noise frames.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import aiohttp
import av
import numpy as np
from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError

from load_tests.common import (
    ONE_MUG,
    RESULTS,
    ROOT,
    VideoSize,
    manifest_toml,
    percentile,
    spawn_serve,
    stop_process,
    table,
    write_section,
)
from load_tests.rtc_peers import StampedSource, test_pattern, whip_publish
from media import timecode
from media.encoders import VideoEncoder
from media.ladder import Rung, build_ladder
from server.embedded import free_port
from tests.udp_relay import Impairment, RelayedPlayer, UdpRelay

STREAM_KEY = "networks-bench-key"
SIZE = VideoSize(960, 540, 24, 1200)
FREEZE_S = 0.5
PRODUCTS = ONE_MUG


@dataclass(frozen=True)
class Profile:
    name: str
    label: str
    rate_bps: float | None = None
    loss: float = 0.0
    one_way_s: float = 0.0

    def impairments(self, seed: int) -> tuple[Impairment, Impairment]:
        down = Impairment(self.rate_bps, self.loss, self.one_way_s, seed=seed)
        up = Impairment(None, self.loss, self.one_way_s, seed=seed + 1)
        return down, up


PROFILES = {
    p.name: p
    for p in (
        Profile("clean", "clean (loopback)"),
        Profile("cap700", "700 kbps cap", rate_bps=700_000, one_way_s=0.01),
        Profile("lossy2m", "2 Mbps, 3 % loss", rate_bps=2_000_000, loss=0.03, one_way_s=0.01),
        Profile("rtt150", "150 ms RTT", one_way_s=0.075),
    )
}


@dataclass
class Watch:
    """What one viewer decoded: (arrival monotonic s, width, glass-to-glass ms | None)."""

    frames: list[tuple[float, int, float | None]] = field(default_factory=list)
    start: float = 0.0
    end: float = 0.0
    error: str | None = None

    def within(self) -> list[tuple[float, int, float | None]]:
        return [f for f in self.frames if self.start <= f[0] <= self.end]

    def summary(self, widths: dict[int, str]) -> dict:
        frames = self.within()
        seconds = max(1e-9, self.end - self.start)
        times = [self.start] + [t for t, _w, _g in frames] + [self.end]
        gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
        freezes = [g for g in gaps if g > FREEZE_S]
        on_rung: dict[str, float] = {}
        for (t, w, _g), nxt in zip(frames, [*frames[1:], (self.end, 0, None)], strict=False):
            name = widths.get(w, f"{w}w")
            on_rung[name] = on_rung.get(name, 0.0) + min(nxt[0] - t, FREEZE_S)
        g2g = [g for _t, _w, g in frames if g is not None]
        return {
            "frames": len(frames),
            "fps": len(frames) / seconds,
            "freezes_per_min": len(freezes) * 60 / seconds,
            "frozen_share": sum(freezes) / seconds,
            "longest_gap_s": max(gaps) if gaps else seconds,
            "on_rung_share": {k: v / seconds for k, v in sorted(on_rung.items())},
            "g2g_p50_ms": percentile(g2g, 50),
            "g2g_p95_ms": percentile(g2g, 95),
            "error": self.error,
        }


class StampReader(RelayedPlayer):
    """A relayed WHEP viewer that decodes every frame and reads its capture time."""

    def __init__(self, url: str, relay: UdpRelay, watch: Watch) -> None:
        super().__init__(url, relay, audio=False, codec="H264")
        self.watch = watch

    async def _consume(self, track: MediaStreamTrack) -> None:
        with contextlib.suppress(MediaStreamError, asyncio.CancelledError):
            n = 0
            while True:
                frame = await track.recv()
                now = time.monotonic()
                n += 1
                g2g = None
                if n % 3 == 0:  # every third frame: enough samples, less reading
                    stamped = timecode.read(frame)
                    if stamped is not None:
                        g2g = time.time() * 1000 - stamped
                self.watch.frames.append((now, frame.width, g2g))
                if self.stats.first_video_at is None:
                    self.stats.first_video_at = now
                    self._first_video.set()


@dataclass
class Options:
    seconds: float = 40.0
    profiles: list[str] = field(default_factory=lambda: list(PROFILES))
    quick: bool = False
    write: bool = True


def manifest(show_id: str, single: bool) -> str:
    return manifest_toml(
        show_id,
        title=f"Networks {show_id}",
        stream_key=STREAM_KEY,
        staff_password="networks-staff-pw",
        products=PRODUCTS,
        video=SIZE,
        show_extra="ladder = []" if single else "",
    )


def start_publisher(url: str, workdir: Path, name: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "load_tests.networks", "--publish-to", url]
    log = (workdir / f"publisher-{name}.log").open("w")
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)


async def publish_forever(url: str) -> None:
    """The publisher child (``--publish-to``): time-coded moving noise until SIGTERM."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with aiohttp.ClientSession() as http:
        source = StampedSource(SIZE.width, SIZE.height, SIZE.fps)
        pub = await whip_publish(http, url, STREAM_KEY, source)
        await stop.wait()
        await pub.pc.close()


async def wait_live(http: aiohttp.ClientSession, base: str, show: str, limit_s: float) -> None:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        with contextlib.suppress(aiohttp.ClientError):
            async with http.get(f"{base}/api/shows/{show}") as resp:
                if resp.status == 200 and (await resp.json()).get("live"):
                    return
        await asyncio.sleep(0.3)
    raise RuntimeError(f"show {show} did not go live within {limit_s} s")


async def watch_one(
    http: aiohttp.ClientSession, url: str, profile: Profile, seed: int, seconds: float
) -> Watch:
    down, up = profile.impairments(seed)
    relay = await UdpRelay(down, up).start()
    watch = Watch()
    player = StampReader(url, relay, watch)
    try:
        await player.start(http)
        await player.wait_first_frame(20)
        # Measured from the first picture: joining on the link, as a phone would.
        watch.start = time.monotonic()
        await asyncio.sleep(seconds)
        watch.end = time.monotonic()
    except Exception as exc:  # noqa: BLE001 - reported in the table, the run goes on
        watch.error = f"{type(exc).__name__}: {exc}"
        watch.start = watch.start or time.monotonic()
        watch.end = time.monotonic()
    finally:
        await player.close(http)
        relay.close()
    return watch


def encode_cost(frames: int) -> dict:
    """ms per composed frame: the top rung alone, and the ladder (scale + lower rung)."""
    rungs = build_ladder(Rung(SIZE.width, SIZE.height, SIZE.bitrate_kbps))
    pattern = [
        av.VideoFrame.from_ndarray(a, format="yuv420p")
        for a in test_pattern(SIZE.width, SIZE.height, SIZE.fps)
    ]
    top = VideoEncoder("H264", SIZE.width, SIZE.height, SIZE.fps, SIZE.bitrate_kbps)
    low_rung = rungs[1]
    low = VideoEncoder(
        "H264", low_rung.width, low_rung.height, SIZE.fps, low_rung.bitrate_kbps, buffer_s=0.5
    )
    single, ladder = [], []
    for i in range(frames):
        frame = pattern[i % len(pattern)]
        pts = i * 90000 // SIZE.fps
        t0 = time.perf_counter()
        top.encode(frame, pts, i == 0)
        t1 = time.perf_counter()
        small = frame.reformat(width=low_rung.width, height=low_rung.height, format="yuv420p")
        low.encode(small, pts, i == 0)
        t2 = time.perf_counter()
        single.append((t1 - t0) * 1000)
        ladder.append((t2 - t0) * 1000)
    return {
        "frames": frames,
        "single_ms": float(np.median(single)),
        "ladder_ms": float(np.median(ladder)),
        "rungs": [asdict(r) for r in rungs],
    }


async def run(opts: Options) -> dict:
    workdir = Path(tempfile.mkdtemp(prefix="networks-"))
    paths = []
    for show, single in (("ladder", False), ("single", True)):
        path = workdir / f"{show}.toml"
        path.write_text(manifest(show, single))
        paths.append(path)
    args = ["--port", str(free_port()), "--data-dir", str(workdir / "var"), "--no-print-worker"]
    args += sum((["--manifest", str(p)] for p in paths), [])
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SHOWROOM_", "STRIPE_"))}
    server, base = spawn_serve(args, env=env, log_path=workdir / "serve.log")
    publishers = []
    results: dict = {"profiles": {}, "seconds": opts.seconds}
    try:
        publishers = [start_publisher(f"{base}/whip/{s}", workdir, s) for s in ("ladder", "single")]
        async with aiohttp.ClientSession() as http:
            for show in ("ladder", "single"):
                await wait_live(http, base, show, 40)
            widths = {r.width: r.name for r in build_ladder(Rung(960, 540, 1200))}
            for i, name in enumerate(opts.profiles):
                profile = PROFILES[name]
                watches = await asyncio.gather(
                    watch_one(http, f"{base}/whep/ladder", profile, 10 * i + 1, opts.seconds),
                    watch_one(http, f"{base}/whep/single", profile, 10 * i + 1, opts.seconds),
                )
                results["profiles"][name] = {
                    "label": profile.label,
                    "ladder": watches[0].summary(widths),
                    "single": watches[1].summary(widths),
                }
                print(f"{profile.label}: {json.dumps(results['profiles'][name])}", flush=True)
    finally:
        for proc in publishers:
            stop_process(proc)
        stop_process(server)
        shutil.rmtree(workdir, ignore_errors=True)
    results["encode"] = encode_cost(48 if opts.quick else 240)
    return results


def _ms(value: float) -> object:
    return "-" if value != value else round(value)  # NaN: no frame read


def render(opts: Options, results: dict) -> str:
    rows = []
    for data in results["profiles"].values():
        for path in ("ladder", "single"):
            s = data[path]
            rungs = ", ".join(f"{k} {v:.0%}" for k, v in s["on_rung_share"].items()) or "-"
            rows.append([
                data["label"], "ladder (540p + 360p)" if path == "ladder" else "single rung (540p)",
                round(s["freezes_per_min"], 1), f"{s['frozen_share']:.1%}",
                round(s["longest_gap_s"], 2), rungs, round(s["fps"], 1),
                _ms(s["g2g_p50_ms"]), _ms(s["g2g_p95_ms"]), s["error"] or "",
            ])  # fmt: skip
    body = (
        f"One show of moving noise, {SIZE.width}x{SIZE.height} {SIZE.fps} fps at "
        f"{SIZE.bitrate_kbps} kbps, two copies in one server: the default ladder (plus "
        "640x360 at 400 kbps) and a single rung (`ladder = []`). Per profile one aiortc "
        "viewer of each joins at the same time through its own UDP relay (loss both ways, "
        "a token-bucket cap with a 300 ms tail-drop queue, delay both ways), measured "
        f"{results['seconds']:.0f} s from its first picture. A freeze is a gap > 500 ms "
        "between decoded frames; time on a rung counts decoded frames by size.\n\n"
    )
    body += table(
        ["link", "path", "freezes/min", "frozen", "longest gap s", "time on rung", "fps",
         "g2g p50 ms", "g2g p95 ms", "error"],
        rows,
    )  # fmt: skip
    impaired = [d for n, d in results["profiles"].items() if n != "clean"]
    if impaired:
        better = all(
            d["ladder"]["frozen_share"] <= d["single"]["frozen_share"] + 0.01 for d in impaired
        )
        body += (
            "\n\nTarget: on every impaired link the ladder's viewer is frozen no longer than "
            f"the single rung's: {'met' if better else 'not met'}."
        )
    enc = results["encode"]
    body += (
        f"\n\nEncode cost per composed frame ({enc['frames']} frames of noise, median, "
        f"libx264 ultrafast as the show runs it): one rung {enc['single_ms']:.2f} ms, the "
        f"ladder (scale to 360p + its encode) {enc['ladder_ms']:.2f} ms "
        f"({enc['ladder_ms'] / enc['single_ms']:.2f}x). A lower rung is encoded only "
        "while a viewer is on it."
    )
    return body


def plot(opts: Options, results: dict) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [d["label"] for d in results["profiles"].values()]
    xs = np.arange(len(labels))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    for k, (path, name) in enumerate((("ladder", "ladder"), ("single", "single rung"))):
        freezes = [d[path]["freezes_per_min"] for d in results["profiles"].values()]
        g2g = [d[path]["g2g_p95_ms"] for d in results["profiles"].values()]
        ax1.bar(xs + (k - 0.5) * 0.38, freezes, 0.38, label=name)
        ax2.bar(xs + (k - 0.5) * 0.38, g2g, 0.38, label=name)
    for ax, title in ((ax1, "Freezes (> 500 ms) per minute"), (ax2, "Glass-to-glass p95 (ms)")):
        ax.set_xticks(xs, labels, fontsize=8)
        ax.set_title(title)
        ax.legend()
    fig.tight_layout()
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / ("networks-quick.png" if opts.quick else "networks.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m load_tests.networks", description=__doc__)
    p.add_argument("--quick", action="store_true", help="seconds per profile (smoke test)")
    p.add_argument("--seconds", type=float, help="measured seconds per profile (default 40)")
    p.add_argument("--profiles", help=f"comma-separated, of {','.join(PROFILES)}")
    p.add_argument("--no-write", action="store_true", help="do not touch BENCHMARKS.md")
    p.add_argument("--publish-to", help=argparse.SUPPRESS)  # internal: the publisher child
    args = p.parse_args(argv)
    if args.publish_to:
        asyncio.run(publish_forever(args.publish_to))
        return 0
    profiles = args.profiles.split(",") if args.profiles else list(PROFILES)
    unknown = [n for n in profiles if n not in PROFILES]
    if unknown:
        p.error(f"unknown profiles: {', '.join(unknown)}")
    opts = Options(
        seconds=args.seconds or (6.0 if args.quick else 40.0),
        profiles=profiles,
        quick=args.quick,
        write=not args.no_write,
    )
    results = asyncio.run(run(opts))
    body = render(opts, results)
    print(body)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / ("networks-quick.json" if opts.quick else "networks.json")
    out.write_text(json.dumps(results, indent=1))
    png = plot(opts, results)
    if opts.write and not opts.quick:
        command = "python -m load_tests.networks"
        if args.seconds or args.profiles:
            command += (f" --seconds {args.seconds:g}" if args.seconds else "") + (
                f" --profiles {args.profiles}" if args.profiles else ""
            )
        write_section("networks", command, body + f"\n\nPlot: `{png.relative_to(ROOT)}`")
    failed = [n for n, d in results["profiles"].items() if d["ladder"]["error"]]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
