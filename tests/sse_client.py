"""A real Server-Sent Events client for tests: any base URL, its own session."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time

import aiohttp


class EventStream:
    """Reads /api/shows/{show}/events; every event is kept with the time it arrived."""

    def __init__(self, session: aiohttp.ClientSession, base: str, show: str = "demo") -> None:
        self.session, self.url = session, f"{base}/api/shows/{show}/events"
        self.events: list[tuple[float, dict]] = []
        self._new = asyncio.Condition()
        self._task: asyncio.Task | None = None
        self._ready = asyncio.Event()

    async def __aenter__(self) -> EventStream:
        self._task = asyncio.create_task(self._run())
        await asyncio.wait_for(self._ready.wait(), 5)
        return self

    async def __aexit__(self, *exc) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def _run(self) -> None:
        async with self.session.get(self.url, timeout=aiohttp.ClientTimeout(total=None)) as resp:
            assert resp.status == 200
            self._ready.set()
            async for line in resp.content:
                if line.startswith(b"data: "):
                    event = json.loads(line[6:])
                    async with self._new:
                        self.events.append((time.monotonic(), event))
                        self._new.notify_all()

    def of(self, kind: str) -> list[dict]:
        return [e for _, e in self.events if e.get("type") == kind]

    async def wait_for(self, predicate, within: float = 5.0) -> tuple[float, dict]:
        """The first event (arrival time, event) matching predicate, waiting if needed."""

        async def find():
            async with self._new:
                while True:
                    for at, event in self.events:
                        if predicate(event):
                            return at, event
                    await self._new.wait()

        return await asyncio.wait_for(find(), within)
