"""Edge nodes: ``showroom serve`` (the origin) and ``showroom edge`` as real processes,
real aiortc publishers and viewers, a real Redis.

A viewer's WHEP POST at the origin is answered 307 to the edge and plays there; the edge
pulls each show once over WHEP whatever its number of viewers; a killed edge leaves the
choice and ``/api/nodes`` within the heartbeat TTL; the edge's viewers survive an origin
restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path
from urllib.parse import urljoin

import aiohttp
import numpy as np
import pytest

from load_tests.common import spawn_serve
from media.client import WhepPlayer, WhipPublisher
from media.lean import H264_FILLER
from media.pull import NACK_WAIT_S, RENACK_S, FrameAssembler, Timeline, h264_keyframe
from media.testsrc import TestPatternTrack
from server import edges, keys, presence
from server.embedded import free_port
from tests.conftest import STAFF_PASSWORD, STREAM_KEY, wait_until
from tests.test_media_http import real_offer
from tests.test_workers import pinned

pytestmark = pytest.mark.timeout(240)

FPS = 15
SDP = {"Content-Type": "application/sdp"}
STAFF = {"Authorization": f"Bearer {STAFF_PASSWORD}"}
METRICS_TOKEN = "edge-test-metrics"
OPS = {"Authorization": f"Bearer {METRICS_TOKEN}"}


def _env(stripe_url: str) -> dict[str, str]:
    return {**os.environ, "STRIPE_API_BASE": stripe_url, "SHOWROOM_METRICS_TOKEN": METRICS_TOKEN}


def start_origin(manifest: Path, redis_url: str, tmp_path: Path, stripe_url: str, port: int):
    args = ["--port", str(port), "--redis", redis_url, "--data-dir", str(tmp_path / "var")]
    args += ["--manifest", str(manifest)]
    return spawn_serve(args, env=_env(stripe_url), log_path=tmp_path / "origin.log", timeout=90)


def start_edge(origin: str, redis_url: str, tmp_path: Path, stripe_url: str, linger: float = 2):
    args = ["--origin", origin, "--redis", redis_url, "--port", str(free_port())]
    args += ["--linger", str(linger)]
    return spawn_serve(
        args, env=_env(stripe_url), log_path=tmp_path / "edge.log", timeout=60, command="edge"
    )


def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def live_picture(frame) -> bool:
    """The publisher's teal test pattern, not the dark slate."""
    y = frame.to_ndarray(format="gray")[::8, ::8]
    return float(np.mean(y)) > 90


async def nodes(http: aiohttp.ClientSession, url: str) -> list[dict]:
    async with http.get(f"{url}/api/nodes", headers=STAFF) as r:
        assert r.status == 200
        return (await r.json())["nodes"]


async def edge_listed(http, url: str, edge_url: str) -> dict | None:
    found = [n for n in await nodes(http, url) if n["role"] == "edge" and n["url"] == edge_url]
    return found[0] if found and found[0]["healthy"] else None


async def media(http, url: str) -> dict:
    async with http.get(f"{url}/api/shows/demo/media", headers=STAFF) as r:
        return await r.json()


async def first_answer(http, url: str) -> aiohttp.ClientResponse:
    """A viewer's WHEP POST at ``url`` without following a redirect."""
    offer = await real_offer("view")
    async with http.post(f"{url}/whep/demo", data=offer, headers=SDP, allow_redirects=False) as r:
        await r.read()
    if r.status == 201:  # not a viewer we keep: end the session again
        async with http.delete(urljoin(url, r.headers["Location"])):
            pass
    return r


async def live_pictures(player: WhepPlayer, within: float) -> None:
    start = player.stats.video_frames
    await wait_until(
        lambda: (
            player.stats.video_frames > start + FPS
            and player.latest_video is not None
            and live_picture(player.latest_video)
        ),
        within,
    )


async def keyframe_requests(http, url: str) -> float:
    async with http.get(f"{url}/metrics", headers=STAFF) as r:
        text = await r.text()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith('showroom_keyframes_requested_total{show="demo"}')
    )


@pytest.fixture
def manifest(write_manifest) -> Path:
    return write_manifest("demo", width=640, height=360, fps=FPS)


async def test_viewers_redirected_to_an_edge_play_through_one_pull_session(
    manifest, redis_url, tmp_path, stripe_sandbox
):
    origin_proc, url = start_origin(manifest, redis_url, tmp_path, stripe_sandbox.url, free_port())
    edge_proc = None
    players: list[WhepPlayer] = []
    publisher = None
    http = aiohttp.ClientSession()
    try:
        # No edge yet: the origin serves the viewer itself.
        assert (await first_answer(http, url)).status == 201
        edge_proc, edge_url = start_edge(url, redis_url, tmp_path, stripe_sandbox.url)
        await wait_until(lambda: edge_listed(http, url, edge_url), 10)
        publisher = WhipPublisher(f"{url}/whip/demo", STREAM_KEY, TestPatternTrack(640, 360, FPS))
        await publisher.start(http)

        r = await first_answer(http, url)
        assert r.status == 307 and r.headers["Location"] == f"{edge_url}/whep/demo"
        # The edge refuses what the origin refuses, with the same JSON errors.
        offer = await real_offer("view")
        bad = [
            ("/whep/demo", {"Content-Type": "text/plain"}, offer, 415),
            ("/whep/nope", SDP, offer, 404),
            ("/whep/demo", SDP, "v=0\r\n", 400),
        ]
        for path, headers, body, status in bad:
            async with http.post(f"{edge_url}{path}", data=body, headers=headers) as r:
                assert r.status == status and "error" in await r.json(), (path, r.status)
        async with http.delete(f"{edge_url}/whep/demo/nosuchsession") as r:
            assert r.status == 404
        assert r.headers["Access-Control-Allow-Origin"] == "*"

        # Two viewers ask the origin, follow the redirect and play from the edge.
        for _ in range(2):
            player = WhepPlayer(f"{url}/whep/demo", audio=True)
            await player.start(http)
            assert player.location is not None and player.location.startswith(edge_url)
            players.append(player)
        for player in players:
            await player.wait_first_frame(20)
            await live_pictures(player, 20)
            assert player.stats.sizes == {(640, 360)}
        await wait_until(lambda: all(p.stats.audio_frames > 10 for p in players), 10)

        # One pull session at the origin for both, not counted as a viewer there; the
        # show's audience (over every node) is the edge's two viewers.
        stats = await media(http, url)
        assert len(stats["edge_pulls"]) == 1 and stats["viewers"] == 0, stats
        assert stats["codecs"] == ["H264"]  # the origin's one encode, nothing per viewer

        async def audience_is(n: int) -> bool:
            async with http.get(f"{url}/api/shows/demo") as r:
                return (await r.json())["viewers"] == n

        await wait_until(lambda: audience_is(2), 10)
        node = await wait_until(
            lambda: _with(edge_listed(http, url, edge_url), lambda n: n["viewers"] == 2), 10
        )
        assert node["shows"] == {"demo": 2} and node["pulls"] == {"demo": "live"}
        assert {"id", "url", "viewers", "cpu", "healthy", "last_heartbeat"} <= set(node)
        async with http.get(f"{edge_url}/metrics", headers=OPS) as r:
            text = await r.text()
        assert 'showroom_viewers{show="demo"} 2.0' in text
        assert 'showroom_edge_pull_up{show="demo"} 1.0' in text
        async with http.get(f"{edge_url}/metrics") as r:
            assert r.status == 401

        # A viewer's PLI at the edge reaches the origin's keyframe gate (upstream RTCP).
        await asyncio.sleep(0.5)  # past the edge's PLI spacing
        before = await keyframe_requests(http, url)
        receiver = next(t.receiver for t in players[0].pc.getTransceivers() if t.kind == "video")
        (source,) = receiver.getSynchronizationSources()
        await receiver._send_rtcp_pli(source.source)
        await wait_until(lambda: _after(keyframe_requests(http, url), before), 5)

        # Both leave: the pull closes once the edge's linger (2 s) is over.
        for player in players:
            await player.close(http)
        players.clear()
        await wait_until(lambda: _with(media(http, url), lambda m: not m["edge_pulls"]), 10)

        # An edge that stops (SIGTERM) leaves the list and the choice at once.
        stop(edge_proc)
        assert await edge_listed(http, url, edge_url) is None
        assert (await first_answer(http, url)).status == 201
    finally:
        for player in players:
            await player.close(http)
        if publisher is not None:
            await publisher.close(http)
        await http.close()
        if edge_proc is not None:
            stop(edge_proc)
        stop(origin_proc)


async def test_edge_survives_an_origin_restart_and_a_dead_edge_leaves_the_choice(
    manifest, redis_url, tmp_path, stripe_sandbox
):
    port = free_port()
    origin_proc, url = start_origin(manifest, redis_url, tmp_path, stripe_sandbox.url, port)
    edge_proc, edge_url = start_edge(url, redis_url, tmp_path, stripe_sandbox.url)
    publisher = player = None
    http = aiohttp.ClientSession()
    try:
        await wait_until(lambda: edge_listed(http, url, edge_url), 10)
        publisher = WhipPublisher(f"{url}/whip/demo", STREAM_KEY, TestPatternTrack(640, 360, FPS))
        await publisher.start(http)
        player = WhepPlayer(f"{url}/whep/demo", audio=False)
        await player.start(http)
        assert player.location is not None and player.location.startswith(edge_url)
        await player.wait_first_frame(20)
        await live_pictures(player, 20)

        # The origin goes away (crash) and comes back on the same port; the publisher
        # publishes again. The edge's viewer never reconnects: the edge pulls again.
        stop(origin_proc, signal.SIGKILL)
        await publisher.close()
        publisher = None
        # Meanwhile the edge's viewer sees the slate, not a frozen picture.
        await wait_until(
            lambda: player.latest_video is not None and not live_picture(player.latest_video), 8
        )
        async with http.get(f"{edge_url}/api/edge", headers=OPS) as r:
            assert (await r.json())["shows"]["demo"]["pull"]["slate_frames"] > 0
        origin_proc, url2 = start_origin(manifest, redis_url, tmp_path, stripe_sandbox.url, port)
        assert url2 == url
        publisher = WhipPublisher(f"{url}/whip/demo", STREAM_KEY, TestPatternTrack(640, 360, FPS))
        await publisher.start(http)
        await live_pictures(player, 30)
        assert player.pc.connectionState == "connected"

        async def pull_state() -> dict:
            async with http.get(f"{edge_url}/api/edge", headers=OPS) as r:
                return (await r.json())["shows"]["demo"]["pull"]

        # Live again on a new session (on a loaded machine a session may stall and be
        # re-opened once more before it settles).
        pulled = {}

        async def pull_live() -> bool:
            pulled.update(await pull_state())
            return pulled["sessions"] >= 2 and pulled["state"] == "live"

        await wait_until(
            pull_live,
            10,
            interval=0.2,
            message=lambda: f"the edge's pull is not live again: {pulled}",
        )

        # The edge dies: within the heartbeat TTL (3 s) it is out of /api/nodes and the
        # origin serves new viewers itself.
        # (once the edge's heartbeat says its pull is live again: until then the origin
        # keeps new viewers of the show itself)
        await wait_until(lambda: _with(first_answer(http, url), lambda r: r.status == 307), 5)
        stop(edge_proc, signal.SIGKILL)
        killed = time.monotonic()

        async def edge_gone() -> bool:
            if await edge_listed(http, url, edge_url):
                return False
            return (await first_answer(http, url)).status == 201

        await wait_until(edge_gone, 6, interval=0.1)
        gone_after = time.monotonic() - killed
        print(f"dead edge left the choice after {gone_after:.2f} s")
        assert gone_after <= edges.TTL_MS / 1000 + 0.5  # the TTL, plus one poll on a busy box
    finally:
        if player is not None:
            await player.close()
        if publisher is not None:
            await publisher.close(http)
        await http.close()
        stop(edge_proc, signal.SIGKILL)
        stop(origin_proc)


async def test_an_edge_of_worker_processes_pulls_each_show_once(
    manifest, redis_url, tmp_path, stripe_sandbox
):
    """``serve --workers 2`` as the origin: the pull lands on either worker (relayed there
    when it is not the show's origin) and its DELETE reaches the worker holding it."""
    args = ["--workers", "2", "--port", str(free_port()), "--redis", redis_url]
    args += ["--data-dir", str(tmp_path / "var"), "--manifest", str(manifest)]
    origin_proc, url = spawn_serve(
        args, env=_env(stripe_sandbox.url), log_path=tmp_path / "origin.log", timeout=90
    )
    edge_proc, edge_url = start_edge(url, redis_url, tmp_path, stripe_sandbox.url)
    on = {}
    players: list[WhepPlayer] = []
    publisher = None
    http = aiohttp.ClientSession()
    try:
        on = {i: await pinned(url, i) for i in (0, 1)}
        await wait_until(lambda: edge_listed(http, url, edge_url), 10)
        publisher = WhipPublisher(f"{url}/whip/demo", STREAM_KEY, TestPatternTrack(640, 360, FPS))
        await publisher.start(on[0])
        for worker in (0, 1):  # each asks a different worker; both are sent to the edge
            player = WhepPlayer(f"{url}/whep/demo", audio=False)
            await player.start(on[worker])
            assert player.location is not None and player.location.startswith(edge_url)
            players.append(player)
        for player in players:
            await player.wait_first_frame(20)
            await live_pictures(player, 20)

        async def pulls() -> list[str]:
            return [p for w in (0, 1) for p in (await media(on[w], url))["edge_pulls"]]

        assert len(await pulls()) == 1
        for player in players:
            await player.close(http)
        players.clear()
        await wait_until(lambda: _empty(pulls()), 10)
    finally:
        for player in players:
            await player.close(http)
        if publisher is not None:
            await publisher.close(http)
        for client in on.values():
            await client.close()
        await http.close()
        stop(edge_proc)
        stop(origin_proc)


async def _empty(value) -> bool:
    return not await value


async def test_the_origin_keeps_its_share_and_follows_the_edges_in_redis(make_app):
    """An edge's heartbeat record is all the origin reads: with ``origin_share`` 0.25 and
    three viewers at an edge, the origin keeps viewers until it holds a quarter of the
    audience, then answers 307; ``?direct=1`` and the host's preview are never sent away;
    the edge is in the pages' connect-src and the badge follows the total meanwhile."""
    app = await make_app(origin_share=0.25)
    redis = app.app[keys.REDIS]
    runtime = app.app[keys.EXTRA]["media"]["demo"]
    edge_url = "http://127.0.0.1:9"
    record = {"id": "edge-t", "role": "edge", "url": edge_url, "viewers": 3, "cpu": 0.1}

    async def beating() -> None:  # as a live edge does, once a second (TTL 3 s)
        while True:
            await edges.beat(redis, {**record, "shows": {"demo": 3}, "at": time.time()})
            await asyncio.sleep(1)

    beats = asyncio.create_task(beating())
    try:
        expires = int(time.time() * 1000) + 60_000  # the edge's three viewers in the presence
        await redis.hset(presence.key("demo"), "edge-t:viewers", f"3:{expires}")
        await wait_until(lambda: edges.connect_sources(app.app) == [edge_url], 5)
        assert runtime.badge_counts_local_viewers is False
        async with app.session.get("/shows/demo") as r:
            assert f"connect-src 'self' {edge_url}" in r.headers["Content-Security-Policy"]

        async def answer(query: str = "", headers: dict | None = None) -> int:
            offer = await real_offer("view")
            async with app.session.post(
                f"/whep/demo{query}", data=offer, headers={**SDP, **(headers or {})},
                allow_redirects=False,
            ) as r:  # fmt: skip
                await r.read()
                return r.status

        async def audience(n: int) -> bool:
            return (await presence.read(redis, "demo"))[1] == n

        # own 0 of 3 (+1): keep; own 1 of 4 (+1): keep; own 2 of 5 (+1) >= 0.25 x 6: the edge.
        for expected in (4, 5):
            assert await answer() == 201
            await wait_until(lambda n=expected: audience(n), 5)
        assert await answer() == 307
        assert await answer("?direct=1") == 201
        assert await answer("?preview=1", app.auth()) == 201
        # The edge leaves: the origin keeps everyone; pages no longer name it.
        beats.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await beats
        await edges.leave(redis, "edge-t")
        assert await answer() == 201
        await wait_until(lambda: edges.connect_sources(app.app) == [], 5)
        assert runtime.badge_counts_local_viewers is True
    finally:
        beats.cancel()


async def _with(value, check):
    value = await value
    return value if value and check(value) else None


async def _after(value, before: float) -> bool:
    return await value > before


# --- the pure parts ---------------------------------------------------------------------

IDR_STAP = bytes([24, 0, 2, 0x67, 0x42, 0, 2, 0x68, 0xCE])  # STAP-A: SPS, PPS
P_SLICE = bytes([0x41, 0x9A])
FU_IDR_START = bytes([28, 0x80 | 5, 0xAA])


def test_h264_keyframes_are_recognised_in_every_packetisation():
    assert h264_keyframe(IDR_STAP)
    assert h264_keyframe(FU_IDR_START)
    assert h264_keyframe(bytes([0x65, 0x88]))
    assert not h264_keyframe(P_SLICE)
    assert not h264_keyframe(bytes([28, 5, 0xAA]))  # an IDR's middle fragment
    assert not h264_keyframe(b"")


def test_frames_come_whole_and_in_order_and_only_from_a_keyframe_on():
    a = FrameAssembler()
    assert a.add(1, 100, True, P_SLICE, 0.0) == []  # nothing before the first keyframe
    assert a.add(2, 200, False, IDR_STAP, 0.0) == []
    [frame] = a.add(3, 200, True, FU_IDR_START, 0.0)
    assert frame.keyframe and frame.payloads == [IDR_STAP, FU_IDR_START]
    [frame] = a.add(4, 300, True, P_SLICE, 0.0)
    assert not frame.keyframe and frame.timestamp == 300


def test_a_missing_packet_is_asked_for_and_the_frames_behind_it_wait_for_it():
    a = FrameAssembler()
    a.add(10, 100, True, IDR_STAP, 0.0)
    assert a.add(12, 300, True, P_SLICE, 0.01) == []  # seq 11 missing: 300 waits
    assert a.add(13, 400, True, P_SLICE, 0.02) == []
    assert a.nacks(0.02) == [11]
    assert a.nacks(0.05) == [], "not asked again within a resend interval"
    assert a.nacks(0.02 + RENACK_S) == [11], "asked again while still missing"
    frames = a.add(11, 200, True, P_SLICE, 0.15)  # the resend, within NACK_WAIT_S
    assert [f.timestamp for f in frames] == [200, 300, 400]
    assert a.recovered == 1 and a.lost == 0 and a.nacks(1.0) == []


def test_a_packet_that_never_comes_drops_frames_until_the_next_keyframe():
    a = FrameAssembler()
    a.add(1, 100, True, IDR_STAP, 0.0)
    a.add(2, 200, False, P_SLICE, 0.0)  # a two-packet frame whose second packet is lost
    assert a.add(4, 300, True, P_SLICE, 0.01) == []
    assert a.drain(0.01 + NACK_WAIT_S / 2) == []
    assert a.drain(0.01 + NACK_WAIT_S + 0.001) == [], "given up: the frame after it is no keyframe"
    assert a.lost == 1 and a.need_keyframe
    assert a.add(5, 400, True, P_SLICE, 0.5) == []
    assert a.add(3, 200, True, P_SLICE, 0.5) == [], "too late: already given up on"
    a.add(6, 500, False, IDR_STAP, 0.6)
    [frame] = a.add(7, 500, True, FU_IDR_START, 0.6)
    assert frame.keyframe


def test_a_lost_keyframe_start_is_skipped_to_and_sequence_numbers_wrap():
    a = FrameAssembler()
    a.add(0xFFFE, 100, True, IDR_STAP, 0.0)
    [frame] = a.add(0xFFFF, 200, True, P_SLICE, 0.0)
    [frame] = a.add(0, 300, True, P_SLICE, 0.0)
    assert frame.timestamp == 300
    # seq 1 (a frame of its own) is lost; seq 2 starts a keyframe: kept once 1 is given up.
    a.add(2, 500, False, IDR_STAP, 0.1)
    assert a.nacks(0.1) == [1]
    a.add(3, 500, True, FU_IDR_START, 0.1)
    [frame] = a.drain(0.1 + NACK_WAIT_S + 0.001)
    assert frame.keyframe and frame.timestamp == 500 and a.lost == 1


def test_a_packet_resent_as_filler_drops_its_frame_not_the_keyframe_after_it():
    a = FrameAssembler()
    a.add(1, 100, True, IDR_STAP, 0.0)
    a.add(3, 300, False, IDR_STAP, 0.0)
    a.add(4, 300, True, FU_IDR_START, 0.0)
    frames = a.add(2, 200, True, H264_FILLER, 0.05)  # the origin: not needed any more
    assert [(f.timestamp, f.keyframe) for f in frames] == [(300, True)]


def test_a_new_upstream_session_continues_the_viewers_clock():
    t = Timeline(90000)
    assert t.map(1, 1000, 10.0) == 1000
    assert t.map(1, 4000, 10.033) == 4000
    # A new session (new SSRC, unrelated timestamps) half a second later.
    assert t.map(2, 777_777, 10.533) == 4000 + 45000
    assert t.map(2, 777_777 + 3000, 10.566) == 4000 + 48000


def test_the_least_loaded_edge_is_chosen_and_the_origin_keeps_its_share():
    a = {"id": "a", "viewers": 5, "cpu": 0.2, "at": 100.0}
    b = {"id": "b", "viewers": 3, "cpu": 0.5, "at": 100.0}
    hot = {"id": "c", "viewers": 0, "cpu": 0.95, "at": 100.0}
    assert edges.choose([a, b, hot], {}, 0, 0, 0.0) is b
    # Three viewers sent to b since its last beat: a is now the lighter one.
    assert edges.choose([a, b], {"b": [100.5, 100.6, 100.7]}, 0, 0, 0.0) is a
    assert edges.choose([a, b], {"b": [99.0, 99.5, 100.7]}, 0, 0, 0.0) is b
    assert edges.choose([hot], {}, 0, 0, 0.0) is None
    # b cannot pull this show from the origin right now: a takes its viewers.
    cut_off = {**b, "pulls": {"demo": "retrying", "other": "live"}}
    assert edges.choose([a, cut_off], {}, 0, 0, 0.0, "demo") is a
    assert edges.choose([a, cut_off], {}, 0, 0, 0.0, "other") is cut_off
    # Origin share 0.25 of an audience of 10 with 2 of its own: it keeps the viewer.
    assert edges.choose([a, b], {}, 2, 10, 0.25) is None
    assert edges.choose([a, b], {}, 3, 10, 0.25) is b


async def test_aiortc_internals_the_pull_relies_on():
    """``media.pull`` replaces a receiver's RTP handler and sends PLI through it."""
    from aiortc import RTCRtpReceiver

    from media.ice import peer_connection

    assert callable(RTCRtpReceiver._handle_rtp_packet)
    assert callable(RTCRtpReceiver._send_rtcp_pli)
    assert callable(RTCRtpReceiver._send_rtcp_nack)
    pc = peer_connection()
    try:
        receiver = pc.addTransceiver("video", direction="recvonly").receiver
        assert isinstance(receiver._RTCRtpReceiver__codecs, dict)
    finally:
        await pc.close()


def test_the_origins_ice_servers_pass_through_link_headers():
    """The edge learns the show's STUN/TURN servers from its pull answer's Link headers."""
    from media.ice import IceServer, link_headers, parse_link_headers

    servers = (
        IceServer("stun:stun.example.org:3478"),
        IceServer("turn:turn.example.org:3478?transport=udp", "u", "p"),
    )
    assert parse_link_headers(link_headers(servers)) == servers
    assert (
        parse_link_headers(
            [
                '<https://example.org/x>; rel="ice-server"',  # not a STUN/TURN URL
                '<stun:a.example>; rel="next"',
                '<turn:a.example:3478>; rel="ice-server"',  # TURN without credentials
                "garbage",
            ]
        )
        == ()
    )
