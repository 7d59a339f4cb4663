"""Coalesced live stock events.

A flash drop changes a sku's stock thousands of times a second; viewers need to see the
number, not every step. Changes only mark a (show, sku) dirty; a flusher publishes the
current value of each dirty sku at most ``per_second`` times a second per process.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from checkout import keys
from checkout.drops import current_drop

log = logging.getLogger("showroom.checkout")

Publish = Callable[[str, dict], Awaitable[None]]


async def availability(redis, show_id: str) -> tuple[dict[str, int], dict | None]:
    """Units a viewer can add now, per sku (a running drop's remaining for its sku)."""
    raw = await redis.hgetall(keys.stock(show_id))
    levels = {k.decode(): int(v) for k, v in raw.items()}
    drop = await current_drop(redis, show_id)
    if drop is not None:
        levels[drop["sku"]] = drop["remaining"]
    return levels, drop


class StockNotifier:
    def __init__(
        self,
        redis,
        publish: Publish,
        drop_view: Callable[[str, dict | None], dict | None],
        per_second: float = 4,
    ) -> None:
        self.redis = redis
        self.publish = publish
        self.drop_view = drop_view
        self.interval = 1 / per_second
        self._dirty: dict[str, set[str]] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._closing = False

    def touch(self, show_id: str, sku: str) -> None:
        self._dirty.setdefault(show_id, set()).add(sku)
        self._wake.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="stock-notifier")

    async def stop(self) -> None:
        # A flag as well as cancel(): a cancellation that lands inside the Redis client
        # can be swallowed there, and the loop must still end.
        self._closing = True
        self._wake.set()
        if self._task:
            self._task.cancel()
            await asyncio.wait({self._task}, timeout=5)

    async def _run(self) -> None:
        while not self._closing:
            await self._wake.wait()
            self._wake.clear()
            if self._closing:
                return
            try:
                await self.flush()
            except Exception as exc:  # Redis hiccup: the next change retries
                log.warning("stock events not published: %s", exc)
            await asyncio.sleep(self.interval)

    async def flush(self) -> None:
        dirty, self._dirty = self._dirty, {}
        for show_id, skus in dirty.items():
            levels, drop = await availability(self.redis, show_id)
            for sku in sorted(skus):
                if sku in levels:
                    await self.publish(
                        show_id, {"type": "stock", "sku": sku, "available": levels[sku]}
                    )
            if drop is not None and drop["sku"] in skus:
                await self.publish(show_id, {"type": "drop", "drop": self.drop_view(show_id, drop)})
