"""Recordings and clips on the real pipeline: an aiortc publisher over WHIP into a
``showroom serve`` process, which records the shared encoded packets to fragmented MP4
and cuts a clip per featured segment; the files are read back with PyAV."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import av
import numpy as np
import pytest

from media.client import WhipPublisher
from media.clips import cut_clip, keyframe_times
from media.testsrc import TestPatternTrack, ToneTrack
from overlays.layout import make_layout
from server.embedded import EmbeddedRedis
from tests.conftest import STAFF_PASSWORD, STREAM_KEY, manifest_text, start_server_process

pytestmark = pytest.mark.timeout(120)

W, H, FPS = 640, 360, 30
IDLE_S = 1.0
HOST = {"Authorization": f"Bearer {STAFF_PASSWORD}"}
ENV = {
    "SHOWROOM_RECORDING_IDLE_S": str(IDLE_S),
    "SHOWROOM_CLIP_MAX_S": "30",
    "SHOWROOM_CLIP_TEASER": "1",
}


@dataclass
class Show:
    url: str
    data_dir: Path
    proc: subprocess.Popen
    live_at: float = 0.0  # publisher connected (wall s)
    closed_at: float = 0.0  # publisher left (wall s)
    recordings: list[dict] = field(default_factory=list)
    clips: list[dict] = field(default_factory=list)


async def get_json(http: aiohttp.ClientSession, url: str) -> dict:
    async with http.get(url) as r:
        assert r.status == 200, await r.text()
        return await r.json()


async def feature(http: aiohttp.ClientSession, url: str, sku: str | None) -> None:
    async with http.post(f"{url}/api/shows/demo/feature", json={"sku": sku}, headers=HOST) as r:
        assert r.status == 200, await r.text()


async def poll(fn, timeout: float, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while True:
        value = await fn()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met")
        await asyncio.sleep(interval)


async def publish(url: str, http: aiohttp.ClientSession) -> WhipPublisher:
    pub = WhipPublisher(f"{url}/whip/demo", STREAM_KEY, TestPatternTrack(W, H, FPS), ToneTrack())
    await pub.start(http)
    return pub


async def run_show(show: Show) -> None:
    """~20 s live: MUG-01 on screen 3-9 s, TEE-02 9-15 s, nothing after; then off air."""
    async with aiohttp.ClientSession() as http:
        pub = await publish(show.url, http)
        show.live_at = time.time()
        await poll(lambda: _recording(http, show.url), 10)
        t0 = time.monotonic()
        for at, sku in ((3, "MUG-01"), (9, "TEE-02"), (15, None)):
            await asyncio.sleep(max(0, t0 + at - time.monotonic()))
            await feature(http, show.url, sku)
        await asyncio.sleep(max(0, t0 + 18 - time.monotonic()))
        await pub.close(http)
        show.closed_at = time.time()

        async def finished():
            recs = (await get_json(http, f"{show.url}/api/shows/demo/recordings"))["recordings"]
            clips = (await get_json(http, f"{show.url}/api/shows/demo/clips"))["clips"]
            if recs and recs[0]["ended_at"] and len(clips) == 2:
                if all(c["teaser_url"] for c in clips):
                    return recs, clips
            return None

        show.recordings, show.clips = await poll(finished, 15)


async def _recording(http, url) -> bool:
    body = await get_json(http, f"{url}/api/shows/demo/recordings")
    return bool(body["recordings"])


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory):
    server = EmbeddedRedis(tmp_path_factory.mktemp("rec-redis"))
    server.start()
    yield server.url
    server.stop()


@pytest.fixture(scope="module")
def show(tmp_path_factory, redis_url, stripe_sandbox):
    tmp = tmp_path_factory.mktemp("rec-show")
    manifest = tmp / "demo.toml"
    manifest.write_text(manifest_text("demo", width=W, height=H, fps=FPS))
    env = {**ENV, "STRIPE_API_BASE": stripe_sandbox.url}
    proc, url = start_server_process([manifest], redis_url, tmp / "var", env=env)
    running = Show(url, tmp / "var", proc)
    try:
        asyncio.run(run_show(running))
        yield running
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def recording_path(show: Show) -> Path:
    rec = show.recordings[0]
    return show.data_dir / "recordings" / "demo" / f"{rec['id']}.mp4"


def clip_path(show: Show, clip: dict) -> Path:
    return show.data_dir / "clips" / "demo" / f"{clip['id']}.mp4"


def frame_at(path: Path, t: float) -> np.ndarray:
    """Luma of the first decoded frame at or after ``t`` seconds."""
    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        c.seek(int(t / stream.time_base), stream=stream, backward=True)
        for frame in c.decode(stream):
            if frame.time is not None and frame.time >= t:
                return frame.to_ndarray(format="gray").astype(np.int16)
    raise AssertionError(f"no frame at {t} s in {path}")


def card_region(luma: np.ndarray) -> np.ndarray:
    card = make_layout(W, H).card
    return luma[card.y : card.y + card.h, card.x : card.x + card.w]


def test_one_recording_with_the_shows_size_fps_audio_and_wall_time(show):
    assert len(show.recordings) == 1, "one recording per live session"
    rec = show.recordings[0]
    path = recording_path(show)
    with av.open(str(path)) as c:
        v, a = c.streams.video[0], c.streams.audio[0]
        assert (v.codec_context.name, v.codec_context.width, v.codec_context.height) == (
            "h264",
            W,
            H,
        )
        assert a.codec_context.name == "opus" and a.codec_context.sample_rate == 48000
        assert a.codec_context.channels == 2
        assert v.average_rate == FPS or abs(float(v.guessed_rate or 0) - FPS) < 1
        times = [float(p.pts * p.time_base) for p in c.demux(v) if p.pts is not None and p.size]
    duration = times[-1] - times[0] + 1 / FPS
    fps = len(times) / duration
    # Every composed frame is recorded. On a loaded 2-core box the compositor itself may
    # drop a few ticks, or catch up on a publisher's burst (at most 1.15x the fps).
    assert FPS * 0.85 <= fps <= FPS * 1.15, f"{fps:.1f} fps recorded for a {FPS} fps show"
    # Live from the publisher's connection until IDLE_S after it left.
    wall = show.closed_at + IDLE_S - show.live_at
    assert abs(duration - wall) <= 1.0, (duration, wall)
    assert abs(rec["duration_s"] - duration) < 0.2
    assert abs((rec["ended_at"] - rec["started_at"]) / 1000 - duration) < 0.2
    # The publisher's tone is in the recording, not silence.
    with av.open(str(path)) as c:
        c.seek(int(5 / c.streams.audio[0].time_base), stream=c.streams.audio[0])
        samples = np.concatenate(
            [f.to_ndarray().reshape(-1) for _, f in zip(range(25), c.decode(audio=0), strict=False)]
        )
    assert np.sqrt(np.mean(samples.astype(np.float64) ** 2)) > 0.01
    # Keyframes at least every ~2 s, so the replay seeks and clips cut cleanly.
    keys = keyframe_times(path)
    assert max(np.diff(keys)) <= 2.2, keys


def test_chapters_are_the_featured_segments_in_recording_time(show):
    rec = show.recordings[0]
    chapters = [c for c in rec["chapters"] if c["kind"] == "featured"]
    assert [c["sku"] for c in chapters] == ["MUG-01", "TEE-02"]
    first, second = chapters
    # Featured at 3, 9 and 15 s after the recording was seen live (plus its start-up).
    assert 2.5 <= first["start_s"] <= 5.0, first
    assert abs(first["end_s"] - second["start_s"]) < 0.01
    assert 5.5 <= second["start_s"] - first["start_s"] <= 6.5, chapters
    assert 5.5 <= second["end_s"] - second["start_s"] <= 6.5, chapters


def test_two_clips_start_on_a_keyframe_just_before_the_feature_and_show_the_card(show):
    rec = show.recordings[0]
    keys = keyframe_times(recording_path(show))
    clips = sorted(show.clips, key=lambda c: c["start_s"])
    assert [c["sku"] for c in clips] == ["MUG-01", "TEE-02"]
    no_card = card_region(frame_at(recording_path(show), 1.0))
    regions = []
    for clip in clips:
        assert clip["recording_id"] == rec["id"]
        # At or before the feature (the same frame when the feature forced the keyframe).
        assert -0.002 <= clip["feature_start_s"] - clip["start_s"] <= 1.0, clip
        assert any(abs(k - clip["start_s"]) < 0.002 for k in keys), (clip, keys)
        assert clip["ready_after_s"] <= 10, clip
        path = clip_path(show, clip)
        with av.open(str(path)) as c:
            first = next(p for p in c.demux(video=0) if p.size)
            assert first.is_keyframe and float(first.pts * first.time_base) < 0.01
            assert c.streams.audio, "the clip keeps its sound"
        # Until the end of its segment, give or take a frame.
        chapter = next(c for c in rec["chapters"] if c["sku"] == clip["sku"])
        assert abs(clip["start_s"] + clip["duration_s"] - chapter["end_s"]) <= 0.1, (clip, chapter)
        card = card_region(frame_at(path, clip["feature_start_s"] - clip["start_s"] + 1.0))
        assert np.abs(card - no_card).mean() > 15, "the product card is in the clip's pixels"
        regions.append(card)
    assert np.abs(regions[0] - regions[1]).mean() > 5, "each clip shows its own product"


async def test_each_clip_has_a_vertical_teaser(show):
    async with aiohttp.ClientSession(show.url) as http:
        for clip in show.clips:
            async with http.get(clip["teaser_url"]) as r:
                assert r.status == 200 and r.headers["Content-Type"] == "video/mp4"
                body = await r.read()
            path = show.data_dir / "clips" / "demo" / f"{clip['id']}-teaser.mp4"
            assert path.read_bytes() == body
            with av.open(str(path)) as c:
                v = c.streams.video[0]
                assert (v.codec_context.width, v.codec_context.height) == (720, 1280)
                assert c.streams.audio
                assert c.duration / 1e6 == pytest.approx(clip["duration_s"], abs=0.1)


def test_a_clip_is_capped_and_still_starts_on_the_keyframe_before_it(show, tmp_path):
    chapter = [c for c in show.recordings[0]["chapters"] if c["sku"] == "TEE-02"][0]
    keys = keyframe_times(recording_path(show))
    start = chapter["start_s"] + 0.5  # between keyframes
    cut = cut_clip(recording_path(show), tmp_path / "c.mp4", start, chapter["end_s"], max_s=2.0)
    before = max(k for k in keys if k <= start + 0.001)
    assert cut.start_s == pytest.approx(before, abs=0.002) and cut.keyframe_first
    assert cut.duration_s == pytest.approx(2.0, abs=1.5 / FPS)
    with av.open(str(tmp_path / "c.mp4")) as c:
        times = [f.time for f in c.decode(video=0)]
    assert times[0] == pytest.approx(0, abs=0.001) and 2.0 - 2 / FPS <= times[-1] < 2.0


async def test_range_requests_get_206_and_bad_ranges_416(show):
    rec = show.recordings[0]
    size = recording_path(show).stat().st_size
    async with aiohttp.ClientSession(show.url) as http:
        async with http.get(rec["url"], headers={"Range": "bytes=0-99"}) as r:
            assert r.status == 206
            assert r.headers["Content-Range"] == f"bytes 0-99/{size}"
            assert r.headers["Content-Type"] == "video/mp4"
            body = await r.read()
            assert len(body) == 100 and body[4:8] == b"ftyp"
        async with http.get(rec["url"], headers={"Range": f"bytes={size - 10}-"}) as r:
            assert (
                r.status == 206
                and r.headers["Content-Range"] == f"bytes {size - 10}-{size - 1}/{size}"
            )
            assert len(await r.read()) == 10
        async with http.get(rec["url"], headers={"Range": f"bytes={size + 10}-"}) as r:
            assert r.status == 416
            assert r.headers["Content-Range"] == f"bytes */{size}"
        async with http.get(rec["url"]) as r:
            assert r.status == 200 and int(r.headers["Content-Length"]) == size
        clip = show.clips[0]
        async with http.get(clip["url"], headers={"Range": "bytes=0-9"}) as r:
            assert r.status == 206 and len(await r.read()) == 10
        async with http.get("/media/recordings/demo/nope.mp4") as r:
            assert r.status == 404
        async with http.get("/api/shows/nope/recordings") as r:
            assert r.status == 404 and (await r.json())["error"] == "not_found"
        state = await get_json(http, f"{show.url}/api/shows/demo")
        assert state["latest_replay"] == {"id": rec["id"], "page_url": rec["page_url"]}


@pytest.fixture
def own_redis_url(tmp_path):
    # Not the module's: the show above is still on that one (and would close this
    # show's crashed recording itself, as any process on the same Redis does).
    server = EmbeddedRedis(tmp_path / "redis")
    server.start()
    yield server.url
    server.stop()


def test_sigkill_mid_show_leaves_a_playable_recording(tmp_path, own_redis_url, stripe_sandbox):
    manifest = tmp_path / "demo.toml"
    manifest.write_text(manifest_text("demo", width=W, height=H, fps=FPS))
    env = {**ENV, "STRIPE_API_BASE": stripe_sandbox.url}
    redis_url = own_redis_url
    proc, url = start_server_process([manifest], redis_url, tmp_path / "var", env=env)

    async def live_then_kill() -> tuple[dict, float]:
        async with aiohttp.ClientSession() as http:
            pub = await publish(url, http)
            try:
                await poll(lambda: _recording(http, url), 10)
                await asyncio.sleep(5.5)
                rec = (await get_json(http, f"{url}/api/shows/demo/recordings"))["recordings"][0]
                os.kill(proc.pid, signal.SIGKILL)
                killed_at = time.time()
            finally:
                await pub.close(http)
            return rec, killed_at

    try:
        rec, killed_at = asyncio.run(live_then_kill())
    finally:
        proc.kill()
        proc.wait()
    path = tmp_path / "var" / "recordings" / "demo" / f"{rec['id']}.mp4"
    with av.open(str(path)) as c:
        frames = [f.time for f in c.decode(video=0)]
    assert frames, "the file opens and decodes"
    playable_until = rec["started_at"] / 1000 + frames[-1]
    assert killed_at - playable_until <= 2.0, f"lost {killed_at - playable_until:.2f} s"

    # A restarted server closes the recording the crash left open.
    proc, url = start_server_process([manifest], redis_url, tmp_path / "var", env=env)
    try:

        async def closed():
            async with aiohttp.ClientSession() as http:
                recs = (await get_json(http, f"{url}/api/shows/demo/recordings"))["recordings"]
            return recs[0] if recs[0]["ended_at"] else None

        rec2 = asyncio.run(poll(closed, 10))
        assert rec2["id"] == rec["id"] and abs(rec2["duration_s"] - frames[-1]) < 0.2
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)
