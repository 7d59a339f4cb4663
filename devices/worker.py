"""The print worker: paid orders in (each show's Redis stream ``print:jobs:{show}``),
labels out.

One consumer group (``printers``) shares each stream between every worker on the Redis
(inside ``showroom serve`` and/or ``showroom printer-worker`` on a station machine); a
worker reads the streams of the shows in its manifests, one reader per stream (on a
Redis Cluster each show's stream is on its show's node). A job is named
``{show}.{entry id}`` (``Task.ref``): entry ids are unique only within one stream.

- Each stream entry becomes one label per printer (see ``devices.routing``). Each printer
  has a *lane*: a FIFO served by one task, so labels leave a printer in the order the
  orders were paid, and one offline printer never holds up another.
- Printer I/O blocks, so it runs in a thread. A job is XACKed only after every printer
  accepted all of its bytes; then the order moves to ``printed`` (reprints don't move it).
- A failing printer is retried with exponential backoff, keeping its lane in order. After
  ``park_after`` failures the job is *parked*: recorded in ``print:parked`` with its error
  (and ``print_error`` on the order) for staff, and retried every ``probe_interval_s``
  until the printer takes it, or at once when staff ask.
- The worker keeps its in-flight entries fresh (XCLAIM to itself); entries of a worker
  that died go idle and are taken over by XAUTOCLAIM after ``claim_idle_ms``. Printers
  that already printed their part of a job are remembered (``print:done:{entry}``) so a
  taken-over job does not print them again, and an order that is already ``printed`` is
  not printed again unless the job is a reprint.
- Stop (SIGINT/SIGTERM): no new jobs; a label being sent is finished; everything else stays
  pending for the next worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from checkout.orders import (
    Order,
    PrintJob,
    Status,
    TransitionError,
    load_order,
    order_key,
    print_stream,
    transition,
)
from devices import store
from devices.connections import Connection, LabelFile, PrinterError, open_connection
from devices.label import render_png
from devices.routing import PlannedLabel, plan_labels

log = logging.getLogger("showroom.print")

Publish = Callable[[str, dict[str, Any]], Awaitable[None]]
SKIP_UNLESS_REPRINT = {Status.PRINTED, Status.FULFILLED, Status.REFUNDED}


@dataclass
class WorkerOptions:
    park_after: int = 5  # failures before a job is parked for staff
    claim_idle_ms: int = 30_000  # a dead worker's jobs are taken over after this long
    send_timeout_s: float = 10.0  # a printer must take a whole label within this
    backoff_min_s: float = 0.2
    backoff_max_s: float = 5.0
    probe_interval_s: float = 2.0  # how often a parked printer is tried again
    idle_probe_s: float = 30.0  # status check of an idle printer
    trim_interval_s: float = 60.0  # acknowledged jobs leave the stream this often
    batch: int = 50

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> WorkerOptions:
        env = dict(os.environ) if env is None else env
        opts = cls()
        for name, attr, typ in (
            ("SHOWROOM_PRINT_PARK_AFTER", "park_after", int),
            ("SHOWROOM_PRINT_CLAIM_IDLE_MS", "claim_idle_ms", int),
            ("SHOWROOM_PRINT_TIMEOUT_S", "send_timeout_s", float),
            ("SHOWROOM_PRINT_BACKOFF_MAX_S", "backoff_max_s", float),
            ("SHOWROOM_PRINT_PROBE_S", "probe_interval_s", float),
        ):
            if env.get(name):
                setattr(opts, attr, typ(env[name]))
        return opts

    def backoff(self, attempts: int) -> float:
        return min(self.backoff_min_s * 2 ** max(0, attempts - 1), self.backoff_max_s)


@dataclass
class Task:
    """One stream entry: done when every printer in ``remaining`` printed its label."""

    entry_id: str
    job: PrintJob
    order: Order
    remaining: set[str]
    stream_show: str = ""  # the show whose stream the entry is in

    @property
    def ref(self) -> str:
        return job_ref(self.stream_show, self.entry_id)


def job_ref(show: str, entry_id: str) -> str:
    return f"{show}.{entry_id}"


@dataclass
class Part:
    task: Task
    planned: PlannedLabel

    @property
    def stem(self) -> str:
        kind = "reprint-" if self.task.job.reprint else ""
        return f"{self.task.order.number:04d}-{kind}{self.task.entry_id}"


@dataclass
class Lane:
    name: str
    connection: Connection
    shows: set[str]
    queue: deque[Part] = field(default_factory=deque)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    attempts: int = 0
    parked: str | None = None  # entry id of the parked head job
    online: bool | None = None
    last_error: str | None = None
    task: asyncio.Task | None = None


class PrintWorker:
    def __init__(
        self,
        redis,
        shows: dict[str, Any],
        *,
        base_url: str,
        publish: Publish | None = None,
        metrics=None,
        options: WorkerOptions | None = None,
        consumer: str | None = None,
    ) -> None:
        self.redis = redis
        self.shows = shows
        self.base_url = base_url
        self.publish = publish
        self.metrics = metrics
        self.opts = options or WorkerOptions()
        self.consumer = consumer or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.lanes: dict[str, Lane] = {}
        self.inflight: dict[str, Task] = {}
        self._stopping = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        self._finishing: set[asyncio.Task] = set()
        self._unknown_logged: set[str] = set()
        for show in shows.values():
            for printer in show.printers:
                lane = self.lanes.get(printer.name)
                if lane is None:
                    lane = Lane(printer.name, open_connection(printer.connection), set())
                    self.lanes[printer.name] = lane
                lane.shows.add(show.id)

    # --- lifecycle -------------------------------------------------------------------
    async def start(self) -> None:
        for show_id in self.shows:
            try:
                await self.redis.xgroup_create(
                    print_stream(show_id), store.GROUP, id="0", mkstream=True
                )
            except Exception as exc:  # BUSYGROUP: another worker made it first
                if "BUSYGROUP" not in str(exc):
                    raise
        for lane in self.lanes.values():
            lane.task = asyncio.create_task(self._lane_loop(lane), name=f"printer-{lane.name}")
            self._tasks.append(lane.task)
        for show_id in self.shows:
            self._tasks.append(
                asyncio.create_task(self._read_loop(show_id), name=f"print-reader-{show_id}")
            )
        self._tasks.append(asyncio.create_task(self._keepalive_loop(), name="print-keepalive"))
        log.info(
            "print worker %s started for printers: %s",
            self.consumer,
            ", ".join(self.lanes) or "(none)",
        )

    async def stop(self) -> None:
        """Finish the label being sent (if any); leave every other job pending."""
        self._stopping.set()
        for lane in self.lanes.values():
            lane.wake.set()
        lanes = [lane.task for lane in self.lanes.values() if lane.task]
        if lanes:
            await asyncio.wait(lanes, timeout=self.opts.send_timeout_s + 1)
        if self._finishing:
            await asyncio.wait(set(self._finishing), timeout=5)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self._hand_back()
        log.info(
            "print worker %s stopped; %d job(s) left pending", self.consumer, len(self.inflight)
        )

    async def _hand_back(self) -> None:
        """Mark unfinished jobs long idle, so the next worker takes them over at once
        instead of waiting claim_idle_ms (what a worker that dies cannot do)."""
        for show_id in self.shows:
            await self._hand_back_stream(print_stream(show_id))

    async def _hand_back_stream(self, stream: str) -> None:
        with contextlib.suppress(Exception):
            # Everything delivered to this worker, including entries read but not yet
            # laid out when the stop came.
            pending = await self.redis.xpending_range(
                stream, store.GROUP, "-", "+", 10_000, consumername=self.consumer
            )
            ids = [p["message_id"] for p in pending]
            if not ids:
                return
            await self.redis.xclaim(
                stream,
                store.GROUP,
                self.consumer,
                0,
                ids,
                idle=24 * 3600 * 1000,  # older than any worker waits
                justid=True,
            )

    # --- reading the stream ----------------------------------------------------------
    async def _read_loop(self, show_id: str) -> None:
        stream = print_stream(show_id)
        next_claim = 0.0
        next_trim = time.monotonic() + self.opts.trim_interval_s
        while not self._stopping.is_set():
            try:
                now = time.monotonic()
                if now >= next_claim:
                    await self._reclaim(show_id)
                    next_claim = now + max(0.2, self.opts.claim_idle_ms / 2000)
                if now >= next_trim:
                    next_trim = now + self.opts.trim_interval_s
                    trimmed = await store.trim_acknowledged(self.redis, stream)
                    if trimmed:
                        log.debug("print stream: %d acknowledged job(s) trimmed", trimmed)
                block = int(min(1000, max(100, (next_claim - time.monotonic()) * 1000)))
                reply = await self.redis.xreadgroup(
                    store.GROUP,
                    self.consumer,
                    {stream: ">"},
                    count=self.opts.batch,
                    block=block,
                )
                for _stream, entries in reply or []:
                    for entry_id, fields in entries:
                        await self._accept(show_id, _s(entry_id), fields)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if "NOGROUP" in str(exc):  # the stream was deleted (e.g. FLUSHALL): recreate
                    with contextlib.suppress(Exception):
                        await self.redis.xgroup_create(stream, store.GROUP, id="0", mkstream=True)
                else:
                    log.warning("print worker: Redis error (%s); retrying", exc)
                await asyncio.sleep(0.5)

    async def _reclaim(self, show_id: str) -> None:
        """Take over jobs that a dead worker left pending for longer than claim_idle_ms."""
        start = "0-0"
        for _ in range(20):  # bounded: at most 20 pages per pass
            reply = await self.redis.xautoclaim(
                print_stream(show_id),
                store.GROUP,
                self.consumer,
                min_idle_time=self.opts.claim_idle_ms,
                start_id=start,
                count=100,
            )
            start, entries = _s(reply[0]), reply[1]
            for entry_id, fields in entries:
                entry_id = _s(entry_id)
                if job_ref(show_id, entry_id) in self.inflight or fields is None:
                    continue
                log.info("print worker %s took over job %s", self.consumer, entry_id)
                await self._accept(show_id, entry_id, fields)
            if start == "0-0":
                break

    async def _keepalive_loop(self) -> None:
        """Reset the idle time of our in-flight jobs so no other worker takes them."""
        while True:
            await asyncio.sleep(max(0.1, self.opts.claim_idle_ms / 3000))
            by_show: dict[str, list[str]] = {}
            for task in list(self.inflight.values()):
                by_show.setdefault(task.stream_show, []).append(task.entry_id)
            # A minimum idle time: never take back a job another worker just took over
            # (possible only if this process stalled for longer than claim_idle_ms).
            for show_id, ids in by_show.items():
                with contextlib.suppress(Exception):
                    await self.redis.xclaim(
                        print_stream(show_id),
                        store.GROUP,
                        self.consumer,
                        self.opts.claim_idle_ms // 4,
                        ids,
                        justid=True,
                    )

    async def _accept(self, stream_show: str, entry_id: str, fields: dict) -> None:
        raw = fields.get(b"job") or fields.get("job")
        try:
            job = PrintJob.unpack(raw)
        except Exception:
            log.error("print job %s is unreadable; dropping it", entry_id)
            await self._ack(stream_show, entry_id)
            return
        show = self.shows.get(job.show)
        if show is None:
            # Left pending: a worker that has this show's manifest will take it over.
            if job.show not in self._unknown_logged:
                self._unknown_logged.add(job.show)
                log.error("print job for unknown show %r left for another worker", job.show)
            return
        order = await load_order(self.redis, job.order_id)
        if order is None:
            log.error("print job %s: order %s does not exist; dropping it", entry_id, job.order_id)
            await self._ack(stream_show, entry_id)
            return
        if not job.reprint and order.status in SKIP_UNLESS_REPRINT:
            log.info("order %s is already %s; not printing it again", order.order_id, order.status)
            await self._ack(stream_show, entry_id)
            return
        try:
            planned = await asyncio.to_thread(plan_labels, order, show, self.base_url, job.reprint)
        except Exception as exc:  # a label we cannot lay out: keep the job, tell staff
            log.exception("order %s: cannot lay out its label; job left pending", order.order_id)
            await self._set_print_error(order, f"cannot lay out the label: {exc}")
            return
        planned = [p for p in planned if p.printer.name in self.lanes]
        if not planned:
            await self._set_print_error(order, "the show has no printer for this order")
            log.error("order %s: no printer configured; job left pending", order.order_id)
            return
        ref = job_ref(stream_show, entry_id)
        done = {_s(m) for m in await self.redis.smembers(store.done_key(ref))}
        task = Task(entry_id, job, order, {p.printer.name for p in planned} - done, stream_show)
        self.inflight[ref] = task
        if not task.remaining:
            await self._finish(task)
            return
        for p in planned:
            if p.printer.name in task.remaining:
                lane = self.lanes[p.printer.name]
                lane.queue.append(Part(task, p))
                lane.wake.set()
                await self._report_queue(lane)

    # --- printing --------------------------------------------------------------------
    async def _lane_loop(self, lane: Lane) -> None:
        await self._probe(lane)
        while not self._stopping.is_set():
            if not lane.queue:
                lane.wake.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.opts.idle_probe_s):
                        await lane.wake.wait()
                if not lane.queue and not self._stopping.is_set():
                    if not lane.wake.is_set():
                        await self._probe(lane)
                continue
            part = lane.queue[0]
            try:
                where = await asyncio.to_thread(
                    lane.connection.send,
                    part.planned.data,
                    self.opts.send_timeout_s,
                    LabelFile(part.stem, lambda label=part.planned.label: render_png(label)),
                )
            except PrinterError as exc:
                await self._failed(lane, part, str(exc))
                continue
            except Exception as exc:  # a bug or an odd device: keep the job, report it
                log.exception("printer %s: unexpected error", lane.name)
                await self._failed(lane, part, f"{exc.__class__.__name__}: {exc}")
                continue
            lane.queue.popleft()
            if where:
                log.info(
                    "label #%d (order %s) printed to %s (+ PNG preview)",
                    part.task.order.number,
                    part.task.order.order_id,
                    where,
                )
            await self._printed(lane, part)

    async def _failed(self, lane: Lane, part: Part, error: str) -> None:
        lane.attempts += 1
        log.warning("printer %s: %s (attempt %d)", lane.name, error, lane.attempts)
        await self._set_status(lane, False, error)
        if lane.attempts >= self.opts.park_after and lane.parked != part.task.ref:
            lane.parked = part.task.ref
            await self._park(lane, part, error)
        elif lane.parked == part.task.ref:
            await self._update_parked(lane, part, error)
        delay = self.opts.probe_interval_s if lane.parked else self.opts.backoff(lane.attempts)
        await self._wait_retry(lane, delay)

    async def _wait_retry(self, lane: Lane, delay: float) -> None:
        """Sleep ``delay``, or less if staff ask to retry this printer, or we stop."""
        deadline = time.monotonic() + delay
        while not self._stopping.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(left, 0.25)):
                    await self._stopping.wait()
            with contextlib.suppress(Exception):
                if await self.redis.getdel(store.retry_key(lane.name)):
                    log.info("printer %s: retry requested by staff", lane.name)
                    return

    async def _printed(self, lane: Lane, part: Part) -> None:
        """Record the label (one round trip), then let the lane move on to the next one."""
        task = part.task
        lane.attempts = 0
        if lane.parked == task.ref:
            lane.parked = None
        came_back = lane.online is not True
        lane.online, lane.last_error = True, None
        pipe = self.redis.pipeline(transaction=False)
        pipe.sadd(store.done_key(task.ref), lane.name)
        pipe.expire(store.done_key(task.ref), store.DONE_TTL_S)
        pipe.hincrby(store.printer_key(lane.name), "printed", 1)
        pipe.hincrby(store.STATS, "printed", 1)
        pipe.hset(
            store.printer_key(lane.name),
            mapping={
                "online": "1",
                "last_error": "",
                "queued": len(lane.queue),
                "checked_at": repr(time.time()),
            },
        )
        pipe.hdel(store.PARKED, task.ref)  # also one parked by a worker that died
        await pipe.execute()
        if came_back:
            await self._announce(lane)
        task.remaining.discard(lane.name)
        if not task.remaining:
            self._background(self._finish(task))

    def _background(self, coro) -> None:
        t = asyncio.create_task(coro)
        self._finishing.add(t)
        t.add_done_callback(self._finishing.discard)

    async def _finish(self, task: Task) -> None:
        """Every label of the job is out: order -> printed, then XACK.

        The status moves first: if the worker dies between the two, the job is taken over
        and skipped (the order is already printed) rather than printed twice.
        """
        order = task.order
        status = order.status
        try:
            if not task.job.reprint:
                try:
                    await transition(self.redis, order.order_id, Status.PRINTED)
                    status = Status.PRINTED
                except TransitionError as exc:  # fulfilled or refunded meanwhile: leave it
                    status = Status(exc.current) if exc.current else status
                if self.metrics is not None:
                    self.metrics.label_latency.observe(max(0.0, time.time() - task.job.enqueued_at))
            # Not a transaction: on a Redis Cluster these keys live in different slots.
            pipe = self.redis.pipeline(transaction=False)
            pipe.xack(print_stream(task.stream_show), store.GROUP, task.entry_id)
            pipe.delete(store.done_key(task.ref))
            if order.print_error:
                pipe.hset(order_key(order.order_id), "print_error", "")
            await pipe.execute()
        except Exception as exc:  # Redis hiccup: the job stays pending and is taken over
            log.warning("could not record job %s as printed: %s", task.entry_id, exc)
            return
        self.inflight.pop(task.ref, None)
        await self._emit(
            order.show,
            order.event(status, printed=True, reprint=task.job.reprint),
        )

    async def _ack(self, stream_show: str, entry_id: str) -> None:
        await self.redis.xack(print_stream(stream_show), store.GROUP, entry_id)

    # --- parking and status ----------------------------------------------------------
    def _parked_record(self, lane: Lane, part: Part, error: str) -> store.ParkedJob:
        task = part.task
        return store.ParkedJob(
            entry_id=task.ref,
            order_id=task.order.order_id,
            show=task.order.show,
            number=task.order.number,
            printer=lane.name,
            error=error,
            attempts=lane.attempts,
            reprint=task.job.reprint,
            parked_at=time.time(),
        )

    async def _park(self, lane: Lane, part: Part, error: str) -> None:
        log.error(
            "printer %s: order %s parked after %d failures: %s",
            lane.name,
            part.task.order.order_id,
            lane.attempts,
            error,
        )
        await self.redis.hset(
            store.PARKED, part.task.ref, self._parked_record(lane, part, error).pack()
        )
        await self._set_print_error(part.task.order, f"printer {lane.name}: {error}")

    async def _update_parked(self, lane: Lane, part: Part, error: str) -> None:
        record = self._parked_record(lane, part, error)
        old = await self.redis.hget(store.PARKED, part.task.ref)
        if old:
            record.parked_at = store.ParkedJob.unpack(old).parked_at
        await self.redis.hset(store.PARKED, part.task.ref, record.pack())

    async def _set_print_error(self, order: Order, error: str) -> None:
        if await self.redis.exists(order_key(order.order_id)):
            await self.redis.hset(order_key(order.order_id), "print_error", error)
        order.print_error = error

    async def _probe(self, lane: Lane) -> None:
        try:
            await asyncio.to_thread(lane.connection.probe, self.opts.send_timeout_s)
        except PrinterError as exc:
            await self._set_status(lane, False, str(exc))
        except Exception as exc:
            await self._set_status(lane, False, f"{exc.__class__.__name__}: {exc}")
        else:
            await self._set_status(lane, True, None)

    async def _set_status(self, lane: Lane, online: bool, error: str | None) -> None:
        error = None if online else error
        changed = (online, error) != (lane.online, lane.last_error)
        lane.online, lane.last_error = online, error
        with contextlib.suppress(Exception):
            await self.redis.hset(
                store.printer_key(lane.name),
                mapping={
                    "online": "1" if online else "0",
                    "last_error": error or "",
                    "queued": len(lane.queue),
                    "checked_at": repr(time.time()),
                },
            )
        if changed:
            await self._announce(lane)

    async def _announce(self, lane: Lane) -> None:
        """A ``printer`` event for the staff page of every show using this printer."""
        if lane.online:
            log.info("printer %s is online", lane.name)
        event = {
            "type": "printer",
            "name": lane.name,
            "online": bool(lane.online),
            "last_error": lane.last_error,
        }
        for show_id in lane.shows:
            await self._emit(show_id, dict(event))

    async def _report_queue(self, lane: Lane) -> None:
        with contextlib.suppress(Exception):
            await self.redis.hset(store.printer_key(lane.name), "queued", len(lane.queue))

    async def _emit(self, show_id: str, event: dict[str, Any]) -> None:
        if self.publish is None:
            return
        try:
            await self.publish(show_id, event)
        except Exception as exc:
            log.warning("could not publish %s event: %s", event.get("type"), exc)


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


# --- ``showroom printer-worker`` ----------------------------------------------------


async def run_station(
    redis, shows: dict, base_url: str, publish: Callable[[str, dict], Awaitable[None]]
) -> int:
    """A print station: the worker alone, on the same Redis as the servers, until
    SIGINT/SIGTERM. The caller (the CLI) loads the manifests and wires the event bus."""
    worker = PrintWorker(
        redis, shows, base_url=base_url, publish=publish, options=WorkerOptions.from_env()
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await worker.start()
        print(f"printer-worker {worker.consumer} running", flush=True)
        await stop.wait()
    finally:
        await worker.stop()
    return 0
