"""GStreamer's webrtcbin, from Debian's packages, as a WHIP publisher and as a WHEP player.

webrtcbin is what many hardware encoders and capture kits embed: it offers
``a=setup:actpass`` and serves DTLS with an RSA certificate. It runs as its own process
(tests/gst_peer.py under the system python3, where python3-gi lives) and does the HTTP
exchange itself; the server under test is the real app on a real port.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import numpy as np
import pytest

from media.client import WhepPlayer, WhipPublisher
from media.testsrc import TestPatternTrack
from server import keys
from tests.conftest import STREAM_KEY, wait_until

pytestmark = pytest.mark.timeout(120)

SYSTEM_PYTHON = "/usr/bin/python3"
HELPER = Path(__file__).with_name("gst_peer.py")
RED = "0xffe01010"  # the GStreamer publisher's picture: nothing else on screen is red
CLEAR = (0.08, 0.30, 0.42, 0.60)  # x0, x1, y0, y1: a region no overlay covers


@pytest.fixture(scope="module")
def gstreamer() -> None:
    """Fail (not skip) when GStreamer is missing: `make system` installs it."""
    check = (
        "import gi; gi.require_version('Gst', '1.0'); gi.require_version('GstWebRTC', '1.0');"
        "from gi.repository import Gst; Gst.init(None);"
        "missing = [e for e in ('webrtcbin', 'nicesrc', 'dtlssrtpenc', 'x264enc', 'vp8enc',"
        " 'avdec_h264', 'vp8dec', 'opusenc') if Gst.ElementFactory.find(e) is None];"
        "print(' '.join(missing))"
    )
    try:
        proc = subprocess.run(
            [SYSTEM_PYTHON, "-c", check], capture_output=True, text=True, timeout=30
        )
    except FileNotFoundError:
        pytest.fail(f"{SYSTEM_PYTHON} not found: run `make system` (GStreamer interop tests)")
    assert proc.returncode == 0 and not proc.stdout.strip(), (
        "GStreamer with webrtcbin is not installed for the system python3 "
        f"(missing: {proc.stdout.strip() or proc.stderr.strip()[-300:]}): run `make system`"
    )


@dataclass
class GstPeer:
    """A running tests/gst_peer.py: its JSON events as they arrive, its stderr at the end."""

    proc: asyncio.subprocess.Process
    events: list[dict] = field(default_factory=list)
    stderr: str = ""
    _reader: asyncio.Task | None = None

    def first(self, event: str) -> dict | None:
        return next((e for e in self.events if e["event"] == event), None)

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        async for line in self.proc.stdout:
            with contextlib.suppress(ValueError):
                self.events.append(json.loads(line))

    async def finish(self, timeout: float = 20, *, stop: bool = True) -> None:
        """Stop the peer (SIGTERM: a publisher DELETEs its session), or with ``stop=False``
        let it end by itself; either way wait for it, then kill it after ``timeout``."""
        if stop and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.proc.wait(), timeout)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()
        if self._reader is not None:
            await self._reader
        assert self.proc.stderr is not None
        self.stderr = (await self.proc.stderr.read()).decode(errors="replace")

    def diagnosis(self) -> str:
        """What GStreamer saw: the answer's a=setup, DTLS states, OpenSSL's own error."""
        ssl = [
            ln.split("> ", 1)[-1] for ln in self.stderr.splitlines() if "ssl error" in ln.lower()
        ]
        summary = self.first("summary") or {}
        answered = self.first("answered") or {}
        return (
            f"GStreamer peer: answer {answered.get('setup')}, DTLS states "
            f"{summary.get('dtls_states')}, OpenSSL: {ssl or 'no error'}, "
            f"errors: {summary.get('errors')}, exit {self.proc.returncode}"
        )


async def start_gst(*args: str) -> GstPeer:
    env = {**os.environ, "GST_DEBUG": "dtlsconnection:1", "GST_DEBUG_NO_COLOR": "1"}
    env.pop("PYTHONPATH", None)  # the system python3 must not import the venv's packages
    proc = await asyncio.create_subprocess_exec(
        SYSTEM_PYTHON, str(HELPER), *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
    )  # fmt: skip
    peer = GstPeer(proc)
    peer._reader = asyncio.create_task(peer._read())
    return peer


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
