"""Relay benchmark: latency the worker relay adds, next to the raw Unix-socket limit.

    python -m load_tests.relay [--quick]

- **relay**: ``showroom serve --workers 2``; a 720p30 publisher on worker 0 (the origin),
  viewers on both workers (aiortc, decoding). Worker 1 measures each relayed frame from
  the origin's write (its ``time.time()`` in the frame) to the moment it is in worker 1's
  fan-out, ready for its viewers (``relay`` in ``/api/shows/{show}/media``).
- **raw limit**: two bare processes, no server: one writes msgpack frames of the same
  sizes at the same rate over a Unix socket, the other reads them and timestamps them
  the same way. What the transport alone costs on this machine, in the same run.

Target: the relay adds at most 10 ms at p95.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import msgpack

from load_tests.common import (
    RESULTS,
    VideoSize,
    manifest_toml,
    median,
    percentile,
    spawn_serve,
    table,
    write_section,
)
from media.client import WhepPlayer, WhipPublisher
from media.testsrc import TestPatternTrack
from server.embedded import EmbeddedRedis, free_port

KEY = "bench-stream-key-0123"
STAFF_PASSWORD = "bench-staff-0123"
STAFF = {"Authorization": f"Bearer {STAFF_PASSWORD}"}
TARGET_P95_MS = 10.0


def manifest(fps: int) -> str:
    return manifest_toml(
        "relay",
        title="Relay benchmark",
        stream_key=KEY,
        staff_password=STAFF_PASSWORD,
        products='[[products]]\nsku = "A"\nname = "A"\nprice = "1.00"\nstock = 1\n',
        video=VideoSize(1280, 720, fps, 1500),
    )


async def pinned(url: str, worker: int) -> aiohttp.ClientSession:
    """A client with one kept-alive connection that the kernel gave to ``worker``."""
    for _ in range(400):
        http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1))
        async with http.get(f"{url}/healthz") as r:
            await r.read()
            if r.headers.get("X-Showroom-Worker") == str(worker):
                return http
        await http.close()
        await asyncio.sleep(0.01)
    raise RuntimeError(f"no connection reached worker {worker}")


async def relay_run(fps: int, viewers_per_worker: int, seconds: float) -> tuple[list[float], dict]:
    with tempfile.TemporaryDirectory(prefix="relay-") as tmp:
        tmp_path = Path(tmp)
        redis = EmbeddedRedis(tmp_path / "redis")
        redis.start()
        path = tmp_path / "relay.toml"
        path.write_text(manifest(fps))
        args = ["--workers", "2", "--manifest", str(path), "--port", str(free_port())]
        args += ["--redis", redis.url, "--data-dir", str(tmp_path / "var"), "--no-print-worker"]
        proc, url = spawn_serve(args, log_path=tmp_path / "serve.log")
        clients, players = [], []
        publisher = None
        try:
            on = {i: await pinned(url, i) for i in (0, 1)}
            clients += on.values()
            publisher = WhipPublisher(f"{url}/whip/relay", KEY, TestPatternTrack(1280, 720, fps))
            await publisher.start(on[0])
            for worker in (0, 1):
                for _ in range(viewers_per_worker):
                    player = WhepPlayer(f"{url}/whep/relay")
                    await player.start(on[worker])
                    players.append(player)
            for player in players:
                await player.wait_first_frame(20)
            await asyncio.sleep(2.0)  # past the joins' keyframe bursts
            async with on[1].get(f"{url}/api/shows/relay/media", headers=STAFF) as r:
                before = (await r.json())["relay"]["frames"]
            await asyncio.sleep(seconds)
            async with on[1].get(f"{url}/api/shows/relay/media", headers=STAFF) as r:
                stats = await r.json()
            relay = stats["relay"]
            forward = await forwarding_cost(url, on)
            fresh = relay["frames"] - before
            samples = relay["latency_ms"][-min(fresh, len(relay["latency_ms"])) :]
            info = {
                "forward": forward,
                "frames": fresh,
                "seconds": seconds,
                "origin_worker_is_0": not stats["origin"],
                "viewer_fps": [
                    round(p.stats.video_frames / (time.monotonic() - p.started_at), 1)
                    for p in players
                ],
            }
            return samples, info
        finally:
            for player in players:
                await player.close()
            if publisher is not None:
                await publisher.close()
            for http in clients:
                await http.close()
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
            redis.stop()


async def forwarding_cost(
    url: str, on: dict[int, aiohttp.ClientSession], n: int = 200
) -> dict[str, list[float]]:
    """DELETE of a (gone) WHEP session held by the worker answering, and by the other one:
    the second is sent on over the other worker's Unix socket. Both answer 404."""
    out: dict[str, list[float]] = {"same worker": [], "other worker (forwarded)": []}
    for _ in range(n):
        for name, session in (("same worker", "w1.gone"), ("other worker (forwarded)", "w0.gone")):
            t0 = time.perf_counter()
            async with on[1].delete(f"{url}/whep/relay/{session}") as r:
                await r.read()
                assert r.status == 404, r.status
            out[name].append((time.perf_counter() - t0) * 1000)
    return out


# --- the raw limit: a bare Unix socket between two processes ---------------------------


async def _raw_receiver(path: str, count: int) -> None:
    reader, writer = await asyncio.open_unix_connection(path)
    unpacker = msgpack.Unpacker(raw=False)
    latencies: list[float] = []
    while len(latencies) < count and (data := await reader.read(1 << 16)):
        unpacker.feed(data)
        for frame in unpacker:
            latencies.append((time.time() - frame[-1]) * 1000)
    writer.write(msgpack.packb(latencies))
    await writer.drain()
    writer.close()


async def raw_run(fps: int, seconds: float, video_bytes: int) -> list[float]:
    """Frames like the relay's (video at ``fps``, ~``video_bytes`` each in 1,100-byte
    payloads, plus 50 audio frames a second) from this process to a child process."""
    with tempfile.TemporaryDirectory(prefix="relayraw-") as tmp:
        path = os.path.join(tmp, "raw.sock")
        count = int(seconds * (fps + 50))
        accepted: asyncio.Future = asyncio.get_running_loop().create_future()
        server = await asyncio.start_unix_server(
            lambda r, w: accepted.set_result((r, w)), path=path
        )
        child = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "load_tests.relay", "--raw-receiver", path, str(count)
        )
        reader, writer = await accepted
        video = [b"\0" * 1100] * max(1, video_bytes // 1100)
        audio = [b"\0" * 160]
        start = time.monotonic()
        sent = 0
        v_next = a_next = start
        while sent < count:
            now = time.monotonic()
            if now >= v_next:
                writer.write(msgpack.packb(["H264", False, 0, 0, video, time.time()]))
                v_next += 1 / fps
                sent += 1
            if now >= a_next and sent < count:
                writer.write(msgpack.packb(["audio", True, 0, 0, audio, time.time()]))
                a_next += 0.02
                sent += 1
            await asyncio.sleep(max(0.0, min(v_next, a_next) - time.monotonic()))
        unpacker = msgpack.Unpacker(raw=False)
        while data := await reader.read(1 << 16):
            unpacker.feed(data)
        latencies = next(iter(unpacker))
        await child.wait()
        server.close()
        return latencies


def plot(rows: list[tuple[str, list[float]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for name, values in rows:
        xs = sorted(values)
        ax.plot(xs, [i / max(1, len(xs) - 1) for i in range(len(xs))], label=name)
    ax.axvline(TARGET_P95_MS, ls="--", color="gray", label="target p95")
    ax.set_xscale("log")
    ax.set_xlabel("ms (origin write -> frame in the other worker's fan-out)")
    ax.set_ylabel("fraction of frames")
    ax.set_title("Relay-added latency between worker processes")
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few seconds, fewer viewers")
    parser.add_argument("--raw-receiver", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.raw_receiver:
        asyncio.run(_raw_receiver(args.raw_receiver[0], int(args.raw_receiver[1])))
        return 0
    # One decoding viewer per worker: the load generator shares the two cores.
    fps, viewers, seconds = (15, 1, 3.0) if args.quick else (30, 1, 10.0)

    async def both():
        relay, info = await relay_run(fps, viewers, seconds)
        raw = await raw_run(fps, seconds, 1500 * 1000 // 8 // fps)
        return relay, info, raw

    relay, info, raw = asyncio.run(both())
    rows = [
        ("relay: worker 0 (origin) -> worker 1, showroom serve --workers 2", relay),
        ("raw limit: Unix socket + msgpack, two bare processes", raw),
    ]
    body = table(
        ["path", "frames", "p50 ms", "p95 ms", "p99 ms", "max ms"],
        [
            [
                name,
                len(v),
                f"{median(v):.3f}",
                f"{percentile(v, 95):.3f}",
                f"{percentile(v, 99):.3f}",
                f"{max(v):.3f}" if v else "-",
            ]
            for name, v in rows
        ],
    )
    p95 = percentile(relay, 95)
    verdict = (
        f"Target relay-added latency p95 <= {TARGET_P95_MS:.0f} ms: "
        f"{'met' if p95 <= TARGET_P95_MS else 'NOT met'} ({p95:.2f} ms over {len(relay)} "
        f"frames of 720p{fps} video + Opus audio; {viewers} aiortc viewer(s) per worker "
        f"at {', '.join(map(str, info['viewer_fps']))} fps)."
    )
    load = os.getloadavg()
    verdict += (
        f"\nMachine load average at the end of the run: {load[0]:.1f} / {load[1]:.1f} "
        f"(1 / 5 min, {os.cpu_count()} cores): the raw row shows what the machine's other "
        "work does to a bare socket between two processes."
    )
    forward = info["forward"]
    body += "\n\n" + table(
        ["WHEP DELETE of a session held by", "requests", "p50 ms", "p95 ms"],
        [
            [name, len(v), f"{median(v):.3f}", f"{percentile(v, 95):.3f}"]
            for name, v in forward.items()
        ],
    )
    print(body)
    print(verdict)
    png = RESULTS / ("relay_quick.png" if args.quick else "relay.png")
    plot(rows, png)
    if not args.quick:
        notes = (
            "Both rows stamp each frame with the sender's `time.time()` when it is written "
            "and take the difference when the receiver has read and unpacked it (for the "
            "relay: published into worker 1's fan-out, where its viewers' senders pick it "
            "up). The relay row runs inside the real server with a publisher, the origin's "
            "compositor and encoder, and viewers being sent to on both workers, all on the "
            "same cores; the raw row is the same frames between two otherwise idle "
            "processes. The load generator (publisher and viewers, decoding) shares the "
            "machine. The second table is what sending a request on to the worker that "
            "holds its session costs (a WHEP DELETE answered 404 by the holder, from the "
            "client, keep-alive): the extra hop over the holder's Unix socket."
        )
        write_section(
            "relay",
            "python -m load_tests.relay",
            "\n\n".join(
                [
                    body,
                    "\n".join(f"- {v}" for v in verdict.splitlines()),
                    notes,
                    "![relay](load_tests/results/relay.png)",
                ]
            ),
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
