"""The relay between worker processes: a show's encoded packets from its origin (the
process that composes and encodes it) to every other process with viewers of it.

Nothing is decoded or encoded on the way. Each fan-out entry crosses a Unix stream socket
once per receiving process as one msgpack frame::

    [stream, keyframe, wall_ms, rtp_timestamp, [rtp payload, ...], sent_at]

(``stream`` is "H264", "VP8" or "audio"; the payloads are the ones the origin packetised
once; ``sent_at`` is the origin's ``time.time()`` when it wrote the frame). The receiver
publishes each frame into its own ``Fanout`` through the public ``publish`` API, so its
viewers (lean or aiortc path) read it exactly as on the origin. A Unix socket costs one
write and one read per frame per process (no TCP/IP stack, no HTTP framing); the
measured relay-added latency is in ``RelayClient.latency_s`` and BENCHMARKS.md.

Upstream the subscriber sends ``{"op": "sub", "show", "streams"}`` (again whenever the
streams it needs change) and ``{"op": "kf"}`` for its viewers' joins and PLI/FIR, which
reach the origin's coalescing ``KeyframeGate``.

Never a queue: the origin writes without awaiting; when more than ``MAX_BUFFERED`` bytes
wait in a subscriber's socket, that stream skips to the next keyframe, like a slow viewer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import msgpack

from media import tasks
from media.fanout import Fanout

if TYPE_CHECKING:
    from media.runtime import ShowRuntime

log = logging.getLogger("showroom.media.relay")

MAX_BUFFERED = 1 << 20
READ_SIZE = 1 << 16
CHECK_S = 0.1  # how often a subscriber re-checks who the origin is and what it needs


class RelayedPacket:
    """Stands in for the origin's ``av.Packet`` in a relayed fan-out entry (the entry's
    payloads and timestamp are what viewers send)."""

    __slots__ = ("size",)

    def __init__(self, size: int) -> None:
        self.size = size

    def __len__(self) -> int:
        return self.size


def _now_ms() -> int:
    return int(time.time() * 1000)


def _fanout(runtime: ShowRuntime, stream: str) -> Fanout:
    return runtime.audio if stream == "audio" else runtime.video_fanout(stream)


def wanted_streams(runtime: ShowRuntime) -> list[str]:
    """What this process's viewers of the show need from the origin."""
    streams = {"H264", "audio"}
    streams.update(v.codec for v in runtime.viewers.values())
    return sorted(streams)


class RelayServer:
    """The origin side: serves the fan-outs of the shows this process is origin of."""

    def __init__(self, runtimes: dict[str, ShowRuntime], path: str) -> None:
        self.runtimes = runtimes
        self.path = path
        self._server: asyncio.AbstractServer | None = None
        self._conns: set[asyncio.Task] = set()

    async def start(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        self._server = await asyncio.start_unix_server(self._serve, path=self.path)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._conns):
            task.cancel()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._conns.add(task)
        runtime: ShowRuntime | None = None
        pumps: dict[str, asyncio.Task] = {}
        unpacker = msgpack.Unpacker(raw=False)
        try:
            while data := await reader.read(READ_SIZE):
                unpacker.feed(data)
                for msg in unpacker:
                    op = msg.get("op") if isinstance(msg, dict) else None
                    if op == "sub":
                        runtime = self.runtimes.get(msg.get("show"))
                        if runtime is None or not runtime.origin:
                            return  # not (or no longer) the origin: the subscriber re-locates
                        want = set(msg.get("streams") or [])
                        for stream in set(pumps) - want:
                            pumps.pop(stream).cancel()
                        for stream in want - set(pumps):
                            if stream in ("H264", "VP8", "audio"):
                                pumps[stream] = asyncio.create_task(
                                    self._pump(runtime, stream, writer)
                                )
                    elif op == "kf" and runtime is not None:
                        runtime.request_keyframe("relay")
                if pumps and all(p.done() for p in pumps.values()):
                    return
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            for pump in pumps.values():
                pump.cancel()
            writer.close()
            self._conns.discard(task)

    async def _pump(self, runtime: ShowRuntime, stream: str, writer: asyncio.StreamWriter) -> None:
        runtime.relay_watchers[stream] = runtime.relay_watchers.get(stream, 0) + 1
        fanout = _fanout(runtime, stream)
        try:
            cursor = fanout.cursor(now_ms=_now_ms())
            if cursor.waiting_for_keyframe:
                runtime.request_keyframe("join")
            while runtime.origin and not writer.is_closing():
                entry = await cursor.next()
                if not runtime.origin:
                    break
                if writer.transport.get_write_buffer_size() > MAX_BUFFERED:
                    # The other process is not reading: skip to the next keyframe.
                    cursor = fanout.cursor(join_keyframe_max_age_ms=-1, now_ms=_now_ms())
                    if cursor.waiting_for_keyframe:
                        runtime.request_keyframe("lagging")
                    continue
                frame = [
                    stream,
                    entry.keyframe,
                    entry.wall_ms,
                    entry.timestamp,
                    entry.payloads or [],
                    time.time(),
                ]
                writer.write(msgpack.packb(frame))
        finally:
            runtime.relay_watchers[stream] -= 1
            if not runtime.origin:
                writer.close()  # stepped down: the subscriber finds the new origin


Locate = Callable[[], Awaitable[tuple[str, str] | None]]  # -> (holder, socket path) | None
Orphan = Callable[[str | None], Awaitable[None]]  # holder that is gone (None: no origin)


class RelayClient:
    """The other side: while this process has viewers of the show and is not its origin,
    feeds its fan-outs from the origin's relay. ``locate`` says who the origin is;
    ``orphan`` is called when there is none or it does not answer (it may make this
    process the origin)."""

    def __init__(self, runtime: ShowRuntime, locate: Locate, orphan: Orphan) -> None:
        self.runtime = runtime
        self.locate = locate
        self.orphan = orphan
        self.latency_s: deque[float] = deque(maxlen=5000)  # origin write -> our publish
        self.frames = 0
        self.connected_to: str | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._task: asyncio.Task | None = None
        self._wake = asyncio.Event()
        runtime.upstream_keyframe = self.request_keyframe

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"relay-{self.runtime.show.id}")

    async def stop(self) -> None:
        await tasks.stop(self._task)

    def wake(self) -> None:
        """Something changed (a viewer arrived, the origin moved): look again now."""
        self._wake.set()

    def request_keyframe(self) -> None:
        if self._writer is not None and not self._writer.is_closing():
            self._writer.write(msgpack.packb({"op": "kf"}))

    def stats(self) -> dict:
        lat = sorted(self.latency_s)
        p95 = lat[int(0.95 * (len(lat) - 1))] * 1000 if lat else None
        return {
            "connected_to": self.connected_to,
            "frames": self.frames,
            "latency_ms_p50": lat[len(lat) // 2] * 1000 if lat else None,
            "latency_ms_p95": p95,
            "latency_ms": [round(x * 1000, 3) for x in list(self.latency_s)[-1000:]],
        }

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._wake.wait()
        self._wake.clear()

    async def _run(self) -> None:
        while True:
            try:
                if self.runtime.origin or not self.runtime.viewers:
                    await self._pause(0.5)
                    continue
                where = await self.locate()
                if where is None:
                    await self.orphan(None)
                    await self._pause(0.05)
                    continue
                holder, path = where
                try:
                    reader, writer = await asyncio.open_unix_connection(path)
                except (ConnectionRefusedError, FileNotFoundError):
                    await self.orphan(holder)  # that origin is gone
                    await self._pause(0.05)
                    continue
                try:
                    await self._relay(holder, reader, writer)
                finally:
                    self._writer = self.connected_to = None
                    writer.close()
                await self._pause(0.02)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis away, a torn frame: try again shortly
                log.warning("show %s: relay: %s", self.runtime.show.id, exc)
                await self._pause(0.5)

    async def _relay(
        self, holder: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        runtime = self.runtime
        streams = wanted_streams(runtime)
        writer.write(msgpack.packb({"op": "sub", "show": runtime.show.id, "streams": streams}))
        self._writer, self.connected_to = writer, holder
        watch = asyncio.create_task(self._watch(holder, writer, streams))
        unpacker = msgpack.Unpacker(raw=False)
        try:
            while data := await reader.read(READ_SIZE):
                unpacker.feed(data)
                for stream, keyframe, wall_ms, timestamp, payloads, sent_at in unpacker:
                    if runtime.origin:
                        return  # this process took over: its own encoder feeds the fan-outs
                    _fanout(runtime, stream).publish(
                        RelayedPacket(sum(map(len, payloads))),
                        keyframe,
                        wall_ms,
                        payloads=payloads,
                        timestamp=timestamp,
                    )
                    self.frames += 1
                    self.latency_s.append(time.time() - sent_at)
                if watch.done():
                    return
        finally:
            watch.cancel()

    async def _watch(self, holder: str, writer: asyncio.StreamWriter, streams: list[str]) -> None:
        """Drop the connection when it is no longer the right one; re-subscribe when the
        streams this process needs change."""
        while True:
            await self._pause(CHECK_S)
            runtime = self.runtime
            if runtime.origin or not runtime.viewers:
                break
            where = await self.locate()
            if where is None or where[0] != holder:
                break
            now = wanted_streams(runtime)
            if now != streams:
                streams = now
                writer.write(msgpack.packb({"op": "sub", "show": runtime.show.id, "streams": now}))
        writer.close()
