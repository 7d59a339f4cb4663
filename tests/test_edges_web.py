"""The viewer page in a real browser with an edge node: the page's WHEP POST at the origin
is redirected (307, cross-origin) to the edge and plays there, live events still come
from the origin, and when the edge dies the page reconnects at the origin."""

from __future__ import annotations

import os
import signal
import time

import aiohttp
import pytest
from playwright.async_api import expect

from load_tests.common import spawn_serve
from server import edges, keys
from server.embedded import free_port
from tests.conftest import wait_until
from tests.test_web_player import assert_playing, feature, join, start_show
from tests.test_web_support import PHONE, JsErrors, chromium, new_page

METRICS_TOKEN = "edge-web-test-metrics"
OPS = {"Authorization": f"Bearer {METRICS_TOKEN}"}


@pytest.mark.timeout(180)
async def test_viewer_page_plays_from_the_edge_and_falls_back_to_the_origin(
    make_app, redis_url, tmp_path, artifacts
):
    app = await make_app()
    publisher = await start_show(app)
    env = {**os.environ, "SHOWROOM_METRICS_TOKEN": METRICS_TOKEN}
    args = ["--origin", app.url, "--redis", redis_url, "--port", str(free_port())]
    edge, edge_url = spawn_serve(
        args, env=env, log_path=tmp_path / "edge.log", timeout=60, command="edge"
    )
    errors = JsErrors()
    http = aiohttp.ClientSession()
    runtime = app.app[keys.EXTRA]["media"]["demo"]
    try:
        await wait_until(lambda: edges.live_edges(app.app[keys.REDIS]), 10)
        # The page may connect to the edge: its origin is in the page's connect-src.
        await wait_until(lambda: edges.connect_sources(app.app) == [edge_url], 5)
        async with http.get(f"{app.url}/shows/demo") as r:
            assert f"connect-src 'self' {edge_url}" in r.headers["Content-Security-Policy"]

        async def edge_viewers() -> int:
            async with http.get(f"{edge_url}/api/edge", headers=OPS) as r:
                show = (await r.json())["shows"].get("demo")
            return show["viewers"] if show else 0

        await feature(app, "MUG-01")
        async with chromium(app) as browser:
            _ctx, page = await new_page(browser, errors, "phone", PHONE, is_mobile=True)
            await join(page, app.url)
            await assert_playing(page)
            # Played from the edge: one viewer there, none at the origin (but its pull).
            assert await edge_viewers() == 1
            assert runtime.audience == 0 and len(runtime.viewers) == 1
            # Live events still reach the page from the origin.
            await expect(page.locator("#f-name")).to_have_text("Stoneware mug")
            await feature(app, "TEE-02")
            await expect(page.locator("#f-name")).to_have_text("Crewneck tee")
            await page.screenshot(path=artifacts / "edges_viewer_on_edge.png")

            # The edge dies: the page retries at the origin, which serves it itself
            # once the dead edge's heartbeat has expired.
            edge.send_signal(signal.SIGKILL)
            edge.wait()
            killed = time.monotonic()
            await wait_until(lambda: runtime.audience == 1, 30, interval=0.2)
            print(f"viewer back (at the origin) {time.monotonic() - killed:.1f} s after the kill")
            await assert_playing(page)
            await page.screenshot(path=artifacts / "edges_viewer_back_at_origin.png")
        # Only the dead edge's refused connections may be in the console.
        assert not errors.unexpected("ERR_CONNECTION_REFUSED", "Failed to fetch"), errors.errors
    finally:
        await http.close()
        if edge.poll() is None:
            edge.kill()
            edge.wait()
        await publisher.close(app.session)
