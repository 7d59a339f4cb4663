"""Fan-out, keyframe control and audio FIFO rules, plus keyframe coalescing and slow
viewers through the real media path."""

from __future__ import annotations

import asyncio

import aiohttp
import numpy as np
import pytest

from media.audio import AudioFifo
from media.client import WhepPlayer, WhipPublisher
from media.fanout import JOIN_KEYFRAME_MAX_AGE_MS, Fanout
from media.keyframes import KeyframeGate
from media.recording import RecordingConfig
from media.sdp import (
    SdpError,
    choose_view_codec,
    drop_mdns_candidates,
    parse_offer,
    parse_sdpfrag,
)
from media.testsrc import TestPatternTrack
from server import keys
from tests.conftest import STREAM_KEY

pytestmark = pytest.mark.timeout(60)


def publish(f: Fanout, n: int, keyframe_every: int = 10, start_ms: int = 0) -> None:
    for i in range(n):
        seq = f.seq + 1
        f.publish(f"p{seq}", keyframe=(seq - 1) % keyframe_every == 0, wall_ms=start_ms + i)


async def test_joining_viewer_starts_at_a_keyframe():
    f = Fanout(capacity=20)
    publish(f, 13, keyframe_every=10)  # keyframes at 1 and 11
    c = f.cursor(join_keyframe_max_age_ms=500, now_ms=20)
    assert c.take().packet == "p11"  # recent keyframe in the ring: a short burst
    assert [c.take().packet, c.take().packet, c.take()] == ["p12", "p13", None]

    old = f.cursor(join_keyframe_max_age_ms=5, now_ms=1000)  # keyframe too old: wait
    assert old.waiting_for_keyframe and old.take() is None
    publish(f, 8, keyframe_every=10)  # 14..21, keyframe at 21
    assert old.take().packet == "p21"


def gop(f: Fanout, frames: int, keyframe_at_ms: int, frame_ms: int = 33) -> None:
    """One keyframe at ``keyframe_at_ms`` followed by delta frames every ``frame_ms``."""
    for i in range(frames):
        f.publish(f"p{f.seq + 1}", keyframe=i == 0, wall_ms=keyframe_at_ms + i * frame_ms)


async def test_join_within_the_window_starts_at_the_cached_keyframe():
    f = Fanout(capacity=60)
    gop(f, 30, keyframe_at_ms=0)  # p1 keyframe, p2..p30 deltas (~1 s)
    gop(f, 10, keyframe_at_ms=1000)  # p31 keyframe at 1000 ms, p32..p40 up to 1297 ms
    now = 1000 + JOIN_KEYFRAME_MAX_AGE_MS  # the cached keyframe is just young enough
    c = f.cursor(now_ms=now)
    assert not c.waiting_for_keyframe
    burst = []
    while (e := c.take()) is not None:
        burst.append(e.packet)
    assert burst == [f"p{i}" for i in range(31, 41)], "the GOP since the keyframe, then live"
    gop(f, 1, keyframe_at_ms=now)  # live again: the next packet comes straight through
    assert c.take().packet == "p41"


async def test_join_outside_the_window_waits_for_the_next_keyframe():
    f = Fanout(capacity=60)
    gop(f, 20, keyframe_at_ms=0)
    c = f.cursor(now_ms=JOIN_KEYFRAME_MAX_AGE_MS + 1)  # cached keyframe too old
    assert c.waiting_for_keyframe and c.take() is None
    f.publish("delta", keyframe=False, wall_ms=700)
    assert c.take() is None, "deltas before the next keyframe are not sent"
    f.publish("kf", keyframe=True, wall_ms=733)
    assert c.take().packet == "kf"


async def test_join_cache_is_bounded_by_the_ring():
    f = Fanout(capacity=8)
    gop(f, 12, keyframe_at_ms=0, frame_ms=1)  # the keyframe has left the ring
    assert len(f.ring) == 8 and f.latest_keyframe() is None
    c = f.cursor(now_ms=12)
    assert c.waiting_for_keyframe and c.take() is None


async def test_slow_viewer_skips_to_next_keyframe_and_never_blocks_others():
    need = []
    f = Fanout(capacity=30, max_lag=15)
    f.on_need_keyframe = lambda: need.append(1)
    publish(f, 1, keyframe_every=10)
    fast, slow = f.cursor(now_ms=0), f.cursor(now_ms=0)
    assert fast.take().packet == slow.take().packet == "p1"
    for _ in range(25):  # the fast viewer reads everything as it comes
        publish(f, 1, keyframe_every=10)
        assert fast.take().packet == f"p{f.seq}"
    # The slow one is 25 behind: it jumps to the newest keyframe (p21), not to p2.
    assert slow.take().packet == "p21"
    assert slow.skipped == 1
    assert len(f.ring) == 26  # bounded: the ring never grows past its capacity
    publish(f, 100, keyframe_every=1000)  # no keyframe for a long time
    assert len(f.ring) == 30
    lagging = f.cursor(now_ms=0)
    lagging.next_seq = f.seq - 20
    assert lagging.take() is None and lagging.waiting_for_keyframe
    assert need, "a lagging viewer without a keyframe to jump to asks for one"


async def test_audio_fanout_skips_to_newest_without_keyframes():
    f = Fanout(capacity=10, keyframes=False, max_lag=4)
    c = f.cursor()
    publish(f, 9, keyframe_every=1000)
    assert c.take().packet == "p9"


async def test_cursor_next_wakes_on_publish():
    f = Fanout(capacity=10)
    publish(f, 1, keyframe_every=1)
    c = f.cursor(now_ms=0)
    assert (await c.next()).packet == "p1"
    waiter = asyncio.create_task(c.next())
    await asyncio.sleep(0.01)
    assert not waiter.done()
    publish(f, 1)
    assert (await asyncio.wait_for(waiter, 1)).packet == "p2"


def test_keyframe_gate_coalesces_and_rate_limits():
    g = KeyframeGate(min_interval_s=1.0, periodic_s=3.0)
    assert g.should_force(0.0)  # nothing sent yet
    g.produced(0.0)
    for _ in range(50):
        g.request()
    assert not g.should_force(0.5), "at most one forced keyframe per second"
    assert g.should_force(1.0)
    g.produced(1.0)
    assert not g.should_force(1.5) and not g.pending
    assert not g.should_force(3.9)
    assert g.should_force(4.0), "periodic fallback"


def test_audio_fifo_bounded_and_resumes_after_buffering():
    fifo = AudioFifo(capacity=4800, resume_at=1920)
    out, real = fifo.pop(960)
    assert not real and out.shape == (1, 1920) and not out.any()
    fifo.push(np.ones(960 * 2, np.int16))
    assert not fifo.pop(960)[1], "waits for a little audio before resuming"
    fifo.push(np.ones(960 * 2, np.int16))
    out, real = fifo.pop(960)
    assert real and out.all()
    fifo.push(np.ones(10_000 * 2, np.int16))
    assert fifo.buffered == 4800 and fifo.dropped > 0


def test_sdp_parsing_rules():
    with pytest.raises(SdpError) as e:
        parse_offer("hello")
    assert e.value.status == 400
    offer = parse_offer(
        "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\na=ice-ufrag:abcd\r\n"
        "m=video 9 UDP/TLS/RTP/SAVPF 96 97\r\na=recvonly\r\na=mid:0\r\n"
        "a=rtpmap:96 VP8/90000\r\na=rtpmap:97 H264/90000\r\n"
    )
    assert offer.ice_ufrag == "abcd"
    assert choose_view_codec(offer) == "H264", "H.264 is preferred: it is always encoded"
    frag = parse_sdpfrag(
        "a=ice-ufrag:abcd\r\na=ice-pwd:xyz\r\na=mid:0\r\n"
        "a=candidate:1 1 udp 1 127.0.0.1 5000 typ host\r\na=end-of-candidates\r\n"
    )
    assert frag.ufrag == "abcd" and frag.candidates == [
        ("0", "candidate:1 1 udp 1 127.0.0.1 5000 typ host")
    ]
    assert frag.end_of_candidates
    with pytest.raises(SdpError):
        parse_sdpfrag("a=candidate:bad\r\n")


def test_mdns_candidates_are_dropped_from_offers_and_fragments():
    offer = (
        "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n"
        "m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:0\r\na=rtpmap:96 H264/90000\r\n"
        "a=candidate:1 1 udp 2113937151 0b1c7e4e-8a2f-4d6b-9c1e-2f3a4b5c6d7e.local 54321"
        " typ host generation 0\r\n"
        "a=candidate:2 1 udp 1677729535 203.0.113.7 54321 typ srflx raddr 0.0.0.0 rport 0\r\n"
        "a=candidate:3 1 UDP 2113937151 HOST-A.LOCAL. 5000 typ host\r\n"
        "a=candidate:4 1 udp 2113937151 192.0.2.10 5000 typ host\r\n"
        "a=end-of-candidates\r\n"
    )
    kept = drop_mdns_candidates(offer)
    assert ".local" not in kept.lower()
    assert kept == offer.replace(
        "a=candidate:1 1 udp 2113937151 0b1c7e4e-8a2f-4d6b-9c1e-2f3a4b5c6d7e.local 54321"
        " typ host generation 0\r\n",
        "",
    ).replace("a=candidate:3 1 UDP 2113937151 HOST-A.LOCAL. 5000 typ host\r\n", "")
    assert parse_offer(kept).section("video").codecs == ["H264"]
    # A name that merely contains "local" elsewhere, and non-candidate lines, are kept.
    other = "a=candidate:5 1 udp 1 10.0.0.1 9 typ host\na=ice-ufrag:local\n"
    assert drop_mdns_candidates(other) == other
    frag = parse_sdpfrag(
        drop_mdns_candidates(
            "a=ice-ufrag:abcd\r\na=mid:0\r\n"
            "a=candidate:1 1 udp 1 abc.local 5000 typ host\r\n"
            "a=candidate:2 1 udp 1 127.0.0.1 5001 typ host\r\n"
        )
    )
    assert frag.candidates == [("0", "candidate:2 1 udp 1 127.0.0.1 5001 typ host")]


async def test_many_joins_and_plis_force_at_most_one_keyframe_per_second(make_app):
    # The viewers' keyframe gate alone, recording off: a recording starts at go-live with
    # a keyframe of its own, one frame after the one the first join forced on the slate.
    app = await make_app(recording=RecordingConfig(enabled=False))
    http = aiohttp.ClientSession()
    runtime = app.app[keys.EXTRA]["media"]["demo"]
    pub = WhipPublisher(f"{app.url}/whip/demo", STREAM_KEY, TestPatternTrack(320, 180, 30))
    viewers = [WhepPlayer(f"{app.url}/whep/demo", audio=False) for _ in range(5)]
    try:
        await pub.start(http)
        await asyncio.gather(*(v.start(http) for v in viewers))
        for v in viewers:
            await v.wait_first_frame(5)
        fanout = runtime.video["H264"]
        counted = set()
        keyframe_seqs = []

        async def count_keyframes(duration: float) -> None:
            loop = asyncio.get_running_loop()
            end = loop.time() + duration
            while loop.time() < end:
                for e in list(fanout.ring):
                    if e.keyframe and e.seq not in counted:
                        counted.add(e.seq)
                        keyframe_seqs.append((e.seq, e.wall_ms))
                await asyncio.sleep(0.1)

        counter = asyncio.create_task(count_keyframes(3.0))
        # A storm of PLIs from every viewer (as after packet loss), through aiortc's RTCP path.
        for _ in range(30):
            for v in viewers:
                for receiver in v.pc.getReceivers():
                    if receiver.track.kind == "video":
                        for source in receiver.getSynchronizationSources():
                            await receiver._send_rtcp_pli(source.source)
            await asyncio.sleep(0.1)
        await counter
        assert runtime.gate.requests >= 30, "PLIs reached the shared encoder's gate"
        walls = [w for _, w in keyframe_seqs]
        assert len(walls) >= 2, "PLIs do produce keyframes"
        gaps = [b - a for a, b in zip(walls, walls[1:], strict=False)]
        assert min(gaps) >= 900, f"keyframes {gaps} ms apart: storm not coalesced"
        assert len(walls) <= 4
    finally:
        for v in viewers:
            await v.close(http)
        await pub.close(http)
        await http.close()


def test_audio_fifo_sheds_backlog_to_stay_in_sync():
    fifo = AudioFifo(capacity=48000, resume_at=1920, high_water=3840)
    fifo.push(np.ones(960 * 10 * 2, np.int16))  # 200 ms arrived in a burst
    out, real = fifo.pop(960)
    assert real and fifo.buffered == 1920, "keeps only ~40 ms queued behind the live edge"
