"""An edge's pull over a lossy link: lost packets are asked for again, not paid for with
frozen pictures and keyframes.

A real origin (in this process), a publisher of moving noise, and the edge's ``WhepPull``
whose WHEP session goes through a small HTTP proxy that does the candidate surgery of
``tests/udp_relay.py``: all its media crosses a UDP relay that loses packets both ways.
"""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest
from aiohttp import web

from load_tests.common import ONE_MUG, VideoSize, manifest_toml
from load_tests.lean_viewers import LoopedVideo
from media.client import WhipPublisher
from media.pull import EdgeShow, WhepPull
from server import keys
from tests.conftest import STAFF_PASSWORD, STREAM_KEY, wait_until
from tests.udp_relay import Impairment, UdpRelay, rewrite_answer, rewrite_offer

pytestmark = pytest.mark.timeout(150)

SIZE = VideoSize(640, 360, 24, 1000)
SECONDS = 20
PRODUCTS = ONE_MUG


async def start_proxy(origin: str, relay: UdpRelay) -> tuple[web.AppRunner, str]:
    """Forwards the pull's WHEP requests to the origin; the SDP's candidates are swapped
    for the relay's, so the media goes through it."""
    http = aiohttp.ClientSession()

    async def forward(request: web.Request) -> web.Response:
        body = await request.text()
        if request.method == "POST":
            body = rewrite_offer(body, relay)
        headers = {
            k: v
            for k, v in request.headers.items()
            if k.lower() not in ("host", "content-length", "transfer-encoding")
        }
        async with http.request(
            request.method, origin + request.path_qs, data=body, headers=headers
        ) as r:
            text = await r.text()
            if request.method == "POST" and r.status == 201:
                text = rewrite_answer(text, relay)
            out = {k: v for k, v in r.headers.items() if k in ("Location", "Content-Type")}
            return web.Response(status=r.status, text=text, headers=out)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", forward)
    app.on_cleanup.append(lambda _app: http.close())
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    return runner, f"http://127.0.0.1:{port}"


async def test_a_pull_over_a_lossy_link_asks_for_lost_packets_and_plays_on(make_app, tmp_path):
    path = tmp_path / "demo.toml"
    path.write_text(
        manifest_toml(
            "demo",
            title="Edge loss",
            stream_key=STREAM_KEY,
            staff_password=STAFF_PASSWORD,
            products=PRODUCTS,
            video=SIZE,
        )  # fmt: skip
    )
    app = await make_app([path])
    http = aiohttp.ClientSession()
    source = LoopedVideo(SIZE.width, SIZE.height, SIZE.fps, 1500, seconds=2)
    publisher = WhipPublisher(f"{app.url}/whip/demo", STREAM_KEY, source, codec="H264")
    relay = await UdpRelay(Impairment(seed=7), Impairment(seed=8)).start()
    runner, proxy = await start_proxy(app.url, relay)
    show = EdgeShow("demo", lambda s: WhepPull(s, f"{proxy}/whep/demo", http, dict))
    pull = WhepPull(show, f"{proxy}/whep/demo", http, dict)
    try:
        await publisher.start(http)
        runtime = app.app[keys.EXTRA]["media"]["demo"]
        await wait_until(lambda: runtime.live, 15)
        pull.start()
        # (a first session sometimes gets no video and is re-opened after 10 s: seen
        # here, not explained yet)
        await wait_until(lambda: pull.state == "live", 35)
        # The link starts losing once the session is up (a handshake's own retries on a
        # lossy link are aiortc's, not this test's subject).
        relay.down.set(loss=0.03)
        relay.up.set(loss=0.03)
        await asyncio.sleep(1)
        # The longest time without a new frame, sampled every 20 ms.
        start, frames0, plis0 = time.monotonic(), pull.frames, pull.plis_sent
        last_frames, last_at, longest = pull.frames, start, 0.0
        while time.monotonic() - start < SECONDS:
            await asyncio.sleep(0.02)
            now = time.monotonic()
            if pull.frames != last_frames:
                last_frames, last_at = pull.frames, now
            longest = max(longest, now - last_at)
        stats = pull.stats()
        frames, plis = pull.frames - frames0, pull.plis_sent - plis0
        print(f"{frames} frames in {SECONDS} s, longest gap {longest:.2f} s, {stats}")
        assert relay.down.dropped_loss > 100, "the link really lost packets"
        # (the link also lost audio and RTCP, which are not asked for again)
        assert stats["recovered_packets"] >= 50, stats
        assert stats["lost_packets"] <= stats["recovered_packets"] / 10, stats
        assert frames >= 0.9 * SIZE.fps * SECONDS, f"{frames} frames in {SECONDS} s"
        assert longest <= 0.5, f"no frame for {longest:.2f} s"
        # A keyframe now and then for a resend that was lost as well, not one per loss.
        assert plis <= SECONDS / 4, f"{plis} keyframes asked for, {stats}"
    finally:
        await pull.stop()
        await publisher.close(http)
        await runner.cleanup()
        relay.close()
        await http.close()
