"""Viewer slots in Redis: the per-show cap holds under concurrent offers, a session that
never connects gives its slot back, and one address holds a bounded number of sessions
(issue 11 section 2; issue 16 item 4)."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
import redis.asyncio as aioredis

from media.client import WhepPlayer
from server import keys, viewer_slots
from tests.conftest import wait_until
from tests.test_ice_candidates import with_candidates
from tests.test_media_http import real_offer

pytestmark = pytest.mark.timeout(90)

SDP = {"Content-Type": "application/sdp"}


async def never_connecting_offer() -> str:
    """A real recvonly offer with no candidates (and no end-of-candidates): ICE waits
    for trickle that never comes, so the session never connects."""
    return with_candidates(await real_offer("view"), [])


async def post_all(url: str, offer: str, n: int) -> list[int]:
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    async with aiohttp.ClientSession(connector=connector) as http:

        async def one() -> int:
            async with http.post(url, data=offer, headers=SDP) as r:
                return r.status

        return await asyncio.gather(*(one() for _ in range(n)))


async def test_cap_holds_under_60_concurrent_offers_and_unconnected_slots_free(make_app, redis_url):
    running = await make_app(max_viewers_per_show=5, whep_connect_timeout_s=3)
    runtime = running.app[keys.EXTRA]["media"]["demo"]
    http = aiohttp.ClientSession()
    player = WhepPlayer(f"{running.url}/whep/demo", audio=False)
    redis = aioredis.Redis.from_url(redis_url)
    try:
        await player.start(http)
        await player.wait_first_frame(10)
        statuses = await post_all(f"{running.url}/whep/demo", await never_connecting_offer(), 60)
        assert statuses.count(201) == 4, statuses  # 5 places, one taken by the player
        assert statuses.count(503) == 56
        assert len(runtime.viewers) == 5
        assert await redis.zcard(viewer_slots.show_key("demo")) == 5

        # Never connected: closed after the timeout, their slots freed; the player stays.
        await wait_until(lambda: len(runtime.viewers) == 1, timeout=10)

        async def one_slot_left() -> bool:
            return await redis.zcard(viewer_slots.show_key("demo")) == 1

        await wait_until(one_slot_left, timeout=5)
        assert player.location and player.location.rsplit("/", 1)[1] in runtime.viewers
        frames = player.stats.video_frames
        await asyncio.sleep(0.5)
        assert player.stats.video_frames > frames
        statuses = await post_all(f"{running.url}/whep/demo", await never_connecting_offer(), 10)
        assert statuses.count(201) == 4
    finally:
        await player.close(http)
        await http.close()
        await redis.aclose()


async def test_sessions_per_address_are_capped(make_app):
    running = await make_app(max_viewers_per_ip=3)
    offer = await never_connecting_offer()
    async with aiohttp.ClientSession() as http:
        locations = []
        for _ in range(3):
            r = await http.post(f"{running.url}/whep/demo", data=offer, headers=SDP)
            assert r.status == 201
            locations.append(r.headers["Location"])
        r = await http.post(f"{running.url}/whep/demo", data=offer, headers=SDP)
        assert r.status == 429
        body = await r.json()
        assert body["error"] == "rate_limited" and int(r.headers["Retry-After"]) > 0
        r = await http.delete(f"{running.url}{locations.pop()}")
        assert r.status == 200
        r = await http.post(f"{running.url}/whep/demo", data=offer, headers=SDP)
        assert r.status == 201, "a closed session gives its place back at once"
        locations.append(r.headers["Location"])
        for location in locations:
            await http.delete(f"{running.url}{location}")


def test_default_caps_follow_the_host():
    from server.config import Settings

    assert Settings(host="127.0.0.1").viewer_ip_cap == 0
    assert Settings(host="0.0.0.0").viewer_ip_cap == 8
    assert Settings(host="0.0.0.0", max_viewers_per_ip=2).viewer_ip_cap == 2
    assert Settings().whep_connect_timeout_s == 15.0
