"""A redis-py client that sends the Lua scripts of one event-loop turn as one pipeline.

In a flash drop hundreds of buyers' add-to-cart scripts become ready in the same turn of
the loop. One by one, each pays for a pooled connection, a timeout and a reply parse of
its own (100-130 us of CPU); coalesced into one non-transactional pipeline they share
the connection and the round trip (45-55 us each; the "Python client" rows of
``python -m load_tests.flash_drop``). Every script is still atomic on its own: only the
trip to Redis is shared.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ConnectionError as RedisConnectionError

Call = tuple[tuple[Any, ...], asyncio.Future]


class _Coalescing:
    """``evalsha`` and ``script_load`` calls are queued and go out on the next loop turn
    as one pipeline (on a cluster, redis-py splits it into one pipeline per node).

    At most ``MAX_IN_FLIGHT`` pipelines are on the wire at once; while they are, new calls
    wait in the queue and go out together with the next flush, so a burst makes bigger
    batches rather than more connections. Everything else is plain redis-py.
    """

    MAX_IN_FLIGHT = 4
    MAX_BATCH = 512

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._queue: list[Call] = []
        self._flush_scheduled = False
        self._in_flight = 0

    def evalsha(self, sha: str, numkeys: int, *keys_and_args: Any) -> Awaitable[Any]:  # type: ignore[override]
        return self._queued("EVALSHA", sha, numkeys, *keys_and_args)

    def script_load(self, script: str) -> Awaitable[str]:  # type: ignore[override]
        # Coalesced too: after a Redis restart every waiting buyer's script answers
        # NOSCRIPT at once, and each reloads it.
        return self._queued("SCRIPT LOAD", script)

    def _queued(self, *command: Any) -> asyncio.Future:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._queue.append((command, future))
        self._schedule(loop)
        return future

    def _schedule(self, loop: asyncio.AbstractEventLoop) -> None:
        if not self._flush_scheduled and self._in_flight < self.MAX_IN_FLIGHT:
            self._flush_scheduled = True
            # call_soon runs after every callback already ready in this turn, so the
            # calls those callbacks make join the same batch.
            loop.call_soon(self._start_flush)

    def _start_flush(self) -> None:
        self._flush_scheduled = False
        if not self._queue or self._in_flight >= self.MAX_IN_FLIGHT:
            return
        batch, self._queue = self._queue[: self.MAX_BATCH], self._queue[self.MAX_BATCH :]
        self._in_flight += 1
        task = asyncio.ensure_future(self._flush(batch))
        task.add_done_callback(self._flushed)
        if self._queue:  # more than one batch waiting: the next may go out at once
            self._schedule(task.get_loop())

    def _flushed(self, _task: asyncio.Future) -> None:
        self._in_flight -= 1
        if self._queue:
            self._schedule(asyncio.get_running_loop())

    async def _flush(self, batch: list[Call]) -> None:
        try:
            pipe = self.pipeline(transaction=False)  # type: ignore[attr-defined]
            for command, _ in batch:
                pipe.execute_command(*command)
            replies = await pipe.execute(raise_on_error=False)
        except BaseException as exc:
            error = exc if isinstance(exc, Exception) else RedisConnectionError("client closing")
            for _, future in batch:
                if not future.done():
                    future.set_exception(error)
            if not isinstance(exc, Exception):
                raise
            return
        for (_, future), reply in zip(batch, replies, strict=True):
            if future.done():  # the caller gave up (cancelled)
                continue
            if isinstance(reply, Exception):
                future.set_exception(reply)
            else:
                future.set_result(reply)


class CoalescingRedis(_Coalescing, aioredis.Redis):
    """A single Redis."""


class CoalescingRedisCluster(_Coalescing, RedisCluster):
    """A Redis Cluster: script calls are coalesced the same way (each EVALSHA goes to the
    node of its keys' slot). SCRIPT LOAD must reach every master, so it is not part of a
    pipeline: the callers that need the same script at once (after a failover or a
    restart, every waiting buyer's EVALSHA answers NOSCRIPT) share one load."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._loading: dict[str, asyncio.Task] = {}

    def script_load(self, script: str) -> Awaitable[str]:  # type: ignore[override]
        task = self._loading.get(script)
        if task is None:
            task = asyncio.ensure_future(RedisCluster.script_load(self, script))
            self._loading[script] = task
            task.add_done_callback(lambda _t: self._loading.pop(script, None))
        return asyncio.shield(task)  # a caller that gives up does not cancel the others'
