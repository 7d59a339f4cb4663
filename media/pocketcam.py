"""``showroom pocketcam``: a WHIP publisher for pocket capture kits.

Publishes the test source (moving pattern, clock and tone), a file, or a V4L2 camera to a
show's WHIP endpoint, and keeps it up: when the server goes away or the session fails,
it reconnects with exponential backoff (0.5 s doubling to 10 s). While connected it checks
every couple of seconds that its session still exists (an empty trickle PATCH), so a
restarted server is noticed in seconds rather than when ICE consent finally expires.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
from dataclasses import dataclass

import aiohttp
from aiortc import MediaStreamTrack

from media.client import WhipError, WhipPublisher, delete_session
from media.testsrc import TestPatternTrack, ToneTrack

log = logging.getLogger("showroom.pocketcam")

BACKOFF_START_S = 0.5
BACKOFF_MAX_S = 10.0
CHECK_EVERY_S = 2.0


@dataclass(frozen=True)
class CamOptions:
    url: str
    key: str
    source: str = "testsrc"
    width: int = 1280
    height: int = 720
    fps: int = 30
    codec: str = "h264"


def parse_size(text: str) -> tuple[int, int]:
    w, _, h = text.lower().partition("x")
    if not (w.isdigit() and h.isdigit()) or int(w) < 16 or int(h) < 16:
        raise ValueError(f"size must look like 1280x720, not {text!r}")
    return int(w) & ~1, int(h) & ~1


def open_source(opts: CamOptions) -> tuple[MediaStreamTrack | None, MediaStreamTrack | None]:
    """Fresh tracks for one connection (aiortc stops a track when its sender ends)."""
    if opts.source == "testsrc":
        return TestPatternTrack(opts.width, opts.height, opts.fps), ToneTrack()
    from aiortc.contrib.media import MediaPlayer

    if opts.source.startswith("/dev/video"):
        player = MediaPlayer(
            opts.source,
            format="v4l2",
            options={"video_size": f"{opts.width}x{opts.height}", "framerate": str(opts.fps)},
        )
    else:
        player = MediaPlayer(opts.source, loop=True)
    return player.video, player.audio


def next_backoff(current: float) -> float:
    return min(BACKOFF_MAX_S, current * 2)


async def publish_once(opts: CamOptions, http: aiohttp.ClientSession, stop: asyncio.Event) -> float:
    """One WHIP session until it fails or ``stop``; returns how long it lasted (s)."""
    video, audio = open_source(opts)
    pub = WhipPublisher(opts.url, opts.key, video, audio, codec=opts.codec.upper())
    failed = asyncio.Event()

    @pub.pc.on("connectionstatechange")
    def on_state() -> None:
        if pub.pc.connectionState in ("failed", "closed"):
            failed.set()

    try:
        location = await pub.start(http)
        started = asyncio.get_running_loop().time()
        log.info("publishing %s to %s (session %s)", opts.source, opts.url, location)
        while not stop.is_set() and not failed.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(CHECK_EVERY_S):
                    await stop.wait()
            if stop.is_set() or not await session_alive(http, location, opts.key):
                break
        if not stop.is_set():
            log.warning("session ended; reconnecting")
        return asyncio.get_running_loop().time() - started
    finally:
        if stop.is_set() and pub.location:
            await delete_session(http, pub.location, opts.key)
        await pub.close()


async def session_alive(http: aiohttp.ClientSession, location: str, key: str) -> bool:
    try:
        async with http.patch(
            location,
            data="",
            headers={
                "Authorization": f"Bearer {key}",
                "Content-Type": "application/trickle-ice-sdpfrag",
            },
            timeout=aiohttp.ClientTimeout(total=5),
        ) as resp:
            return resp.status == 204
    except (aiohttp.ClientError, TimeoutError):
        return False


async def run(opts: CamOptions, stop: asyncio.Event) -> None:
    backoff = BACKOFF_START_S
    async with aiohttp.ClientSession() as http:
        while not stop.is_set():
            try:
                lasted = await publish_once(opts, http, stop)
                if lasted > 5 or stop.is_set():  # a session that held: retry right away
                    backoff = BACKOFF_START_S
                    continue
            except WhipError as exc:
                if exc.status in (401, 404):
                    log.error("server refused the stream (%s); check the URL and --key", exc)
                else:
                    log.warning("publish failed: %s", exc)
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                log.warning("server unreachable (%s); retrying in %.1fs", exc, backoff)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(backoff):
                    await stop.wait()
            backoff = next_backoff(backoff)


async def main(args: argparse.Namespace) -> int:
    try:
        width, height = parse_size(args.size)
    except ValueError as exc:
        print(f"showroom pocketcam: {exc}")
        return 2
    opts = CamOptions(args.url, args.key, args.source, width, height, args.fps, args.codec)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    await run(opts, stop)
    return 0
