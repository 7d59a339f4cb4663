"""Restreams against real servers: Debian's nginx with libnginx-mod-rtmp receives the RTMP
restream (read back with PyAV: H.264 at the show's size and fps, AAC, the product card in
the pixels); a second ``showroom serve`` is the third-party WHIP server."""

from __future__ import annotations

import asyncio
import shutil
import time
from pathlib import Path

import aiohttp
import av
import numpy as np
import pytest

from load_tests.restream import Nginx
from media.client import WhepPlayer, WhipPublisher
from media.testsrc import TestPatternTrack, ToneTrack
from overlays.layout import make_layout
from server import keys
from server.config import ManifestError, load_manifest
from server.embedded import free_port
from tests.conftest import (
    STAFF_PASSWORD,
    STREAM_KEY,
    manifest_text,
    start_server_process,
    wait_until,
)
from tests.gst_support import start_gst
from tests.test_web_support import DESKTOP, PHONE, JsErrors, chromium, new_page, staff_login

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(shutil.which("nginx") is None, reason="nginx not installed (make system)"),
]

W, H, FPS = 640, 360, 30
KEY = "rtmp-secret-key-4711"


@pytest.fixture
def nginx(tmp_path: Path):
    server = Nginx(tmp_path / "nginx")
    server.start()
    yield server
    server.kill()


def restream_manifest(tmp_path: Path, tables: str, show_id: str = "demo", extra: str = "") -> Path:
    path = tmp_path / f"{show_id}.toml"
    path.write_text(manifest_text(show_id, width=W, height=H, fps=FPS, extra_show=extra) + tables)
    return path


def rtmp_table(port: int, name: str = "nginx", autostart: bool = False) -> str:
    return f"""
[[restream]]
name = "{name}"
url = "rtmp://127.0.0.1:{port}/live"
key = "{KEY}"
autostart = {"true" if autostart else "false"}
"""


async def publish(url: str, http: aiohttp.ClientSession, show: str = "demo") -> WhipPublisher:
    pub = WhipPublisher(f"{url}/whip/{show}", STREAM_KEY, TestPatternTrack(W, H, FPS), ToneTrack())
    await pub.start(http)
    return pub


async def restreams(app) -> list[dict]:
    async with app.session.get("/api/shows/demo/restreams", headers=app.auth()) as r:
        text = await r.text()
        assert r.status == 200, text
        assert KEY not in text, "the key never appears in the API"
        return (await r.json())["restreams"]


async def control(app, name: str, action: str) -> dict:
    async with app.session.post(
        f"/api/shows/demo/restreams/{name}/{action}", headers=app.auth()
    ) as r:
        text = await r.text()
        assert r.status == 200, text
        assert KEY not in text
        return await r.json()


async def state_of(app, name: str = "nginx") -> dict:
    return next(r for r in await restreams(app) if r["name"] == name)


def card_region(frame: av.VideoFrame) -> np.ndarray:
    return card_luma(frame.to_ndarray(format="gray"))


def card_luma(luma: np.ndarray) -> np.ndarray:
    """The product card's place in a W x H luma plane."""
    card = make_layout(W, H).card
    return luma[card.y : card.y + card.h, card.x : card.x + card.w].astype(np.int16)


def read_back(path: Path) -> dict:
    with av.open(str(path)) as c:
        video = c.streams.video[0]
        audio = c.streams.audio[0]
        info = {
            "vcodec": video.codec_context.name,
            "size": (video.codec_context.width, video.codec_context.height),
            "acodec": audio.codec_context.name,
            "rate": audio.codec_context.sample_rate,
            "channels": audio.codec_context.channels,
        }
        frames, times, audio_frames = [], [], 0
        for packet in c.demux():
            try:
                decoded = packet.decode()
            except av.FFmpegError:
                continue
            for f in decoded:
                if isinstance(f, av.VideoFrame):
                    frames.append(f)
                    times.append(float(f.pts * f.time_base))
                else:
                    audio_frames += 1
        info.update(frames=frames, times=times, audio_frames=audio_frames)
        return info


async def test_rtmp_restream_is_the_composed_show_h264_aac_with_the_card(make_app, tmp_path, nginx):
    app = await make_app([restream_manifest(tmp_path, rtmp_table(nginx.port))])
    async with aiohttp.ClientSession() as http:
        pub = await publish(app.url, http)
        try:
            await wait_until(lambda: app.app[keys.EXTRA]["media"]["demo"].live, 15)
            listed = await restreams(app)
            assert listed == [
                {
                    "name": "nginx",
                    "kind": "rtmp",
                    "target": f"rtmp://127.0.0.1:{nginx.port}/live",
                    "state": "off",
                    "since": listed[0]["since"],
                    "last_error": None,
                    "kbps": 0.0,
                    "dropped": 0,
                    "autostart": False,
                }
            ]
            runtime = app.app[keys.EXTRA]["media"]["demo"]
            started = time.monotonic()
            answer = await control(app, "nginx", "start")
            assert answer["state"] in ("connecting", "live")
            await wait_until(lambda: nginx.recording(KEY).exists(), 10)
            first_media_s = time.monotonic() - started
            await wait_until(lambda: _is(state_of(app), "live"), 10)
            composed_from = (runtime.frames_out, time.monotonic())
            await asyncio.sleep(1.5)
            async with app.session.post(
                "/api/shows/demo/feature", json={"sku": "MUG-01"}, headers=app.auth()
            ) as r:
                assert r.status == 200
            await asyncio.sleep(2.5)
            live = await state_of(app)
            assert live["state"] == "live" and live["kbps"] > 50, live
            composed_fps = (runtime.frames_out - composed_from[0]) / (
                time.monotonic() - composed_from[1]
            )
            stopped = await control(app, "nginx", "stop")
            assert stopped["state"] == "off"
        finally:
            await pub.close(http)
    await asyncio.sleep(0.5)  # nginx closes the recording
    got = read_back(nginx.recording(KEY))
    assert got["vcodec"] == "h264" and got["size"] == (W, H)
    assert got["acodec"] == "aac" and got["rate"] == 48000 and got["channels"] == 2
    assert got["audio_frames"] > 100
    times = got["times"]
    assert times[-1] - times[0] > 3
    fps = (len(times) - 1) / (times[-1] - times[0])
    # Every composed frame reaches the destination: the stream's rate is the show's (on
    # a loaded machine the compositor itself may make fewer than FPS a second, or catch
    # up on a stall with a few more: seen at 31.4 a second over this window).
    assert composed_fps * 0.85 <= fps <= max(FPS, composed_fps) * 1.05, (fps, composed_fps)
    assert fps >= FPS * 0.5, fps
    no_card, with_card = card_region(got["frames"][5]), card_region(got["frames"][-5])
    assert np.abs(with_card - no_card).mean() > 15, "the product card is in the RTMP pixels"
    assert first_media_s < 5, first_media_s  # the benchmark holds it to 2 s
    print(f"start -> first RTMP media at nginx: {first_media_s:.2f} s")


async def _is(entry_coro, state: str) -> bool:
    return (await entry_coro)["state"] == state


async def test_rtmp_destination_killed_shows_error_then_reconnects(make_app, tmp_path, nginx):
    app = await make_app([restream_manifest(tmp_path, rtmp_table(nginx.port, autostart=True))])
    async with aiohttp.ClientSession() as http:
        pub = await publish(app.url, http)
        try:
            # autostart: live as soon as the show is
            await wait_until(lambda: _is(state_of(app), "live"), 20)
            nginx.kill()
            await wait_until(lambda: _is(state_of(app), "error"), 15)
            failed = await state_of(app)
            assert failed["last_error"], failed
            # The show and its viewers go on meanwhile.
            runtime = app.app[keys.EXTRA]["media"]["demo"]
            frames = runtime.frames_out
            await asyncio.sleep(1.0)
            assert runtime.frames_out - frames >= FPS * 0.5
            nginx.start()
            await wait_until(lambda: _is(state_of(app), "live"), 20)
            await asyncio.sleep(1.0)
            assert (await state_of(app))["kbps"] > 0
        finally:
            await pub.close(http)


async def test_restream_api_errors_and_playback_url(make_app, tmp_path, nginx):
    playback = '[show.playback]\nwhep_url = "https://cdn.example/whep/abc"\n'
    app = await make_app([restream_manifest(tmp_path, rtmp_table(nginx.port), extra=playback)])
    async with app.session.get("/api/shows/demo") as r:
        assert (await r.json())["playback_whep_url"] == "https://cdn.example/whep/abc"
    async with app.session.get("/shows/demo") as r:
        assert "https://cdn.example/whep/abc" in await r.text()  # in the viewer page's data
    async with app.session.get("/api/shows/demo/restreams") as r:
        assert r.status == 401
    async with app.session.post("/api/shows/demo/restreams/nope/start", headers=app.auth()) as r:
        assert r.status == 404 and (await r.json())["error"] == "not_found"
    async with app.session.post("/api/shows/demo/restreams/nginx/start") as r:
        assert r.status == 401
    assert (await state_of(app))["state"] == "off"  # nothing changed


def _manifest_error(tmp_path: Path, tables: str, env: dict | None = None) -> str:
    with pytest.raises(ManifestError) as err:
        load_manifest(restream_manifest(tmp_path, tables), env or {})
    return str(err.value)


def test_restream_manifest_is_validated(tmp_path):
    bad_scheme = '[[restream]]\nname = "yt"\nurl = "udp://x.example/live"\nkey = "k"\n'
    assert "restream[0].url" in _manifest_error(tmp_path, bad_scheme)
    no_key = '[[restream]]\nname = "yt"\nurl = "rtmp://a.rtmp.youtube.com/live2"\n'
    msg = _manifest_error(tmp_path, no_key)
    assert "restream[0].key" in msg and "SHOWROOM_RESTREAM_YT_KEY" in msg
    plain_whip = '[[restream]]\nname = "cf"\nurl = "http://cdn.example/whip"\nkey = "k"\n'
    assert "https://" in _manifest_error(tmp_path, plain_whip)
    twice = no_key.replace("\n", '\nkey = "k"\n', 1) * 2
    assert "duplicate" in _manifest_error(tmp_path, twice)
    unknown = '[[restream]]\nname = "yt"\nurl = "rtmp://h/live"\nkey = "k"\nbitrate = 1\n'
    assert "restream[0].bitrate" in _manifest_error(tmp_path, unknown)
    show = load_manifest(
        restream_manifest(
            tmp_path, no_key, extra='[show.playback]\nwhep_url = "https://cdn.example/whep/abc"\n'
        ),
        {"SHOWROOM_RESTREAM_YT_KEY": "from-env"},
    )
    (dest,) = show.restreams
    assert dest.key == "from-env" and dest.push_url == "rtmp://a.rtmp.youtube.com/live2/from-env"
    assert "from-env" not in dest.target and "from-env" not in repr(dest)
    assert show.playback_whep_url == "https://cdn.example/whep/abc"


async def test_whip_restream_plays_on_another_server(make_app, tmp_path, redis_url):
    """A second ``showroom serve`` (its own show) is the third-party WHIP server; a viewer
    of it sees the composed show, product card included."""
    cdn_manifest = tmp_path / "cdn.toml"
    cdn_manifest.write_text(manifest_text("cdn", width=W, height=H, fps=FPS))
    cdn, cdn_url = start_server_process([cdn_manifest], redis_url, tmp_path / "cdn-var")
    try:
        table = f"""
[[restream]]
name = "cdn"
url = "{cdn_url}/whip/cdn"
key = "{STREAM_KEY}"
"""
        app = await make_app([restream_manifest(tmp_path, table)])
        async with aiohttp.ClientSession() as http:
            pub = await publish(app.url, http)
            player = None
            try:
                await wait_until(lambda: app.app[keys.EXTRA]["media"]["demo"].live, 15)
                answer = await control(app, "cdn", "start")
                assert answer["state"] in ("connecting", "live") and answer["kind"] == "whip"
                assert answer["target"] == f"{cdn_url}/whip/cdn"
                await wait_until(lambda: _is(state_of(app, "cdn"), "live"), 15)

                async def cdn_live() -> bool:
                    async with http.get(f"{cdn_url}/api/shows/cdn") as r:
                        return (await r.json())["live"]

                await wait_until(cdn_live, 15)
                player = WhepPlayer(f"{cdn_url}/whep/cdn")
                await player.start(http)
                await player.wait_first_frame(15)
                await asyncio.sleep(1.0)
                assert player.latest_video is not None
                assert (player.latest_video.width, player.latest_video.height) == (W, H)
                before = card_region(player.latest_video)
                async with app.session.post(
                    "/api/shows/demo/feature", json={"sku": "MUG-01"}, headers=app.auth()
                ) as r:
                    assert r.status == 200
                await asyncio.sleep(2.5)
                after = card_region(player.latest_video)
                assert np.abs(after - before).mean() > 15, "our card reached the other server"
                assert (await state_of(app, "cdn"))["kbps"] > 50
                stopped = await control(app, "cdn", "stop")
                assert stopped["state"] == "off"
            finally:
                if player is not None:
                    await player.close(http)
                await pub.close(http)
    finally:
        cdn.terminate()
        cdn.wait(20)


async def test_workers_only_the_origin_restreams_and_any_worker_starts_or_stops(
    tmp_path, redis_url, nginx
):
    """``serve --workers 2``: start and stop sent to the worker that is not the show's
    origin; the origin runs the destination (one stream at nginx)."""
    import os

    import redis.asyncio as aioredis

    from load_tests.common import spawn_serve

    manifest = restream_manifest(tmp_path, rtmp_table(nginx.port))
    args = ["--port", str(free_port()), "--redis", redis_url, "--data-dir", str(tmp_path / "v")]
    proc, url = spawn_serve(
        [*args, "--workers", "2", "--manifest", str(manifest)], env=dict(os.environ)
    )
    redis = aioredis.from_url(redis_url)
    auth = {"Authorization": f"Bearer {STAFF_PASSWORD}"}
    try:
        async with aiohttp.ClientSession() as http:
            pub = await publish(url, http)
            try:
                origin = await wait_until(lambda: redis.get("show:demo:origin"), 15)
                origin_index = origin.decode().split("|")[0]

                async def on_other_worker(method: str, path: str) -> dict:
                    # A fresh connection each time: the kernel spreads them over workers.
                    for _ in range(40):
                        async with aiohttp.ClientSession(
                            connector=aiohttp.TCPConnector(force_close=True)
                        ) as one:
                            async with one.request(method, f"{url}{path}", headers=auth) as r:
                                if r.headers.get("X-Showroom-Worker") != origin_index:
                                    text = await r.text()
                                    assert r.status == 200 and KEY not in text, text
                                    return await r.json()
                    raise AssertionError("never reached the other worker")

                started = await on_other_worker("POST", "/api/shows/demo/restreams/nginx/start")
                assert started["state"] in ("connecting", "live"), started

                async def live_everywhere() -> bool:
                    listed = await on_other_worker("GET", "/api/shows/demo/restreams")
                    return listed["restreams"][0]["state"] == "live"

                await wait_until(live_everywhere, 20)
                await wait_until(lambda: nginx.recording(KEY).exists(), 10)
                stopped = await on_other_worker("POST", "/api/shows/demo/restreams/nginx/stop")
                assert stopped["state"] == "off", stopped
            finally:
                await pub.close(http)
    finally:
        await redis.aclose()
        proc.terminate()
        proc.wait(30)


async def test_rtmp_restream_stop_then_start_again_streams(make_app, tmp_path, nginx):
    app = await make_app([restream_manifest(tmp_path, rtmp_table(nginx.port))])
    async with aiohttp.ClientSession() as http:
        pub = await publish(app.url, http)
        try:
            await wait_until(lambda: app.app[keys.EXTRA]["media"]["demo"].live, 15)
            for _ in range(3):
                await control(app, "nginx", "start")
                await wait_until(lambda: _is(state_of(app), "live"), 10)
                await asyncio.sleep(2.0)
                live = await state_of(app)
                assert live["state"] == "live" and live["kbps"] > 50, live
                assert (await control(app, "nginx", "stop"))["state"] == "off"
                await asyncio.sleep(0.3)
        finally:
            await pub.close(http)


async def test_a_stalled_destination_drops_to_a_keyframe_and_never_slows_the_show(
    make_app, tmp_path, nginx
):
    """The pusher frozen (SIGSTOP) for 6.5 s: the show keeps its frame rate, the unsent
    data stays bounded (packets dropped), and the stream resumes at a keyframe."""
    import os
    import signal

    from media.restream import PUSH_LIMIT_BYTES

    app = await make_app([restream_manifest(tmp_path, rtmp_table(nginx.port))])
    async with aiohttp.ClientSession() as http:
        pub = await publish(app.url, http)
        try:
            runtime = app.app[keys.EXTRA]["media"]["demo"]
            await wait_until(lambda: runtime.live, 15)
            sender = app.app[keys.EXTRA]["restreams"]["demo"].hub.senders["nginx"]
            await control(app, "nginx", "start")
            await wait_until(lambda: _is(state_of(app), "live"), 10)
            os.kill(sender.pid, signal.SIGSTOP)
            frames, since = runtime.frames_out, time.monotonic()
            biggest = 0
            try:
                for _ in range(65):  # past PUSH_LIMIT_BYTES, short of STALL_S
                    await asyncio.sleep(0.1)
                    stdin = sender._stdin
                    if stdin is not None:
                        biggest = max(biggest, stdin.transport.get_write_buffer_size())
            finally:
                os.kill(sender.pid, signal.SIGCONT)
            fps = (runtime.frames_out - frames) / (time.monotonic() - since)
            assert fps >= FPS * 0.6, fps
            assert sender.dropped > 0
            assert biggest <= PUSH_LIMIT_BYTES + 200_000, biggest
            # It resumes (at a keyframe): live and carrying the stream again, within
            # seconds (two on a quiet machine; a loaded one wakes the pusher later).
            resumed: dict = {}

            async def flowing() -> bool:
                resumed.update(await state_of(app))
                return resumed["state"] == "live" and resumed["kbps"] > 50

            await wait_until(
                flowing,
                10,
                interval=0.25,
                message=lambda: f"the restream did not resume: {resumed}",
            )
        finally:
            await pub.close(http)


async def test_host_page_starts_and_stops_a_restream(make_app, tmp_path, nginx, artifacts):
    app = await make_app([restream_manifest(tmp_path, rtmp_table(nginx.port))])
    errors = JsErrors()
    async with aiohttp.ClientSession() as http:
        pub = await publish(app.url, http)
        try:
            await wait_until(lambda: app.app[keys.EXTRA]["media"]["demo"].live, 15)
            async with chromium(app) as browser:
                _, page = await new_page(browser, errors, "host", DESKTOP)
                await staff_login(page, app.url, "/shows/demo/host")
                row = page.locator("#restreams li[data-name=nginx]")
                await row.locator(".badge", has_text="off").wait_for(timeout=10000)
                assert KEY not in await page.content(), "the stream key never reaches the page"
                await page.get_by_role("button", name="Start nginx").click()
                await row.locator(".badge", has_text="kbps").wait_for(timeout=15000)
                assert (await state_of(app))["state"] == "live"
                await page.screenshot(path=artifacts / "host_restream_live.png", full_page=True)
                nginx.kill()  # the destination goes away: the host sees why
                await row.locator(".error", has_text="Last error").wait_for(timeout=20000)
                nginx.start()
                await page.get_by_role("button", name="Stop nginx").click()
                await row.locator(".badge", has_text="off").wait_for(timeout=10000)
                assert (await state_of(app))["state"] == "off"
        finally:
            await pub.close(http)
    assert errors.unexpected() == []


async def test_viewer_page_plays_from_the_playback_whep_service(
    make_app, tmp_path, redis_url, artifacts
):
    """[show.playback] whep_url: the page at this server plays the picture from another
    WHEP service (a second ``serve`` fed by our WHIP restream) while its cart stays here."""
    cdn_manifest = tmp_path / "cdn.toml"
    cdn_manifest.write_text(manifest_text("cdn", width=W, height=H, fps=FPS))
    cdn, cdn_url = start_server_process([cdn_manifest], redis_url, tmp_path / "cdn-var")
    try:
        table = f'\n[[restream]]\nname = "cdn"\nurl = "{cdn_url}/whip/cdn"\nkey = "{STREAM_KEY}"\nautostart = true\n'
        playback = f'[show.playback]\nwhep_url = "{cdn_url}/whep/cdn"\n'
        app = await make_app([restream_manifest(tmp_path, table, extra=playback)])
        runtime = app.app[keys.EXTRA]["media"]["demo"]
        errors = JsErrors()
        async with aiohttp.ClientSession() as http:
            pub = await publish(app.url, http)
            try:
                await wait_until(lambda: _is(state_of(app, "cdn"), "live"), 20)
                async with chromium(app) as browser:
                    _, page = await new_page(
                        browser, errors, "viewer", PHONE, is_mobile=True, has_touch=True
                    )
                    await page.goto(f"{app.url}/shows/demo")
                    await page.wait_for_function(
                        f"() => {{ const v = document.getElementById('video');"
                        f" return v.videoWidth === {W} && v.currentTime > 1; }}",
                        timeout=30000,
                    )

                    async def cdn_viewers() -> int:
                        async with http.get(f"{cdn_url}/api/shows/cdn") as r:
                            return (await r.json())["viewers"]

                    assert await wait_until(cdn_viewers, 10) == 1, "the page plays from the CDN"
                    assert not runtime.viewers, "no WHEP session at this server"
                    async with app.session.post(
                        "/api/shows/demo/feature", json={"sku": "MUG-01"}, headers=app.auth()
                    ) as r:
                        assert r.status == 200
                    await page.locator("#f-buy").tap()  # the cart is this server's
                    await page.locator("#cart-bar-text", has_text="1 item").wait_for(timeout=10000)
                    await page.screenshot(path=artifacts / "viewer_playback_whep.png")
            finally:
                await pub.close(http)
        assert errors.unexpected() == []
    finally:
        cdn.terminate()
        cdn.wait(20)


@pytest.mark.usefixtures("gstreamer")
async def test_whip_restream_plays_in_gstreamer_webrtcbin(make_app, tmp_path):
    """A third-party WHIP server (GStreamer's webrtcbin behind a small WHIP endpoint, as an
    SFU's or a CDN's ingest) receives the restream and decodes the composed show: H.264 at
    the show's size, our product card in its pixels once the host features a product."""
    dump = tmp_path / "frame.i420"
    gst = await start_gst("serve", "--port", "0", "--key", "cdn-key", "--dump", str(dump))
    try:
        await wait_until(lambda: gst.first("listening") is not None, 15)
        port = gst.first("listening")["port"]  # its own free port: no race for one
        table = (
            f'\n[[restream]]\nname = "sfu"\nurl = "http://127.0.0.1:{port}/whip"\nkey = "cdn-key"\n'
        )
        app = await make_app([restream_manifest(tmp_path, table)])
        async with aiohttp.ClientSession() as http:
            pub = await publish(app.url, http)
            try:
                await wait_until(lambda: app.app[keys.EXTRA]["media"]["demo"].live, 15)
                answer = await control(app, "sfu", "start")
                assert answer["kind"] == "whip"
                await wait_until(lambda: _is(state_of(app, "sfu"), "live"), 15)

                def decoded() -> dict:
                    return next((e for e in reversed(gst.events) if e["event"] == "frames"), {})

                await wait_until(lambda: decoded().get("frames", 0) >= 30, 20)
                assert decoded()["size"] == [W, H], gst.events[-5:]

                def luma_card() -> np.ndarray:
                    y = np.frombuffer(dump.read_bytes()[: W * H], dtype=np.uint8).reshape(H, W)
                    return card_luma(y)

                before = luma_card()
                async with app.session.post(
                    "/api/shows/demo/feature", json={"sku": "MUG-01"}, headers=app.auth()
                ) as r:
                    assert r.status == 200
                await asyncio.sleep(3.0)
                assert np.abs(luma_card() - before).mean() > 15, "our card reached webrtcbin"
                assert (await control(app, "sfu", "stop"))["state"] == "off"
            finally:
                await pub.close(http)
    finally:
        await gst.finish()
    assert not [e for e in gst.events if e["event"] in ("refused", "gst_error")], gst.events
