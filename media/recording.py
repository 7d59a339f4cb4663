"""Recordings: the show's shared encoded packets written to fragmented MP4.

Nothing is encoded again. The compositor hands the H.264 packets it already encoded for
the viewers, and the audio clock its Opus packets, to the show's ``Recorder``; a writer
thread remuxes them into ``{id}.mp4`` (H.264 + Opus in MP4, which Chromium, Firefox and
Safari 17+ play). The file is fragmented (an empty ``moov`` first, then one ``moof`` +
``mdat`` about every second) and each fragment is flushed to the file as it is cut, so a
crash or SIGKILL loses at most the fragment being built and the file stays playable.

A live session of a show is one recording: it starts when the show goes live, carries
on over the slate while the publisher is briefly gone, and ends once the show has been
off for ``idle_s`` (or when the server stops). While recording, the shared encoder makes
a keyframe at least every ``keyframe_s`` so the replay seeks and clips cut cleanly.

The loop side (``Recorder``) only puts packets on a bounded queue: a slow disk drops
packets (video then waits for the next keyframe) and never stalls the show. Below the
free-space floor recording stops with a ``stopped`` event; the show goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import os
import queue
import shutil
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av

log = logging.getLogger("showroom.recording")

VIDEO_CLOCK = 90000
AUDIO_RATE = 48000
AUDIO_FRAME = 960  # 20 ms Opus frames
DISK_CHECK_S = 2.0
QUEUE_SECONDS = 10  # packets the writer may fall behind by before the recorder drops


@dataclass(frozen=True)
class RecordingConfig:
    """Process-wide recording settings (env ``SHOWROOM_RECORDING_*``, ``SHOWROOM_CLIP_MAX_S``)."""

    enabled: bool = True
    retention_days: float = 30.0
    min_free_mb: int = 1024  # stop recording below this much free space under the data dir
    idle_s: float = 60.0  # off air this long ends the live session (and its recording)
    keyframe_s: float = 2.0
    fragment_s: float = 1.0
    clip_max_s: float = 60.0
    teaser: bool = False  # a 9:16 teaser of each clip, encoded on a background thread

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> RecordingConfig:
        env = dict(os.environ) if env is None else env

        def num(name: str, default: float) -> float:
            raw = env.get(name)
            if raw is None or raw == "":
                return default
            try:
                value = float(raw)
            except ValueError:
                raise ValueError(f"{name} must be a number, got {raw!r}") from None
            if value < 0:
                raise ValueError(f"{name} must not be negative, got {raw!r}")
            return value

        return cls(
            enabled=env.get("SHOWROOM_RECORDING", "1").lower() not in ("0", "off", "false", "no"),
            retention_days=num("SHOWROOM_RECORDING_RETENTION_DAYS", cls.retention_days),
            min_free_mb=int(num("SHOWROOM_RECORDING_MIN_FREE_MB", cls.min_free_mb)),
            idle_s=num("SHOWROOM_RECORDING_IDLE_S", cls.idle_s),
            keyframe_s=max(0.5, num("SHOWROOM_RECORDING_KEYFRAME_S", cls.keyframe_s)),
            clip_max_s=max(1.0, num("SHOWROOM_CLIP_MAX_S", cls.clip_max_s)),
            teaser=env.get("SHOWROOM_CLIP_TEASER", "0").lower() in ("1", "on", "true", "yes"),
        )


def free_mb(path: Path) -> float:
    return shutil.disk_usage(path).free / 1e6


def h264_template(keyframe: bytes) -> av.container.InputContainer:
    """An H.264 stream description (SPS/PPS, profile, size) read from a keyframe, so the
    MP4's ``avcC`` matches the shared encoder's stream exactly (no encoder is opened)."""
    return av.open(io.BytesIO(keyframe), format="h264")


class Mp4Writer:
    """Muxes H.264 + Opus packets into a fragmented MP4 (one thread uses it)."""

    def __init__(
        self, path: Path, keyframe: bytes, fps: int, fragment_s: float, opus_application: str
    ) -> None:
        self.path = path
        self.bytes = 0
        template = h264_template(keyframe)
        try:
            self.out = av.open(
                str(path),
                "w",
                format="mp4",
                options={
                    "movflags": "empty_moov+default_base_moof+frag_keyframe",
                    "frag_duration": str(int(fragment_s * 1_000_000)),
                    "flush_packets": "1",
                },
            )
            self.video = self.out.add_stream_from_template(template.streams.video[0])
        finally:
            template.close()
        self.video.time_base = Fraction(1, VIDEO_CLOCK)
        # The Opus header (OpusHead) comes from an encoder configured like the show's own;
        # it is opened for its header only and never encodes.
        self.audio = self.out.add_stream("libopus", rate=AUDIO_RATE)
        self.audio.layout = "stereo"
        self.audio.format = "s16"
        self.audio.codec_context.options = {"application": opus_application, "frame_duration": "20"}
        self.audio.time_base = Fraction(1, AUDIO_RATE)
        self.out.start_encoding()
        self._last_video = -1
        self._last_audio = -1

    def video_packet(self, data: bytes, pts: int, keyframe: bool) -> None:
        if pts <= self._last_video:
            return
        self._last_video = pts
        packet = av.Packet(data)
        packet.pts = packet.dts = pts
        packet.is_keyframe = keyframe
        packet.stream = self.video
        packet.time_base = self.video.time_base
        self.out.mux(packet)
        self.bytes += len(data)

    def audio_packet(self, data: bytes, pts: int) -> None:
        if pts <= self._last_audio:
            return
        self._last_audio = pts
        packet = av.Packet(data)
        packet.pts = packet.dts = pts
        packet.duration = AUDIO_FRAME
        packet.stream = self.audio
        packet.time_base = self.audio.time_base
        self.out.mux(packet)
        self.bytes += len(data)

    def close(self) -> None:
        self.out.close()


@dataclass
class Session:
    """One recording in progress, as the loop sees it."""

    id: str
    path: Path
    requested_at: float  # monotonic time the show went live
    started_wall_ms: int | None = None  # wall ms of the first recorded frame
    start_pts: int | None = None  # compositor pts (90 kHz) of that frame
    last_pts: int = 0
    last_keyframe: float = float("-inf")
    off_since: float | None = None  # monotonic time the show went off air
    stopped: str | None = None  # why recording stopped early ("disk_full", "error")
    need_keyframe: bool = True  # force one on the next frame
    waiting: bool = False  # skipping video until a keyframe (after a drop)
    dropped: int = 0
    end_told: bool = False  # the ``ended`` event went out
    # (wall ms, recording pts) of recent frames: media_ts names a composed frame exactly
    recent: deque[tuple[int, int]] = field(default_factory=lambda: deque(maxlen=300))

    @property
    def duration_s(self) -> float:
        if self.start_pts is None:
            return 0.0
        return (self.last_pts - self.start_pts) / VIDEO_CLOCK

    def media_time(self, wall_ms: int) -> float:
        """Recording time (s) of a composed frame's wall time (``media_ts``): that frame's
        own pts when it is a recent one, else from the wall clock."""
        if self.started_wall_ms is None:
            return 0.0
        for wall, pts in reversed(self.recent):
            if wall == wall_ms:
                return pts / VIDEO_CLOCK
            if wall < wall_ms:
                break
        return max(0.0, (wall_ms - self.started_wall_ms) / 1000)

    def not_yet_recorded(self, wall_ms: int) -> bool:
        """The frame of ``wall_ms`` is still being encoded (its event came first)."""
        return bool(self.recent) and wall_ms > self.recent[-1][0]


EventFn = Callable[[str, Session, dict], None]


class Recorder:
    """A show's recorder. The runtime calls ``tick``, ``video`` and ``audio`` on the event
    loop; all file work happens on the recorder's own thread."""

    def __init__(
        self,
        show_id: str,
        directory: Path,
        fps: int,
        config: RecordingConfig,
        on_event: EventFn,
        new_id: Callable[[], str],
        opus_application: str = "lowdelay",
    ) -> None:
        self.show_id = show_id
        self.directory = directory
        self.fps = fps
        self.config = config
        self.on_event = on_event  # ("started"|"ended"|"stopped", session, info) on the loop
        self.new_id = new_id
        self.opus_application = opus_application
        self.session: Session | None = None
        self.state = "idle"  # idle | recording | stopped
        self.reason: str | None = None
        self.sessions_started = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: queue.Queue | None = None
        self._thread: threading.Thread | None = None
        self._closed = False  # the server is stopping: no new session may start
        self._max_items = (fps + AUDIO_RATE // AUDIO_FRAME) * QUEUE_SECONDS

    # --- what the compositor asks --------------------------------------------------------
    @property
    def recording(self) -> bool:
        """True while packets are wanted (the compositor encodes even without viewers)."""
        s = self.session
        return s is not None and s.stopped is None

    def keyframe_now(self) -> None:
        """The next composed frame is a keyframe (e.g. the one that first shows a newly
        featured product, where its clip starts)."""
        if self.session is not None:
            self.session.need_keyframe = True

    def wants_keyframe(self, now: float) -> bool:
        s = self.session
        if s is None or s.stopped is not None:
            return False
        return s.need_keyframe or now - s.last_keyframe >= self.config.keyframe_s

    # --- loop side ---------------------------------------------------------------------
    def tick(self, live: bool, now: float) -> None:
        """Once per composed frame: start a session when the show goes live, end it once
        the show has been off air for ``idle_s``."""
        s = self.session
        if s is None:
            if live and self.config.enabled and not self._closed:
                self._start(now)
            return
        if live:
            s.off_since = None
        elif s.off_since is None:
            s.off_since = now
        elif now - s.off_since >= self.config.idle_s:
            self.end()

    def _start(self, now: float) -> None:
        self._loop = asyncio.get_running_loop()
        self.directory.mkdir(parents=True, exist_ok=True)
        free = free_mb(self.directory)
        rid = self.new_id()
        session = Session(rid, self.directory / f"{rid}.mp4", now)
        self.session = session
        self.sessions_started += 1
        if free < self.config.min_free_mb:
            self._stop_early(session, "disk_full", free)
            return
        self.state, self.reason = "recording", None
        self._queue = queue.Queue(self._max_items)
        self._thread = threading.Thread(
            target=self._write, args=(session, self._queue), name=f"record-{self.show_id}"
        )
        self._thread.start()

    def video(self, packet: av.Packet, keyframe: bool, wall_ms: int) -> None:
        s = self.session
        if s is None or s.stopped is not None or self._queue is None:
            return
        if s.start_pts is None and not keyframe:
            return
        pts = int(packet.pts)
        if keyframe:
            s.last_keyframe = time.monotonic()
            s.need_keyframe = False
        if s.start_pts is None:
            s.start_pts, s.started_wall_ms = pts, wall_ms
            self.on_event("started", s, {"started_at": wall_ms})
        if s.waiting and not keyframe:
            return  # after a dropped packet: the rest of that picture group would not decode
        s.waiting = False
        if not self._put(("v", packet, pts - s.start_pts, keyframe)):
            s.need_keyframe = s.waiting = True
            return
        s.last_pts = pts
        s.recent.append((wall_ms, pts - s.start_pts))

    def audio(self, packet: av.Packet) -> None:
        s = self.session
        if s is None or s.start_pts is None or s.stopped is not None or self._queue is None:
            return
        pts = int(packet.pts) - s.start_pts * AUDIO_RATE // VIDEO_CLOCK
        if pts >= 0:
            self._put(("a", packet, pts, True))

    def _put(self, item: tuple) -> bool:
        try:
            self._queue.put_nowait(item)  # type: ignore[union-attr]
            return True
        except queue.Full:
            if self.session is not None:
                self.session.dropped += 1
            return False

    def end(self) -> None:
        """End the current session: the writer finishes the file, then ``ended`` fires."""
        s = self.session
        if s is None:
            return
        self.session = None
        if self.state != "stopped":
            self.state, self.reason = "idle", None
        if self._queue is not None:
            # Never blocks the loop: the writer drains what is queued, then closes.
            self._put_close(self._queue)
            self._queue = None
        else:
            self._tell_ended(s)

    async def aclose(self, timeout: float = 5.0) -> None:
        """Server stop: end the session and wait (off the loop) for the file to be done."""
        self._closed = True
        thread = self._thread
        self.end()
        if thread is not None:
            await asyncio.to_thread(thread.join, timeout)
            await asyncio.sleep(0)  # let the writer's last callback run

    def _tell_ended(self, s: Session) -> None:
        if s.started_wall_ms is not None and not s.end_told:
            s.end_told = True
            self.on_event("ended", s, {"duration_s": s.duration_s})

    @staticmethod
    def _put_close(q: queue.Queue) -> None:
        while True:
            try:
                q.put_nowait(None)
                return
            except queue.Full:
                with contextlib.suppress(queue.Empty):
                    q.get_nowait()

    def _stop_early(self, s: Session, reason: str, free: float | None = None) -> None:
        if s.stopped is not None:
            return
        s.stopped = reason
        self.state, self.reason = "stopped", reason
        if self._queue is not None and self.session is s:
            self._put_close(self._queue)
            self._queue = None
        info = {"reason": reason}
        if free is not None:
            info["free_mb"] = round(free)
        if reason == "disk_full":
            log.warning(
                "show %s: recording %s stopped: only %s MB free under %s (floor %s MB); "
                "the show goes on",
                self.show_id,
                s.id,
                info.get("free_mb"),
                self.directory,
                self.config.min_free_mb,
            )
        self.on_event("stopped", s, info)

    def _from_writer(self, kind: str, s: Session, info: dict) -> None:  # on the loop
        if kind == "stopped":
            self._stop_early(s, info.pop("reason"), info.get("free_mb"))
        self._tell_ended(s)

    # --- writer thread -----------------------------------------------------------------
    def _write(self, s: Session, q: queue.Queue) -> None:
        writer: Mp4Writer | None = None
        next_check = time.monotonic() + DISK_CHECK_S
        outcome, info = "ended", {}
        try:
            while True:
                item = q.get()
                if item is None:
                    break
                kind, packet, pts, keyframe = item
                if writer is None:
                    if kind != "v":
                        continue
                    writer = Mp4Writer(
                        s.path,
                        bytes(packet),
                        self.fps,
                        self.config.fragment_s,
                        self.opus_application,
                    )
                if kind == "v":
                    writer.video_packet(bytes(packet), pts, keyframe)
                else:
                    writer.audio_packet(bytes(packet), pts)
                now = time.monotonic()
                if now >= next_check:
                    next_check = now + DISK_CHECK_S
                    free = free_mb(self.directory)
                    if free < self.config.min_free_mb:
                        outcome, info = "stopped", {"reason": "disk_full", "free_mb": round(free)}
                        break
        except Exception as exc:
            log.exception("show %s: recording %s failed", self.show_id, s.id)
            outcome, info = "stopped", {"reason": "error", "detail": str(exc)}
        finally:
            if writer is not None:
                try:
                    writer.close()
                except Exception:
                    log.exception("show %s: closing recording %s failed", self.show_id, s.id)
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._from_writer, outcome, s, info)

    def status(self) -> dict:
        s = self.session
        return {
            "state": self.state,
            "reason": self.reason,
            "recording_id": s.id if s is not None else None,
            "duration_s": round(s.duration_s, 3) if s is not None else None,
            "dropped": s.dropped if s is not None else 0,
        }


def probe_duration(path: Path) -> float:
    """The playable length (s) of a recording file, e.g. one left by a crash."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        last = None
        first = None
        try:
            for packet in container.demux(stream):
                if packet.pts is None or not packet.size:
                    continue
                t = float(packet.pts * packet.time_base)
                first = t if first is None else first
                last = t if last is None else max(last, t)
        except av.FFmpegError:
            pass  # a fragment cut short by a crash: what came before it still plays
        if last is None or first is None:
            return 0.0
        rate = stream.average_rate or Fraction(30)
        return last - first + 1 / float(rate)
