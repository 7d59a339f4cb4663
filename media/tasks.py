"""Stopping background tasks so that a shutdown always ends.

A cancelled task can swallow its cancel and run on: Python 3.11's ``asyncio.wait_for``
does when the cancel lands as its wait ends, and so does redis-py's cluster client in
some of its retry paths (seen as ``serve`` on a Redis Cluster never exiting on SIGTERM).
``stop`` asks again until the task ends, so one swallowed cancel cannot hold a shutdown
forever. It lives in ``media/`` (which imports nothing of ``server/``) so that the media
path and the server share it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

log = logging.getLogger("showroom.tasks")

ASK_EVERY_S = 0.25
ATTEMPTS = 40  # 10 s in all


async def stop(*tasks: asyncio.Task | None) -> None:
    """Cancel ``tasks`` and wait until they have ended (None entries are skipped)."""
    pending = {t for t in tasks if t is not None and not t.done()}
    for _ in range(ATTEMPTS):
        if not pending:
            break
        for task in pending:
            task.cancel()
        _done, pending = await asyncio.wait(pending, timeout=ASK_EVERY_S)
    if pending:
        log.error("tasks did not stop: %s", ", ".join(t.get_name() for t in pending))
    for task in tasks:
        if task is not None and task.done() and not task.cancelled():
            with contextlib.suppress(Exception):
                task.exception()  # retrieved: a task that failed on its way out is not news
