"""``showroom pocketcam`` against a real ``showroom serve`` process: it goes live, comes
back on its own after the server restarts, and ends its session cleanly on SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys

import aiohttp
import pytest

from media.client import WhepPlayer
from media.pocketcam import next_backoff, parse_size
from server.embedded import free_port, wait_for_port
from tests.conftest import ROOT, STREAM_KEY, wait_until
from tests.test_media_path import is_live_picture

pytestmark = pytest.mark.timeout(90)


def serve(manifest, redis_url: str, port: int, data_dir) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-m", "server.cli", "serve", "--port", str(port), "--redis", redis_url,
         "--data-dir", str(data_dir), "--manifest", str(manifest)],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    wait_for_port("127.0.0.1", port, 20)
    return proc


def start_pocketcam(url: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "server.cli", "pocketcam", f"{url}/whip/demo", "--key",
         STREAM_KEY, "--size", "320x180", "--fps", "15"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def watch_until_live(url: str, http: aiohttp.ClientSession, within: float) -> None:
    player = WhepPlayer(f"{url}/whep/demo", audio=False)
    try:
        await player.start(http)
        await player.wait_first_frame(5)
        await wait_until(lambda: is_live_picture(player.latest_video), within, 0.05)
    finally:
        await player.close(http)


def test_pocketcam_cli_helpers():
    assert parse_size("640x360") == (640, 360)
    with pytest.raises(ValueError):
        parse_size("big")
    steps = [0.5]
    for _ in range(8):
        steps.append(next_backoff(steps[-1]))
    assert steps[:4] == [0.5, 1.0, 2.0, 4.0] and max(steps) == 10.0


async def test_pocketcam_publishes_reconnects_after_restart_and_leaves_cleanly(
    write_manifest, redis_url, tmp_path
):
    manifest = write_manifest("demo", width=320, height=180, fps=15)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = await asyncio.to_thread(serve, manifest, redis_url, port, tmp_path / "var")
    cam = start_pocketcam(url)
    http = aiohttp.ClientSession()
    try:
        await watch_until_live(url, http, 10)

        # The server goes away and comes back on the same address.
        await asyncio.to_thread(stop, server)
        await asyncio.sleep(1.0)
        server = await asyncio.to_thread(serve, manifest, redis_url, port, tmp_path / "var")
        await watch_until_live(url, http, 15)

        # SIGTERM: PocketCam ends its WHIP session, the show goes to its slate.
        cam.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(cam.wait, 10) == 0

        async def not_live() -> bool:
            async with http.get(f"{url}/api/shows/demo") as resp:
                return (await resp.json())["live"] is False

        await wait_until(not_live, 4)
    finally:
        await http.close()
        if cam.poll() is None:
            cam.kill()
        with contextlib.suppress(Exception):
            cam.wait(5)
        await asyncio.to_thread(stop, server)
