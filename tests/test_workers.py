"""``serve --workers 2``: two processes on one port, real aiortc peers, real Redis.

Which worker served a request is proven by ``X-Showroom-Worker`` (and session ids, which
start with ``w{index}.``). A client is pinned to a worker by keeping one keep-alive
connection that the kernel gave to that worker.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from pathlib import Path

import aiohttp
import numpy as np
import pytest
import redis.asyncio as aioredis

from load_tests.common import spawn_serve
from media.client import WhepPlayer, WhipPublisher
from media.testsrc import TestPatternTrack
from server import viewer_slots
from server.embedded import free_port
from tests.conftest import STAFF_PASSWORD, STREAM_KEY, wait_until
from tests.test_ice_candidates import with_candidates
from tests.test_media_http import real_offer
from tests.test_web_support import printer_toml

OPERATOR = {"Authorization": f"Bearer {STAFF_PASSWORD}"}  # media figures are for operators

pytestmark = pytest.mark.timeout(240)

FPS = 15
SDP = {"Content-Type": "application/sdp"}
FRAG = {"Content-Type": "application/trickle-ice-sdpfrag"}


def start_workers(manifest: Path, redis_url: str, tmp_path: Path, stripe_url: str, *extra: str):
    args = ["--workers", "2", "--port", str(free_port()), "--redis", redis_url]
    args += ["--data-dir", str(tmp_path / "var"), "--manifest", str(manifest), *extra]
    env = {**os.environ, "STRIPE_API_BASE": stripe_url}
    return spawn_serve(args, env=env, log_path=tmp_path / "serve.log", timeout=90)


def stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    started = time.monotonic()
    try:
        proc.wait(40)
        print(f"serve --workers 2 stopped in {time.monotonic() - started:.1f} s")
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


async def pinned(
    url: str, worker: int, within_s: float = 10, jar: aiohttp.CookieJar | None = None
) -> aiohttp.ClientSession:
    """A client whose (single, kept-alive) connection is served by ``worker``."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        http = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=1), cookie_jar=jar, headers={"Origin": url}
        )
        try:
            async with http.get(f"{url}/healthz") as r:
                await r.read()
                if r.headers.get("X-Showroom-Worker") == str(worker):
                    return http
        except aiohttp.ClientError:
            pass
        await http.close()
        await asyncio.sleep(0.02)
    raise AssertionError(f"no connection reached worker {worker}")


def worker_of(location: str) -> int:
    session = location.rstrip("/").rsplit("/", 1)[1]
    assert session.startswith("w") and "." in session, session
    return int(session[1 : session.index(".")])


def live_picture(frame) -> bool:
    """The publisher's teal test pattern, not the dark slate."""
    y = frame.to_ndarray(format="gray")[::8, ::8]
    return float(np.mean(y)) > 90


async def fps_of(player: WhepPlayer, seconds: float = 3.0) -> float:
    start = player.stats.video_frames
    await asyncio.sleep(seconds)
    return (player.stats.video_frames - start) / seconds


@pytest.fixture
def manifest(write_manifest) -> Path:
    return write_manifest("demo", width=1280, height=720, fps=FPS)


async def test_two_workers_relay_one_encode_and_sessions_from_any_worker(
    manifest, redis_url, tmp_path, stripe_sandbox
):
    proc, url = start_workers(manifest, redis_url, tmp_path, stripe_sandbox.url)
    clients: list[aiohttp.ClientSession] = []
    players: list[WhepPlayer] = []
    publisher = None
    try:
        on = {i: await pinned(url, i) for i in (0, 1)}
        clients += on.values()
        publisher = WhipPublisher(f"{url}/whip/demo", STREAM_KEY, TestPatternTrack(1280, 720, FPS))
        location = await publisher.start(on[0])
        origin, other = worker_of(location), 1
        assert origin == 0
        # One viewer on the origin, two on the other worker.
        for worker in (origin, other, other):
            player = WhepPlayer(f"{url}/whep/demo", audio=False)
            await player.start(on[worker])
            assert player.location is not None and worker_of(player.location) == worker
            players.append(player)
        for player in players:
            await player.wait_first_frame(20)
        await wait_until(
            lambda: all(
                p.latest_video is not None and live_picture(p.latest_video) for p in players
            ),
            20,
        )
        for player in players:
            assert player.stats.sizes == {(1280, 720)}
        rates = await asyncio.gather(*(fps_of(p) for p in players))
        assert min(rates) >= FPS * 0.5, rates  # a shared 2-core machine: slack

        # One encoder: the origin composes, the other worker only relays.
        media = {}
        for worker in (0, 1):
            async with on[worker].get(f"{url}/api/shows/demo/media", headers=OPERATOR) as r:
                media[worker] = await r.json()
                assert r.headers["X-Showroom-Worker"] == str(worker)
        assert media[origin]["origin"] and not media[other]["origin"]
        assert media[origin]["codecs"] == ["H264"] and media[other]["codecs"] == []
        relay = media[other]["relay"]
        # The target is p95 <= 10 ms (BENCHMARKS.md, load_tests.relay, on a quiet
        # machine); here the 2 cores are shared with other test runs, so: slack.
        assert relay["frames"] > 0 and relay["latency_ms_p50"] <= 5, relay
        assert relay["latency_ms_p95"] <= 40, relay

        # The nodes: both workers, one of them the origin.
        auth = {"Authorization": f"Bearer {STAFF_PASSWORD}"}

        async def both_nodes() -> list[dict] | None:
            async with on[other].get(f"{url}/api/nodes", headers=auth) as r:
                found = (await r.json())["nodes"]
            return found if len(found) == 2 and all(n["healthy"] for n in found) else None

        found = await wait_until(both_nodes, 10)
        assert sorted(n["role"] for n in found) == ["origin", "worker"]
        assert sum(n["viewers"] for n in found) == 3

        # viewers: the total over both workers, from either one, and on /metrics.
        async def total_is_3() -> bool:
            for worker in (0, 1):
                async with on[worker].get(f"{url}/api/shows/demo") as r:
                    if (await r.json())["viewers"] != 3:
                        return False
            return True

        await wait_until(total_is_3, 10)
        async with on[other].get(f"{url}/metrics", headers=auth) as r:
            assert 'showroom_viewers{show="demo"} 3.0' in await r.text()

        # A PLI from a viewer of the other worker reaches the origin's keyframe gate.
        async def origin_keyframe_requests() -> float:
            async with on[origin].get(f"{url}/metrics", headers=auth) as r:
                text = await r.text()
            return sum(
                float(line.rsplit(" ", 1)[1])
                for line in text.splitlines()
                if line.startswith('showroom_keyframes_requested_total{show="demo"}')
            )

        async def origin_keyframe_requests_after(count: float) -> bool:
            return await origin_keyframe_requests() > count

        before = await origin_keyframe_requests()
        receiver = next(t.receiver for t in players[1].pc.getTransceivers() if t.kind == "video")
        (source,) = receiver.getSynchronizationSources()
        await receiver._send_rtcp_pli(source.source)  # what aiortc sends when it needs one
        await wait_until(lambda: origin_keyframe_requests_after(before), 5)

        # PATCH and DELETE of a session held by the other worker.
        far = players[0]  # held by the origin worker, asked through the other one
        async with on[other].patch(far.location, data="a=end-of-candidates\r\n", headers=FRAG) as r:
            assert r.status == 204
            assert r.headers["X-Showroom-Worker"] == str(other)
            assert r.headers["X-Showroom-Forwarded-To"] == str(origin)
        auth_key = {"Authorization": f"Bearer {STREAM_KEY}", **FRAG}
        async with on[other].patch(location, data="a=end-of-candidates\r\n", headers=auth_key) as r:
            assert r.status == 204 and r.headers["X-Showroom-Forwarded-To"] == str(origin)
        async with on[origin].delete(players[1].location) as r:
            assert r.status == 200 and r.headers["X-Showroom-Forwarded-To"] == str(other)
        async with on[other].delete(far.location) as r:
            assert r.status == 200
        async with on[other].delete(far.location) as r:
            assert r.status == 404
        await wait_until(lambda: players[0].pc.connectionState == "closed" or True, 1)

        async def total_is_1() -> bool:
            async with on[other].get(f"{url}/api/shows/demo") as r:
                return (await r.json())["viewers"] == 1

        await wait_until(total_is_1, 10)
        # The viewer left on the non-origin worker still plays.
        assert await fps_of(players[2], 2) >= FPS * 0.5

        # The publisher reconnects to the other worker: the origin moves there, the old
        # one stops encoding, and the viewers on both workers get the live picture back.
        back = WhepPlayer(f"{url}/whep/demo", audio=False)
        await back.start(on[origin])
        players.append(back)
        await wait_until(
            lambda: back.latest_video is not None and live_picture(back.latest_video), 20
        )
        moved = WhipPublisher(f"{url}/whip/demo", STREAM_KEY, TestPatternTrack(1280, 720, FPS))
        assert worker_of(await moved.start(on[other])) == other
        published = time.monotonic()
        old_publisher, publisher = publisher, moved
        for player in (back, players[2]):
            await wait_until(
                lambda p=player: (
                    p.latest_video is not None
                    and p.stats.video_times[-1] > published + 0.1
                    and live_picture(p.latest_video)
                ),
                15,
            )
            took = player.stats.video_times[-1] - published
            print(f"origin moved: live picture again after {took:.3f} s")
            assert took < 3.0, took  # 1 s on a quiet machine; this one is shared
        # One encoder for the show: the new origin's. The old one stops its own as it
        # learns of the move (at once on a quiet machine; give a loaded one a moment).
        seen: dict[int, dict] = {}

        async def one_encoder() -> bool:
            for worker in (other, origin):
                async with on[worker].get(f"{url}/api/shows/demo/media", headers=OPERATOR) as r:
                    seen[worker] = await r.json()
            return (
                seen[other]["origin"] is True
                and seen[other]["codecs"] == ["H264"]
                and seen[origin]["origin"] is False
                and seen[origin]["codecs"] == []
            )

        await wait_until(
            one_encoder, 5, interval=0.1, message=lambda: f"not one encoder after the move: {seen}"
        )
        await wait_until(lambda: old_publisher.pc.connectionState in ("closed", "failed"), 40)
        await old_publisher.close()
    finally:
        for player in players:
            await player.close()
        if publisher is not None:
            await publisher.close()
        for http in clients:
            await http.close()
        stop(proc)


async def test_origin_worker_killed_publisher_moves_and_viewers_recover(
    manifest, redis_url, tmp_path, stripe_sandbox
):
    proc, url = start_workers(manifest, redis_url, tmp_path, stripe_sandbox.url)
    clients: list[aiohttp.ClientSession] = []
    players: list[WhepPlayer] = []
    publishers: list[WhipPublisher] = []
    try:
        on = {i: await pinned(url, i) for i in (0, 1)}
        clients += on.values()
        first = WhipPublisher(f"{url}/whip/demo", STREAM_KEY, TestPatternTrack(1280, 720, FPS))
        publishers.append(first)
        assert worker_of(await first.start(on[0])) == 0
        player = WhepPlayer(f"{url}/whep/demo", audio=False)
        await player.start(on[1])
        players.append(player)
        await wait_until(
            lambda: player.latest_video is not None and live_picture(player.latest_video), 20
        )
        async with on[0].get(f"{url}/api/shows/demo/media", headers=OPERATOR) as r:
            origin_pid = (await r.json())["pid"]
        # A WHEP session on the worker about to die (never connecting): its slot.
        offer = with_candidates(await real_offer("view"), [])
        async with on[0].post(f"{url}/whep/demo", data=offer, headers=SDP) as r:
            assert r.status == 201
            doomed = r.headers["Location"].rsplit("/", 1)[1]
        redis = aioredis.Redis.from_url(redis_url)
        clients.append(redis)
        slot_members = await redis.zrange(viewer_slots.show_key("demo"), 0, -1)
        assert len(slot_members) == 2

        os.kill(origin_pid, signal.SIGKILL)
        # The publisher reconnects (PocketCam does on its own): worker 0 is dead, so this
        # lands on worker 1, or on worker 0's replacement if the parent already restarted it.
        await asyncio.sleep(0.5)
        again = WhipPublisher(f"{url}/whip/demo", STREAM_KEY, TestPatternTrack(1280, 720, FPS))
        publishers.append(again)
        fresh = aiohttp.ClientSession()
        clients.append(fresh)
        await again.start(fresh)
        published = time.monotonic()
        # Past the slate, the live picture again at the viewer that stayed connected.
        await asyncio.sleep(0.1)
        await wait_until(
            lambda: (
                player.latest_video is not None
                and live_picture(player.latest_video)
                and player.stats.video_times[-1] > published
            ),
            15,
        )
        recovered = player.stats.video_times[-1] - published
        # 1 s once the new publisher's own media flows (ICE + DTLS + its first decoded
        # frame take part of this on a loaded machine: generous bound).
        print(f"live picture again {recovered:.3f} s after the new publish")
        assert recovered < 5.0, recovered
        assert await fps_of(player, 2) >= FPS * 0.5

        # The parent restarted worker 0; it answers again, with a new pid.
        restarted = await pinned(url, 0, within_s=60)
        clients.append(restarted)
        async with restarted.get(f"{url}/api/shows/demo/media", headers=OPERATOR) as r:
            assert (await r.json())["pid"] != origin_pid

        # The dead worker's viewer slot frees up when its lease runs out (nobody renews
        # it); the living worker's viewer keeps its slot.
        async def one_slot_left() -> bool:  # leases still running (taking a slot purges the rest)
            now_ms = int(time.time() * 1000)
            return await redis.zcount(viewer_slots.show_key("demo"), now_ms, "+inf") == 1

        await wait_until(one_slot_left, viewer_slots.LEASE_MS / 1000 + 5)
        async with on[1].get(f"{url}/api/shows/demo") as r:
            assert (await r.json())["viewers"] == 1
        assert doomed.startswith("w0.")
    finally:
        for p in players:
            await p.close()
        for pub in publishers:
            await pub.close()
        for http in clients:
            await (http.aclose() if isinstance(http, aioredis.Redis) else http.close())
        stop(proc)


async def test_viewer_cap_over_workers_and_unconnected_offers_free_their_slot(
    write_manifest, redis_url, tmp_path, stripe_sandbox
):
    printer = f"tcp://127.0.0.1:{free_port()}"  # nobody listens: fine, nothing is paid here
    manifest = write_manifest(
        "demo", width=1280, height=720, fps=FPS, printers=printer_toml(printer)
    )
    proc, url = start_workers(
        manifest, redis_url, tmp_path, stripe_sandbox.url, "--max-viewers", "5"
    )
    offer = with_candidates(await real_offer("view"), [])  # ICE never completes
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    http = aiohttp.ClientSession(connector=connector)
    try:

        async def post() -> tuple[int, str | None, str | None]:
            async with http.post(f"{url}/whep/demo", data=offer, headers=SDP) as r:
                return r.status, r.headers.get("X-Showroom-Worker"), r.headers.get("Location")

        started = time.monotonic()
        answers = await asyncio.gather(*(post() for _ in range(60)))
        statuses = [a[0] for a in answers]
        assert statuses.count(201) == 5 and statuses.count(503) == 55, statuses
        assert {a[1] for a in answers} == {"0", "1"}, "offers reached both workers"
        pids = await commerce_works_from_every_worker(url)

        # The print worker runs in one place only (worker 0), so labels keep their order.
        async def both_nodes() -> list[dict] | None:
            async with http.get(f"{url}/api/nodes", headers=OPERATOR) as r:
                found = (await r.json())["nodes"]
            return found if len(found) == 2 else None

        found = await wait_until(both_nodes, 10)
        printing = [n for n in found if n["print_worker"]]
        assert len(found) == 2 and len(printing) == 1, found
        assert f"-{pids[0]}-" in printing[0]["id"], (printing, pids)
        # Still full while those sessions may yet connect...
        await asyncio.sleep(max(0.0, started + 10 - time.monotonic()))
        assert (await post())[0] == 503

        # ...and free once they have not connected within 15 s.
        async def a_place() -> bool:
            status, _w, location = await post()
            if status == 201:
                await http.delete(f"{url}{location}")
            return status == 201

        await wait_until(a_place, 15, interval=0.5)
        elapsed = time.monotonic() - started
        assert 14.0 <= elapsed <= 22.0, elapsed
    finally:
        await http.close()
        stop(proc)
    # SIGTERM: every worker drained and exited, and so did the parent.
    assert proc.returncode == 0
    for pid in pids:
        assert not process_alive(pid), pid


def process_alive(pid: int) -> bool:
    """Running (a zombie waiting for a reaper does not count)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


async def commerce_works_from_every_worker(url: str) -> list[int]:
    """One buyer (one cookie) whose requests land on both workers: cart, live events,
    host controls and pages behave as one server. Returns the workers' pids."""
    jar = aiohttp.CookieJar(unsafe=True)
    on = {i: await pinned(url, i, jar=jar) for i in (0, 1)}
    try:
        pids = []
        for i in (0, 1):
            async with on[i].get(f"{url}/api/shows/demo/media", headers=OPERATOR) as r:
                pids.append((await r.json())["pid"])
            for page in ("/shows/demo", "/staff", "/"):
                async with on[i].get(f"{url}{page}") as r:
                    assert r.status == 200, (page, i)
                    assert r.headers["X-Showroom-Worker"] == str(i) or r.history
        # A connection of its own (each client keeps exactly one, to stay on its worker).
        on[2] = await pinned(url, 0, jar=jar)
        async with on[2].get(f"{url}/api/shows/demo/events") as sse:
            async with on[1].post(
                f"{url}/api/cart/items", json={"show": "demo", "sku": "MUG-01", "quantity": 1}
            ) as r:
                assert r.status == 200, await r.text()
                assert r.headers["X-Showroom-Worker"] == "1"
            async with on[0].get(f"{url}/api/cart") as r:
                items = (await r.json())["items"]
                assert [(i["sku"], i["quantity"]) for i in items] == [("MUG-01", 1)]
            host = {"Authorization": f"Bearer {STREAM_KEY}"}
            async with on[1].post(
                f"{url}/api/shows/demo/feature", json={"sku": "TEE-02"}, headers=host
            ) as r:
                assert r.status == 200, await r.text()

            async def featured_event() -> None:
                while True:
                    line = (await sse.content.readline()).decode()
                    if line.startswith("data:") and '"featured"' in line and "TEE-02" in line:
                        return

            await asyncio.wait_for(featured_event(), 10)
        return pids
    finally:
        for http in on.values():
            await http.close()


async def test_nodes_list_a_single_process_too(app):
    r = await app.session.get("/api/nodes")
    assert r.status == 401

    async def listed() -> list[dict] | None:
        async with app.session.get("/api/nodes", headers=app.auth()) as r:
            found = (await r.json())["nodes"]
        return found or None

    (node,) = await wait_until(listed, 5)
    assert node["healthy"] and node["role"] == "worker" and node["viewers"] == 0
    assert node["url"] == app.settings.base_url


def test_workers_option():
    from server.cli import build_parser
    from server.workers import worker_count

    assert worker_count("auto") == len(os.sched_getaffinity(0))
    assert worker_count("3") == 3
    with pytest.raises(ValueError):
        worker_count("0")
    args = build_parser().parse_args(["serve", "--manifest", "x.toml"])
    assert args.workers == 1, "the default is the single process"
