"""An auction is a chapter of the show's recording, from its start to its end."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from media.client import WhipPublisher
from media.recording import RecordingConfig
from media.testsrc import TestPatternTrack
from tests.conftest import STAFF_PASSWORD, STREAM_KEY, wait_until

pytestmark = pytest.mark.timeout(90)

HOST = {"Authorization": f"Bearer {STAFF_PASSWORD}"}


async def test_an_auction_is_a_chapter_of_the_recording(make_app):
    app = await make_app(print_worker=False, recording=RecordingConfig(idle_s=0.5))
    s = app.session
    http = aiohttp.ClientSession()
    pub = WhipPublisher(f"{app.url}/whip/demo", STREAM_KEY, TestPatternTrack(320, 180, 30))
    try:
        await pub.start(http)

        async def recording():
            async with s.get("/api/shows/demo/recordings") as r:
                return (await r.json())["recordings"]

        await wait_until(recording, timeout=15)
        await asyncio.sleep(0.5)
        body = {"sku": "MUG-01", "start_price": "10.00", "increment": "1.00", "duration_s": 30}
        async with s.post("/api/shows/demo/auctions", json=body, headers=HOST) as r:
            assert r.status == 201, await r.text()
            auction = await r.json()
        await asyncio.sleep(1.5)
        async with s.delete(f"/api/auctions/{auction['id']}", headers=HOST) as r:
            assert r.status == 200, await r.text()
        await asyncio.sleep(0.5)
    finally:
        await pub.close(http)
        await http.close()

    async def ended():
        recs = await recording()
        return recs[0] if recs and recs[0]["ended_at"] else None

    rec = await wait_until(ended, timeout=20)
    [chapter] = [c for c in rec["chapters"] if c["kind"] == "auction"]
    assert chapter["sku"] == "MUG-01"
    assert chapter["end_s"] - chapter["start_s"] == pytest.approx(1.5, abs=0.5)
    assert 0 < chapter["start_s"] < rec["duration_s"]
