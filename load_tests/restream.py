"""Restream cost per destination and time from start to the first RTMP media.

    python -m load_tests.restream [--quick]

A ``showroom serve`` process composes one 1280x720 30 fps 1500 kbps show of moving noise
(an aiortc publisher over WHIP from this process; one WHEP viewer keeps the shared encoder
running in every window, recording off). Debian's nginx with libnginx-mod-rtmp receives
up to two RTMP restreams of it.

1. **CPU beyond the shared encode**: the server's CPU (its process and its children, the
   RTMP pushers, from /proc) over windows with 0, 1 and 2 destinations running, in
   alternating rounds so the machine's other load falls on all three; medians. The first
   destination's cost includes the show's one AAC encode; the second's is a destination
   alone. Limit: 3 % of one core per destination. Each destination's kbps (from the API)
   is reported against the show's nominal bitrate.
2. **Start to first media**: ``POST .../restreams/{name}/start`` until nginx has written
   the first FLV video tag of the stream to its recording. Limit: 2 s.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

from load_tests.common import (
    RESULTS,
    VideoSize,
    manifest_toml,
    median,
    proc_cpu_s,
    spawn_serve,
    table,
    tree_cpu_s,
    write_section,
)
from media.client import WhepPlayer, WhipPublisher
from media.testsrc import ToneTrack
from server.embedded import EmbeddedRedis, free_port

STREAM_KEY = "bench-stream-key"
STAFF = "bench-staff"
HOST = {"Authorization": f"Bearer {STAFF}"}
CPU_LIMIT_PCT = 3.0
FIRST_MEDIA_LIMIT_S = 2.0
RTMP_MODULE = "/usr/lib/nginx/modules/ngx_rtmp_module.so"


class Nginx:
    """nginx in the foreground, one process, RTMP on its own port, recording every stream
    to ``{root}/{stream name}.flv``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        root.mkdir(parents=True, exist_ok=True)
        root.chmod(0o777)  # nginx may drop to another user to write the recording
        (root / "nginx.conf").write_text(
            f"""
            daemon off;
            master_process off;
            error_log {root}/error.log info;
            pid {root}/nginx.pid;
            load_module {RTMP_MODULE};
            events {{ worker_connections 64; }}
            rtmp {{
              server {{
                listen 127.0.0.1:{self.port};
                application live {{
                  live on;
                  record all;
                  record_path {root};
                  record_unique off;
                }}
              }}
            }}
            """
        )

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["nginx", "-c", str(self.root / "nginx.conf"), "-p", str(self.root)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"nginx did not listen: {(self.root / 'error.log').read_text()}")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)

    def recording(self, name: str) -> Path:
        return self.root / f"{name}.flv"


def has_video_tag(path: Path) -> bool:
    """True once an FLV file holds a video tag (the first media, past the header and
    metadata)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return False
    pos = 13  # FLV header (9) + first PreviousTagSize (4)
    while pos + 11 <= len(data):
        kind = data[pos] & 0x1F
        size = int.from_bytes(data[pos + 1 : pos + 4], "big")
        if kind == 9 and pos + 11 + size <= len(data):
            return True
        pos += 11 + size + 4
    return False


def bench_manifest(size: VideoSize, port: int) -> str:
    tables = "".join(
        f'\n[[restream]]\nname = "{n}"\nurl = "rtmp://127.0.0.1:{port}/live"\nkey = "key-{n}"\n'
        for n in ("a", "b")
    )
    return (
        manifest_toml(
            "bench",
            title="Restream bench",
            stream_key=STREAM_KEY,
            staff_password=STAFF,
            video=size,
            products='[[products]]\nsku = "MUG-01"\nname = "Mug"\nprice = "18.00"\nstock = 5\n',
        )
        + tables
    )


async def api(http: aiohttp.ClientSession, url: str, method: str = "GET") -> dict:
    async with http.request(method, url, headers=HOST) as r:
        assert r.status == 200, await r.text()
        return await r.json()


async def states(http: aiohttp.ClientSession, base: str) -> dict[str, dict]:
    data = await api(http, f"{base}/api/shows/bench/restreams")
    return {r["name"]: r for r in data["restreams"]}


async def set_running(http, base: str, names: set[str]) -> None:
    for name in ("a", "b"):
        action = "start" if name in names else "stop"
        await api(http, f"{base}/api/shows/bench/restreams/{name}/{action}", "POST")
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        now = await states(http, base)
        if all((now[n]["state"] == "live") == (n in names) for n in ("a", "b")):
            return
        await asyncio.sleep(0.1)
    raise RuntimeError(f"restreams did not settle: {now}")


async def first_media(http, base: str, nginx: Nginx) -> float:
    await set_running(http, base, set())
    path = nginx.recording("key-a")
    path.unlink(missing_ok=True)
    await asyncio.sleep(0.5)
    started = time.monotonic()
    await api(http, f"{base}/api/shows/bench/restreams/a/start", "POST")
    while not has_video_tag(path):
        if time.monotonic() - started > 15:
            return float("inf")
        await asyncio.sleep(0.01)
    return time.monotonic() - started


async def run(quick: bool) -> tuple[str, bool]:
    from load_tests.recording import NoiseTrack

    size = VideoSize(1280, 720, 30, 1500)
    window_s = 2.0 if quick else 8.0
    rounds = int(os.environ.get("RESTREAM_BENCH_ROUNDS", 1 if quick else 5))
    starts = 2 if quick else 6
    tmp = Path(tempfile.mkdtemp(prefix="restream-bench-"))
    nginx = Nginx(tmp / "nginx")
    nginx.start()
    redis = EmbeddedRedis(tmp / "redis")
    redis.start()
    manifest = tmp / "bench.toml"
    manifest.write_text(bench_manifest(size, nginx.port))
    env = {**os.environ, "SHOWROOM_RECORDING": "0"}
    args = ["--port", str(free_port()), "--redis", redis.url, "--data-dir", str(tmp / "var")]
    cpu: dict[int, list[float]] = {0: [], 1: [], 2: []}
    pushers: dict[int, list[float]] = {1: [], 2: []}  # the pusher processes alone
    kbps: list[float] = []
    firsts: list[float] = []
    proc = None
    try:
        proc, base = spawn_serve(
            [*args, "--manifest", str(manifest)], env=env, log_path=tmp / "serve.log"
        )
        async with aiohttp.ClientSession() as http:
            pub = WhipPublisher(
                f"{base}/whip/bench",
                STREAM_KEY,
                NoiseTrack(size.width, size.height, size.fps),
                ToneTrack(),
            )
            await pub.start(http)
            viewer = WhepPlayer(f"{base}/whep/bench")
            await viewer.start(http)
            await viewer.wait_first_frame(30)
            await asyncio.sleep(2.0)
            try:
                for _ in range(rounds):
                    for n in (0, 1, 2):
                        await set_running(http, base, [set(), {"a"}, {"a", "b"}][n])
                        await asyncio.sleep(1.0)  # settle
                        c0, o0, t0 = tree_cpu_s(proc.pid), proc_cpu_s(proc.pid), time.monotonic()
                        await asyncio.sleep(window_s)
                        c1, o1, t1 = tree_cpu_s(proc.pid), proc_cpu_s(proc.pid), time.monotonic()
                        cpu[n].append(100 * (c1 - c0) / (t1 - t0))
                        if n:
                            pushers[n].append(100 * ((c1 - o1) - (c0 - o0)) / (t1 - t0))
                        if n:
                            now = await states(http, base)
                            kbps += [
                                now[x]["kbps"] for x in ("a", "b") if now[x]["state"] == "live"
                            ]
                for _ in range(starts):
                    firsts.append(await first_media(http, base, nginx))
                await set_running(http, base, set())
            finally:
                await viewer.close(http)
                await pub.close(http)
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        nginx.kill()
        redis.stop()

    base_cpu = median(cpu[0])
    one = median(cpu[1]) - base_cpu
    two = median(cpu[2]) - base_cpu
    per_dest = max(one, two / 2)
    first_med, first_max = median(firsts), max(firsts)
    ok = per_dest <= CPU_LIMIT_PCT and first_max <= FIRST_MEDIA_LIMIT_S
    rows = [
        ["0 (shared encode + 1 WHEP viewer)", f"{base_cpu:.1f}", "-", "-"],
        ["1", f"{median(cpu[1]):.1f}", f"{one:+.2f}", f"{one:.2f}"],
        ["2", f"{median(cpu[2]):.1f}", f"{two:+.2f}", f"{two / 2:.2f}"],
    ]
    body = "\n".join(
        [
            f"One {size.width}x{size.height} {size.fps} fps show of moving noise at "
            f"{size.bitrate_kbps} kbps; windows of {window_s:.0f} s, {rounds} alternating "
            "round(s), medians. Server CPU = the serve process and its RTMP pushers (/proc).",
            "",
            table(
                ["destinations", "server CPU % of a core", "beyond 0", "per destination"],
                rows,
            ),
            "",
            "Per window (% of a core): "
            + "; ".join(f"{n}: " + ", ".join(f"{v:.1f}" for v in cpu[n]) for n in sorted(cpu)),
            "",
            "The pusher processes alone (FLV mux and the RTMP socket; the show's one AAC "
            "encode and the packet hand-over stay in the serve process, in the figures "
            "above): "
            + "; ".join(
                f"{n} destination(s) {median(pushers[n]):.2f} % of a core "
                f"({median(pushers[n]) / n:.2f} % each)"
                for n in sorted(pushers)
                if pushers[n]
            )
            + ".",
            "",
            f"Restream bitrate at nginx: median {median(kbps):.0f} kbps "
            f"(nominal {size.bitrate_kbps} video + 128 AAC); samples {len(kbps)}.",
            "",
            table(
                ["start -> first RTMP video tag at nginx", "median s", "max s", "runs"],
                [["", f"{first_med:.2f}", f"{first_max:.2f}", len(firsts)]],
            ),
            "",
            f"Limits: <= {CPU_LIMIT_PCT} % of a core per destination, first media <= "
            f"{FIRST_MEDIA_LIMIT_S} s: {'PASS' if ok else 'FAIL'}.",
            "",
            "![restream](load_tests/results/restream.png)",
        ]
    )
    plot(cpu, firsts, quick)
    return body, ok


def plot(cpu: dict[int, list[float]], firsts: list[float], quick: bool) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    ax = axes[0]
    ns = sorted(cpu)
    ax.bar([str(n) for n in ns], [median(cpu[n]) for n in ns], color="#4a7")
    for n in ns:
        ax.scatter([str(n)] * len(cpu[n]), cpu[n], color="black", s=10, zorder=3)
    ax.set_xlabel("RTMP destinations")
    ax.set_ylabel("server CPU, % of one core")
    ax.set_title("Restream cost (shared encode in every bar)")
    ax = axes[1]
    ax.plot(sorted(firsts), marker="o")
    ax.axhline(FIRST_MEDIA_LIMIT_S, color="red", linestyle="--", label="limit")
    ax.set_ylabel("s")
    ax.set_xlabel("run (sorted)")
    ax.set_title("start -> first RTMP media at nginx")
    ax.legend()
    fig.tight_layout()
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / ("restream-quick.png" if quick else "restream.png")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="a smoke run of seconds")
    args = p.parse_args(argv)
    body, ok = asyncio.run(run(args.quick))
    print(body)
    if not args.quick:
        write_section("restream", "python -m load_tests.restream", body)
    return 0 if ok or args.quick else 1


if __name__ == "__main__":
    sys.exit(main())
