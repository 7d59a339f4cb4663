"""Clips: a stretch of a recording copied into its own MP4, cut at keyframes.

No decoding, no encoding: the clip starts at the video keyframe at or before the
requested start (so its first frame decodes on its own), takes every packet up to the
requested end, and is written with its index up front (``faststart``) so a phone starts
playing it at once. A recording still being written can be cut: only its fragments
already on disk are read.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import av


@dataclass(frozen=True)
class Cut:
    start_s: float  # recording time of the clip's first (key)frame
    duration_s: float
    end_s: float  # recording time just after the clip's last video frame
    video_packets: int
    keyframe_first: bool
    bytes: int


class CutError(Exception):
    pass


def cut_clip(
    source: Path, target: Path, start_s: float, end_s: float, max_s: float | None = None
) -> Cut:
    """Copy ``[keyframe <= start_s, end_s)`` of ``source`` into ``target`` (atomically),
    at most ``max_s`` long from that keyframe."""
    if end_s <= start_s:
        raise CutError("a clip needs an end after its start")
    tmp = target.with_name(target.name + ".part")
    with av.open(str(source)) as src:
        if not src.streams.video:
            raise CutError(f"{source} has no video")
        vin = src.streams.video[0]
        ain = src.streams.audio[0] if src.streams.audio else None
        vtb = vin.time_base
        # Seek lands on the keyframe at or before start (the fragment index of the file).
        src.seek(int(start_s / vtb), stream=vin, backward=True, any_frame=False)
        wanted = [vin] + ([ain] if ain is not None else [])
        packets: list[av.Packet] = []
        start_pts: int | None = None
        end_pts = int(end_s / vtb)
        # A keyframe within half a frame of start is the frame that starts it.
        start_limit = int((start_s + 0.5 / float(vin.average_rate or 30)) / vtb)
        for packet in _packets(src, wanted):
            if packet.pts is None or packet.size == 0:
                continue
            if packet.stream.index == vin.index:
                if packet.is_keyframe and packet.pts <= start_limit:
                    # A later keyframe still at/before start: start there instead.
                    packets = [p for p in packets if p.stream.index != vin.index]
                    start_pts = packet.pts
                elif start_pts is None:
                    if not packet.is_keyframe:
                        continue
                    start_pts = packet.pts  # seeked past start: take it
                if max_s is not None and packet.pts == start_pts:
                    end_pts = min(int(end_s / vtb), start_pts + int(max_s / vtb))
                if packet.pts >= end_pts:
                    break
            packets.append(packet)
        if start_pts is None:
            raise CutError(f"no keyframe at or before {start_s:.2f} s in {source}")
        t0 = float(start_pts * vtb)
        frame_s = 1 / float(vin.average_rate or 30)
        with av.open(str(tmp), "w", format="mp4", options={"movflags": "+faststart"}) as out:
            vout = out.add_stream_from_template(vin)
            aout = out.add_stream_from_template(ain) if ain is not None else None
            n_video = 0
            last_video = t0
            first_key = None
            for packet in packets:
                t = float(packet.pts * packet.time_base)
                if t < t0 - 1e-6:
                    continue  # audio from before the first keyframe
                if packet.stream.index == vin.index:
                    if first_key is None:
                        first_key = bool(packet.is_keyframe)
                    n_video += 1
                    last_video = max(last_video, t)
                    packet.stream = vout
                else:
                    packet.stream = aout
                offset = int(round(t0 / float(packet.time_base)))
                packet.pts -= offset
                packet.dts = packet.pts if packet.dts is None else packet.dts - offset
                out.mux(packet)
    size = tmp.stat().st_size
    os.replace(tmp, target)
    end = last_video + frame_s
    return Cut(
        start_s=t0,
        duration_s=end - t0,
        end_s=end,
        video_packets=n_video,
        keyframe_first=bool(first_key),
        bytes=size,
    )


def _packets(container, streams):
    """Demuxed packets, ending quietly at a fragment still being written."""
    try:
        yield from container.demux(streams)
    except av.FFmpegError:
        return


def keyframe_times(path: Path) -> list[float]:
    """Recording times (s) of the video keyframes (tests and tools)."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return [
            float(p.pts * p.time_base)
            for p in container.demux(stream)
            if p.pts is not None and p.is_keyframe
        ]
