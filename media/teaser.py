"""A clip's 9:16 teaser for social feeds: the centre of the picture, cropped and scaled
to 720x1280 and encoded on its own background thread.

Optional (off by default: it is the one place a recording is encoded again) and never on
the live path: one thread for the whole process, one libx264 thread, so at most one core
goes to teasers while the compositor keeps its own. The clip's audio packets are copied.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av

WIDTH, HEIGHT = 720, 1280
BITRATE_KBPS = 2000

# One teaser at a time per process, whatever the number of shows.
EXECUTOR = ThreadPoolExecutor(1, thread_name_prefix="teaser")


@dataclass(frozen=True)
class Teaser:
    width: int
    height: int
    frames: int
    bytes: int


def make_teaser(source: Path, target: Path) -> Teaser:
    """Write the 9:16 teaser of the clip ``source`` to ``target`` (atomically)."""
    tmp = target.with_name(target.name + ".part")
    frames = 0
    with av.open(str(source)) as src:
        vin = src.streams.video[0]
        ain = src.streams.audio[0] if src.streams.audio else None
        fps = vin.average_rate or Fraction(30)
        graph = av.filter.Graph()
        chain = [
            graph.add_buffer(template=vin),
            graph.add("crop", "trunc(ih*9/16/2)*2:ih"),
            graph.add("scale", f"{WIDTH}:{HEIGHT}"),
            graph.add("buffersink"),
        ]
        for a, b in zip(chain, chain[1:], strict=False):
            a.link_to(b)
        graph.configure()
        with av.open(str(tmp), "w", format="mp4", options={"movflags": "+faststart"}) as out:
            vout = out.add_stream("libx264", rate=fps)
            vout.width, vout.height, vout.pix_fmt = WIDTH, HEIGHT, "yuv420p"
            vout.bit_rate = BITRATE_KBPS * 1000
            vout.codec_context.options = {"preset": "veryfast", "profile": "main"}
            vout.codec_context.thread_count = 1
            vout.codec_context.time_base = vin.time_base  # the clip's own pts, unchanged
            aout = out.add_stream_from_template(ain) if ain is not None else None
            streams = [vin] + ([ain] if ain is not None else [])
            for packet in src.demux(streams):
                if packet.stream.index == vin.index:
                    for frame in packet.decode():
                        graph.push(frame)
                        shaped = graph.pull()
                        shaped.pts, shaped.time_base = frame.pts, frame.time_base
                        out.mux(vout.encode(shaped))
                        frames += 1
                elif aout is not None and packet.size:
                    packet.stream = aout
                    out.mux(packet)
            out.mux(vout.encode(None))
    size = tmp.stat().st_size
    os.replace(tmp, target)
    return Teaser(WIDTH, HEIGHT, frames, size)
