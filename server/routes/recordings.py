"""Recordings, replays and clips (API.md "Recordings, replays and clips").

The process that composes a show records it (``media.recording``): this module gives
each show's runtime a ``Recorder``, turns the show's own events into chapters (featured
segments and drops, in recording time from ``media_ts``), cuts a clip from the recording
when a featured segment ends (``media.clips``, no re-encode) and serves the files, the
replay page and the shoppable clip page.

Metadata lives in Redis so every process answers the same:

- ``recording:{id}`` (JSON) and ``show:{show}:recordings`` (zset by start time);
  ``recording:{id}:alive`` is refreshed while it is written, so a recording left open by
  a crash is told apart from one being written by another process and closed at start-up;
- ``clip:{id}`` (JSON), ``show:{show}:clips`` (zset by ready time) and
  ``clip:{id}:counts`` (views, add_to_carts, orders);
- ``clip_attr:{viewer}:{show}:{sku}``: the clip a viewer added that product from, so a
  paid order of it counts for the clip (once per order: ``clip_order:{order}``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import secrets
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from aiohttp import web

from checkout.orders import load_order
from media import tasks, teaser
from media.clips import CutError, cut_clip
from media.recording import Recorder, Session, probe_duration
from server import keys
from server.auth import get_show
from server.config import ShowConfig
from server.routes.pages import page_show, render, show_summary
from server.routes.shows import get_featured

log = logging.getLogger("showroom.recording")

ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
ALIVE_TTL_S = 6
HEARTBEAT_S = 2.0
RETENTION_SWEEP_S = 3600.0
ATTRIBUTION_TTL_S = 7 * 86400
MIN_CLIP_S = 1.0
CUT_RETRIES = 12


def rec_key(rid: str) -> str:
    return f"recording:{rid}"


def recs_key(show_id: str) -> str:
    return f"show:{show_id}:recordings"


def clip_key(cid: str) -> str:
    return f"clip:{cid}"


def clips_key(show_id: str) -> str:
    return f"show:{show_id}:clips"


def counts_key(cid: str) -> str:
    return f"clip:{cid}:counts"


def attr_key(viewer: str, show_id: str, sku: str) -> str:
    return f"clip_attr:{viewer}:{show_id}:{sku}"


def now_ms() -> int:
    return int(time.time() * 1000)


def new_id(prefix: str) -> str:
    return prefix + time.strftime("%Y%m%d%H%M%S", time.gmtime()) + secrets.token_hex(3)


# --- the data ---------------------------------------------------------------------------


@dataclass
class Chapter:
    kind: str  # "featured" | "drop"
    sku: str
    start_s: float
    end_s: float | None = None
    start_ms: int = 0  # wall ms of the frame that first showed it (media_ts)
    end_ms: int | None = None

    def public(self) -> dict:
        return {
            "kind": self.kind,
            "sku": self.sku,
            "start_s": round(self.start_s, 3),
            "end_s": None if self.end_s is None else round(self.end_s, 3),
        }


@dataclass
class RecordingRecord:
    id: str
    show: str
    file: str  # relative to the data dir
    started_at: int  # wall ms of the first frame
    ended_at: int | None = None
    duration_s: float = 0.0
    chapters: list[Chapter] = field(default_factory=list)
    stopped: str | None = None  # "disk_full" | "error" when recording stopped early
    recovered: bool = False  # closed at start-up after a crash

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: bytes | str) -> RecordingRecord:
        data = json.loads(raw)
        data["chapters"] = [Chapter(**c) for c in data.get("chapters", [])]
        return cls(**data)

    def public(self, live_duration_s: float | None = None) -> dict:
        duration = self.duration_s if live_duration_s is None else live_duration_s
        return {
            "id": self.id,
            "started_at": self.started_at,
            "ended_at": self.ended_at,
            "duration_s": round(duration, 3),
            "url": f"/media/recordings/{self.show}/{self.id}.mp4",
            "page_url": f"/shows/{self.show}/replays/{self.id}",
            "chapters": [c.public() for c in self.chapters],
            "stopped": self.stopped,
        }


@dataclass
class ClipRecord:
    id: str
    show: str
    sku: str
    recording_id: str
    file: str
    start_s: float  # recording time of the clip's first keyframe
    duration_s: float
    feature_start_s: float  # recording time the product came on screen
    segment_end_ms: int  # wall ms the segment ended
    ready_at: int  # wall ms the clip file was ready
    teaser: str | None = None  # its 9:16 teaser (relative to the data dir), once made

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: bytes | str) -> ClipRecord:
        return cls(**json.loads(raw))

    def public(self, counts: dict[str, int]) -> dict:
        return {
            "id": self.id,
            "sku": self.sku,
            "recording_id": self.recording_id,
            "start_s": round(self.start_s, 3),
            "duration_s": round(self.duration_s, 3),
            "feature_start_s": round(self.feature_start_s, 3),
            "url": f"/media/clips/{self.id}.mp4",
            "page_url": f"/clips/{self.id}",
            "ready_at": self.ready_at,
            "ready_after_s": round((self.ready_at - self.segment_end_ms) / 1000, 3),
            "teaser_url": f"/media/clips/{self.id}/teaser.mp4" if self.teaser else None,
            "views": counts.get("views", 0),
            "add_to_carts": counts.get("add_to_carts", 0),
            "orders": counts.get("orders", 0),
        }


async def load_recording(redis, rid: str) -> RecordingRecord | None:
    raw = await redis.get(rec_key(rid)) if ID.match(rid) else None
    return RecordingRecord.from_json(raw) if raw else None


async def load_clip(redis, cid: str) -> ClipRecord | None:
    raw = await redis.get(clip_key(cid)) if ID.match(cid) else None
    return ClipRecord.from_json(raw) if raw else None


async def clip_counts(redis, cid: str) -> dict[str, int]:
    raw = await redis.hgetall(counts_key(cid))
    return {k.decode(): int(v) for k, v in raw.items()}


async def show_recordings(redis, show_id: str, newest: int = 200) -> list[RecordingRecord]:
    ids = await redis.zrevrange(recs_key(show_id), 0, newest - 1)
    out = []
    for raw_id in ids:
        rec = await load_recording(redis, raw_id.decode())
        if rec is not None:
            out.append(rec)
    return out


# --- one show's recording, on the process that composes it ------------------------------


class ShowRecording:
    """Turns the recorder's sessions and the show's events into stored recordings,
    chapters and clips."""

    def __init__(self, app: web.Application, show: ShowConfig, runtime) -> None:
        self.app = app
        self.show = show
        self.runtime = runtime
        settings = app[keys.SETTINGS]
        self.config = settings.recording
        self.data_dir = Path(settings.data_dir)
        self.recorder = Recorder(
            show.id,
            self.data_dir / "recordings" / show.id,
            show.video.fps,
            self.config,
            self._on_recorder,
            lambda: new_id("r"),
        )
        self.record: RecordingRecord | None = None
        self.session: Session | None = None
        self.tasks: set[asyncio.Task] = set()
        self._saving: asyncio.Lock = asyncio.Lock()
        self._seen_drops: set[tuple[str, int]] = set()
        self.featured_now: str | None = None

    @property
    def redis(self):
        return self.app[keys.REDIS]

    def spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def publish(self, event: dict) -> None:
        with contextlib.suppress(Exception):
            await self.app[keys.BUS].publish(self.show.id, event)

    async def save(self) -> None:
        rec = self.record
        if rec is None:
            return
        async with self._saving:
            try:
                await self.redis.set(rec_key(rec.id), rec.to_json())
            except Exception as exc:  # Redis away: the file is still written
                log.warning("show %s: could not save recording %s: %s", self.show.id, rec.id, exc)

    # --- recorder events (on the loop) ---------------------------------------------------
    def _on_recorder(self, kind: str, session: Session, info: dict) -> None:
        if kind == "started":
            self.session = session
            rel = session.path.relative_to(self.data_dir).as_posix()
            self.record = RecordingRecord(session.id, self.show.id, rel, info["started_at"])
            if self.featured_now:
                self.record.chapters.append(
                    Chapter("featured", self.featured_now, 0.0, start_ms=info["started_at"])
                )
            self.spawn(self._started(self.record))
        elif kind == "stopped":
            if self.record is not None and self.record.id == session.id:
                self.record.stopped = info.get("reason")
            self.spawn(self._stopped(session, info))
        elif kind == "ended":
            rec = self.record if self.record is not None and self.record.id == session.id else None
            if self.session is session:
                self.session = None
                self.record = None
            if rec is not None:
                self.spawn(self._ended(rec, session, info["duration_s"]))

    async def _started(self, rec: RecordingRecord) -> None:
        log.info("show %s: recording %s started (%s)", self.show.id, rec.id, rec.file)
        with contextlib.suppress(Exception):  # alive first: nobody takes it for a crashed one
            await self.redis.set(f"{rec_key(rec.id)}:alive", 1, ex=ALIVE_TTL_S)
        await self.save()
        with contextlib.suppress(Exception):
            await self.redis.zadd(recs_key(self.show.id), {rec.id: rec.started_at})
        await self.publish({"type": "recording", "state": "recording", "id": rec.id})

    async def _stopped(self, session: Session, info: dict) -> None:
        await self.save()
        await self.publish({"type": "recording", "state": "stopped", "id": session.id, **info})

    async def _ended(self, rec: RecordingRecord, session: Session, duration_s: float) -> None:
        rec.duration_s = duration_s
        rec.ended_at = rec.started_at + int(duration_s * 1000)
        for chapter in rec.chapters:
            if chapter.end_s is None:
                self._close_chapter(rec, chapter, duration_s, rec.ended_at, None)
        async with self._saving:
            with contextlib.suppress(Exception):
                await self.redis.set(rec_key(rec.id), rec.to_json())
                await self.redis.delete(f"{rec_key(rec.id)}:alive")
        log.info("show %s: recording %s ended (%.1f s)", self.show.id, rec.id, duration_s)
        await self.publish(
            {"type": "recording", "state": "ended", "id": rec.id, "duration_s": duration_s}
        )

    # --- show events -> chapters -----------------------------------------------------------
    def on_event(self, show_id: str, event: dict) -> None:
        kind = event.get("type")
        if kind == "featured":
            sku = event.get("sku") if isinstance(event.get("sku"), str) else None
            at = int(event.get("media_ts") or event.get("ts") or now_ms())
            self.featured_now = sku
            self._featured(sku, at)
        elif kind == "drop" and isinstance(event.get("drop"), dict):
            self._drop(event["drop"], int(event.get("media_ts") or now_ms()))
        elif kind == "auction" and isinstance(event.get("auction"), dict):
            self._auction(event["auction"], int(event.get("media_ts") or now_ms()))

    def _featured(self, sku: str | None, at_ms: int, tries: int = 0) -> None:
        rec, session = self.record, self.session
        if rec is None or session is None:
            return
        if session.not_yet_recorded(at_ms) and tries < 150:  # up to 3 s on a loaded box
            # The event can overtake its frame's encode: place it on that frame's own pts.
            asyncio.get_running_loop().call_later(0.02, self._featured, sku, at_ms, tries + 1)
            return
        t = session.media_time(at_ms)
        for chapter in rec.chapters:
            if chapter.kind == "featured" and chapter.end_s is None:
                if chapter.sku == sku:
                    return
                self._close_chapter(rec, chapter, t, at_ms, session)
        if sku is not None:
            rec.chapters.append(Chapter("featured", sku, t, start_ms=at_ms))
        self.spawn(self.save())

    def _drop(self, drop: dict, at_ms: int) -> None:
        rec, session = self.record, self.session
        sku, ends_at = drop.get("sku"), drop.get("ends_at")
        if rec is None or session is None or not isinstance(sku, str):
            return
        if not isinstance(ends_at, int | float) or (sku, int(ends_at)) in self._seen_drops:
            return
        self._seen_drops.add((sku, int(ends_at)))
        start = session.media_time(at_ms)
        end = max(start, session.media_time(int(ends_at)))
        rec.chapters.append(Chapter("drop", sku, start, end, at_ms, int(ends_at)))
        self.spawn(self.save())

    def _auction(self, auction: dict, at_ms: int) -> None:
        """An auction is a chapter from its start to its end (sold, unsold or cancelled)."""
        rec, session = self.record, self.session
        sku, status = auction.get("sku"), auction.get("status")
        if rec is None or session is None or not isinstance(sku, str):
            return
        t = session.media_time(at_ms)
        open_ = next(
            (c for c in rec.chapters if c.kind == "auction" and c.end_s is None and c.sku == sku),
            None,
        )
        if status == "running" and open_ is None:
            rec.chapters.append(Chapter("auction", sku, t, start_ms=at_ms))
        elif status in ("sold", "unsold", "cancelled") and open_ is not None:
            self._close_chapter(rec, open_, t, at_ms, session)
        else:
            return
        self.spawn(self.save())

    def _close_chapter(
        self,
        rec: RecordingRecord,
        chapter: Chapter,
        end_s: float,
        end_ms: int,
        session: Session | None,
    ) -> None:
        chapter.end_s, chapter.end_ms = max(chapter.start_s, end_s), end_ms
        if chapter.kind == "featured" and chapter.end_s - chapter.start_s >= MIN_CLIP_S:
            self.spawn(self._make_clip(rec, chapter, session))

    # --- clips -------------------------------------------------------------------------------
    async def _make_clip(
        self, rec: RecordingRecord, chapter: Chapter, session: Session | None
    ) -> None:
        assert chapter.end_s is not None
        source = self.data_dir / rec.file
        cid = new_id("c")
        target = self.data_dir / "clips" / self.show.id / f"{cid}.mp4"
        target.parent.mkdir(parents=True, exist_ok=True)
        wanted_end = min(chapter.end_s, chapter.start_s + self.config.clip_max_s)
        cut = None
        for _attempt in range(CUT_RETRIES):
            # The segment's last fragment reaches the file once the next one has begun.
            while (
                session is not None
                and self.recorder.session is session
                and session.duration_s < chapter.end_s + self.config.fragment_s + 0.5
            ):
                await asyncio.sleep(0.2)
            try:
                cut = await asyncio.to_thread(
                    cut_clip,
                    source,
                    target,
                    chapter.start_s,
                    chapter.end_s,
                    self.config.clip_max_s,
                )
            except (CutError, OSError, ValueError) as exc:
                log.info("show %s: clip of %s not cut yet: %s", self.show.id, chapter.sku, exc)
                cut = None
            if cut is not None and cut.end_s >= wanted_end - 0.1:
                break
            await asyncio.sleep(0.5)
        if cut is None:
            log.warning(
                "show %s: no clip for %s at %.1f s", self.show.id, chapter.sku, chapter.start_s
            )
            return
        clip = ClipRecord(
            id=cid,
            show=self.show.id,
            sku=chapter.sku,
            recording_id=rec.id,
            file=target.relative_to(self.data_dir).as_posix(),
            start_s=cut.start_s,
            duration_s=cut.duration_s,
            feature_start_s=chapter.start_s,
            segment_end_ms=chapter.end_ms or now_ms(),
            ready_at=now_ms(),
        )
        try:
            # Not a transaction: a clip's keys are in different Cluster slots.
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.set(clip_key(cid), clip.to_json())
                pipe.zadd(clips_key(self.show.id), {cid: clip.ready_at})
                pipe.hset(counts_key(cid), mapping={"views": 0, "add_to_carts": 0, "orders": 0})
                await pipe.execute()
        except Exception as exc:
            log.warning("show %s: could not save clip %s: %s", self.show.id, cid, exc)
            return
        log.info(
            "show %s: clip %s of %s ready (%.1f s, %.1f s after the segment ended)",
            self.show.id,
            cid,
            clip.sku,
            clip.duration_s,
            (clip.ready_at - clip.segment_end_ms) / 1000,
        )
        await self.publish({"type": "clip", "clip": clip.public({})})
        if self.config.teaser:
            await self._make_teaser(clip, target)

    async def _make_teaser(self, clip: ClipRecord, source: Path) -> None:
        target = source.with_name(f"{clip.id}-teaser.mp4")
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(teaser.EXECUTOR, teaser.make_teaser, source, target)
        except Exception:
            log.exception("show %s: teaser of clip %s failed", self.show.id, clip.id)
            return
        clip.teaser = target.relative_to(self.data_dir).as_posix()
        with contextlib.suppress(Exception):
            await self.redis.set(clip_key(clip.id), clip.to_json())

    # --- housekeeping --------------------------------------------------------------------
    async def heartbeat(self) -> None:
        rec = self.record
        if rec is not None:
            with contextlib.suppress(Exception):
                await self.redis.set(f"{rec_key(rec.id)}:alive", 1, ex=ALIVE_TTL_S)

    def live_duration(self, rid: str) -> float | None:
        s = self.recorder.session
        return s.duration_s if s is not None and s.id == rid else None

    async def close(self) -> None:
        await self.recorder.aclose()
        for _ in range(50):  # the ended event's save, and clips still being cut
            if not self.tasks:
                break
            await asyncio.wait(list(self.tasks), timeout=10)


def _recordings(app: web.Application) -> dict[str, ShowRecording]:
    return app[keys.EXTRA].setdefault("recordings", {})


async def recover(app: web.Application, show_id: str) -> None:
    """Close recordings a crash left open: no process has refreshed them for
    ``ALIVE_TTL_S`` (run at start-up and with every heartbeat)."""
    redis = app[keys.REDIS]
    data_dir = Path(app[keys.SETTINGS].data_dir)
    for rec in await show_recordings(redis, show_id, newest=20):
        if rec.ended_at is not None or await redis.exists(f"{rec_key(rec.id)}:alive"):
            continue
        path = data_dir / rec.file
        if not path.exists():
            continue  # written under another data dir (another machine): its own to close
        try:
            duration = await asyncio.to_thread(probe_duration, path)
        except Exception as exc:
            log.warning("recording %s cannot be read (%s)", rec.id, exc)
            duration = 0.0
        rec.duration_s, rec.ended_at, rec.recovered = (
            duration,
            rec.started_at + int(duration * 1000),
            True,
        )
        for chapter in rec.chapters:
            if chapter.end_s is None or chapter.end_s > duration:
                chapter.end_s = duration if chapter.start_s <= duration else chapter.start_s
        await redis.set(rec_key(rec.id), rec.to_json())
        log.warning(
            "show %s: recording %s was left open (crash?); playable up to %.1f s",
            show_id,
            rec.id,
            duration,
        )


async def sweep_retention(app: web.Application, now: int | None = None) -> int:
    """Delete recordings (and their clips) older than the retention; returns how many."""
    redis = app[keys.REDIS]
    settings = app[keys.SETTINGS]
    data_dir = Path(settings.data_dir)
    cutoff = (now or now_ms()) - int(settings.recording.retention_days * 86400 * 1000)
    removed = 0
    for show_id in app[keys.SHOWS]:
        old = await redis.zrangebyscore(recs_key(show_id), "-inf", cutoff)
        if not old:
            continue
        doomed = set()
        for raw_id in old:
            rec = await load_recording(redis, raw_id.decode())
            if rec is None or rec.ended_at is None:
                continue
            doomed.add(rec.id)
            with contextlib.suppress(FileNotFoundError):
                (data_dir / rec.file).unlink()
            await redis.delete(rec_key(rec.id))
            await redis.zrem(recs_key(show_id), rec.id)
            removed += 1
        for raw_id in await redis.zrange(clips_key(show_id), 0, -1):
            clip = await load_clip(redis, raw_id.decode())
            if clip is not None and clip.recording_id in doomed:
                for rel in (clip.file, clip.teaser):
                    if rel:
                        with contextlib.suppress(FileNotFoundError):
                            (data_dir / rel).unlink()
                pipe = redis.pipeline(transaction=False)  # its keys are in other slots
                pipe.delete(clip_key(clip.id))
                pipe.delete(counts_key(clip.id))
                pipe.zrem(clips_key(show_id), clip.id)
                await pipe.execute()
    if removed:
        log.info(
            "retention: removed %d recording(s) older than %s days",
            removed,
            settings.recording.retention_days,
        )
    return removed


# --- HTTP ---------------------------------------------------------------------------------


async def list_recordings(request: web.Request) -> web.Response:
    show = get_show(request)
    local = _recordings(request.app).get(show.id)
    out = []
    for rec in await show_recordings(request.app[keys.REDIS], show.id):
        live = local.live_duration(rec.id) if local is not None else None
        if live is None and rec.ended_at is None:
            live = max(0.0, (now_ms() - rec.started_at) / 1000)
        out.append(rec.public(live))
    body = {"recordings": out}
    if local is not None:
        body["recorder"] = local.recorder.status()
    return web.json_response(body)


async def list_clips(request: web.Request) -> web.Response:
    show = get_show(request)
    redis = request.app[keys.REDIS]
    clips = []
    for raw_id in await redis.zrevrange(clips_key(show.id), 0, 199):
        clip = await load_clip(redis, raw_id.decode())
        if clip is not None:
            clips.append(clip.public(await clip_counts(redis, clip.id)))
    return web.json_response({"clips": clips})


def _file_response(path: Path) -> web.FileResponse:
    # aiohttp answers Range with 206 + Content-Range and an unsatisfiable one with 416.
    return web.FileResponse(
        path,
        headers={
            "Content-Type": "video/mp4",
            "Cache-Control": "no-cache",
            "X-Content-Type-Options": "nosniff",
        },
    )


async def recording_file(request: web.Request) -> web.StreamResponse:
    show = page_show(request)
    rec = await load_recording(request.app[keys.REDIS], request.match_info["id"])
    if rec is None or rec.show != show.id:
        raise web.HTTPNotFound(text="No such recording.")
    path = Path(request.app[keys.SETTINGS].data_dir) / rec.file
    if not path.exists():
        raise web.HTTPNotFound(text="This recording's file is gone.")
    return _file_response(path)


async def clip_file(request: web.Request) -> web.StreamResponse:
    clip = await load_clip(request.app[keys.REDIS], request.match_info["id"])
    path = Path(request.app[keys.SETTINGS].data_dir) / clip.file if clip is not None else None
    if path is None or not path.exists():
        raise web.HTTPNotFound(text="No such clip.")
    return _file_response(path)


async def teaser_file(request: web.Request) -> web.StreamResponse:
    clip = await load_clip(request.app[keys.REDIS], request.match_info["id"])
    if clip is None or clip.teaser is None:
        raise web.HTTPNotFound(text="No teaser for this clip.")
    path = Path(request.app[keys.SETTINGS].data_dir) / clip.teaser
    if not path.exists():
        raise web.HTTPNotFound(text="No teaser for this clip.")
    return _file_response(path)


def _products(show: ShowConfig) -> list[dict]:
    return [
        {
            "sku": p.sku,
            "name": p.name,
            "price": f"{p.price:.2f}",
            "image_url": f"/media/products/{show.id}/{p.sku}.png",
        }
        for p in show.products
    ]


async def replay_page(request: web.Request) -> web.Response:
    show = page_show(request)
    rec = await load_recording(request.app[keys.REDIS], request.match_info["id"])
    if rec is None or rec.show != show.id:
        return render(request, "not_found.html", status=404, what="replay")
    local = _recordings(request.app).get(show.id)
    live = local.live_duration(rec.id) if local is not None else None
    data = {
        **show_summary(show),
        "recording": rec.public(live),
        "products": _products(show),
    }
    return render(request, "replay.html", show=show, recording=rec, data=data)


async def clip_page(request: web.Request) -> web.Response:
    redis = request.app[keys.REDIS]
    clip = await load_clip(redis, request.match_info["id"])
    show = request.app[keys.SHOWS].get(clip.show) if clip is not None else None
    product = show.product(clip.sku) if clip is not None and show is not None else None
    if clip is None or show is None or product is None:
        return render(request, "not_found.html", status=404, what="clip")
    await redis.hincrby(counts_key(clip.id), "views", 1)
    base = request.app[keys.SETTINGS].base_url.rstrip("/")
    public = clip.public(await clip_counts(redis, clip.id))
    data = {
        **show_summary(show),
        "clip": public,
        "products": [p for p in _products(show) if p["sku"] == clip.sku],
        "share_url": f"{base}{public['page_url']}",
    }
    og = {
        "title": f"{product.name} · {show.title}",
        "url": data["share_url"],
        "video": f"{base}{public['url']}",
        "image": f"{base}/media/products/{show.id}/{product.sku}.png",
        "width": show.video.width,
        "height": show.video.height,
        "description": f"{product.name}, {product.price:.2f} {show.currency.upper()}",
    }
    return render(request, "clip.html", show=show, clip=public, product=product, og=og, data=data)


# --- commerce: attribution ------------------------------------------------------------------


async def on_cart_add(request: web.Request, viewer: str, show: ShowConfig, sku: str, body: dict):
    """An add-to-cart that names the clip page it came from counts for that clip."""
    cid = body.get("clip")
    if not isinstance(cid, str) or not ID.match(cid):
        return
    redis = request.app[keys.REDIS]
    clip = await load_clip(redis, cid)
    if clip is None or clip.show != show.id:
        return
    async with redis.pipeline(transaction=False) as pipe:
        pipe.hincrby(counts_key(cid), "add_to_carts", 1)
        pipe.set(attr_key(viewer, show.id, sku), cid, ex=ATTRIBUTION_TTL_S)
        await pipe.execute()


async def count_order(app: web.Application, order_id: str) -> None:
    """A paid order counts once for each clip one of its products was added from."""
    redis = app[keys.REDIS]
    if not await redis.set(f"clip_order:{order_id}", 1, nx=True, ex=30 * 86400):
        return  # already counted (another process, or a repeated event)
    order = await load_order(redis, order_id)
    if order is None:
        return
    clips = set()
    for item in order.items:
        cid = await redis.get(attr_key(order.viewer, order.show, item.sku))
        if cid:
            clips.add(cid.decode())
    for cid in clips:
        await redis.hincrby(counts_key(cid), "orders", 1)


# --- wiring ---------------------------------------------------------------------------------


async def _state_hook(app: web.Application, show: ShowConfig, state: dict) -> None:
    latest = None
    for rid in await app[keys.REDIS].zrevrange(recs_key(show.id), 0, 4):
        rec = await load_recording(app[keys.REDIS], rid.decode())
        if rec is not None and rec.ended_at is not None:
            latest = {"id": rec.id, "page_url": rec.public()["page_url"]}
            break
    state["latest_replay"] = latest


async def count_replays(app: web.Application, show_id: str) -> int:
    """Finished recordings of a show (the show list's ``replays``)."""
    return sum(1 for r in await show_recordings(app[keys.REDIS], show_id) if r.ended_at)


async def _feature_hook(app: web.Application, show: ShowConfig, sku: str | None) -> None:
    # The clip of a segment starts at the keyframe at or before the product appears.
    # The next composed frame is a keyframe (past the viewers' once-a-second gate: host
    # actions are rare), so the clip starts right where the product appears.
    local = _recordings(app).get(show.id)
    if local is not None and local.recorder.recording:
        local.recorder.keyframe_now()


def setup(app: web.Application) -> None:
    from server.routes.cart import add_cart_hook
    from server.routes.shows import add_state_hook

    async def recordings_ctx(app: web.Application):
        # Registered after the media runtimes: their recorders are attached here and
        # finished here (before the runtimes stop and Redis closes).
        shows = _recordings(app)
        bus = app[keys.BUS]
        config = app[keys.SETTINGS].recording
        for show_id, runtime in app[keys.EXTRA].get("media", {}).items():
            show = app[keys.SHOWS][show_id]
            if not config.enabled:
                continue
            local = ShowRecording(app, show, runtime)
            with contextlib.suppress(Exception):
                local.featured_now = await get_featured(app[keys.REDIS], show_id)
            runtime.recorder = local.recorder
            shows[show_id] = local
            bus.add_listener(show_id, local.on_event)

        def on_order(show_id: str, event: dict) -> None:
            if event.get("type") == "order" and event.get("status") == "paid":
                oid = event.get("order_id")
                if isinstance(oid, str):
                    task = asyncio.get_running_loop().create_task(count_order(app, oid))
                    pending.add(task)
                    task.add_done_callback(pending.discard)

        pending: set[asyncio.Task] = set()
        bus.add_listener(None, on_order)

        async def housekeeping() -> None:
            last_sweep = 0.0
            while True:
                for local in shows.values():
                    await local.heartbeat()
                for show_id in app[keys.SHOWS]:
                    try:
                        await recover(app, show_id)
                    except Exception as exc:
                        log.warning("show %s: could not check old recordings: %s", show_id, exc)
                if time.monotonic() - last_sweep >= RETENTION_SWEEP_S or not last_sweep:
                    last_sweep = time.monotonic()
                    try:
                        await sweep_retention(app)
                    except Exception:
                        log.exception("retention sweep failed")
                await asyncio.sleep(HEARTBEAT_S)

        task = asyncio.create_task(housekeeping(), name="recordings-housekeeping")
        yield
        await tasks.stop(task)
        for local in shows.values():
            try:
                await local.close()
            except Exception:
                log.exception("show %s: finishing the recording failed", local.show.id)
            local.runtime.recorder = None
        if pending:
            await asyncio.wait(list(pending), timeout=5)

    app.cleanup_ctx.append(recordings_ctx)
    add_state_hook(app, _state_hook)
    add_cart_hook(app, on_cart_add)
    app[keys.EXTRA]["count_replays"] = count_replays
    # Before the scene's hook renders the card: the keyframe comes at or just before the
    # first frame that shows it, never a frame after.
    app[keys.EXTRA].setdefault("feature_hooks", []).insert(0, _feature_hook)
    r = app.router
    r.add_get("/api/shows/{show}/recordings", list_recordings)
    r.add_get("/api/shows/{show}/clips", list_clips)
    r.add_get("/media/recordings/{show}/{id}.mp4", recording_file)
    r.add_get("/media/clips/{id}.mp4", clip_file)
    r.add_get("/media/clips/{id}/teaser.mp4", teaser_file)
    r.add_get("/shows/{show}/replays/{id}", replay_page)
    r.add_get("/clips/{id}", clip_page)
