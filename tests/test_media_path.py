"""The live video path end to end: a real aiortc publisher over WHIP, real aiortc viewers
over WHEP, the real compositor and encoders in between, all on loopback."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import numpy as np
import pytest

from media.client import WhepPlayer, WhipPublisher
from media.testsrc import TestPatternTrack, ToneTrack
from overlays.layout import make_layout
from server import keys
from tests.conftest import STREAM_KEY, wait_until

pytestmark = pytest.mark.timeout(90)

# A region of the picture no overlay covers: bright test pattern when live, dark slate.
CLEAR_REGION = (0.08, 0.30, 0.42, 0.60)  # x0, x1, y0, y1 as fractions


def luma(frame) -> np.ndarray:
    return frame.to_ndarray(format="yuv420p")[: frame.height]


def region_mean(frame, region=CLEAR_REGION) -> float:
    y = luma(frame)
    h, w = y.shape
    x0, x1, y0, y1 = region
    return float(y[int(y0 * h) : int(y1 * h), int(x0 * w) : int(x1 * w)].mean())


def is_live_picture(frame) -> bool:
    return region_mean(frame) > 120  # pattern is >= 150, slate ~ 25


def is_slate(frame) -> bool:
    return region_mean(frame) < 60


async def start_publisher(url: str, size=(320, 180), fps=30, audio=True, codec=None):
    http = aiohttp.ClientSession()
    pub = WhipPublisher(
        f"{url}/whip/demo",
        STREAM_KEY,
        TestPatternTrack(*size, fps),
        ToneTrack() if audio else None,
        codec=codec,
    )
    await pub.start(http)
    return pub, http


async def test_viewers_get_composed_frames_at_show_size_and_fps_with_audio(app):
    pub, http = await start_publisher(app.url, size=(320, 180))
    players = [WhepPlayer(f"{app.url}/whep/demo") for _ in range(3)]
    try:
        for p in players:
            await p.start(http)
        for p in players:
            await p.wait_first_frame(5)
        await asyncio.sleep(0.5)  # settle, then measure a window
        before = [p.stats.video_frames for p in players]
        audio_before = [p.stats.audio_frames for p in players]
        await asyncio.sleep(2.0)
        for p, b, ab in zip(players, before, audio_before, strict=True):
            fps = (p.stats.video_frames - b) / 2.0
            assert fps >= 22, f"viewer decoded only {fps:.1f} fps of a 30 fps show"
            assert p.stats.sizes == {(640, 360)}, "publisher's 320x180 is scaled to the show size"
            audio_rate = (p.stats.audio_frames - ab) / 2.0
            assert audio_rate >= 35, f"only {audio_rate} audio frames/s"
            samples = p.latest_audio.to_ndarray().astype(np.float64)
            rms = np.sqrt((samples**2).mean())
            assert rms > 1000, "the publisher's tone is heard, not silence"
            assert is_live_picture(p.latest_video)

        # The overlays are burned into the picture: the title lower third darkens the
        # bottom-left of a bright pattern, and the badge says LIVE in red.
        layout = make_layout(640, 360)
        frame = players[0].latest_video
        planes = frame.to_ndarray(format="yuv420p")
        t = layout.title
        title_y = planes[t.y : t.y + t.h, t.x : t.x + t.w]
        assert float(np.median(title_y)) < 110, "lower third panel is composed into the frame"
        b = layout.badge
        v_plane = planes[360 + 90 :, :].reshape(180, 320)  # V plane, half resolution
        badge_v = v_plane[b.y // 2 : (b.y + b.h) // 2, b.x // 2 : (b.x + b.w) // 2]
        assert (badge_v > 170).mean() > 0.05, "red LIVE badge is composed into the frame"

        state = await (await app.session.get("/api/shows/demo")).json()
        assert state["live"] is True and state["viewers"] == 3
        metrics = await (await app.session.get("/metrics", headers=app.auth())).text()
        assert 'showroom_viewers{show="demo"} 3.0' in metrics
        assert 'showroom_publisher_live{show="demo"} 1.0' in metrics
        count = [
            line
            for line in metrics.splitlines()
            if line.startswith('showroom_server_latency_seconds_count{show="demo"}')
        ]
        assert count and float(count[0].split()[-1]) > 30
    finally:
        for p in players:
            await p.close(http)
        await pub.close(http)
        await http.close()


async def test_encoded_once_for_all_viewers(app):
    """Adding viewers adds no encodes: the H.264 encoder runs once per composed frame."""
    pub, http = await start_publisher(app.url)
    runtime = app.app[keys.EXTRA]["media"]["demo"]
    players = [WhepPlayer(f"{app.url}/whep/demo", audio=False) for _ in range(4)]
    try:
        for p in players:
            await p.start(http)
        for p in players:
            await p.wait_first_frame(5)
        fanout = runtime.video["H264"]
        seq0, frames0 = fanout.seq, runtime.frames_out
        await asyncio.sleep(1.0)
        assert abs((fanout.seq - seq0) - (runtime.frames_out - frames0)) <= 1, (
            "one packet per frame"
        )
        assert set(runtime._encoders) == {"H264"}
        # A fresh publisher frame is composed and encoded without waiting for a tick.
        latencies = sorted(sec for _, sec, _enc in runtime.latency_samples)
        assert latencies[len(latencies) // 2] < 0.015, f"median {latencies[len(latencies) // 2]}"
        received = [p.stats.video_frames for p in players]
        assert min(received) > 20
    finally:
        for p in players:
            await p.close(http)
        await pub.close(http)
        await http.close()


async def test_viewer_joining_mid_stream_sees_a_frame_within_one_second(app):
    pub, http = await start_publisher(app.url)
    first = WhepPlayer(f"{app.url}/whep/demo")
    try:
        await first.start(http)
        await first.wait_first_frame(5)
        join_times = []
        for delay in (0.3, 0.9, 1.6):  # at different points of the keyframe cycle
            await asyncio.sleep(delay)
            late = WhepPlayer(f"{app.url}/whep/demo")
            await late.start(http)
            join_times.append(await late.wait_first_frame(3))
            assert late.stats.sizes == {(640, 360)}
            await late.close(http)
        assert max(join_times) < 1.0, f"join times {join_times}"
    finally:
        await first.close(http)
        await pub.close(http)
        await http.close()


async def test_two_shows_live_at_once_each_with_its_own_picture(make_app, write_manifest):
    running = await make_app(
        [write_manifest("north", width=320, height=180), write_manifest("south")]
    )
    http = aiohttp.ClientSession()
    pubs, players = [], []
    try:
        for show in ("north", "south"):
            pub = WhipPublisher(
                f"{running.url}/whip/{show}", STREAM_KEY, TestPatternTrack(320, 180, 30)
            )
            await pub.start(http)
            pubs.append(pub)
        for show in ("north", "south"):
            player = WhepPlayer(f"{running.url}/whep/{show}")
            await player.start(http)
            players.append(player)
        for player in players:
            await player.wait_first_frame(5)
        await asyncio.sleep(1.0)
        assert players[0].stats.sizes == {(320, 180)}
        assert players[1].stats.sizes == {(640, 360)}
        assert all(is_live_picture(p.latest_video) for p in players)
        runtimes = running.app[keys.EXTRA]["media"]
        assert runtimes["north"].live and runtimes["south"].live
    finally:
        for p in players:
            await p.close(http)
        for pub in pubs:
            await pub.close(http)
        await http.close()


class PausableTrack(TestPatternTrack):
    """A camera that can stall (frames stop, the connection stays up)."""

    def __init__(self, *args) -> None:
        super().__init__(*args)
        self.running = asyncio.Event()
        self.running.set()

    async def recv(self):
        await self.running.wait()
        return await super().recv()


async def test_publisher_leaves_slate_then_returns_live_viewers_stay(app):
    pub, http = await start_publisher(app.url)
    viewer = WhepPlayer(f"{app.url}/whep/demo")
    try:
        await viewer.start(http)
        await viewer.wait_first_frame(5)
        await wait_until(lambda: is_live_picture(viewer.latest_video), 3)

        # DELETE: slate within a second, and the viewer keeps receiving frames.
        await pub.close(http)
        left = time.monotonic()
        await wait_until(lambda: is_slate(viewer.latest_video), 3, 0.02)
        assert time.monotonic() - left < 1.0
        frames = viewer.stats.video_frames
        await asyncio.sleep(1.0)
        assert viewer.stats.video_frames - frames >= 20, "slate keeps ticking at the show fps"
        state = await (await app.session.get("/api/shows/demo")).json()
        assert state["live"] is False

        # The publisher returns (a new WHIP session): live picture within a second.
        pub, http2 = await start_publisher(app.url)
        back = time.monotonic()
        await wait_until(lambda: is_live_picture(viewer.latest_video), 3, 0.02)
        assert time.monotonic() - back < 1.0
        assert viewer.pc.connectionState == "connected"
        await http2.close()
    finally:
        await viewer.close(http)
        await pub.close(http)
        await http.close()


async def test_stalled_publisher_goes_to_slate_after_one_second(app):
    http = aiohttp.ClientSession()
    track = PausableTrack(320, 180, 30)
    pub = WhipPublisher(f"{app.url}/whip/demo", STREAM_KEY, track)
    viewer = WhepPlayer(f"{app.url}/whep/demo", audio=False)
    try:
        await pub.start(http)
        await viewer.start(http)
        await viewer.wait_first_frame(5)
        await wait_until(lambda: is_live_picture(viewer.latest_video), 3)
        track.running.clear()
        stalled = time.monotonic()
        await wait_until(lambda: is_slate(viewer.latest_video), 4, 0.02)
        took = time.monotonic() - stalled
        assert 0.8 < took < 2.0, f"slate after {took:.2f}s of silence"
        track.running.set()
        await wait_until(lambda: is_live_picture(viewer.latest_video), 2, 0.02)
    finally:
        await viewer.close(http)
        await pub.close(http)
        await http.close()


async def test_new_publish_replaces_the_live_publisher(app):
    first, http = await start_publisher(app.url)
    runtime = app.app[keys.EXTRA]["media"]["demo"]
    await wait_until(lambda: runtime.live, 5)
    old_session = runtime.publisher.id
    second, http2 = await start_publisher(app.url)
    try:
        assert runtime.publisher.id != old_session
        # The replaced session is gone for good.
        resp = await http.delete(first.location, headers={"Authorization": f"Bearer {STREAM_KEY}"})
        assert resp.status == 404
        await wait_until(lambda: runtime.live, 3)
    finally:
        await second.close(http2)
        await first.close()
        await http.close()
        await http2.close()
