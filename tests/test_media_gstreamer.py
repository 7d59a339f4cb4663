"""GStreamer's webrtcbin, from Debian's packages, as a WHIP publisher and as a WHEP player.

webrtcbin is what many hardware encoders and capture kits embed: it offers
``a=setup:actpass`` and serves DTLS with an RSA certificate. It runs as its own process
(tests/gst_peer.py under the system python3, where python3-gi lives) and does the HTTP
exchange itself; the server under test is the real app on a real port.
"""

from __future__ import annotations

import aiohttp
import numpy as np
import pytest

from media.client import WhepPlayer, WhipPublisher
from media.testsrc import TestPatternTrack
from server import keys
from tests.conftest import STREAM_KEY, wait_until
from tests.gst_support import GstPeer, start_gst

pytestmark = pytest.mark.timeout(120)

RED = "0xffe01010"  # the GStreamer publisher's picture: nothing else on screen is red
CLEAR = (0.08, 0.30, 0.42, 0.60)  # x0, x1, y0, y1: a region no overlay covers


def rgb_mean(frame, region=CLEAR) -> np.ndarray:
    rgb = frame.to_ndarray(format="rgb24")
    h, w, _ = rgb.shape
    x0, x1, y0, y1 = region
    return rgb[int(y0 * h) : int(y1 * h), int(x0 * w) : int(x1 * w)].reshape(-1, 3).mean(axis=0)


def is_red(frame) -> bool:
    r, g, b = rgb_mean(frame)
    return r > 170 and g < 90 and b < 90


def is_slate(frame) -> bool:  # dark blue-grey (22, 26, 38)
    return bool((rgb_mean(frame) < 70).all())


async def watch_gst_publisher(app, codec: str, *extra: str) -> GstPeer:
    """A viewer watches the slate, GStreamer publishes red, the viewer sees red, then
    GStreamer ends its session (DELETE) and the viewer is back on the slate."""
    runtime = app.app[keys.EXTRA]["media"]["demo"]
    player = WhepPlayer(f"{app.url}/whep/demo", audio=False)
    async with aiohttp.ClientSession() as http:
        await player.start(http)
        gst: GstPeer | None = None
        try:
            await player.wait_first_frame(10)
            assert is_slate(player.latest_video), "no publisher yet: the viewer sees the slate"
            gst = await start_gst(
                "publish", f"{app.url}/whip/demo", "--key", STREAM_KEY, "--codec", codec, "--color", RED, *extra
            )  # fmt: skip
            try:
                await wait_until(
                    lambda: player.latest_video is not None and is_red(player.latest_video), 20
                )
            except TimeoutError:
                await gst.finish()
                pytest.fail(
                    f"the viewer never saw GStreamer's {codec} picture (last frame RGB "
                    f"{rgb_mean(player.latest_video).round()}); {gst.diagnosis()}"
                )
            publisher = runtime.publisher
            assert publisher is not None
            # GStreamer's Opus audio is decoded too.
            await wait_until(lambda: publisher.frames > 10 and publisher.audio_frames > 10, 5)
            await gst.finish()
            assert (gst.first("deleted") or {}).get("status") == 200, gst.events
            await wait_until(lambda: runtime.publisher is None, 5)
            await wait_until(lambda: is_slate(player.latest_video), 5)
            return gst
        finally:
            if gst is not None and gst.proc.returncode is None:
                await gst.finish()
            await player.close(http)


@pytest.mark.parametrize("codec", ["h264", "vp8"])
async def test_gstreamer_publishes_over_whip_and_viewers_see_its_picture(gstreamer, app, codec):
    gst = await watch_gst_publisher(app, codec)
    answered = gst.first("answered")
    assert answered and answered["status"] == 201
    # Offered actpass, the server is the DTLS server: webrtcbin's RSA-certificate client
    # accepts our ECDSA certificate.
    assert answered["setup"] == "a=setup:passive", gst.events


async def test_gstreamer_as_rsa_dtls_server_gets_a_shared_cipher(gstreamer, app):
    """webrtcbin told to be the DTLS server (its offer says passive): the server is the
    DTLS client and must offer an ECDHE-RSA suite for webrtcbin's RSA certificate."""
    gst = await watch_gst_publisher(app, "h264", "--offer-setup", "passive")
    assert gst.first("answered")["setup"] == "a=setup:active", gst.events


@pytest.mark.parametrize("codec", ["h264", "vp8"])
async def test_gstreamer_plays_over_whep(gstreamer, app, tmp_path, codec):
    runtime = app.app[keys.EXTRA]["media"]["demo"]
    async with aiohttp.ClientSession() as http:
        pub = WhipPublisher(f"{app.url}/whip/demo", STREAM_KEY, TestPatternTrack(320, 180, 30))
        await pub.start(http)
        try:
            await wait_until(lambda: runtime.live, 10)
            dump = tmp_path / "last.i420"
            gst = await start_gst(
                "play", f"{app.url}/whep/demo", "--codec", codec, "--audio", "--seconds", "8", "--dump", str(dump)
            )  # fmt: skip
            await gst.finish(30, stop=False)
        finally:
            await pub.close(http)
    summary = gst.first("summary") or {}
    frames = summary.get("frames", 0)
    # 8 s of a 30 fps show: a slow start on a busy machine is allowed for, a stalled
    # stream (a few frames) is not.
    assert frames >= 90, f"GStreamer decoded {frames} {codec} frames in 8 s; {gst.diagnosis()}"
    assert gst.first("answered")["setup"] == "a=setup:passive"
    width, height = summary["size"]
    assert (width, height) == (640, 360), "the show's composed size"
    y = np.frombuffer(dump.read_bytes(), np.uint8)[: width * height].reshape(height, width)
    x0, x1, y0, y1 = CLEAR
    luma = y[int(y0 * height) : int(y1 * height), int(x0 * width) : int(x1 * width)].mean()
    assert luma > 120, f"GStreamer shows the slate (luma {luma:.0f}), not the live test pattern"
    assert (gst.first("deleted") or {}).get("status") == 200
