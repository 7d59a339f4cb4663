"""Live events across processes: Redis pub/sub in, local subscribers out.

``publish`` sends an event (a dict with ``type``) for a show to every server process on
the Redis (msgpack on channel ``events:{show}``). Each process delivers it to:

- an *interceptor* for the show, if one is registered (the show's compositor: it applies
  the change to the picture and re-emits the event with ``media_ts`` once a composed frame
  shows it, via ``emit_local``);
- otherwise straight to its local SSE streams (``server.sse``: encoded once, written to
  every stream together) and listeners.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

import msgpack

from media import tasks
from server.sse import SseHub

log = logging.getLogger("showroom.events")

Event = dict[str, Any]
Listener = Callable[[str, Event], None]
CHANNEL_PREFIX = "events:"


def now_ms() -> int:
    return int(time.time() * 1000)


PERSONAL_TYPES = ("order",)  # events each stream sees its own way (visible_to)


def visible_to(event: Event, viewer: str | None, staff: bool) -> Event | None:
    """What one SSE subscriber may see of ``event`` (None: nothing).

    Order events carry the buyer (``viewer``) only to decide this; it is never sent.
    Staff of the show see every order; a buyer sees their own; everyone else sees only
    the sales counter (``{"type": "orders", "paid": n}``) when an order is paid."""
    if event.get("type") != "order":
        return event
    owner = event.get("viewer")
    shown = {k: v for k, v in event.items() if k != "viewer"}
    if staff or (viewer is not None and owner == viewer):
        return shown
    if event.get("status") == "paid" and isinstance(event.get("paid_orders"), int):
        return {
            "type": "orders",
            "show": event.get("show"),
            "ts": event.get("ts"),
            "paid": event["paid_orders"],
        }
    return None


class EventBus:
    def __init__(self, redis) -> None:
        self.redis = redis
        self.streams = SseHub(view=visible_to, personal=PERSONAL_TYPES)
        self._listeners: list[tuple[str | None, Listener]] = []
        self._interceptors: dict[str, Listener] = {}
        self._task: asyncio.Task | None = None
        self._ready = asyncio.Event()

    # --- lifecycle -------------------------------------------------------------------
    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="event-bus")
        await asyncio.wait_for(self._ready.wait(), 10)

    async def stop(self) -> None:
        await self.streams.close()
        await tasks.stop(self._task)

    async def _run(self) -> None:
        while True:
            pubsub = self.redis.pubsub()
            try:
                await pubsub.psubscribe(CHANNEL_PREFIX + "*")
                self._ready.set()
                async for msg in pubsub.listen():
                    if msg.get("type") != "pmessage":
                        continue
                    channel = msg["channel"]
                    channel = channel.decode() if isinstance(channel, bytes) else channel
                    try:
                        event = msgpack.unpackb(msg["data"])
                    except Exception:
                        log.warning("undecodable event on %s", channel)
                        continue
                    self._dispatch(channel[len(CHANNEL_PREFIX) :], event)
            except asyncio.CancelledError:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
                raise
            except Exception as exc:  # Redis went away: keep trying, events resume after
                log.warning("event bus lost Redis (%s); reconnecting", exc)
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
                await asyncio.sleep(0.5)

    # --- publishing ------------------------------------------------------------------
    async def publish(self, show_id: str, event: Event) -> None:
        event.setdefault("ts", now_ms())
        event.setdefault("show", show_id)
        await self.redis.publish(CHANNEL_PREFIX + show_id, msgpack.packb(event))

    def _dispatch(self, show_id: str, event: Event) -> None:
        interceptor = self._interceptors.get(show_id)
        if interceptor is not None:
            try:
                interceptor(show_id, event)
                return
            except Exception:
                log.exception("interceptor for %s failed; delivering event directly", show_id)
        self.emit_local(show_id, event)

    def emit_local(self, show_id: str, event: Event) -> None:
        """Deliver to this process's event streams and listeners only."""
        self.streams.publish(show_id, event)
        for sid, fn in self._listeners:
            if sid is None or sid == show_id:
                try:
                    fn(show_id, event)
                except Exception:
                    log.exception("event listener failed")

    # --- subscribing -----------------------------------------------------------------
    def add_listener(self, show_id: str | None, fn: Listener) -> None:
        self._listeners.append((show_id, fn))

    def set_interceptor(self, show_id: str, fn: Listener | None) -> None:
        if fn is None:
            self._interceptors.pop(show_id, None)
        else:
            self._interceptors[show_id] = fn
