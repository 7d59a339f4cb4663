"""Server-Sent Events fan-out: each event encoded once, written to every stream at once.

A show with a busy chat sends dozens of events a second to thousands of open streams. A
task and a queue per stream would wake every stream's task for every event (tens of
microseconds each, times subscribers, times events). Here the events of one show that
arrive within ``FLUSH_S`` of the last write go out together: they are encoded once into
one HTTP chunk and that same chunk is written to every stream's socket from one
callback. An idle show's event goes out at once (the next loop turn); a busy one's wait
at most ``FLUSH_S``.

- A stream whose socket has more than ``MAX_BUFFER`` bytes it could not send (a stalled
  phone) is closed rather than buffered without end; the browser's EventSource
  reconnects and the page reloads what it shows.
- Personal events (a buyer's own order) are shown to each stream through ``view``; the
  streams that see one the same way (most of them) still share one encoded chunk.
- Gone clients are noticed by a sweep every ``SWEEP_S`` (aiohttp does not cancel a
  handler whose client left) and their handlers return.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from media import tasks

log = logging.getLogger("showroom.sse")

FLUSH_S = 0.05
MAX_BUFFER = 512 * 1024
SWEEP_S = 1.0
HEARTBEAT_S = 15.0


# (event, viewer, staff) -> what that stream may see of it, or None. It may depend only on
# ``staff`` and on whether ``viewer`` is the event's own ``viewer`` field.
View = Callable[[dict[str, Any], str | None, bool], dict[str, Any] | None]


def chunk(data: bytes) -> bytes:
    """One HTTP/1.1 chunk (the stream's response is chunked; aiohttp wrote its headers)."""
    return b"%x\r\n%b\r\n" % (len(data), data)


@dataclass(frozen=True)
class Frame:
    """Event bytes as written: as an HTTP/1.1 chunk, or as they are to an HTTP/1.0 client
    (a proxy such as nginx speaks 1.0 upstream by default: no chunking, the stream ends
    with the connection)."""

    raw: bytes
    chunked: bytes

    @classmethod
    def of(cls, data: bytes) -> Frame:
        return cls(data, chunk(data))


def encode(event: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(event, separators=(",", ":"), default=str).encode() + b"\n\n"


@dataclass(eq=False)
class SseClient:
    transport: asyncio.Transport
    done: asyncio.Future
    viewer: str | None = None
    staff: bool = False
    chunked: bool = True


@dataclass(frozen=True)
class _Personal:
    event: dict[str, Any]


@dataclass
class _Channel:
    clients: set[SseClient] = field(default_factory=set)
    pending: list[bytes | _Personal] = field(default_factory=list)
    last_flush: float = float("-inf")
    scheduled: asyncio.TimerHandle | None = None


class SseHub:
    """This process's open event streams, per show."""

    def __init__(self, view: View | None = None, personal: tuple[str, ...] = ()) -> None:
        self.view = view
        self.personal = personal if view is not None else ()
        self._channels: dict[str, _Channel] = {}
        self._task: asyncio.Task | None = None
        self.evicted = 0  # streams closed for falling behind

    def count(self, show_id: str | None = None) -> int:
        if show_id is not None:
            return len(self._channels.get(show_id, _Channel()).clients)
        return sum(len(c.clients) for c in self._channels.values())

    # --- streams -----------------------------------------------------------------------
    def add(
        self,
        show_id: str,
        transport: asyncio.Transport,
        *,
        viewer: str | None = None,
        staff: bool = False,
        chunked: bool = True,
    ) -> SseClient:
        loop = asyncio.get_running_loop()
        if self._task is None:
            self._task = loop.create_task(self._housekeeping(), name="sse-housekeeping")
        client = SseClient(transport, loop.create_future(), viewer, staff, chunked)
        self._channels.setdefault(show_id, _Channel()).clients.add(client)
        return client

    def remove(self, show_id: str, client: SseClient) -> None:
        channel = self._channels.get(show_id)
        if channel is not None:
            channel.clients.discard(client)
        if not client.done.done():
            client.done.set_result(None)

    # --- events ------------------------------------------------------------------------
    def publish(self, show_id: str, event: dict[str, Any]) -> None:
        """Queue an event for every stream of the show (call on the event loop)."""
        channel = self._channels.get(show_id)
        if channel is None or not channel.clients:
            return
        personal = event.get("type") in self.personal
        channel.pending.append(_Personal(event) if personal else encode(event))
        if channel.scheduled is None:
            loop = asyncio.get_running_loop()
            delay = max(0.0, channel.last_flush + FLUSH_S - loop.time())
            channel.scheduled = loop.call_later(delay, self._flush, show_id)

    def _flush(self, show_id: str) -> None:
        channel = self._channels[show_id]
        channel.scheduled = None
        channel.last_flush = asyncio.get_running_loop().time()
        items, channel.pending = channel.pending, []
        if not any(isinstance(item, _Personal) for item in items):
            data = b"".join(items)  # type: ignore[arg-type]
            if data:
                self._write_all(show_id, channel, Frame.of(data))
            return
        # Some events are personal: streams that see them alike share one chunk.
        frames: dict[tuple, Frame] = {}
        for client in list(channel.clients):
            key = tuple(
                (client.staff, client.viewer is not None and client.viewer == i.event.get("viewer"))
                for i in items
                if isinstance(i, _Personal)
            )
            frame = frames.get(key)
            if frame is None:
                frame = frames[key] = Frame.of(b"".join(self._shown(items, client)))
            if frame.raw:  # (an empty chunk would end the stream)
                self._write_all(show_id, channel, frame, only=client)

    def _shown(self, items: list[bytes | _Personal], client: SseClient) -> list[bytes]:
        assert self.view is not None
        out: list[bytes] = []
        for item in items:
            if isinstance(item, _Personal):
                seen = self.view(item.event, client.viewer, client.staff)
                if seen is not None:
                    out.append(encode(seen))
            else:
                out.append(item)
        return out

    def _write_all(
        self, show_id: str, channel: _Channel, frame: Frame, only: SseClient | None = None
    ) -> None:
        for client in [only] if only is not None else list(channel.clients):
            t = client.transport
            if t.is_closing():
                self.remove(show_id, client)
            elif t.get_write_buffer_size() > MAX_BUFFER:
                self.evicted += 1
                log.info("show %s: closing an event stream that fell behind", show_id)
                t.close()
                self.remove(show_id, client)
            else:
                t.write(frame.chunked if client.chunked else frame.raw)

    # --- sweep and heartbeat -------------------------------------------------------------
    async def _housekeeping(self) -> None:
        since_beat = 0.0
        beat = Frame.of(b": keep-alive\n\n")
        while True:
            await asyncio.sleep(SWEEP_S)
            since_beat += SWEEP_S
            for show_id, channel in list(self._channels.items()):
                for client in list(channel.clients):
                    if client.transport.is_closing():
                        self.remove(show_id, client)
                if since_beat >= HEARTBEAT_S:
                    self._write_all(show_id, channel, beat)
            if since_beat >= HEARTBEAT_S:
                since_beat = 0.0

    async def close(self) -> None:
        """End every stream (server shutting down)."""
        for show_id, channel in self._channels.items():
            if channel.scheduled is not None:
                channel.scheduled.cancel()
                channel.scheduled = None
            for client in list(channel.clients):
                self.remove(show_id, client)
        await tasks.stop(self._task)
        self._task = None
