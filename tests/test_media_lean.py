"""The lean viewer path (media/lean.py): real aiortc viewers over WHEP on loopback, the
RTP and RTCP they see on the wire, and the aiortc internals the path relies on."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import socket
import struct
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import pylibsrtp
import pytest
from pylibsrtp import Policy, Session

from media import fastsend
from media.client import WhepPlayer, WhipPublisher
from media.fanout import Fanout
from media.lean import (
    AIORTC_VERSION,
    GSO_MAX_SEGMENTS,
    PYLIBSRTP_VERSION,
    Broadcast,
    LeanSender,
    SrtpProtector,
    gso_runs,
    max_pad,
    pad_to_runs,
)
from media.testsrc import TestPatternTrack, ToneTrack
from server import keys
from tests.conftest import STREAM_KEY, wait_until

pytestmark = pytest.mark.timeout(90)


class Wire:
    """What one aiortc viewer's receivers get from the server, before decoding."""

    def __init__(self, player: WhepPlayer) -> None:
        self.rtp: list[tuple[int, int, int, int, bytes]] = []  # ssrc, pt, seq, ts, payload
        self.srs: list = []  # (arrival, SR, RTP timestamp of the newest packet of its SSRC)
        self.newest_ts: dict[int, int] = {}
        self.receivers = {}
        for transceiver in player.pc.getTransceivers():
            receiver = transceiver.receiver
            self.receivers[transceiver.kind] = receiver
            self._spy(receiver)

    def _spy(self, receiver) -> None:
        on_rtp, on_rtcp = receiver._handle_rtp_packet, receiver._handle_rtcp_packet

        async def rtp(packet, arrival_time_ms):
            self.newest_ts[packet.ssrc] = packet.timestamp
            self.rtp.append(
                (packet.ssrc, packet.payload_type, packet.sequence_number, packet.timestamp,
                 bytes(packet.payload))
            )  # fmt: skip
            await on_rtp(packet, arrival_time_ms)

        async def rtcp(packet):
            if type(packet).__name__ == "RtcpSrPacket":
                self.srs.append((time.time(), packet, self.newest_ts.get(packet.ssrc)))
            await on_rtcp(packet)

        receiver._handle_rtp_packet, receiver._handle_rtcp_packet = rtp, rtcp

    def seqs(self, ssrc: int) -> list[int]:
        return [seq for s, _pt, seq, _ts, _p in self.rtp if s == ssrc]


def video_sender(runtime, player_index: int = 0) -> LeanSender:
    viewer = list(runtime.viewers.values())[player_index]
    return next(s for s in viewer.senders if s.broadcast.kind == "video")


async def start(app, n: int, audio: bool = True, fps: int = 30):
    http = aiohttp.ClientSession()
    pub = WhipPublisher(
        f"{app.url}/whip/demo", STREAM_KEY, TestPatternTrack(320, 180, fps),
        ToneTrack() if audio else None,
    )  # fmt: skip
    await pub.start(http)
    players, wires = [], []
    for _ in range(n):
        player = WhepPlayer(f"{app.url}/whep/demo", audio=audio)
        wires.append(Wire(player))
        await player.start(http)
        players.append(player)
    for player in players:
        await player.wait_first_frame(10)
    return http, pub, players, wires


async def stop(http, pub, players) -> None:
    for player in players:
        await player.close(http)
    await pub.close(http)
    await http.close()


async def test_lean_viewers_get_decoded_video_at_show_size_and_fps_with_continuous_sequence(app):
    runtime = app.app[keys.EXTRA]["media"]["demo"]
    assert runtime.egress == "lean"
    http, pub, players, wires = await start(app, 3)
    try:
        start_frames = [p.stats.video_frames for p in players]
        await asyncio.sleep(3.0)
        show = runtime.show.video
        for player, before in zip(players, start_frames, strict=True):
            assert player.stats.sizes == {(show.width, show.height)}
            fps = (player.stats.video_frames - before) / 3.0
            assert fps >= 0.6 * show.fps, f"{fps:.1f} fps of a {show.fps} fps show"
            assert player.stats.audio_frames > 50, "audio decoded too"
        ssrcs = set()
        for i, wire in enumerate(wires):
            sender = video_sender(runtime, i)
            ssrcs.add(sender._ssrc)
            seqs = wire.seqs(sender._ssrc)
            assert len(seqs) > 100
            gaps = [(b - a) & 0xFFFF for a, b in zip(seqs, seqs[1:], strict=False)]
            assert set(gaps) == {1}, f"viewer {i}: sequence numbers not continuous"
            # Its own random timestamp offset over the shared RTP clock.
            ts = [t for s, _pt, _q, t, _p in wire.rtp if s == sender._ssrc]
            assert all(0 <= (b - a) & 0xFFFFFFFF < 90000 for a, b in zip(ts, ts[1:], strict=False))
        assert len(ssrcs) == 3, "each viewer has its own SSRC"
        # The same payloads (packetised once) under different headers.
        first = {p for _s, pt, _q, _t, p in wires[0].rtp[-40:]}
        assert first & {p for _s, _pt, _q, _t, p in wires[1].rtp}
        # Every viewer is sent by one broadcast per stream, no aiortc sender loop.
        assert len(runtime.broadcasts) == 2
        for viewer in runtime.viewers.values():
            for transceiver in viewer.pc.getTransceivers():
                assert transceiver.sender._RTCRtpSender__rtp_task is None
    finally:
        await stop(http, pub, players)


async def test_nack_is_answered_with_an_rtx_retransmission_from_history(app):
    runtime = app.app[keys.EXTRA]["media"]["demo"]
    http, pub, players, wires = await start(app, 1, audio=False)
    try:
        await asyncio.sleep(0.5)
        sender = video_sender(runtime)
        assert sender.rtx_pt is not None, "RTX negotiated with the browser-style offer"
        wire = wires[0]
        ssrc, _pt, seq, _ts, payload = next(r for r in reversed(wire.rtp) if r[0] == sender._ssrc)
        await wire.receivers["video"]._send_rtcp_nack(sender._ssrc, [seq])

        def rtx():
            for s, pt, _q, _t, p in wire.rtp:
                if s == sender.rtx_ssrc and pt == sender.rtx_pt and p[:2] == struct.pack("!H", seq):
                    return p
            return None

        retransmitted = await wait_until(rtx, 3)
        assert retransmitted[2:] == payload, "the original payload, from the history"
        assert sender.feedback.nacks == 1 and sender.feedback.retransmits == 1
        # A NACK for a packet long gone from the bounded history is ignored.
        assert not sender.retransmit((seq + 30000) & 0xFFFF)
    finally:
        await stop(http, pub, players)


async def test_pli_reaches_the_shared_keyframe_gate(app):
    runtime = app.app[keys.EXTRA]["media"]["demo"]
    http, pub, players, wires = await start(app, 1, audio=False)
    try:
        sender = video_sender(runtime)
        before = runtime.gate.requests
        await wires[0].receivers["video"]._send_rtcp_pli(sender._ssrc)
        await wait_until(lambda: runtime.gate.requests > before, 3)
        assert sender.feedback.keyframe_requests == 1
    finally:
        await stop(http, pub, players)


async def test_rtcp_sender_reports_map_rtp_time_to_wall_time(app):
    runtime = app.app[keys.EXTRA]["media"]["demo"]
    http, pub, players, wires = await start(app, 1)
    try:
        wire = wires[0]
        await wait_until(lambda: len(wire.srs) >= 3, 6)
        sender = video_sender(runtime)
        video_srs = [(t, p, n) for t, p, n in wire.srs if p.ssrc == sender._ssrc]
        assert video_srs, "an SR for the video SSRC"
        arrived, sr, newest = video_srs[-1]
        info = sr.sender_info
        assert info.packet_count > 0 and info.octet_count > info.packet_count * 100
        # The SR's RTP time is the stream's clock when sent: within 0.5 s of the newest
        # packet received before it.
        assert abs(((info.rtp_timestamp - newest + 2**31) & 0xFFFFFFFF) - 2**31) < 45000
        ntp_s = (info.ntp_timestamp >> 32) - 2208988800
        assert abs(ntp_s - arrived) < 2
        # The viewer's receiver reports and REMB come back and are stored per viewer.
        await wait_until(lambda: sender.feedback.rtt_s is not None, 6)
        await wait_until(lambda: sender.feedback.remb_bps is not None, 6)
        assert sender.feedback.remb_bps > 0
    finally:
        await stop(http, pub, players)


async def test_old_aiortc_sender_path_stays_selectable(make_app, monkeypatch):
    monkeypatch.setenv("SHOWROOM_EGRESS", "aiortc")
    app = await make_app()
    runtime = app.app[keys.EXTRA]["media"]["demo"]
    assert runtime.egress == "aiortc"
    http, pub, players, _wires = await start(app, 1)
    try:
        assert not runtime.broadcasts
        viewer = next(iter(runtime.viewers.values()))
        assert not viewer.senders
    finally:
        await stop(http, pub, players)


# --- a lagging viewer, on real sockets -------------------------------------------------


class UnixPeer:
    """A datagram socket a viewer is sent to; unread, its queue fills and sends block."""

    def __init__(self, folder: Path, name: str) -> None:
        self.path = str(folder / name)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.setblocking(False)

    def drain(self) -> int:
        n = 0
        while True:
            try:
                self.sock.recv(4096)
                n += 1
            except BlockingIOError:
                return n


def offline_sender(broadcast: Broadcast, peer: UnixPeer) -> LeanSender:
    """A LeanSender on a real aiortc RTCRtpSender, writing SRTP to a Unix socket."""
    from aiortc import RTCCertificate, RTCDtlsTransport, RTCIceGatherer, RTCIceTransport
    from aiortc.rtcrtpsender import RTCRtpSender

    dtls = RTCDtlsTransport(
        RTCIceTransport(RTCIceGatherer()), [RTCCertificate.generateCertificate()]
    )
    lean = LeanSender(RTCRtpSender("video", dtls), broadcast)
    lean.pt, lean.profile, lean.b0 = 102, (1, b"0", 3), 0x90
    session = Session(Policy(key=os.urandom(30), ssrc_type=Policy.SSRC_ANY_OUTBOUND))
    lean.protect = SrtpProtector(session)
    lean.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    lean.sock.setblocking(False)
    lean.addr = peer.path
    return lean


async def test_lagging_viewer_skips_to_the_next_keyframe_and_never_queues():
    requests: list[str] = []
    skips: list[str] = []
    fanout = Fanout(capacity=60, keyframes=True)
    broadcast = Broadcast(fanout, "video", 90000, requests.append, skips.append)
    with tempfile.TemporaryDirectory() as tmp:
        fast_peer, slow_peer = UnixPeer(Path(tmp), "fast"), UnixPeer(Path(tmp), "slow")
        fast, slow = offline_sender(broadcast, fast_peer), offline_sender(broadcast, slow_peer)
        broadcast.viewers = [fast, slow]
        slow_seq0 = slow.seq
        fast.waiting = slow.waiting = True
        frame = [b"x" * 1000] * 4  # four packets a frame

        def publish(keyframe: bool) -> None:
            entry = fanout.publish(None, keyframe, int(time.time() * 1000), payloads=frame)
            broadcast.send(entry)
            fast_peer.drain()  # the fast viewer reads everything

        publish(False)
        assert fast.packets == slow.packets == 0, "both wait for a keyframe"
        publish(True)
        for _ in range(10):
            publish(False)
        assert slow.skips == 1 and slow.waiting, "the unread viewer fell behind and skipped"
        assert requests == ["lagging"] and skips == ["video"]
        assert fast.packets == 44 and not fast.waiting, "the others are not slowed"
        stuck = slow.packets
        for _ in range(5):
            publish(False)
        assert slow.packets == stuck, "nothing is queued for it while it waits"
        slow_peer.drain()
        publish(True)
        assert not slow.waiting and slow.packets == stuck + 4, "back at the next keyframe"
        # Its sequence numbers count what it never got (its receiver sees the loss).
        assert (slow.seq - slow_seq0) & 0xFFFF == slow.packets


def test_gso_runs_cover_a_frame_in_order_with_equal_sizes_and_a_shorter_last():
    # A 720p frame of the show's encoder: two slices, each split evenly by aiortc.
    assert gso_runs([988, 988, 987, 965, 965, 965]) == ((0, 3), (3, 6))
    assert gso_runs([645]) == ((0, 1),)
    assert gso_runs([700, 1160, 1160, 1159]) == ((0, 1), (1, 4))  # SPS/PPS first, larger
    assert gso_runs([]) == ()
    big = [1100] * 70
    assert gso_runs(big) == ((0, GSO_MAX_SEGMENTS), (GSO_MAX_SEGMENTS, 64), (64, 70))
    for sizes in ([5, 5, 4, 4, 3, 9, 9, 9, 1], [3, 4, 5, 5, 5], [7] * 33 + [2]):
        runs = gso_runs(sizes)
        assert [i for a, b in runs for i in range(a, b)] == list(range(len(sizes)))
        for a, b in runs:
            assert all(n == sizes[a] for n in sizes[a : b - 1]) and sizes[b - 1] <= sizes[a]


def test_padding_makes_a_720p_frame_one_gso_write_for_a_few_bytes():
    sizes = [988, 988, 987, 965, 965, 965]
    assert max_pad(988) == 61
    runs = gso_runs(sizes, max_pad=max_pad(988))
    assert runs == ((0, 6),)
    tails = [bytes(n) for n in sizes]
    pads = pad_to_runs(tails, runs)
    assert pads == [0, 0, 1, 23, 23, 0]  # the run's last may stay shorter
    assert [len(t) for t in tails] == [988] * 5 + [965]
    assert all(t[-1] == pad for t, pad in zip(tails, pads, strict=True) if pad)  # RFC 3550
    assert sum(pads) / sum(sizes) < 0.01
    # Too different to pad (SPS/PPS before a keyframe's slices), or over 255 bytes: as before.
    assert gso_runs([700, 1160, 1160, 1159], max_pad=max_pad(700)) == ((0, 1), (1, 4))
    assert max_pad(8000) == 255


@pytest.mark.skipif(not hasattr(socket.socket, "sendmsg"), reason="needs sendmsg (Linux)")
async def test_gso_writes_arrive_as_the_datagrams_one_write_per_packet_sends():
    """A viewer sent with GSO writes receives, datagram for datagram, what a viewer sent
    one write per packet receives: the same SRTP packets, each its own datagram, in
    order, that its SRTP session unprotects to the RTP stream (both on real UDP sockets
    on loopback, with the same keys and stream state)."""
    fanout = Fanout(capacity=60, keyframes=True)
    broadcast = Broadcast(fanout, "video", 90000, lambda _r: None, lambda _k: None)
    key = os.urandom(30)
    pair = _lean_senders(broadcast, key, ((True, False), (False, False)), seq=65530)
    senders, receivers = [lean for lean, _ in pair], [rx for _, rx in pair]
    keyframe = [os.urandom(700)] + [os.urandom(1160)] * 40 + [os.urandom(1100)]
    frames = [keyframe] + [[os.urandom(n) for n in (988, 988, 987, 965, 965, 965)]] * 5
    for i, payloads in enumerate(frames):
        entry = fanout.publish(None, i == 0, 0, payloads=payloads, timestamp=i * 3000)
        broadcast.send(entry)
    got = []
    for rx in receivers:
        datagrams = []
        with pytest.raises(BlockingIOError):
            while True:
                datagrams.append(rx.recv(2048))
        got.append(datagrams)
        rx.close()
    assert senders[0].gso, "this kernel takes GSO writes: the fast path ran"
    total = sum(map(len, frames))
    assert len(got[0]) == len(got[1]) == total
    plain, padded = (
        list(map(Session(Policy(key=key, ssrc_type=Policy.SSRC_ANY_INBOUND)).unprotect, g))
        for g in (got[1], got[0])
    )
    # The GSO viewer's packets are the same RTP packets, some with RTP padding (the P
    # bit, pad bytes counted in the last one): what a receiver strips, it gets alike.
    stripped = [p[: -p[-1]] if p[0] & 0x20 else p for p in padded]
    assert [bytes([p[0] & ~0x20]) + p[1:] for p in stripped] == plain
    # ... sized so that each 720p frame was one GSO write: all but the last alike.
    first = len(keyframe)
    for f in range(len(frames) - 1):
        sizes = [len(d) for d in got[0][first + 6 * f : first + 6 * (f + 1)]]
        assert len(set(sizes[:-1])) == 1 and sizes[-1] <= sizes[0], sizes
    rtp = plain
    seqs = [struct.unpack("!H", p[2:4])[0] for p in rtp]
    assert seqs == [(65530 + i) & 0xFFFF for i in range(total)]
    payloads = [p for f in frames for p in f]
    assert [p[-len(payloads[i]) :] for i, p in enumerate(rtp)] == payloads
    markers = [bool(p[1] & 0x80) for p in rtp]
    assert markers == [j == len(f) - 1 for f in frames for j in range(len(f))]
    for lean in senders:
        lean.sock.close()


def _lean_senders(broadcast, key: bytes, kinds, seq: int = 65500, port: int | None = None):
    """Senders alike (keys, sequence numbers, SSRC) but for their ``(gso, native)`` in
    ``kinds``, each writing to its own loopback receiver socket (or to ``port``)."""
    from aiortc import RTCCertificate, RTCDtlsTransport, RTCIceGatherer, RTCIceTransport
    from aiortc.rtcrtpsender import RTCRtpSender

    dtls = RTCDtlsTransport(
        RTCIceTransport(RTCIceGatherer()), [RTCCertificate.generateCertificate()]
    )
    out = []
    for gso, native in kinds:
        rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        rx.bind(("127.0.0.1", 0))
        rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        rx.setblocking(False)
        lean = LeanSender(RTCRtpSender("video", dtls), broadcast)
        lean.pt, lean.profile, lean.b0, lean.waiting = 102, (1, b"0", 3), 0x90, False
        lean.seq, lean.ts_offset, lean._ssrc = seq, 1234, 4321  # wraps mid-frame
        lean.protect = SrtpProtector(Session(Policy(key=key, ssrc_type=Policy.SSRC_ANY_OUTBOUND)))
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setblocking(False)
        addr = rx.getsockname() if port is None else ("127.0.0.1", port)
        lean.use_socket(sock, addr, gso, native=native)
        broadcast.viewers.append(lean)
        out.append((lean, rx))
    return out


def _drain(rx: socket.socket) -> list[bytes]:
    datagrams = []
    with contextlib.suppress(BlockingIOError):
        while True:
            datagrams.append(rx.recv(2048))
    return datagrams


@pytest.mark.skipif(sys.platform != "linux", reason="the C send loop is built on Linux")
@pytest.mark.parametrize("gso", [True, False])
async def test_c_send_loop_writes_byte_for_byte_what_the_python_loop_writes(gso):
    """The C send loop (media/fastsend.py) is built here, and a viewer it writes gets
    exactly the datagrams the Python loop writes for a viewer alike: a keyframe longer
    than one GSO write, 720p frames of one write, audio-sized single packets, with the
    sequence numbers wrapping, over real UDP sockets."""
    assert fastsend.load() is not None, "the C send loop did not build (see the log)"
    fanout = Fanout(capacity=60, keyframes=True)
    broadcast = Broadcast(fanout, "video", 90000, lambda _r: None, lambda _k: None)
    pair = _lean_senders(broadcast, os.urandom(30), ((gso, True), (gso, False)))
    assert pair[0][0]._native is not None and pair[1][0]._native is None
    keyframe = [os.urandom(700)] + [os.urandom(1160)] * 40 + [os.urandom(1100)]
    frames = [keyframe] + [[os.urandom(n) for n in (988, 988, 987, 965, 965, 965)]] * 4
    frames += [[os.urandom(120)]] * 3
    for i, payloads in enumerate(frames):
        broadcast.send(fanout.publish(None, i == 0, 0, payloads=payloads, timestamp=i * 3000))
    (c_lean, c_rx), (py_lean, py_rx) = pair
    got_c, got_py = _drain(c_rx), _drain(py_rx)
    assert len(got_py) == sum(map(len, frames))
    assert got_c == got_py
    assert c_lean.seq == py_lean.seq and c_lean.packets == py_lean.packets
    assert c_lean.gso == gso
    inbound = Session(Policy(key=os.urandom(30), ssrc_type=Policy.SSRC_ANY_INBOUND))
    with pytest.raises(pylibsrtp.Error):  # really protected: another key cannot read it
        inbound.unprotect(got_c[0])
    for lean, rx in pair:
        lean.stop()
        rx.close()


@pytest.mark.skipif(sys.platform != "linux", reason="the C send loop is built on Linux")
async def test_c_send_loop_takes_a_failed_write_as_the_python_loop_does():
    """A write the kernel refuses (here: to port 0, EINVAL) turns GSO off for that viewer
    and counts it as lagging, skipped to the next keyframe, in the C loop as in the
    Python loop; a full socket buffer (EAGAIN) takes the same way. Nothing queues."""
    fanout = Fanout(capacity=60, keyframes=True)
    broadcast = Broadcast(fanout, "video", 90000, lambda _r: None, lambda _k: None)
    pair = _lean_senders(broadcast, os.urandom(30), ((True, True), (True, False)), port=0)
    assert pair[0][0]._native is not None
    frame = [os.urandom(900)] * 3
    broadcast.send(fanout.publish(None, True, 0, payloads=frame, timestamp=0))
    for lean, rx in pair:
        assert lean.skips == 1 and lean.waiting and not lean.gso
        assert _drain(rx) == []
        lean.stop()
        rx.close()


# --- aiortc internals ----------------------------------------------------------------


async def test_aiortc_internals_the_lean_path_relies_on():
    """Fails loudly when aiortc changes what media/lean.py reaches into."""
    import aioice.ice
    import aiortc
    from aiortc import rtcpeerconnection, rtp
    from aiortc.rtcdtlstransport import RTCDtlsTransport
    from aiortc.rtcrtpparameters import RTCRtpSendParameters
    from aiortc.rtcrtpsender import RTCRtpSender

    assert aiortc.__version__ == AIORTC_VERSION, (
        f"aiortc {aiortc.__version__}: media/lean.py was checked against {AIORTC_VERSION}; "
        "re-check the internals listed in its docstring, then update AIORTC_VERSION"
    )
    # The peer connection starts a sender with sender.send(parameters) after DTLS.
    source = inspect.getsource(rtcpeerconnection.RTCPeerConnection)
    assert "await transceiver.sender.send(self.__localRtp(transceiver))" in source
    assert list(inspect.signature(RTCRtpSender.send).parameters) == ["self", "parameters"]
    fields = RTCRtpSendParameters.__dataclass_fields__
    assert {"codecs", "headerExtensions", "muxId", "rtcp"} <= set(fields)
    # The sender's SSRCs exist before negotiation (the answer's a=ssrc lines use them).
    from aiortc import RTCCertificate, RTCIceGatherer, RTCIceTransport

    dtls = RTCDtlsTransport(
        RTCIceTransport(RTCIceGatherer()), [RTCCertificate.generateCertificate()]
    )
    sender = RTCRtpSender("video", dtls)
    assert isinstance(sender._ssrc, int) and isinstance(sender._rtx_ssrc, int)
    assert sender.transport is dtls
    assert sender._RTCRtpSender__rtp_task is None  # started only by send()
    # DTLS: SRTP sessions, RTCP routing by the sender's SSRC, the ICE connection.
    assert dtls._tx_srtp is None and hasattr(dtls, "_rx_srtp")
    for name in ("_register_rtp_sender", "_unregister_rtp_sender"):
        assert list(inspect.signature(getattr(RTCDtlsTransport, name)).parameters)[:2] == [
            "self", "sender"
        ]  # fmt: skip
    dtls._register_rtp_sender(sender, RTCRtpSendParameters())
    assert dtls._rtp_router.senders[sender._ssrc] is sender
    dtls._unregister_rtp_sender(sender)
    assert sender._ssrc not in dtls._rtp_router.senders
    assert "_handle_rtcp_packet" in dir(RTCRtpSender)
    connection = dtls.transport._connection
    assert isinstance(connection, aioice.ice.Connection) and connection._nominated == {}
    pair_props = {"protocol", "remote_addr"}
    assert pair_props <= set(dir(aioice.ice.CandidatePair)) | {"protocol"}
    assert "transport" in aioice.ice.StunProtocol.__annotations__
    assert "send_data" in dir(aioice.ice.StunProtocol)
    # libsrtp sessions as aiortc builds them: protect / protect_rtcp.
    assert {"protect", "protect_rtcp"} <= set(dir(Session))

    # RTCP parsing and the constants the sender handles.
    assert (rtp.RTCP_RTPFB_NACK, rtp.RTCP_PSFB_PLI, rtp.RTCP_PSFB_FIR, rtp.RTCP_PSFB_APP) == (
        1, 1, 4, 15,
    )  # fmt: skip
    for cls in ("RtcpRrPacket", "RtcpSrPacket", "RtcpPsfbPacket", "RtcpRtpfbPacket"):
        assert hasattr(rtp, cls)
    nack = rtp.RtcpRtpfbPacket(fmt=1, ssrc=1, media_ssrc=sender._ssrc, lost=[7, 9])
    parsed = rtp.RtcpPacket.parse(bytes(nack))[0]
    assert parsed.media_ssrc == sender._ssrc and parsed.lost == [7, 9]
    assert dtls._rtp_router.route_rtcp(parsed) == set()
    remb = b"REMB" + bytes([1, 0x0C, 0x35, 0x00]) + struct.pack("!I", 42)
    bitrate, ssrcs = rtp.unpack_remb_fci(remb)
    assert ssrcs == [42] and bitrate > 0


def test_pylibsrtp_internals_the_lean_protector_relies_on():
    """SrtpProtector calls libsrtp on a Session's own buffer: same bytes as protect()."""
    import pylibsrtp

    assert pylibsrtp.__version__ == PYLIBSRTP_VERSION, (
        f"pylibsrtp {pylibsrtp.__version__}: media/lean.py's SrtpProtector was checked "
        f"against {PYLIBSRTP_VERSION}; re-check Session._srtp/_cdata/_buffer"
    )
    key = os.urandom(30)
    ours = SrtpProtector(Session(Policy(key=key, ssrc_type=Policy.SSRC_ANY_OUTBOUND)))
    theirs = Session(Policy(key=key, ssrc_type=Policy.SSRC_ANY_OUTBOUND))
    rx = Session(Policy(key=key, ssrc_type=Policy.SSRC_ANY_INBOUND))
    for seq in range(1, 6):
        packet = struct.pack("!BBHII", 0x80, 102, seq, 9000 * seq, 1234) + os.urandom(1100)
        protected = ours(packet)
        assert protected == theirs.protect(packet)
        assert rx.unprotect(protected) == packet
    with pytest.raises(ValueError):
        ours(b"\x80" * 1400)


@pytest.mark.parametrize("native", [True, False])
async def test_a_nack_after_a_rung_switch_resends_the_packet_sent_on_the_old_rung(native):
    """History is kept per broadcast slot in the viewer's C state: a packet sent on the
    rung a viewer left (and one on its new rung) is resent as RTX with its own payload,
    with the C loop or the Python one."""
    old_fan, new_fan = Fanout(capacity=60, keyframes=True), Fanout(capacity=60, keyframes=True)
    old = Broadcast(old_fan, "video", 90000, lambda _r: None, lambda _k: None)
    new = Broadcast(new_fan, "video", 90000, lambda _r: None, lambda _k: None)
    key = os.urandom(30)
    [(lean, rx)] = _lean_senders(old, key, ((True, native),), seq=100)
    lean.rtx_pt, lean.rtx_ssrc = 103, 999
    lean.started.set()
    sent = {}
    for i in range(3):  # on the old rung: seqs 100..105
        frame = [os.urandom(700), os.urandom(700)]
        entry = old_fan.publish(None, i == 0, 0, payloads=frame, timestamp=i * 3000)
        old.send(entry)
        sent.update({100 + 2 * i + k: p for k, p in enumerate(frame)})
    new.switch(lean)
    frame = [os.urandom(800)]
    new.send(new_fan.publish(None, True, 0, payloads=frame, timestamp=9000))
    assert lean.broadcast is new and lean in new.viewers and lean not in old.viewers
    sent[106] = frame[0]
    _drain(rx)
    inbound = Session(Policy(key=key, ssrc_type=Policy.SSRC_ANY_INBOUND))
    for seq in (101, 104, 106):
        assert lean.retransmit(seq), seq
        [datagram] = _drain(rx)
        rtp = inbound.unprotect(datagram)
        assert struct.unpack("!I", rtp[8:12])[0] == 999 and rtp[1] & 0x7F == 103
        assert rtp[-len(sent[seq]) - 2 :] == struct.pack("!H", seq) + sent[seq], seq
    assert not lean.retransmit(400), "never sent: nothing to resend"
    lean.stop()
    rx.close()


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as probe:
            probe.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(sys.platform != "linux", reason="the C send loop is built on Linux")
@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback here")
async def test_c_send_loop_reaches_an_ipv6_viewer():
    """An ICE pair over IPv6 (aioice gathers both families): the C loop's own socket
    address for it reaches the viewer, with the packets the Python loop sends."""
    fanout = Fanout(capacity=60, keyframes=True)
    broadcast = Broadcast(fanout, "video", 90000, lambda _r: None, lambda _k: None)
    pair = _lean_senders(broadcast, os.urandom(30), ((True, True), (True, False)))
    receivers = []
    for lean, rx4 in pair:
        rx4.close()
        lean.sock.close()
        rx = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        rx.bind(("::1", 0))
        rx.setblocking(False)
        sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        sock.setblocking(False)
        lean.use_socket(sock, rx.getsockname(), True, native=lean._native is not None)
        receivers.append(rx)
    assert pair[0][0]._native is not None and pair[1][0]._native is None
    frame = [os.urandom(900), os.urandom(900), os.urandom(500)]
    broadcast.send(fanout.publish(None, True, 0, payloads=frame, timestamp=0))
    got = [_drain(rx) for rx in receivers]
    for (lean, _), rx in zip(pair, receivers, strict=True):
        lean.stop()
        rx.close()
    assert len(got[0]) == 3 and got[0] == got[1]


@pytest.mark.skipif(sys.platform != "linux", reason="the C send loop is built on Linux")
def test_without_a_c_compiler_the_lean_path_says_so_and_uses_its_python_loop(tmp_path):
    """A machine with no C compiler (an empty cache, CC that does not run) gets one
    warning naming the reason, and the lean path's Python loop: never a failed start."""
    import subprocess

    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path), CC=str(tmp_path / "no-cc"))
    env.pop("SHOWROOM_FASTSEND", None)
    code = (
        "import logging; logging.basicConfig(level=logging.WARNING)\n"
        "from media import fastsend\n"
        "print('loaded' if fastsend.load() else 'python loop')\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert run.stdout.strip() == "python loop", run.stdout + run.stderr
    assert "C send loop unavailable" in run.stderr and "Python loop" in run.stderr
    assert not list(tmp_path.glob("showroom/*.so"))
