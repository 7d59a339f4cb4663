"""The RTMP pusher: a child process that muxes one destination's packets into FLV.

Run by ``media.restream.RtmpSender`` as ``python flv_push.py`` (standalone: it imports
nothing of the project, so it starts quickly). It reads framed packets on stdin (the
show's shared H.264 packets and its AAC packets, already encoded), and writes them with
PyAV's FLV muxer to the RTMP URL (``av.open(url, "w", format="flv")``).

Why a process and not a thread: PyAV holds the GIL while FFmpeg opens the output (TCP
connect, RTMP handshake, publish) and writes the header, with no timeout; a destination
that accepts the connection and then stalls would freeze the whole server. Here it only
freezes this process, which the sender kills.

stdout, one line each: ``live`` once the stream is published, ``bytes N`` (total muxed)
about twice a second, ``error TEXT`` before exiting with status 1.
"""

from __future__ import annotations

import io
import json
import struct
import sys
import time
from fractions import Fraction

import av

HEADER = struct.Struct("<BBqI")  # kind, flags (1 = keyframe), pts, length
CONFIG, VIDEO, AUDIO = 0, 1, 2
VIDEO_CLOCK = Fraction(1, 90000)
AUDIO_RATE = 48000
REPORT_S = 0.5


def read_exact(stream, n: int) -> bytes | None:
    data = stream.read(n)
    if data is None or len(data) < n:
        return None
    return data


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


class FlvOut:
    def __init__(self, url: str, keyframe: bytes, config: dict) -> None:
        template = av.open(io.BytesIO(keyframe), format="h264")
        self.out = av.open(url, "w", format="flv", options={"flvflags": "no_duration_filesize"})
        try:
            self.video = self.out.add_stream_from_template(template.streams.video[0])
        finally:
            template.close()
        self.video.time_base = Fraction(1, 1000)
        # The AAC header (AudioSpecificConfig) comes from an encoder configured like the
        # show's own; it is opened for its header only and never encodes.
        self.audio = self.out.add_stream("aac", rate=AUDIO_RATE)
        self.audio.layout = "stereo"
        self.audio.bit_rate = int(config.get("aac_bitrate", 128000))
        self.audio.time_base = Fraction(1, 1000)
        self.out.start_encoding()  # connects, publishes and writes the FLV header
        self.bytes = 0
        self._last = {VIDEO: -1, AUDIO: -1}

    def write(self, kind: int, pts: int, keyframe: bool, data: bytes) -> None:
        if pts <= self._last[kind]:
            return
        self._last[kind] = pts
        packet = av.Packet(data)
        packet.pts = packet.dts = pts
        if kind == VIDEO:
            packet.is_keyframe = keyframe
            packet.stream = self.video
            packet.time_base = VIDEO_CLOCK
        else:
            packet.stream = self.audio
            packet.time_base = Fraction(1, AUDIO_RATE)
        self.out.mux(packet)
        self.bytes += len(data)

    def close(self) -> None:
        self.out.close()


def run(stdin) -> int:
    head = read_exact(stdin, HEADER.size)
    if head is None:
        return 0
    kind, _flags, _pts, n = HEADER.unpack(head)
    config = json.loads(read_exact(stdin, n) or b"{}")
    url = config["url"]
    out: FlvOut | None = None
    v0 = a0 = 0
    next_report = 0.0
    try:
        while True:
            head = read_exact(stdin, HEADER.size)
            if head is None:
                break
            kind, flags, pts, n = HEADER.unpack(head)
            data = read_exact(stdin, n)
            if data is None:
                break
            if out is None:
                if kind != VIDEO or not flags & 1:
                    continue  # the stream starts at a keyframe
                out = FlvOut(url, data, config)
                v0, a0 = pts, pts * AUDIO_RATE // 90000
                say("live")
            if kind == VIDEO:
                out.write(VIDEO, pts - v0, bool(flags & 1), data)
            elif pts - a0 >= 0:
                out.write(AUDIO, pts - a0, True, data)
            now = time.monotonic()
            if now >= next_report:
                next_report = now + REPORT_S
                say(f"bytes {out.bytes}")
    except Exception as exc:  # the destination refused or went away
        say(f"error {exc}")
        return 1
    finally:
        if out is not None:
            try:
                out.close()
            except Exception:
                pass
    return 0


if __name__ == "__main__":
    sys.exit(run(sys.stdin.buffer))
