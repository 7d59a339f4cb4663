"""Recording housekeeping on a real show: when the disk is nearly full the recording
stops with a warning to the host (event, status, log) and the show goes on; a drop is a
chapter; old recordings and their clips go after the retention time."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time

import aiohttp
import pytest

from media.client import WhepPlayer, WhipPublisher
from media.recording import RecordingConfig
from media.testsrc import TestPatternTrack
from server import keys
from server.routes.recordings import sweep_retention
from tests.conftest import STAFF_PASSWORD, STREAM_KEY, wait_until

pytestmark = pytest.mark.timeout(90)

HOST = {"Authorization": f"Bearer {STAFF_PASSWORD}"}


async def next_event(sse: aiohttp.ClientResponse, kind: str, within: float) -> dict:
    async def read() -> dict:
        while True:
            line = (await sse.content.readline()).decode()
            if line.startswith("data: "):
                event = json.loads(line[6:])
                if event.get("type") == kind:
                    return event

    return await asyncio.wait_for(read(), within)


async def test_disk_floor_stops_recording_show_goes_on_then_retention(app, caplog):
    s = app.session
    http = aiohttp.ClientSession()
    pub = WhipPublisher(f"{app.url}/whip/demo", STREAM_KEY, TestPatternTrack(320, 180, 30))
    viewer = WhepPlayer(f"{app.url}/whep/demo", audio=False)
    sse = await s.get("/api/shows/demo/events")
    try:
        await sse.content.readline()  # subscribed
        await pub.start(http)
        started = await next_event(sse, "recording", 10)
        assert started["state"] == "recording"
        await viewer.start(http)
        await viewer.wait_first_frame(5)
        async with s.post(
            "/api/shows/demo/drops",
            json={"sku": "MUG-01", "quantity": 3, "duration_s": 2, "per_buyer_limit": 1},
            headers=HOST,
        ) as r:
            assert r.status == 201, await r.text()
        await asyncio.sleep(0.5)
        # The publisher reconnects (a PocketCam on a flaky link): the same live session,
        # the same recording.
        await pub.close(http)
        pub = WhipPublisher(f"{app.url}/whip/demo", STREAM_KEY, TestPatternTrack(320, 180, 30))
        await pub.start(http)
        await asyncio.sleep(0.5)
        async with s.get("/api/shows/demo/recordings") as r:
            body = await r.json()
        assert [x["id"] for x in body["recordings"]] == [started["id"]]
        assert body["recorder"]["recording_id"] == started["id"]

        # The disk is nearly full: the floor is now above the free space.
        local = app.app[keys.EXTRA]["recordings"]["demo"]
        local.recorder.config = dataclasses.replace(local.recorder.config, min_free_mb=10**12)
        with caplog.at_level(logging.WARNING, logger="showroom.recording"):
            stopped = await next_event(sse, "recording", 5)
        assert stopped["state"] == "stopped" and stopped["reason"] == "disk_full"
        assert stopped["id"] == started["id"] and stopped["free_mb"] > 0
        assert any("only" in r.getMessage() and "MB free" in r.getMessage() for r in caplog.records)
        async with s.get("/api/shows/demo/recordings") as r:
            body = await r.json()
        assert body["recorder"]["state"] == "stopped" and body["recorder"]["reason"] == "disk_full"
        assert body["recordings"][0]["stopped"] == "disk_full"

        # The show goes on: the viewer keeps getting fresh frames.
        frames = viewer.stats.video_frames
        await asyncio.sleep(1.0)
        assert viewer.stats.video_frames - frames >= 15
        state = await (await s.get("/api/shows/demo")).json()
        assert state["live"] is True
    finally:
        sse.close()
        await viewer.close(http)
        await pub.close(http)
        await http.close()

    async def ended():
        async with s.get("/api/shows/demo/recordings") as r:
            recs = (await r.json())["recordings"]
        return recs[0] if recs[0]["ended_at"] else None

    rec = await wait_until(ended, timeout=10)
    assert 1.5 <= rec["duration_s"] <= 6, rec  # up to the stop, playable
    drops = [c for c in rec["chapters"] if c["kind"] == "drop"]
    assert [c["sku"] for c in drops] == ["MUG-01"]
    assert drops[0]["end_s"] - drops[0]["start_s"] == pytest.approx(2.0, abs=0.3)
    async with s.get(rec["url"]) as r:
        assert r.status == 200 and int(r.headers["Content-Length"]) > 10_000

    # Retention: a sweep 31 days on removes it (the default keeps 30 days).
    path = app.settings.data_dir / "recordings" / "demo" / f"{rec['id']}.mp4"
    assert path.exists()
    assert await sweep_retention(app.app, now=int(time.time() * 1000)) == 0
    assert await sweep_retention(app.app, now=int((time.time() + 31 * 86400) * 1000)) == 1
    assert not path.exists()
    async with s.get("/api/shows/demo/recordings") as r:
        assert (await r.json())["recordings"] == []
    async with s.get(rec["url"]) as r:
        assert r.status == 404


def test_recording_settings_from_the_environment():
    cfg = RecordingConfig.from_env(
        {"SHOWROOM_RECORDING_RETENTION_DAYS": "7", "SHOWROOM_RECORDING_MIN_FREE_MB": "500"}
    )
    assert (cfg.retention_days, cfg.min_free_mb, cfg.enabled) == (7, 500, True)
    assert RecordingConfig.from_env({"SHOWROOM_RECORDING": "off"}).enabled is False
    with pytest.raises(ValueError, match="SHOWROOM_RECORDING_IDLE_S"):
        RecordingConfig.from_env({"SHOWROOM_RECORDING_IDLE_S": "soon"})
