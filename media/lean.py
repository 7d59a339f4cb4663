"""The lean viewer path: one pass per frame sends it to every viewer of a show.

aiortc's ``RTCRtpSender`` runs one ``_run_rtp`` coroutine per viewer that awaits
``track.recv()``, builds an ``RtpPacket`` object per packet, serialises it and awaits a
chain of coroutines down to the socket. With hundreds of viewers that chain, not the
crypto or the syscall, is the cost. Here a ``Broadcast`` per stream (one fan-out: a
show's H.264, VP8 or Opus) wakes once per published entry and, in one synchronous pass,
writes each viewer's packets: its own 12-byte RTP header (SSRC, sequence number,
timestamp offset), the header extensions shared by all viewers negotiated alike, the
shared payload, SRTP protect, and a non-blocking write on the viewer's ICE socket. The
shared part is laid out once per frame (``FrameLayout``); per viewer it is one copy into
a scratch buffer, the header fields, libsrtp in place and one GSO write per frame. Where
the C send loop (media/fastsend.py) built, that is one C call per pass for each group of
viewers negotiated alike, and only the viewers with something for Python to do (NACKs
to retry, probe padding, a full socket) come back to Python; else it runs in Python.

Kept per viewer (``LeanSender``): NACK retransmission (RTX when negotiated) from a
bounded history of the frames it was sent (references to the shared entries, no copies),
RTCP sender reports with SDES, PLI/FIR forwarded to its rung's keyframe gate, and REMB,
TWCC and receiver-report feedback read and stored in ``Feedback``. A viewer whose socket
would block skips to the next keyframe (video) or the next packet (audio): nothing
queues. A joining viewer starts at a keyframe at most ``JOIN_KEYFRAME_MAX_AGE_MS`` old
(the packets since then in one burst) or waits for the next one. A viewer moves to
another rung's ``Broadcast`` at that rung's keyframe (``Broadcast.switch``) with its
SSRC, sequence numbers and timestamp offset unchanged, and a probe pads its stream with
padding-only RTX packets (media/adapt.py decides both).

aiortc (pinned to 1.16, ``AIORTC_VERSION``) remains the WebRTC stack: ICE, DTLS, the SRTP
keys and SDP. ``LeanSender`` relies on these aiortc internals, all checked by
``tests/test_media_lean.py::test_aiortc_internals_the_lean_path_relies_on``:

- ``RTCPeerConnection`` calls ``transceiver.sender.send(RTCRtpSendParameters)`` once the
  DTLS transport is connected; the lean path replaces ``send`` on the sender instance, so
  aiortc's ``_run_rtp``/``_run_rtcp`` tasks never start and its ``stop()`` is a no-op.
- ``RTCRtpSender._ssrc`` / ``_rtx_ssrc`` (written into the SDP answer) and
  ``RTCRtpSender.transport`` (the ``RTCDtlsTransport``).
- ``RTCRtpSendParameters``: ``codecs[0].payloadType``, the RTX codec's ``apt``
  parameter, ``headerExtensions`` (``id``, ``uri``), ``muxId``, ``rtcp.cname``.
- ``RTCDtlsTransport._tx_srtp`` (a ``pylibsrtp.Session``: ``protect``,
  ``protect_rtcp``), ``state``, ``_register_rtp_sender(sender, parameters)`` (routes RTCP
  for ``sender._ssrc`` to ``sender._handle_rtcp_packet``) and ``_unregister_rtp_sender``.
- ``RTCIceTransport._connection`` (aioice ``Connection``) and its ``_nominated[1]``
  ``CandidatePair``: ``protocol`` (aioice ``StunProtocol`` with a ``transport``: the
  asyncio datagram transport of the viewer's UDP socket) and ``remote_addr``.
- pylibsrtp (pinned to 1.0.0, ``PYLIBSRTP_VERSION``; ``SrtpProtector``): a ``Session``'s
  ``_srtp`` (``srtp_t *``), ``_cdata`` (its 1500-byte ``char[]``) and ``_buffer``, and
  ``pylibsrtp._binding.lib.srtp_protect``. ``Session.protect`` allocates a C ``int`` per
  call and costs ~0.8 us more per packet than calling libsrtp on the session's own buffer.
  The C send loop (media/fastsend.py, used where it built) calls the same
  ``srtp_protect`` through its address on the same ``srtp_t``.
- ``aiortc.rtp``: ``RtcpRrPacket``, ``RtcpSrPacket``, ``RtcpPsfbPacket``,
  ``RtcpRtpfbPacket``, ``unpack_remb_fci``, the RTCP_* constants; ``aiortc.clock``'s
  ``current_ntp_time``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import socket
import struct
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import pylibsrtp
from aioice.ice import StunProtocol
from aiortc import RTCRtpSender
from aiortc.clock import current_ntp_time
from aiortc.codecs import is_rtx
from aiortc.rtp import (
    RTCP_PSFB_APP,
    RTCP_PSFB_FIR,
    RTCP_PSFB_PLI,
    RTCP_RTPFB_NACK,
    RtcpPsfbPacket,
    RtcpRrPacket,
    RtcpRtpfbPacket,
    RtcpSrPacket,
    unpack_remb_fci,
)
from pylibsrtp._binding import ffi as srtp_ffi
from pylibsrtp._binding import lib as srtp_lib

from media import fastsend
from media.fanout import JOIN_KEYFRAME_MAX_AGE_MS, Entry, Fanout

log = logging.getLogger("showroom.media.lean")

AIORTC_VERSION = "1.16.0"  # the internals listed above were checked against this release
PYLIBSRTP_VERSION = "1.0.0"

MID_URI = "urn:ietf:params:rtp-hdrext:sdes:mid"
ABS_SEND_TIME_URI = "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time"
RTCP_RTPFB_TWCC = 15  # transport-wide congestion control feedback (RTPFB FMT 15)

# Frames of history kept per viewer for NACKs: ~4 s of video at 30 fps, ~2.5 s of audio.
HISTORY_FRAMES = fastsend.HISTORY
HISTORY_MASK = HISTORY_FRAMES - 1  # a frame's slot: its fan-out sequence number % 128
SR_INTERVAL_S = 1.0
# A packet is resent at most once per round trip (and this often at most), and
# retransmissions may add at most RTX_SHARE to a viewer's media bytes (bucket of
# RTX_BURST bytes): a link that loses packets because it is full must not get more.
RESEND_MIN_S = 0.1
RTX_SHARE = 0.5
# A NACKed packet is resent up to this many times while no newer NACK arrives, and only
# while it is at most NACK_WINDOW packets old (a receiver may take a much older one for a
# stream reset).
NACK_RETRIES = 3
NACK_HISTORY = 96  # a receiver is taken to keep asking for what is this much newer
NACK_WINDOW = 300
RTX_BURST = 64_000

# UDP GSO (Linux UDP_SEGMENT): one sendmsg carries a run of equal-sized packets (the
# last may be shorter) and the kernel cuts it into datagrams. A frame's packets nearly
# come in one such run (aiortc splits each NAL unit evenly; a 720p frame is two), and RTP
# padding evens out the few bytes between them, so a 720p frame is one system call per
# viewer instead of ~6. SHOWROOM_UDP_GSO=0 turns it off (the benchmark's comparison row).
SOL_UDP = getattr(socket, "SOL_UDP", 17)
UDP_SEGMENT = getattr(socket, "UDP_SEGMENT", 103)
GSO_MAX_SEGMENTS = 32  # the kernel takes up to 64 segments and 64 KB per call
GSO_ENABLED = sys.platform == "linux" and os.environ.get("SHOWROOM_UDP_GSO", "1") != "0"

_HEADER = struct.Struct("!BBHII")  # V/P/X/CC, M/PT, sequence number, timestamp, SSRC
_SEQ_TS_SSRC = struct.Struct("!HII")  # the header fields that differ per viewer
_RTCP_SR = struct.Struct("!BBHIQIII")  # header, SSRC, NTP, RTP timestamp, packets, octets
_OSN = struct.Struct("!H")
_GSO_SIZE = struct.Struct("=H")
H264_FILLER = b"\x0c\xff\xff\x80"  # a filler-data NAL unit (type 12): decoders skip it


def now_ms() -> int:
    return int(time.time() * 1000)


def header_extensions(mid_id: int, mid: bytes, abs_id: int, abs_send_time: int) -> bytes:
    """RFC 8285 one-byte header extension block (profile, length, elements, padding)."""
    elements = b""
    if mid_id and mid:
        elements += bytes([(mid_id << 4) | (len(mid) - 1)]) + mid
    if abs_id:
        elements += bytes([(abs_id << 4) | 2]) + abs_send_time.to_bytes(3, "big")
    if not elements:
        return b""
    elements += b"\x00" * (-len(elements) % 4)
    return struct.pack("!HH", 0xBEDE, len(elements) // 4) + elements


Runs = tuple[tuple[int, int], ...]


def gso_runs(sizes: list[int], max_segments: int = GSO_MAX_SEGMENTS, max_pad: int = 0) -> Runs:
    """``(start, end)`` index ranges covering ``sizes`` in order, each sendable as one GSO
    write: every packet the size of the run's first, except a last one that may be
    smaller. With ``max_pad``, a packet at most that many bytes shorter than the run's
    first joins it too and is padded to its size (``pad_to_runs``)."""
    runs = []
    i, n = 0, len(sizes)
    while i < n:
        size, j = sizes[i], i + 1
        while j < n and j - i < max_segments and 0 <= size - sizes[j] <= max_pad:
            j += 1
        if j < n and j - i < max_segments and sizes[j] < size:
            j += 1
        runs.append((i, j))
        i = j
    return tuple(runs)


def max_pad(size: int) -> int:
    """How much RTP padding a packet of a run of ``size``-byte packets may get: at most
    1/16 of its size (a frame's packets differ by a few bytes: aiortc splits each NAL unit
    evenly, and a 720p frame is two of them), and one byte counts it (RFC 3550)."""
    return min(255, size // 16)


def pad_to_runs(tails: list[bytes], runs: Runs) -> list[int]:
    """Pad ``tails`` in place to their run's size (all but each run's last packet, which
    may be shorter); the padding each got (0: none). So a frame is one GSO write, not one
    per NAL unit, for ~1 % more bytes."""
    pads = [0] * len(tails)
    for start, end in runs:
        size = len(tails[start])
        for k in range(start + 1, end - 1):
            pad = size - len(tails[k])
            if pad:
                tails[k] += b"\0" * (pad - 1) + bytes([pad])
                pads[k] = pad
    return pads


# libsrtp writes at most this much after a packet (auth tag and MKI: SRTP_MAX_TRAILER_LEN).
SRTP_TRAILER = 16 + 128


class _LazyHistory:
    """A viewer's NACK history (``LeanSender.history``), built on first iteration and
    then reused for the other retransmissions of the same pass."""

    def __init__(self, build: Callable[[], list[tuple[int, Entry]]]) -> None:
        self._build = build
        self._items: list[tuple[int, Entry]] | None = None

    def __iter__(self) -> Iterator[tuple[int, Entry]]:
        if self._items is None:
            self._items = self._build()
        return iter(self._items)


@dataclass(slots=True)
class FrameLayout:
    """One entry's packets as every viewer of one kind writes them (same header
    extensions, payload type and way of writing), built once per entry. Per viewer: one
    copy of ``template`` into the broadcast's scratch buffer, its sequence numbers,
    timestamp and SSRC into each header, SRTP in place, and one write per run."""

    template: bytearray  # the packets at their slots (sequence, timestamp, SSRC zero)
    offsets: tuple[int, ...]  # each packet's slot in the scratch buffer
    lengths: tuple[int, ...]  # each packet's length before SRTP
    pointers: tuple[Any, ...]  # scratch + offset, for libsrtp
    runs: Runs
    view: memoryview  # the scratch buffer
    scratch: Any  # the C buffer ``view`` and ``pointers`` point into (kept alive here)
    ext: bytes  # the header extension block (probe padding reuses it)
    nbytes: int  # payload bytes (the sender report's octet count)
    native: tuple[Any, ...] | None = None  # the C send loop's view (media/fastsend.py)


class Scratch:
    """A broadcast's C buffer that each viewer's packets are protected in, one viewer at
    a time (a pass is synchronous), grown for the largest frame; a layout keeps the buffer
    it was laid out in alive."""

    def __init__(self, size: int = 64 * 1024) -> None:
        self._grow(size)

    def _grow(self, size: int) -> None:
        self.buffer = srtp_ffi.new("unsigned char[]", size)
        self.view = memoryview(srtp_ffi.buffer(self.buffer))

    def layout(self, payloads: list[bytes], ext: bytes, b0: int, pt: int, gso: bool) -> FrameLayout:
        """Lay out one entry: header extensions, RTP padding for whole-frame GSO runs
        (when ``gso``), each packet in a slot with room for SRTP's trailer (16-aligned)."""
        tails = [ext + p for p in payloads]
        n = len(tails)
        if gso:
            runs = gso_runs([len(t) for t in tails], max_pad=max_pad(len(tails[0])) if n else 0)
            pads = pad_to_runs(tails, runs)
        else:
            runs, pads = tuple((i, i + 1) for i in range(n)), [0] * n
        offsets, off = [], 0
        for tail in tails:
            offsets.append(off)
            off += (12 + len(tail) + SRTP_TRAILER + 15) & ~15
        if off > len(self.view):
            self._grow(max(off, 2 * len(self.view)))
        template = bytearray(off)
        for k, (tail, start) in enumerate(zip(tails, offsets, strict=True)):
            template[start] = b0 | (0x20 if pads[k] else 0)  # the P bit
            template[start + 1] = pt | (0x80 if k == n - 1 else 0)  # marker: the last
            template[start + 12 : start + 12 + len(tail)] = tail
        buffer = self.buffer
        lengths = tuple(12 + len(t) for t in tails)
        fast = fastsend.load()
        native = fastsend.layout(fast, buffer, template, offsets, lengths, runs) if fast else None
        return FrameLayout(
            template, tuple(offsets), lengths, tuple(buffer + o for o in offsets), runs,
            self.view, buffer, ext, sum(map(len, payloads)), native,
        )  # fmt: skip


class SrtpProtector:
    """``Session.protect`` without its per-call allocation: libsrtp protects in place in
    the session's own buffer (pylibsrtp internals, see the module docstring)."""

    MAX_PACKET = 1500 - 16 - 128  # room for the SRTP tag and MKI, as pylibsrtp keeps

    def __init__(self, session: pylibsrtp.Session) -> None:
        self.session = session  # keeps the C session alive
        self._srtp = session._srtp[0]
        self._cdata = session._cdata
        self._buffer = session._buffer
        self._len = srtp_ffi.new("int *")
        self._protect = srtp_lib.srtp_protect

    def __call__(self, packet: bytes) -> bytes:
        n = len(packet)
        if n > self.MAX_PACKET:
            raise ValueError("packet is too long")
        length = self._len
        length[0] = n
        buffer = self._buffer
        buffer[0:n] = packet
        rc = self._protect(self._srtp, self._cdata, length)
        if rc:
            raise pylibsrtp.Error(f"srtp_protect failed ({rc})")
        return buffer[0 : length[0]]

    def write(self, layout: FrameLayout, seq: int, ts: int, ssrc: int) -> list[memoryview]:
        """One viewer's packets of ``layout``, protected in place in its scratch buffer
        (valid until the next viewer's): the hot path, so nothing here is per packet but
        the header fields, libsrtp and a view of the result."""
        view = layout.view
        view[: len(layout.template)] = layout.template
        pack_into = _SEQ_TS_SSRC.pack_into
        length, srtp, protect = self._len, self._srtp, self._protect
        out = []
        for off, n, ptr in zip(layout.offsets, layout.lengths, layout.pointers, strict=True):
            pack_into(view, off + 2, seq, ts, ssrc)
            seq = (seq + 1) & 0xFFFF
            length[0] = n
            rc = protect(srtp, ptr, length)
            if rc:
                raise pylibsrtp.Error(f"srtp_protect failed ({rc})")
            out.append(view[off : off + length[0]])
        return out


@dataclass
class Feedback:
    """What the viewer's receiver reported (its rung follows it: media/adapt.py)."""

    remb_bps: int | None = None
    remb_at: float | None = None
    twcc_reports: int = 0
    twcc_at: float | None = None
    fraction_lost: int = 0  # of 256, from the latest receiver report
    packets_lost: int = 0
    jitter: int = 0
    rtt_s: float | None = None
    nacks: int = 0
    nacked_packets: int = 0  # packets NACKed that were not already waiting to be resent
    retransmits: int = 0
    keyframe_requests: int = 0
    rr_at: float | None = None  # when the latest receiver report about this stream came
    rtx_fraction_lost: int = 0  # of 256: the RTX stream (retransmissions, probe padding)
    rtx_rr_at: float | None = None


class _State:
    """A ``LeanSender`` attribute kept in its ``struct fs_viewer`` (``LeanSender.c``),
    where the C send loop reads and updates it; ``none``: the field's value for None."""

    def __init__(self, field: str, none: int | None = None, kind: type = int) -> None:
        self.field, self.none, self.kind = field, none, kind

    def __get__(self, obj: Any, owner: Any = None) -> Any:
        if obj is None:
            return self
        value = getattr(obj.c, self.field)
        return None if self.none is not None and value == self.none else self.kind(value)

    def __set__(self, obj: Any, value: Any) -> None:
        setattr(obj.c, self.field, self.none if value is None else value)


class LeanSender:
    """One viewer's outgoing stream (one m-line), sent by its show's ``Broadcast``.

    Its per-frame state (sequence number, counters, history, waiting) lives in
    ``self.c``, a ``struct fs_viewer`` (media/fastsend.py) that the C send loop updates
    for a whole broadcast in one call; the attributes below read and write it."""

    _ssrc = _State("ssrc")
    seq = _State("seq")
    ts_offset = _State("ts_offset")
    packets = _State("packets")
    octets = _State("octets")
    _rtx_allowance = _State("rtx_allowance", kind=float)
    last_ts = _State("last_ts", none=-1)
    keyframe_seq = _State("keyframe_seq", none=-1)
    waiting = _State("waiting", kind=bool)
    gso = _State("gso", kind=bool)  # the socket takes GSO writes (plain UDP on Linux)

    def __init__(
        self,
        sender: RTCRtpSender,
        broadcast: Broadcast,
        on_keyframe_request: Callable[[], None] | None = None,
    ) -> None:
        self.sender = sender
        self.broadcast = broadcast
        self.on_keyframe_request = on_keyframe_request
        self.c = fastsend.state()
        self._prior: list[tuple[int, Entry]] = []  # history from the rungs it left
        self._ssrc = sender._ssrc  # the SSRC aiortc put in the SDP answer
        self.rtx_ssrc = sender._rtx_ssrc
        self.seq = random.randrange(1 << 15)  # lower half: no early wrap (as aiortc)
        self.rtx_seq = random.randrange(1 << 15)
        self.ts_offset = random.randrange(1 << 32)
        self.pt = 0
        self.rtx_pt: int | None = None
        self.profile: tuple[int, bytes, int] = (0, b"", 0)  # (mid id, mid, abs-send-time id)
        self.b0 = 0x80
        self.cname = b""
        self.dtls: Any = None
        self.protect: SrtpProtector | None = None
        self.sock: socket.socket | None = None
        self.gso = False
        self.addr: tuple[str, int] | None = None
        self._native: Any = None  # the C send loop's state for this viewer (fastsend)
        self._pair: Any = None
        self.waiting = True  # for a keyframe (video) before the first packet
        self.started = asyncio.Event()
        self.closed = False
        # RTCP sender report state
        self.packets = 0
        self.octets = 0
        self.last_lsr: int | None = None
        self.last_lsr_time = 0.0
        self.feedback = Feedback()
        self.skips = 0
        # Rate adaptation (media/adapt.py): the broadcast this viewer moves to at its next
        # keyframe, the codec-clock timestamp of the newest frame sent (a switch never
        # goes back in time), probe padding asked for and sent.
        self.switch_to: Broadcast | None = None
        self.last_ts: int | None = None
        self.on_switched: Callable[[Broadcast], None] | None = None
        self.padding_bps = 0
        self.padding_octets = 0
        self._resent: dict[int, float] = {}  # sequence number -> when it was last resent
        self._rtx_allowance = float(RTX_BURST)
        self.h264 = False
        self.keyframe_seq: int | None = None  # first packet of the newest keyframe sent
        self._nacked: dict[int, int] = {}  # still missing at the receiver -> times resent
        self._pad_at = 0.0
        # aiortc calls sender.send(parameters) once DTLS is up: that call starts us.
        sender.send = self._start  # type: ignore[method-assign]

    # --- set-up (from aiortc) ----------------------------------------------------------
    async def _start(self, parameters: Any) -> None:
        if self.closed or self.started.is_set():
            return
        codec = parameters.codecs[0]
        self.pt = codec.payloadType
        self.h264 = codec.mimeType.lower() == "video/h264"
        for c in parameters.codecs:
            if is_rtx(c) and c.parameters.get("apt") == codec.payloadType:
                self.rtx_pt = c.payloadType
        ids = {ext.uri: ext.id for ext in parameters.headerExtensions}
        mid = (parameters.muxId or "").encode()
        self.profile = (ids.get(MID_URI, 0), mid, ids.get(ABS_SEND_TIME_URI, 0))
        self.b0 = 0x90 if (self.profile[0] and mid) or self.profile[2] else 0x80
        self.cname = (parameters.rtcp.cname or "").encode()
        self.dtls = self.sender.transport
        self.protect = SrtpProtector(self.dtls._tx_srtp)
        # RTCP for our SSRC (RR, NACK, PLI/FIR, REMB, TWCC) now comes to _handle_rtcp_packet.
        self.dtls._register_rtp_sender(self, parameters)
        if not self._resolve_socket():
            log.warning("lean sender %s: no nominated ICE pair", self._ssrc)
            return
        self.started.set()
        self.broadcast.join(self)

    def _resolve_socket(self) -> bool:
        """The viewer's UDP socket and address from the nominated ICE pair (re-read when
        aioice nominates another pair). The socket is a duplicate of aioice's, written
        without asyncio's buffering: a full socket buffer is a lagging viewer."""
        try:
            pair = self.dtls.transport._connection._nominated.get(1)
        except AttributeError:
            return False
        if pair is None:
            return False
        if pair is self._pair:
            return True
        self._close_socket()
        self._pair = pair
        protocol = pair.protocol
        if isinstance(protocol, StunProtocol):
            fd = protocol.transport.get_extra_info("socket").fileno()
            sock = socket.socket(fileno=os.dup(fd))
            sock.setblocking(False)
            self.use_socket(sock, pair.remote_addr, GSO_ENABLED)
        else:  # a TURN-relayed pair: aioice must wrap each datagram itself
            self.use_socket(_TurnSocket(protocol), pair.remote_addr, False)
        return True

    def use_socket(self, sock: Any, addr: tuple[str, int], gso: bool, native: bool = True) -> None:
        """Write this viewer's packets to ``addr`` on ``sock``: a UDP socket (written by
        the C send loop where it loaded, unless not ``native``) or a ``_TurnSocket``."""
        self.sock, self.addr, self.gso = sock, addr, gso
        self._native = None
        fast = fastsend.load() if native and isinstance(sock, socket.socket) else None
        if fast is not None and self.protect is not None:
            fastsend.attach(fast, self.c, self.protect._srtp, sock, addr)
            self._native = self.c
            self._fs_send_entry = fast.lib.fs_send_entry
        self.broadcast.regroup()

    def _close_socket(self) -> None:
        if self._native is not None:
            self._native = None  # its fd is the socket's
            self.broadcast.regroup()
        if self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.close()
            self.sock = None

    def stop(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.broadcast.leave(self)
        if self.switch_to is not None:
            self.switch_to.leave(self)
        if self.dtls is not None:
            with contextlib.suppress(Exception):
                self.dtls._unregister_rtp_sender(self)
        self._close_socket()

    # --- hot path ------------------------------------------------------------------------
    def send_entry(self, entry: Entry, layout: FrameLayout) -> bool:
        """Send one shared entry, laid out for viewers like this one
        (``Broadcast.layout_for``). False when the socket is full: the rest of the frame
        counts as lost (NACK-able) and the caller skips this viewer ahead."""
        self.broadcast.sent[entry.seq & HISTORY_MASK] = entry
        native = self._native
        if native is not None and layout.native is not None:
            gso = native.gso
            rc = self._fs_send_entry(
                layout.native[0], native, entry.timestamp, entry.keyframe, entry.seq,
                len(layout.lengths), layout.nbytes,
            )  # fmt: skip
            if rc:
                if gso and not native.gso:
                    self.gso_refused()
                if rc <= fastsend.SRTP_FAILED:
                    raise pylibsrtp.Error(f"srtp_protect failed ({fastsend.SRTP_FAILED - rc})")
                if rc < 0:  # -EAGAIN: the socket buffer is full (or the write failed)
                    return False
        elif not self._send_entry_python(entry, layout):
            return False
        if self._nacked:
            self._retry_nacks()
        if self.padding_bps:
            self.send_padding(layout.ext)
        return True

    def _send_entry_python(self, entry: Entry, layout: FrameLayout) -> bool:
        """``fs_send_entry`` in Python: the same state kept, the same packets written."""
        c = self.c
        seq = c.seq
        slot = entry.seq & HISTORY_MASK
        c.hist_seq[slot], c.hist_fseq[slot] = seq, entry.seq
        count = len(layout.lengths)
        c.last_ts = entry.timestamp
        if entry.keyframe:
            c.keyframe_seq = seq
        c.seq = (seq + count) & 0xFFFF
        c.packets += count
        nbytes = layout.nbytes
        c.octets += nbytes
        c.rtx_allowance = min(RTX_BURST, c.rtx_allowance + RTX_SHARE * nbytes)
        ts = (entry.timestamp + c.ts_offset) & 0xFFFFFFFF
        out = self.protect.write(layout, seq, ts, c.ssrc)
        sock, addr = self.sock, self.addr
        try:
            for start, end in layout.runs:
                if end - start == 1:
                    sock.sendto(out[start], addr)
                else:
                    self._send_run(sock.sendmsg, out[start:end])
        except OSError:  # BlockingIOError: the socket buffer is full
            return False
        return True

    def gso_refused(self) -> None:
        log.info("lean sender %s: no UDP GSO here, one write per packet", self._ssrc)
        self.gso = False
        self.broadcast.regroup()

    def follow_up(self, layout: FrameLayout) -> None:
        """After a batched send: resend what is still NACKed, pad a probe."""
        if self._nacked:
            self._retry_nacks()
        if self.padding_bps:
            self.send_padding(layout.ext)

    def _mark_follow_up(self) -> None:
        self.c.follow_up = 1 if (self._nacked or self.padding_bps) else 0

    def history(self) -> list[tuple[int, Entry]]:
        """(first sequence number, entry) of the frames this viewer was sent that are
        still in its broadcast's history, then those from the rungs it came from."""
        c, sent = self.c, self.broadcast.sent
        fseqs, firsts = list(c.hist_fseq), list(c.hist_seq)
        out = []
        for slot, fseq in enumerate(fseqs):
            if fseq >= 0:
                entry = sent[slot]
                if entry is not None and entry.seq == fseq:
                    out.append((firsts[slot], entry))
        if self._prior:  # kept while a NACK could still ask for them
            seq = c.seq
            self._prior = [
                (first, entry) for first, entry in self._prior
                if (seq - first) & 0xFFFF <= NACK_WINDOW + len(entry.payloads)
            ]  # fmt: skip
        return out + self._prior

    def moving(self) -> None:
        """Leaving its broadcast for another: its history here is kept, for NACKs."""
        self._prior = self.history()[:HISTORY_FRAMES]
        fastsend.forget_history(self.c)

    def _send_run(self, sendmsg: Callable[..., int], packets: list[memoryview]) -> None:
        """One GSO write of ``packets`` (equal sizes, the last maybe shorter). A kernel or
        route that refuses GSO (EIO, EINVAL) gets them one by one, and from then on."""
        try:
            sendmsg(
                packets, [(SOL_UDP, UDP_SEGMENT, _GSO_SIZE.pack(len(packets[0])))], 0, self.addr
            )
        except BlockingIOError:
            raise
        except OSError as exc:
            log.info("lean sender %s: no UDP GSO here (%s), one write per packet", self._ssrc, exc)
            self.gso = False
            for packet in packets:
                self.sock.sendto(packet, self.addr)

    def set_padding(self, bps: int) -> None:
        if not bps:
            self._pad_at = 0.0
        if bps != self.padding_bps:
            self.padding_bps = bps
            self._mark_follow_up()

    PADDING = 255  # bytes of padding per packet (RTP padding length is one byte)

    def send_padding(self, ext: bytes) -> None:
        """Probe padding owed since the last frame, as padding-only RTX packets: the
        receiver's bandwidth estimator counts them, its decoder never sees them."""
        now = time.monotonic()
        elapsed = min(0.2, now - self._pad_at) if self._pad_at else 0.0
        self._pad_at = now
        if self.rtx_pt is None or not elapsed:
            return
        count = int(self.padding_bps * elapsed / 8 / (self.PADDING + 12 + len(ext)))
        b0 = self.b0 | 0x20  # the P bit
        pad = b"\0" * (self.PADDING - 1) + bytes([self.PADDING])
        ts = ((self.last_ts or 0) + self.ts_offset) & 0xFFFFFFFF
        for _ in range(count):
            data = _HEADER.pack(b0, self.rtx_pt, self.rtx_seq, ts, self.rtx_ssrc) + ext + pad
            try:
                self.sock.sendto(self.protect(data), self.addr)
            except OSError:
                return
            self.rtx_seq = (self.rtx_seq + 1) & 0xFFFF
            self.padding_octets += len(data)

    # --- RTCP in ---------------------------------------------------------------------
    async def _handle_rtcp_packet(self, packet: Any) -> None:
        fb = self.feedback
        if isinstance(packet, (RtcpRrPacket, RtcpSrPacket)):
            for report in packet.reports:
                if report.ssrc == self.rtx_ssrc and self.rtx_ssrc:
                    # Retransmissions and probe padding: did the link carry the probe?
                    fb.rtx_fraction_lost, fb.rtx_rr_at = report.fraction_lost, time.monotonic()
                if report.ssrc != self._ssrc:
                    continue
                fb.fraction_lost, fb.packets_lost = report.fraction_lost, report.packets_lost
                fb.jitter = report.jitter
                fb.rr_at = time.monotonic()
                if self.last_lsr is not None and report.lsr == self.last_lsr and report.dlsr:
                    fb.rtt_s = time.time() - self.last_lsr_time - report.dlsr / 65536
        elif isinstance(packet, RtcpRtpfbPacket):
            if packet.fmt == RTCP_RTPFB_NACK:
                fb.nacks += 1
                # What a NACK lists is resent now and, a round trip apart, a few more
                # times: a receiver that NACKs only on a new gap (and forgets what is
                # older than its NACK history) would otherwise wait for a lost
                # retransmission forever once the loss stops.
                lost = [seq & 0xFFFF for seq in packet.lost]
                if lost and self._nacked:
                    # Asked for before, not now, and recent enough to be in the
                    # receiver's NACK history: it arrived.
                    newest = min(lost, key=lambda q: (self.seq - q) & 0xFFFF)  # wraps
                    asked = set(lost)
                    for seq in list(self._nacked):
                        if seq not in asked and (newest - seq) & 0xFFFF < NACK_HISTORY:
                            del self._nacked[seq]
                fb.nacked_packets += sum(1 for seq in lost if seq not in self._nacked)
                for seq in lost:
                    self._nacked[seq] = 0
                self._retry_nacks()
            elif packet.fmt == RTCP_RTPFB_TWCC:
                fb.twcc_reports += 1
                fb.twcc_at = time.monotonic()
        elif isinstance(packet, RtcpPsfbPacket):
            if packet.fmt in (RTCP_PSFB_PLI, RTCP_PSFB_FIR):
                fb.keyframe_requests += 1
                if self.on_keyframe_request is not None:
                    self.on_keyframe_request()
                else:  # the gate of the rung this viewer is on
                    self.broadcast.request_keyframe("pli")
            elif packet.fmt == RTCP_PSFB_APP:
                with contextlib.suppress(ValueError):
                    bitrate, ssrcs = unpack_remb_fci(packet.fci)
                    if self._ssrc in ssrcs:
                        fb.remb_bps, fb.remb_at = bitrate, time.monotonic()

    def _retry_nacks(self) -> None:
        # Called on every frame while anything is NACKed; most retries are held back by
        # the once-per-round-trip rule, so the history is built only if one is resent.
        history = _LazyHistory(self.history)
        for seq, tries in list(self._nacked.items()):
            if tries >= NACK_RETRIES or (self.seq - seq) & 0xFFFF > NACK_WINDOW:
                del self._nacked[seq]
            elif self.retransmit(seq, history):
                self._nacked[seq] = tries + 1
        self._mark_follow_up()

    def retransmit(self, seq: int, history: Iterable[tuple[int, Entry]] | None = None) -> bool:
        """Resend packet ``seq`` from the history (as RTX when negotiated), at most once
        per round trip: a receiver that lists every packet still missing in each NACK
        would otherwise have the same packets resent again and again into a link that is
        already losing them."""
        if self.sock is None or self.closed:
            return False
        now = time.monotonic()
        resent = self._resent
        last = resent.get(seq)
        if last is not None and now - last < max(RESEND_MIN_S, 1.5 * (self.feedback.rtt_s or 0)):
            return False
        superseded = (
            self.h264
            and self.keyframe_seq is not None
            and 0 < (self.keyframe_seq - seq) & 0xFFFF < 0x8000
        )
        if self._rtx_allowance <= 0 and not superseded:
            return False  # over the retransmission budget: the link is full already
        if len(resent) >= 1024:
            resent.clear()
        resent[seq] = now
        for first, entry in self.history() if history is None else history:
            index = (seq - first) & 0xFFFF
            if index >= len(entry.payloads):
                continue
            payload = entry.payloads[index]
            marker = 0x80 if index == len(entry.payloads) - 1 else 0
            ts = (entry.timestamp + self.ts_offset) & 0xFFFFFFFF
            # Its own send time: the frame's would make the packet look delayed on the
            # way, and a receiver's delay-based estimate would fall for nothing.
            ext = header_extensions(*self.profile, (current_ntp_time() >> 14) & 0x00FFFFFF)
            if superseded:
                # Sent before the newest keyframe this viewer got, so its decoder no
                # longer needs it: an H.264 filler-data NAL unit in its place tells the
                # receiver to stop waiting for it (a receiver that waits for every packet
                # in order would otherwise hold the keyframe back), for a few bytes.
                # Never empty: an empty frame would read as the end of the stream.
                header = _HEADER.pack(self.b0, self.pt | marker, seq, ts, self._ssrc)
                data = header + ext + H264_FILLER
            elif self.rtx_pt is not None:
                header = _HEADER.pack(
                    self.b0, self.rtx_pt | marker, self.rtx_seq, ts, self.rtx_ssrc
                )
                data = header + ext + _OSN.pack(seq) + payload
                self.rtx_seq = (self.rtx_seq + 1) & 0xFFFF
            else:
                data = _HEADER.pack(self.b0, self.pt | marker, seq, ts, self._ssrc) + ext + payload
            with contextlib.suppress(BlockingIOError):
                self.sock.sendto(self.protect(data), self.addr)
                self.feedback.retransmits += 1
                self._rtx_allowance -= len(data)
                return True
            return False
        return False

    # --- RTCP out --------------------------------------------------------------------
    def send_report(self, ntp: int, rtp_ts: int) -> None:
        """RTCP SR (+ SDES CNAME) for this viewer's stream."""
        if self.sock is None or self.closed or self.packets == 0:
            return
        sr = _RTCP_SR.pack(
            0x80, 200, 6, self._ssrc, ntp, (rtp_ts + self.ts_offset) & 0xFFFFFFFF,
            self.packets & 0xFFFFFFFF, self.octets & 0xFFFFFFFF,
        )  # fmt: skip
        self.last_lsr = (ntp >> 16) & 0xFFFFFFFF
        self.last_lsr_time = time.time()
        chunk = struct.pack("!I", self._ssrc) + bytes([1, len(self.cname)]) + self.cname + b"\0"
        chunk += b"\0" * (-len(chunk) % 4)
        sdes = struct.pack("!BBH", 0x81, 202, len(chunk) // 4) + chunk
        with contextlib.suppress(BlockingIOError, OSError):
            self.sock.sendto(self.dtls._tx_srtp.protect_rtcp(sr + sdes), self.addr)


class _TurnSocket:
    """``sendto`` for a TURN-relayed ICE pair: aioice wraps each datagram (bounded)."""

    MAX_PENDING = 256

    def __init__(self, protocol: Any) -> None:
        self.protocol = protocol
        self.pending = 0

    def sendto(self, data: bytes | memoryview, addr: tuple[str, int]) -> None:
        if self.pending >= self.MAX_PENDING:
            raise BlockingIOError
        self.pending += 1
        # A copy: the hot path's packets live in a scratch buffer the next viewer reuses.
        task = asyncio.ensure_future(self.protocol.send_data(bytes(data), addr))
        task.add_done_callback(self._done)

    def _done(self, _task: asyncio.Future) -> None:
        self.pending -= 1

    def close(self) -> None:
        pass


class Broadcast:
    """Sends one fan-out's entries to all its lean viewers, one pass per entry.

    It reads the ``Fanout`` like any consumer (``wait`` and the ring), so it works the
    same whether the entries come from this process's encoder or from another process.
    """

    def __init__(
        self,
        fanout: Fanout,
        kind: str,
        clock_rate: int,
        request_keyframe: Callable[[str], None],
        on_skip: Callable[[str], None],
    ) -> None:
        self.fanout = fanout
        self.kind = kind
        self.clock_rate = clock_rate
        self.request_keyframe = request_keyframe
        self.on_skip = on_skip
        self.viewers: list[LeanSender] = []
        self.pending: list[LeanSender] = []  # moving here from another rung at a keyframe
        self.next_seq = fanout.seq + 1  # next fan-out entry this broadcast sends
        self.last_ts = 0  # codec-clock timestamp and monotonic time of the last entry sent
        self.last_ts_at = 0.0
        self.entries_sent = 0
        self.skips = 0
        self._ext: dict[tuple[int, bytes, int], bytes] = {}
        self.scratch = Scratch()
        # The entries sent, by slot (fan-out sequence number % HISTORY_FRAMES): what a
        # viewer's history points into (media/fastsend.py).
        self.sent: list[Entry | None] = [None] * HISTORY_FRAMES
        # Viewers sent by the C loop, in groups alike (one layout, one call each), and
        # the rest (a TURN relay, no C loop here): rebuilt when membership changes.
        self._groups: list[fastsend.Group] | None = None
        self._python: list[LeanSender] = []
        self._task: asyncio.Task | None = None
        self._reports: asyncio.Task | None = None

    # --- membership ------------------------------------------------------------------
    def regroup(self) -> None:
        """Viewers joined, left, or changed how they are written: group them again."""
        self._groups = None

    def _regroup(self) -> list[fastsend.Group]:
        fast = fastsend.load()
        by_key: dict[tuple, list[LeanSender]] = {}
        self._python = []
        for viewer in self.viewers:
            if fast is not None and viewer._native is not None:
                key = (viewer.profile, viewer.b0, viewer.pt, viewer.gso)
                by_key.setdefault(key, []).append(viewer)
            else:
                self._python.append(viewer)
        self._groups = [fastsend.Group(fast, group) for group in by_key.values()]
        return self._groups

    def _ensure_running(self) -> None:
        if self._task is None or self._task.done():
            self.next_seq = self.fanout.seq + 1
            self._task = asyncio.create_task(self._run(), name=f"broadcast-{self.kind}")
            self._reports = asyncio.create_task(self._run_reports(), name="broadcast-sr")

    def join(self, viewer: LeanSender) -> None:
        f = self.fanout
        self._ensure_running()
        viewer.waiting = f.keyframes
        if f.keyframes:
            # Start at a recent keyframe already sent to the others: this viewer gets the
            # frames since then in one burst now, then rides along with everybody.
            kf = f.latest_keyframe()
            if kf is not None and now_ms() - kf.wall_ms <= JOIN_KEYFRAME_MAX_AGE_MS:
                if kf.seq >= self.next_seq:
                    pass  # not sent yet: the next pass starts this viewer at it
                else:
                    viewer.waiting = False
                    for entry in list(f.ring):
                        if kf.seq <= entry.seq < self.next_seq and entry.payloads:
                            viewer.send_entry(entry, self.layout_for(viewer, entry, {}))
            else:
                self.request_keyframe("join")
        self.viewers.append(viewer)
        self.regroup()

    def leave(self, viewer: LeanSender) -> None:
        with contextlib.suppress(ValueError):
            self.viewers.remove(viewer)
            self.regroup()
        with contextlib.suppress(ValueError):
            self.pending.remove(viewer)
        if viewer.switch_to is self:
            viewer.switch_to = None
        if not self.viewers and not self.pending:
            self.stop()

    def switch(self, viewer: LeanSender) -> None:
        """Move ``viewer`` (one of another broadcast's) here at this stream's next
        keyframe; until then it stays where it is. Its RTP stream goes on unbroken (same
        SSRC, sequence numbers and timestamp offset): its decoder just sees a keyframe,
        maybe of another size. Switching back to its own broadcast cancels a move."""
        old = viewer.switch_to
        if old is self:
            return
        if old is not None:
            old.leave(viewer)
        if viewer.broadcast is self or viewer.closed:
            return
        viewer.switch_to = self
        self.pending.append(viewer)
        self._ensure_running()
        self.request_keyframe("switch")

    def _complete_switch(self, viewer: LeanSender, entry: Entry) -> bool:
        """At a keyframe: take ``viewer`` over unless its old stream already sent this
        frame (or a later one); then it waits for the next keyframe."""
        if viewer.last_ts is not None:
            ahead = (entry.timestamp - viewer.last_ts) & 0xFFFFFFFF
            if ahead == 0 or ahead >= 1 << 31:
                self.request_keyframe("switch")
                return False
        self.pending.remove(viewer)
        old = viewer.broadcast
        viewer.moving()
        viewer.broadcast, viewer.switch_to = self, None
        old.leave(viewer)
        viewer.waiting = False
        self.viewers.append(viewer)
        self.regroup()
        if viewer.on_switched is not None:
            viewer.on_switched(self)
        return True

    def stop(self) -> None:
        for task in (self._task, self._reports):
            if task is not None:
                task.cancel()
        self._task = self._reports = None

    # --- sending ---------------------------------------------------------------------
    def layout_for(
        self, viewer: LeanSender, entry: Entry, layouts: dict[tuple, FrameLayout]
    ) -> FrameLayout:
        """``entry`` laid out for ``viewer`` and every viewer like it (``layouts``: this
        pass's, by header extensions, payload type and way of writing)."""
        key = (viewer.profile, viewer.b0, viewer.pt, viewer.gso)
        layout = layouts.get(key)
        if layout is None:
            ext = self.ext_for(viewer.profile)
            layout = layouts[key] = self.scratch.layout(
                entry.payloads, ext, viewer.b0, viewer.pt, viewer.gso
            )
        return layout

    def ext_for(self, profile: tuple[int, bytes, int]) -> bytes:
        ext = self._ext.get(profile)
        if ext is None:
            ext = self._ext[profile] = header_extensions(*profile, self._abs_send_time)
        return ext

    async def _run(self) -> None:
        f = self.fanout
        while True:
            if f.seq < self.next_seq:
                await f.wait()
                continue
            try:
                for entry in self._take():
                    self.send(entry)
            except Exception:  # one bad entry must not end the show for everybody
                log.exception("broadcast %s: send failed", self.kind)

    def _take(self) -> list[Entry]:
        """The entries not yet sent; skip forward (to a keyframe for video) when this
        broadcast fell further behind than the ring's ``max_lag``."""
        f = self.fanout
        ring = f.ring
        if not ring:
            return []
        oldest, newest = ring[0].seq, f.seq
        if self.next_seq < oldest or newest - self.next_seq >= (f.max_lag or 0):
            self.skips += 1
            if f.keyframes:
                kf = f.latest_keyframe()
                if kf is not None and kf.seq > self.next_seq:
                    self.next_seq = kf.seq
                else:
                    self.next_seq = newest + 1
                    for viewer in self.viewers:
                        viewer.waiting = True
                    self.request_keyframe("lagging")
                    return []
            else:
                self.next_seq = newest
        start = self.next_seq - oldest
        self.next_seq = newest + 1
        return [ring[i] for i in range(start, len(ring))]

    def send(self, entry: Entry) -> None:
        """Send one entry to every viewer: the one pass per frame (one C call per group
        of viewers alike, where the C send loop loaded)."""
        payloads = entry.payloads
        if not payloads:
            return
        self._abs_send_time = (current_ntp_time() >> 14) & 0x00FFFFFF
        self._ext.clear()
        layouts: dict[tuple, FrameLayout] = {}
        keyframe = entry.keyframe
        self.sent[entry.seq & HISTORY_MASK] = entry
        lagging: list[LeanSender] = []
        if keyframe and self.pending:
            for viewer in list(self.pending):
                self._complete_switch(viewer, entry)
        groups = self._groups if self._groups is not None else self._regroup()
        srtp_failed = False
        for group in groups:
            layout = self.layout_for(group.viewers[0], entry, layouts)
            count = self._send_group(group, entry, layout)
            out, viewers = group.out, group.viewers
            for k in range(count):
                code = out[k]
                viewer, flags = viewers[code >> 4], code & 15
                if flags & fastsend.GSO_OFF:
                    viewer.gso_refused()
                if flags & fastsend.LAGGING:
                    lagging.append(viewer)
                if flags & fastsend.FOLLOW_UP:
                    viewer.follow_up(layout)
                srtp_failed = srtp_failed or bool(flags & fastsend.SRTP_ERROR)
        for viewer in self._python:
            if viewer.waiting:
                if not keyframe:
                    continue
                viewer.waiting = False
            if not viewer.send_entry(entry, self.layout_for(viewer, entry, layouts)):
                lagging.append(viewer)
        self.last_ts, self.last_ts_at = entry.timestamp, time.monotonic()
        self.entries_sent += 1
        if lagging:
            for viewer in lagging:
                viewer.skips += 1
                viewer.waiting = self.fanout.keyframes
                self.on_skip(self.kind)
            if self.fanout.keyframes:
                self.request_keyframe("lagging")
        if srtp_failed:
            raise pylibsrtp.Error("srtp_protect failed")

    def _send_group(self, group: fastsend.Group, entry: Entry, layout: FrameLayout) -> int:
        return group.send_all(
            layout.native[0], group.array, group.n, entry.timestamp, entry.keyframe, entry.seq,
            len(layout.lengths), layout.nbytes, group.out,
        )  # fmt: skip

    _abs_send_time = 0

    async def _run_reports(self) -> None:
        """RTCP sender reports for every viewer, about once a second (one task per show)."""
        while True:
            await asyncio.sleep(SR_INTERVAL_S * (0.75 + 0.5 * random.random()))
            ntp = current_ntp_time()
            # The RTP time now, extrapolated from the last entry sent on the codec clock.
            rtp_now = self.last_ts + int((time.monotonic() - self.last_ts_at) * self.clock_rate)
            for viewer in list(self.viewers):
                try:
                    viewer._resolve_socket()
                    viewer.send_report(ntp, rtp_now)
                except Exception:  # noqa: BLE001 - one viewer's report must not stop the others
                    log.debug("sender report to %s failed", viewer._ssrc, exc_info=True)
