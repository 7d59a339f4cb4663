"""Viewers on lossy, capped links: the quality ladder and NACK recovery end to end.

A real server, a publisher of moving noise (so the show really carries its bitrate) and
a real aiortc viewer whose media all crosses ``tests/udp_relay.py``: loss, a bandwidth
cap with a bounded queue, delay. The show is 640x360 at 1000 kbps with a 320x180 rung at
300 kbps from its manifest.
"""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest

from load_tests.common import ONE_MUG, VideoSize, manifest_toml
from load_tests.lean_viewers import LoopedVideo
from media.client import WhepPlayer, WhipPublisher
from server.routes.media import runtimes
from tests.conftest import STAFF_PASSWORD, STREAM_KEY, wait_until
from tests.udp_relay import Impairment, RelayedPlayer, UdpRelay

pytestmark = pytest.mark.timeout(150)

SIZE = VideoSize(640, 360, 24, 1000)
TOP_W, LOW_W = 640, 320
# A configured ladder (the default one's 360p rung would not be smaller than this show):
# small pictures keep the test light on a busy machine.
LADDER = """
[[show.ladder]]
width = 320
height = 180
bitrate_kbps = 300
"""
PRODUCTS = ONE_MUG


@pytest.fixture
async def show(make_app, tmp_path):
    path = tmp_path / "demo.toml"
    text = manifest_toml(
        "demo", title="Lossy", stream_key=STREAM_KEY, staff_password=STAFF_PASSWORD,
        products=PRODUCTS, video=SIZE, show_extra=LADDER,
    )  # fmt: skip
    path.write_text(text)
    app = await make_app([path])
    http = aiohttp.ClientSession()
    # Pre-encoded noise at more than the show's bitrate: publishing costs almost nothing.
    source = LoopedVideo(SIZE.width, SIZE.height, SIZE.fps, 2000, seconds=2)
    publisher = WhipPublisher(f"{app.url}/whip/demo", STREAM_KEY, source, codec="H264")
    await publisher.start(http)
    yield app, http, runtimes(app.app)["demo"]
    await publisher.close(http)
    await http.close()


def max_gap(times: list[float], start: float, end: float) -> float:
    """The longest time without a new decoded frame within [start, end]."""
    inside = [start] + [t for t in times if start <= t <= end] + [end]
    return max(b - a for a, b in zip(inside, inside[1:], strict=False))


def width_at(player: WhepPlayer) -> int:
    return player.stats.video_widths[-1] if player.stats.video_widths else 0


async def first_width(player: WhepPlayer, width: int, within_s: float) -> float:
    """Seconds until the viewer decodes a frame ``width`` wide."""
    start = time.monotonic()
    await wait_until(lambda: width_at(player) == width, within_s, 0.02)
    return time.monotonic() - start


async def test_capped_viewer_moves_down_plays_on_and_comes_back(show):
    app, http, runtime = show
    relay = await UdpRelay().start()
    player = RelayedPlayer(f"{app.url}/whep/demo", relay, audio=False, codec="H264")
    try:
        await player.start(http)
        await player.wait_first_frame(15)
        await asyncio.sleep(2)
        assert width_at(player) == TOP_W, "a clean link starts and stays on the top rung"

        relay.down.set(rate_bps=700_000, delay_s=0.01)
        down_s = await first_width(player, LOW_W, 5)
        assert [r["viewers"] for r in runtime.stats()["rungs"]] == [0, 1]
        async with app.session.get("/metrics", headers=app.auth()) as resp:
            metrics = await resp.text()
        assert 'showroom_viewers_per_rung{rung="180p",show="demo"} 1.0' in metrics
        # One RTP stream throughout (plus its RTX): the switch was a keyframe, not a
        # new stream.
        receiver = player.pc.getTransceivers()[0].receiver
        assert len(receiver._RTCRtpReceiver__remote_streams) <= 2
        start = time.monotonic()
        await asyncio.sleep(30)
        end = time.monotonic()
        gap = max_gap(player.stats.video_times, start, end)
        frames = sum(1 for t in player.stats.video_times if start <= t <= end)
        rates = list(runtime.adapter.viewers.values())
        seen = ", ".join(
            f"{r.chooser.probes} probes ({r.chooser.failed_probes} failed), "
            f"{r.sender.feedback.nacked_packets} packets NACKed, "
            f"{r.sender.feedback.retransmits} resent"
            for r in rates
        )
        assert gap <= 0.5, (
            f"froze {gap:.2f} s at 700 kbps (moved down in {down_s:.1f} s; {seen}; "
            f"the link's queue dropped {relay.down.dropped_queue} packets)"
        )
        assert frames >= 0.8 * SIZE.fps * 30, f"{frames} frames in 30 s"
        assert width_at(player) == LOW_W, "still on the low rung while capped"

        relay.down.set()  # the cap lifts
        up_s = await first_width(player, TOP_W, 20)
        print(f"down in {down_s:.2f} s, longest gap {gap:.2f} s, up in {up_s:.1f} s")
    finally:
        await player.close(http)
        relay.close()


async def test_five_percent_loss_plays_without_freezes(show):
    """5 % of the media packets lost at random: NACK and RTX recover every one in time.

    The loss is on the way to the viewer only: aiortc's receiver sends a NACK only when
    a new gap opens (a browser repeats its NACKs every round trip), so a lost NACK would
    measure aiortc rather than the server. The benchmark loses both ways."""
    app, http, _ = show
    relay = await UdpRelay(Impairment(loss=0.05, seed=5)).start()
    player = RelayedPlayer(f"{app.url}/whep/demo", relay, audio=False, codec="H264")
    try:
        await player.start(http)
        await player.wait_first_frame(15)
        start = time.monotonic()
        await asyncio.sleep(30)
        end = time.monotonic()
        gap = max_gap(player.stats.video_times, start, end)
        frames = sum(1 for t in player.stats.video_times if start <= t <= end)
        assert relay.down.dropped_loss > 100, "the link really lost packets"
        assert gap <= 0.5, f"froze {gap:.2f} s at 5 % loss"
        assert frames >= 0.8 * SIZE.fps * 30, f"{frames} frames in 30 s"
    finally:
        await player.close(http)
        relay.close()
