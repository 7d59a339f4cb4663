"""One live show's media: its publisher, compositor, shared encoders and viewers.

The compositor ticks at the show's fps. Each tick takes the newest decoded publisher
frame (or the slate when the publisher is gone), blends the overlays into it in place,
and encodes it once per codec that some viewer needs; viewers read the shared packets
from a ``Fanout``. Audio follows its own 20 ms clock: the publisher's samples, or
silence, encoded once with Opus.

CPU-heavy steps (scaling, encoding) run on the show's own single worker thread so the
event loop keeps serving HTTP and RTP; blending runs on the loop, where the scene lives.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import av
import numpy as np

from media import tasks
from media.adapt import Adapter
from media.audio import AudioFifo
from media.encoders import AUDIO_SAMPLES, AudioEncoder, Encoded, VideoEncoder
from media.fanout import Fanout
from media.keyframes import KeyframeGate
from media.ladder import Rung, build_ladder
from media.lean import Broadcast
from media.slate import slate_frame
from media.slot import LatestFrame, SourceFrame
from overlays.yuv import frame_planes

if TYPE_CHECKING:
    from media.egress import Viewer
    from media.ingest import Publisher
    from media.recording import Recorder
    from media.restream import Restreams
    from server.config import ShowConfig
    from server.metrics import Metrics

log = logging.getLogger("showroom.media")

STALE_AFTER_S = 1.0  # no publisher frame for this long: show the slate
AUDIO_PERIOD_S = AUDIO_SAMPLES / 48000
# How viewers are sent to: "lean" (one pass per frame for all viewers, media/lean.py) or
# "aiortc" (aiortc's own sender loop per viewer; kept as the benchmark's comparison row).
EGRESS_PATHS = ("lean", "aiortc")
RUNG_BUFFER_S = 0.5  # rate-control buffer of the lower rungs' encoders


def now_ms() -> int:
    return int(time.time() * 1000)


def to_show_size(frame: av.VideoFrame, width: int, height: int) -> av.VideoFrame:
    """A publisher frame as yuv420p at the show's size (the frame itself when it already is).

    Never blended into: it stays clean so the compositor can repeat it under new overlays."""
    if frame.width != width or frame.height != height or frame.format.name != "yuv420p":
        frame = frame.reformat(width=width, height=height, format="yuv420p")
    return frame


def blend_target(source: av.VideoFrame) -> av.VideoFrame:
    """A fresh frame holding a copy of ``source``'s pixels, for the overlays to blend into.

    One plane-by-plane copy per composed frame (no ndarray round trip)."""
    frame = av.VideoFrame(source.width, source.height, "yuv420p")
    for dst, src in zip(frame_planes(frame), frame_planes(source), strict=True):
        dst[:] = src
    return frame


class ShowRuntime:
    def __init__(
        self,
        show: ShowConfig,
        metrics: Metrics | None = None,
        scene_lookup: Callable[[], Any] | None = None,
        on_status: Callable[[str, dict], None] | None = None,
        shared_clock: bool = False,
    ) -> None:
        self.show = show
        self.width, self.height = show.video.width, show.video.height
        self.fps = show.video.fps
        self.metrics = metrics
        self.scene_lookup = scene_lookup or (lambda: None)
        self.on_status = on_status  # ("live"|"viewers", event) -> publish on the bus
        self.slot = LatestFrame()
        self.audio_in = AudioFifo()
        self.gate = KeyframeGate()
        # The quality ladder: rung 0 is the show's own size (``video``, ``gate``,
        # ``_encoders``); each lower rung has its own fan-outs, gate and encoders, used
        # only while some viewer is on it (media/adapt.py picks each viewer's rung).
        v = show.video
        self.ladder: tuple[Rung, ...] = build_ladder(
            Rung(v.width, v.height, v.bitrate_kbps), getattr(show, "ladder", None)
        )
        self.rung_gates = [self.gate] + [KeyframeGate() for _ in self.ladder[1:]]
        self.rung_video: dict[tuple[str, int], Fanout] = {}
        self._rung_encoders: dict[tuple[str, int], VideoEncoder] = {}
        self.rung_frames = [0] * len(self.ladder)  # frames encoded per rung
        self.adapter = Adapter(self, self._rungs_changed)
        self.video: dict[str, Fanout] = {"H264": self._new_fanout("H264")}
        self.audio = Fanout(capacity=25, keyframes=False, max_lag=10)
        self._encoders: dict[str, VideoEncoder] = {}
        self._audio_encoder = AudioEncoder()
        self.publisher: Publisher | None = None
        self.viewers: dict[str, Viewer] = {}
        self.egress = os.environ.get("SHOWROOM_EGRESS", "lean")
        if self.egress not in EGRESS_PATHS:
            raise ValueError(f"SHOWROOM_EGRESS must be one of {EGRESS_PATHS}, not {self.egress!r}")
        self.broadcasts: dict[int, Broadcast] = {}  # id(fanout) -> its lean broadcast
        self.recorder: Recorder | None = None  # set by the server when recording is on
        self.restream: Restreams | None = None  # set by the server when restreams are configured
        self.live = False
        self.frames_out = 0
        self.slate_frames = 0
        self.viewer_skips = 0
        # (wall ms, seconds from source frame arrival to packets in the fan-out, of which
        # encoding) for recent frames
        self.latency_samples: deque[tuple[int, float, float]] = deque(maxlen=3000)
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"compose-{show.id}")
        self._tasks: list[asyncio.Task] = []
        # With worker processes, RTP timestamps run on the machine's monotonic clock, so a
        # show whose origin moves to another process keeps one continuous timeline.
        self.shared_clock = shared_clock
        self._t0 = 0.0 if shared_clock else time.monotonic()
        # False while another process composes and encodes this show (its packets reach
        # this process's fan-outs by relay); ``relay_watchers`` counts the other
        # processes reading this one's fan-outs, by stream ("H264", "VP8", "audio").
        self.origin = True
        self.relay_watchers: dict[str, int] = {}
        self.upstream_keyframe: Callable[[], None] | None = None
        # The picture's viewer badge follows this process's own viewers; with worker
        # processes it follows the total over all of them (the "viewers" live event).
        self.badge_counts_local_viewers = True
        self._last_pts = -1
        self._tokens = 1.0
        self._token_time = time.monotonic()
        self._source: SourceFrame | None = None
        self._source_yuv: av.VideoFrame | None = None

    def _new_fanout(self, codec: str, rung: int = 0) -> Fanout:
        fanout = Fanout(capacity=max(8, 2 * self.fps), keyframes=True)
        fanout.on_need_keyframe = lambda: self.request_keyframe("lagging", rung)
        return fanout

    # --- lifecycle -------------------------------------------------------------------
    def start(self) -> None:
        self._t0 = 0.0 if self.shared_clock else time.monotonic()
        self._tasks = [
            asyncio.create_task(self._run_video(), name=f"compositor-{self.show.id}"),
            asyncio.create_task(self._run_audio(), name=f"audio-{self.show.id}"),
        ]

    async def stop(self) -> None:
        await tasks.stop(*self._tasks)  # nothing composes or records once the recorder closes
        if self.recorder is not None:
            await self.recorder.aclose()  # the file is finished before the show stops
        sessions = [v.close() for v in list(self.viewers.values())]
        if self.publisher is not None:
            sessions.append(self.publisher.close())
        await asyncio.gather(*sessions, return_exceptions=True)
        self.adapter.stop()
        for broadcast in self.broadcasts.values():
            broadcast.stop()
        self._executor.shutdown(wait=False, cancel_futures=True)

    def stats(self) -> dict:
        """Operator view of the media path (served at /api/shows/{show}/media)."""
        return {
            "live": self.live,
            "viewers": self.audience,
            "codecs": sorted(self._encoders),
            "frames_out": self.frames_out,
            "slate_frames": self.slate_frames,
            "viewer_skips": self.viewer_skips,
            "egress": self.egress,
            "rungs": self.rung_stats(),
            "server_latency_ms": [
                [wall, round(sec * 1000, 3)] for wall, sec, _enc in self.latency_samples
            ],
            "encode_ms": [[wall, round(enc * 1000, 3)] for wall, _sec, enc in self.latency_samples],
        }

    def rung_stats(self) -> list[dict]:
        counts = self.adapter.rung_counts()
        # Viewers the adapter does not steer (aiortc egress, other codecs' previews) are
        # on the show's own size.
        counts[0] += max(0, len(self.viewers) - sum(counts))
        return [
            {
                "name": r.name,
                "width": r.width,
                "height": r.height,
                "bitrate_kbps": r.bitrate_kbps,
                "viewers": counts[i],
                "frames": self.rung_frames[i],
            }
            for i, r in enumerate(self.ladder)
        ]

    def _rungs_changed(self) -> None:
        if self.metrics:
            for rung in self.rung_stats():
                self.metrics.viewers_per_rung.labels(self.show.id, rung["name"]).set(
                    rung["viewers"]
                )

    # --- publisher -------------------------------------------------------------------
    async def set_publisher(self, publisher: Publisher) -> None:
        """A new publish replaces the live publisher (e.g. a reconnecting PocketCam)."""
        old, self.publisher = self.publisher, publisher
        if old is not None and old is not publisher:
            log.info("show %s: new publisher %s replaces %s", self.show.id, publisher.id, old.id)
            await old.close()

    def publisher_gone(self, publisher: Publisher) -> None:
        if self.publisher is publisher:
            log.info("show %s: publisher %s gone; slate", self.show.id, publisher.id)
            self.publisher = None
            self.slot.clear()
            self.audio_in.clear()

    def on_video_frame(self, publisher: Publisher, frame: av.VideoFrame) -> None:
        if publisher is self.publisher:
            self.slot.put(frame)

    def on_audio_samples(self, publisher: Publisher, interleaved: np.ndarray) -> None:
        if publisher is self.publisher:
            self.audio_in.push(interleaved)

    # --- viewers ---------------------------------------------------------------------
    def video_fanout(self, codec: str, rung: int = 0) -> Fanout:
        if rung:
            fanout = self.rung_video.get((codec, rung))
            if fanout is None:
                fanout = self.rung_video[(codec, rung)] = self._new_fanout(codec, rung)
            return fanout
        if codec not in self.video:
            self.video[codec] = self._new_fanout(codec)
        return self.video[codec]

    def broadcast(self, fanout: Fanout, kind: str, rung: int = 0) -> Broadcast:
        """The lean broadcast of one fan-out (created on its first viewer)."""
        broadcast = self.broadcasts.get(id(fanout))
        if broadcast is None:
            clock_rate = 90000 if kind == "video" else 48000
            broadcast = self.broadcasts[id(fanout)] = Broadcast(
                fanout,
                kind,
                clock_rate,
                lambda reason: self.request_keyframe(reason, rung),
                self.viewer_skipped,
            )
            broadcast.rung = rung  # type: ignore[attr-defined]
        return broadcast

    def rung_broadcast(self, codec: str, rung: int) -> Broadcast:
        return self.broadcast(self.video_fanout(codec, rung), "video", rung)

    def rung_of(self, broadcast: Broadcast) -> int:
        return getattr(broadcast, "rung", 0)

    def add_viewer(self, viewer: Viewer) -> None:
        self.viewers[viewer.id] = viewer
        self._viewers_changed()

    def remove_viewer(self, viewer: Viewer) -> None:
        if self.viewers.pop(viewer.id, None) is not None:
            self._viewers_changed()

    @property
    def audience(self) -> int:
        """Viewers as the host and the numbers count them: the host's own preview is not one."""
        return sum(1 for v in self.viewers.values() if not getattr(v, "preview", False))

    def _viewers_changed(self) -> None:
        if self.metrics:
            self.metrics.viewers.labels(self.show.id).set(self.audience)
        scene = self.scene_lookup()
        if scene is not None and self.badge_counts_local_viewers and hasattr(scene, "set_viewers"):
            scene.set_viewers(self.audience)

    def codecs_in_use(self) -> list[str]:
        """H.264 always (browsers, recordings); VP8 only while a viewer needs it."""
        codecs = ["H264"]
        if any(v.codec == "VP8" for v in self.viewers.values()) or self.relay_watchers.get("VP8"):
            codecs.append("VP8")
        return codecs

    @property
    def watched(self) -> bool:
        """Someone reads the encoded packets: a viewer here, a relay to another process or
        a restream."""
        restream = self.restream
        return (
            bool(self.viewers)
            or any(self.relay_watchers.values())
            or (restream is not None and restream.active)
        )

    def set_origin(self, origin: bool) -> None:
        """Compose and encode here (the origin) or take the packets of the process that
        does. Encoding (re)starts with a keyframe."""
        if origin and not self.origin:
            self.gate.last_keyframe = float("-inf")
            self.gate.request()
        if not origin and self.recorder is not None:
            self.recorder.end()  # the new origin records from here on
        if not origin and self.origin:
            # Free the encoders on their own thread, after any encode still running.
            self._executor.submit(self._encoders.clear)
        if not origin and self.live:
            # Quietly: the new origin announces the show's state, not this process.
            self.live = False
            if self.metrics:
                self.metrics.publisher_live.labels(self.show.id).set(0)
        self.origin = origin

    def request_keyframe(self, reason: str = "join", rung: int = 0) -> None:
        if rung:  # lower rungs are encoded by this process only while it is the origin
            self.rung_gates[rung].request()
            if self.metrics:
                self.metrics.keyframes.labels(self.show.id).inc()
            return
        if not self.origin and self.upstream_keyframe is not None:
            self.upstream_keyframe()  # the origin's gate coalesces every process's requests
            return
        self.gate.request()
        if self.metrics:
            self.metrics.keyframes.labels(self.show.id).inc()

    def viewer_skipped(self, kind: str) -> None:
        """A viewer fell behind and skipped ahead (to a keyframe, for video)."""
        self.viewer_skips += 1
        if self.metrics:
            self.metrics.dropped_frames.labels(self.show.id, f"viewer_behind_{kind}").inc()

    # --- video -----------------------------------------------------------------------
    def _publisher_active(self, now: float) -> bool:
        return self.publisher is not None and now - self.slot.last_arrival < STALE_AFTER_S

    async def _run_video(self) -> None:
        loop = asyncio.get_running_loop()
        period = 1.0 / self.fps
        last_out = time.monotonic() - period
        while True:
            try:
                last_out = await self._wait_for_tick(last_out, period)
                await self._tick(loop)
            except asyncio.CancelledError:
                raise
            except Exception:  # one bad frame must not end the show
                log.exception("show %s: compositor tick failed", self.show.id)
                await asyncio.sleep(period)

    async def _wait_for_tick(self, last_out: float, period: float) -> float:
        """Compose as soon as a fresh frame arrives (no waiting in the slot: lower
        latency), rate-limited to the show's fps by a small token bucket so a jittery
        publisher is not delayed and a faster one is not passed through; without fresh
        frames, repeat the last one (or the slate) at the show's fps."""
        while True:
            now = time.monotonic()
            # Refilled a little faster than the fps: a publisher at the show's own rate
            # (with clock drift and jitter) never waits; a much faster one is capped.
            self._tokens = min(3.0, self._tokens + 1.15 * (now - self._token_time) / period)
            self._token_time = now
            latest = last_out + period * (1.25 if self._publisher_active(now) else 1.0)
            if self.slot.has_new() and self._tokens >= 1.0:
                self._tokens -= 1.0
                return now
            if now >= latest:
                missed = int((now - last_out) / period) - 1
                if missed > 1 and self.metrics:  # the loop stalled: those ticks are lost
                    self.metrics.dropped_frames.labels(self.show.id, "late").inc(missed)
                self._tokens = max(0.0, self._tokens - 1.0)
                return now
            if self.slot.has_new():  # too soon after the previous frame: wait for a token
                wake = now + (1.0 - self._tokens) * period / 1.15
                await asyncio.sleep(max(0.0, min(wake, latest) - now))
            else:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(max(0.0, latest - now)):
                        await self.slot.fresh.wait()

    async def _tick(self, loop: asyncio.AbstractEventLoop) -> None:
        if not self.origin:  # another process composes this show (and reports it live)
            return
        tick_start = time.monotonic()
        fresh = self.slot.take()
        dropped = self.slot.dropped
        if dropped and self.metrics:
            self.metrics.dropped_frames.labels(self.show.id, "stale").inc(dropped)
        self.slot.dropped = 0
        active = self._publisher_active(tick_start)
        self._set_live(active)
        recorder = self.recorder
        if recorder is not None:
            recorder.tick(active, tick_start)
        if fresh is not None:
            self._source, self._source_yuv = fresh, None
        if active and self._source is not None:
            src = self._source
            if self._source_yuv is None:
                self._source_yuv = await loop.run_in_executor(
                    self._executor, to_show_size, src.frame, self.width, self.height
                )
            base = self._source_yuv
        else:
            self._source = self._source_yuv = None
            base = slate_frame(self.width, self.height)
            self.slate_frames += 1
        frame = blend_target(base)

        wall = now_ms()
        scene = self.scene_lookup()
        blend_start = time.perf_counter()
        if scene is not None:
            scene.blend_into(frame, wall)
        if self.metrics:
            self.metrics.frame_time.labels(self.show.id).observe(time.perf_counter() - blend_start)

        pts = max(self._last_pts + 1, int((time.monotonic() - self._t0) * 90000))
        self._last_pts = pts
        self.frames_out += 1
        if not self.watched and not (recorder is not None and recorder.recording):
            # Nobody watches or records: compose (the scene's timing still holds) but do not encode.
            # The first viewer's join forces a keyframe when encoding resumes.
            return
        now = time.monotonic()
        force = self.gate.should_force(now) or (
            recorder is not None and recorder.wants_keyframe(now)
        )
        codecs = self.codecs_in_use()
        lower = self._lower_rungs(codecs, now)
        top = self._top_watched(codecs, recorder)
        results = await loop.run_in_executor(
            self._executor, self._encode, frame, pts, force, codecs, lower, top
        )
        handed = time.monotonic()
        if not self.origin:  # stepped down while encoding: the new origin's packets rule
            return
        keyframe = False
        # A rung that viewers are moving to goes first, so its keyframe reaches them
        # before their current rung sends the same frame.
        results.sort(key=lambda r: not self.rung_broadcast_pending(r[0], r[1]))
        for codec, rung, encoded in results:
            fanout = self.video_fanout(codec, rung)
            label = codec if not rung else f"{codec}/{self.ladder[rung].name}"
            for enc in encoded:
                if rung:
                    if enc.keyframe:
                        self.rung_gates[rung].produced(handed)
                    fanout.publish(
                        enc.packet, enc.keyframe, wall, payloads=enc.payloads,
                        timestamp=enc.timestamp,
                    )  # fmt: skip
                    if self.metrics:
                        self.metrics.encode_time.labels(self.show.id, label).observe(enc.seconds)
                    continue
                keyframe = keyframe or enc.keyframe
                fanout.publish(
                    enc.packet, enc.keyframe, wall, payloads=enc.payloads, timestamp=enc.timestamp
                )
                if self.metrics:
                    self.metrics.encode_time.labels(self.show.id, codec).observe(enc.seconds)
                if codec == "H264" and recorder is not None:
                    recorder.video(enc.packet, enc.keyframe, wall)  # the same packets, no re-encode
                if codec == "H264" and self.restream is not None:
                    self.restream.video(enc.packet, enc.keyframe)
        if keyframe:
            self.gate.produced(handed)
        if fresh is not None and active and self.metrics:
            self.metrics.server_latency.labels(self.show.id).observe(handed - fresh.arrival)
        if fresh is not None and active:
            encode_s = sum(e.seconds for _c, _r, encs in results for e in encs[:1])
            self.latency_samples.append((wall, handed - fresh.arrival, encode_s))

    def _lower_rungs(self, codecs: list[str], now: float) -> list[tuple[str, int, bool]]:
        """(codec, rung, force a keyframe) for each lower rung some viewer is on or
        moving to."""
        out = []
        for codec in codecs:
            for rung in sorted(self.adapter.wanted(codec)):
                if rung:
                    out.append((codec, rung, self.rung_gates[rung].should_force(now)))
        return out

    def _top_watched(self, codecs: list[str], recorder: Recorder | None) -> dict[str, bool]:
        """Per codec, whether the show's own size is needed: by a viewer on it (or
        moving to it), a viewer the adapter does not steer, a relay, restream or
        recording (H.264)."""
        restream = self.restream
        out = {}
        for codec in codecs:
            viewers = sum(1 for v in self.viewers.values() if v.codec == codec)
            steered = sum(1 for r in self.adapter.viewers.values() if r.codec == codec)
            out[codec] = (
                viewers > steered
                or 0 in self.adapter.wanted(codec)
                or bool(self.relay_watchers.get(codec))
                or (
                    codec == "H264"
                    and (
                        (restream is not None and restream.active)
                        or (recorder is not None and recorder.recording)
                    )
                )
            )
        return out

    def rung_broadcast_pending(self, codec: str, rung: int) -> bool:
        fanout = self.video_fanout(codec, rung)
        broadcast = self.broadcasts.get(id(fanout))
        return broadcast is not None and bool(broadcast.pending)

    def _encode(
        self,
        frame: av.VideoFrame,
        pts: int,
        force: bool,
        codecs: list[str],
        lower: list[tuple[str, int, bool]] = (),  # type: ignore[assignment]
        top: dict[str, bool] | None = None,
    ) -> list[tuple[str, int, list[Encoded]]]:
        """Worker thread: encode the composed frame once per codec in use and rung
        watched; each lower rung scales the frame once for all its codecs."""
        for codec in list(self._encoders):
            if codec not in codecs:
                del self._encoders[codec]  # the last VP8 viewer left
        wanted = {(codec, rung) for codec, rung, _f in lower}
        for key in list(self._rung_encoders):
            if key not in wanted:
                del self._rung_encoders[key]  # nobody on that rung any more
        out = []
        for codec in codecs:
            if top is not None and not top.get(codec, True):
                continue
            encoder = self._encoders.get(codec)
            fresh_encoder = encoder is None
            if encoder is None:
                v = self.show.video
                encoder = self._encoders[codec] = VideoEncoder(
                    codec, v.width, v.height, v.fps, v.bitrate_kbps
                )
            out.append((codec, 0, encoder.encode(frame, pts, force or fresh_encoder)))
            self.rung_frames[0] += 1
        scaled: dict[int, av.VideoFrame] = {}
        for codec, rung, force_rung in lower:
            r = self.ladder[rung]
            small = scaled.get(rung)
            if small is None:
                small = scaled[rung] = frame.reformat(
                    width=r.width, height=r.height, format="yuv420p"
                )
                self.rung_frames[rung] += 1
            encoder = self._rung_encoders.get((codec, rung))
            fresh_encoder = encoder is None
            if encoder is None:
                # Lower rungs serve slow links: half a second of buffer keeps their
                # keyframes within what a slow link's queue holds.
                encoder = self._rung_encoders[(codec, rung)] = VideoEncoder(
                    codec, r.width, r.height, self.fps, r.bitrate_kbps, buffer_s=RUNG_BUFFER_S
                )
            out.append((codec, rung, encoder.encode(small, pts, force_rung or fresh_encoder)))
        return out

    def _set_live(self, live: bool) -> None:
        if live == self.live:
            return
        self.live = live
        if self.metrics:
            self.metrics.publisher_live.labels(self.show.id).set(int(live))
        scene = self.scene_lookup()
        if scene is not None and hasattr(scene, "set_live"):
            scene.set_live(live)
        if self.on_status is not None:
            self.on_status("live", {"type": "live", "live": live})

    # --- audio -----------------------------------------------------------------------
    async def _run_audio(self) -> None:
        """A 20 ms clock on the same origin as the video pts (keeps them in sync)."""
        n = 0
        while True:
            target = self._t0 + n * AUDIO_PERIOD_S
            delay = target - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            elif delay < -0.1:  # the loop stalled: jump ahead instead of bursting
                n = int((time.monotonic() - self._t0) / AUDIO_PERIOD_S)
                continue
            try:
                recorder = self.recorder
                recording = recorder is not None and recorder.recording
                if self.origin and (self.watched or recording):
                    samples, _real = self.audio_in.pop(AUDIO_SAMPLES)
                    wall = now_ms()
                    if self.restream is not None:  # AAC for RTMP, from the same samples
                        self.restream.audio_pcm(samples, n * AUDIO_SAMPLES)
                    for enc in self._audio_encoder.encode(samples, n * AUDIO_SAMPLES):
                        self.audio.publish(
                            enc.packet, True, wall, payloads=enc.payloads, timestamp=enc.timestamp
                        )
                        if recording:
                            recorder.audio(enc.packet)
                else:
                    # Nobody listens: keep the FIFO short so a first viewer hears "now".
                    self.audio_in.pop(AUDIO_SAMPLES)
            except Exception:
                log.exception("show %s: audio tick failed", self.show.id)
            n += 1
