"""Chat at scale: SSE subscribers on two server processes, senders, a moderator.

    python -m load_tests.chat [--quick] [--subscribers 2000] [--rate 50] [--senders 200]

Two ``showroom serve`` processes share one embedded Redis. Half the subscribers hold an
SSE stream (``/api/shows/{show}/events``) on each; the senders (each with its own
cookie and display name, spread over both processes) post ``rate`` chat messages a
second between them; a moderator deletes about one message a second. Measured:

- **delivery**: post (the moment the request is written) to the ``chat`` event at each
  subscriber; p50/p99 over every (message, subscriber) pair, and p99 over messages of
  the *last* subscriber to get it ("to every subscriber");
- **delete**: the moderator's DELETE to the ``chat_deleted`` event at the last
  subscriber, and the message gone from history on both processes;
- **server CPU** of both processes in the measured window, per 1,000 subscribers;
- **raw Redis pub/sub floor**: the same fan-out (same number of subscribers, in two
  processes, same message rate, a payload of the same size) through redis-py directly,
  no HTTP: what Redis and a Python client cost before the server does anything.

Subscribers and senders are lean HTTP/1.1 clients on raw sockets (aiohttp's client
costs about as much CPU per event as the server, and shares the two cores with it).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import re
import sys
import tempfile
import time
from array import array
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from load_tests.common import (
    RESULTS,
    VideoSize,
    manifest_toml,
    median,
    percentile,
    proc_cpu_s,
    spawn_serve,
    table,
    write_section,
)
from load_tests.http_buyers import Buyer
from server.embedded import EmbeddedRedis, free_port

SHOW = "chatbench"
STAFF = "bench-staff"
MESSAGE_RE = re.compile(rb'"text":"b#(\d+)#')
DELETED_RE = re.compile(rb'"type":"chat_deleted","id":"([0-9-]+)"')
# ``serve`` options that lift per-address caps: every client here is 127.0.0.1. Each is
# passed only if this version of ``serve`` has it (0 = no cap for all of them).
LOOPBACK_LOAD_OPTIONS = (
    "--chat-ip-per-min",
    "--max-connections-per-ip",
    "--max-streams-per-ip",
    "--max-viewers-per-ip",
)


def loopback_load_flags() -> list[str]:
    import subprocess

    helptext = subprocess.run(
        [sys.executable, "-m", "server.cli", "serve", "--help"],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
    ).stdout
    flags: list[str] = []
    for option in LOOPBACK_LOAD_OPTIONS:
        if re.search(re.escape(option) + r"\b", helptext):
            flags += [option, "0"]
    return flags


@dataclass
class Config:
    subscribers: int = 2000
    senders: int = 200
    rate: float = 50.0  # messages a second, all senders together
    seconds: float = 20.0
    deletes_per_s: float = 1.0
    floor_seconds: float = 10.0
    quick: bool = False


def own_cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


# --- SSE subscribers (in their own processes) ----------------------------------------


@dataclass
class Arrivals:
    """What one subscriber process saw: (seq, wall time) per delivered chat event and
    (message id, wall time) per chat_deleted event."""

    seqs: array = field(default_factory=lambda: array("q"))
    times: array = field(default_factory=lambda: array("d"))
    deleted: list[tuple[str, float]] = field(default_factory=list)


class Subscriber(asyncio.Protocol):
    def __init__(self, seen: Arrivals, host: str, port: int, ready: asyncio.Event) -> None:
        self.seen, self.host, self.port, self.ready = seen, host, port, ready
        self.buffer = b""
        self.transport: asyncio.Transport | None = None
        self.open = False

    def connection_made(self, transport) -> None:
        self.transport = transport
        transport.write(
            f"GET /api/shows/{SHOW}/events HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            "Accept: text/event-stream\r\n\r\n".encode()
        )

    def data_received(self, data: bytes) -> None:
        now = time.time()
        if not self.open:
            self.buffer += data
            if b"retry:" not in self.buffer:
                return
            self.open = True
            self.ready.set()
            data, self.buffer = self.buffer, b""
        # events may straddle reads: look only up to the last complete one
        data = self.buffer + data
        cut = data.rfind(b"\n\n")
        if cut < 0:
            self.buffer = data
            return
        self.buffer, data = data[cut + 2 :], data[:cut]
        seen = self.seen
        for m in MESSAGE_RE.finditer(data):
            seen.seqs.append(int(m.group(1)))
            seen.times.append(now)
        if b"chat_deleted" in data:
            for m in DELETED_RE.finditer(data):
                seen.deleted.append((m.group(1).decode(), now))

    def connection_lost(self, exc) -> None:
        self.transport = None


async def connect_subscribers(seen: Arrivals, url: str, n: int) -> list[Subscriber]:
    loop = asyncio.get_running_loop()
    host, port = url.split("//")[1].split(":")
    subs: list[Subscriber] = []
    events: list[asyncio.Event] = []
    for i in range(n):
        ready = asyncio.Event()
        sub = Subscriber(seen, host, int(port), ready)
        await loop.create_connection(lambda sub=sub: sub, host, int(port))
        subs.append(sub)
        events.append(ready)
        if i % 100 == 99:
            await asyncio.sleep(0.02)  # a steady join, not one SYN flood
    await asyncio.wait_for(asyncio.gather(*(e.wait() for e in events)), 60)
    return subs


def _subscriber_worker(url: str, n: int, conn) -> None:
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover
        pass
    asyncio.run(_subscribers(url, n, conn))


async def _subscribers(url: str, n: int, conn) -> None:
    seen = Arrivals()
    subs = await connect_subscribers(seen, url, n)
    conn.send("ready")
    loop = asyncio.get_running_loop()
    assert await loop.run_in_executor(None, conn.recv) == "start"
    cpu0 = own_cpu_seconds()
    assert await loop.run_in_executor(None, conn.recv) == "stop"
    cpu = own_cpu_seconds() - cpu0
    open_streams = sum(1 for s in subs if s.transport is not None)
    for s in subs:
        if s.transport is not None:
            s.transport.close()
    conn.send((seen.seqs.tobytes(), seen.times.tobytes(), seen.deleted, cpu, open_streams))


class SubscriberProcesses:
    """One process of subscribers per server process (they share the two cores)."""

    def __init__(self, urls: list[str], n: int) -> None:
        ctx = mp.get_context("spawn")
        self.pipes, self.procs = [], []
        for i, url in enumerate(urls):
            parent, child = ctx.Pipe()
            count = n // len(urls) + (1 if i < n % len(urls) else 0)
            proc = ctx.Process(target=_subscriber_worker, args=(url, count, child), daemon=True)
            proc.start()
            self.pipes.append(parent)
            self.procs.append(proc)

    async def _recv_all(self) -> list:
        loop = asyncio.get_running_loop()
        return [await loop.run_in_executor(None, p.recv) for p in self.pipes]

    async def ready(self) -> None:
        assert await asyncio.wait_for(self._recv_all(), 120) == ["ready"] * len(self.pipes)

    def start(self) -> None:
        for p in self.pipes:
            p.send("start")

    async def stop(self) -> tuple[Arrivals, float, int]:
        for p in self.pipes:
            p.send("stop")
        merged, cpu, still_open = Arrivals(), 0.0, 0
        for raw_seqs, raw_times, deleted, c, o in await self._recv_all():
            seqs, times = array("q"), array("d")
            seqs.frombytes(raw_seqs)
            times.frombytes(raw_times)
            merged.seqs.extend(seqs)
            merged.times.extend(times)
            merged.deleted.extend(deleted)
            cpu += c
            still_open += o
        for proc in self.procs:
            proc.join(10)
        return merged, cpu, still_open

    def kill(self) -> None:
        for proc in self.procs:
            if proc.is_alive():
                proc.kill()


# --- senders and the moderator -------------------------------------------------------


async def make_senders(urls: list[str], n: int) -> list[Buyer]:
    senders = []
    for i in range(n):
        b = Buyer.for_url(urls[i % len(urls)])
        answer = await b.request("PUT", "/api/me", {"name": f"Sender {i}"})
        assert answer.status == 200, answer
        senders.append(b)
    return senders


@dataclass
class Sent:
    """What the senders and the moderator did (wall-clock times: the subscribers are
    other processes)."""

    at: dict[int, float] = field(default_factory=dict)  # seq -> time the POST was written
    ids: dict[int, str] = field(default_factory=dict)  # seq -> message id (answered 201)
    answered: dict[int, float] = field(default_factory=dict)  # seq -> POST round trip, s
    deleted_at: dict[str, float] = field(default_factory=dict)  # id -> DELETE written


async def send_loop(cfg: Config, tally: Sent, senders: list[Buyer], stop_at: float) -> int:
    """Post at cfg.rate on a fixed schedule (an open loop: a slow answer does not slow
    the next post). Returns failures."""
    failures = 0
    seq = 0
    interval = 1.0 / cfg.rate
    start = time.monotonic()
    pending: set[asyncio.Task] = set()
    busy: set[int] = set()

    async def post(i: int, b: Buyer, s: int) -> None:
        nonlocal failures
        busy.add(i)
        try:
            tally.at[s] = time.time()
            answer = await b.request("POST", f"/api/shows/{SHOW}/chat", {"text": f"b#{s}# hi"})
            if answer.status != 201:
                failures += 1
            else:
                tally.ids[s] = json.loads(answer.body)["id"]
                tally.answered[s] = time.time() - tally.at[s]
        except Exception:
            failures += 1
        finally:
            busy.discard(i)

    while True:
        due = start + seq * interval
        if due >= stop_at:
            break
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        i = seq % len(senders)
        if i in busy:  # that sender's last post has not come back: count it as failed
            failures += 1
        else:
            task = asyncio.create_task(post(i, senders[i], seq))
            pending.add(task)
            task.add_done_callback(pending.discard)
        seq += 1
    if pending:
        await asyncio.wait(pending, timeout=10)
    return failures


async def delete_loop(
    cfg: Config, tally: Sent, urls: list[str], stop_at: float
) -> tuple[int, list[float]]:
    """Delete a recent message about once a second, alternating processes; after each
    answer check it is gone from history on every process. Returns (failures, seconds
    from DELETE to gone from every history)."""
    failures, gone_s = 0, []
    headers = {"Authorization": f"Bearer {STAFF}"}
    async with aiohttp.ClientSession() as http:
        k = 0
        await asyncio.sleep(1.0)
        while time.monotonic() < stop_at - 1.0:
            candidates = [
                s for s in sorted(tally.ids)[-20:] if tally.ids[s] not in tally.deleted_at
            ]
            if candidates:
                mid = tally.ids[candidates[0]]
                url = urls[k % len(urls)]
                k += 1
                t0 = time.monotonic()
                tally.deleted_at[mid] = time.time()
                async with http.delete(f"{url}/api/shows/{SHOW}/chat/{mid}", headers=headers) as r:
                    if r.status != 200:
                        failures += 1
                        continue
                for other in urls:
                    async with http.get(f"{other}/api/shows/{SHOW}/chat") as r:
                        body = await r.json()
                    if any(m["id"] == mid for m in body["messages"]):
                        failures += 1
                gone_s.append(time.monotonic() - t0)
            await asyncio.sleep(1.0 / cfg.deletes_per_s)
    return failures, gone_s


# --- the raw Redis pub/sub floor -----------------------------------------------------


def _floor_worker(redis_url: str, n: int, seconds: float, payload: int, conn) -> None:
    asyncio.run(_floor_subscribers(redis_url, n, seconds, payload, conn))


async def _floor_subscribers(redis_url: str, n: int, seconds: float, payload: int, conn) -> None:
    import redis.asyncio as aioredis

    latencies = array("d")
    got = 0
    clients, pubsubs = [], []
    for _ in range(n):
        client = aioredis.Redis.from_url(redis_url)
        ps = client.pubsub()
        await ps.subscribe("floor")
        clients.append(client)
        pubsubs.append(ps)

    async def listen(ps) -> None:
        nonlocal got
        async for msg in ps.listen():
            if msg["type"] != "message":
                continue
            now = time.time()
            data = msg["data"]
            sent = float(data[: data.index(b"|")])
            latencies.append(now - sent)
            got += 1

    tasks = [asyncio.create_task(listen(ps)) for ps in pubsubs]
    conn.send("ready")
    cpu0 = own_cpu_seconds()
    await asyncio.sleep(seconds + 2.0)
    cpu = own_cpu_seconds() - cpu0
    for t in tasks:
        t.cancel()
    conn.send((latencies.tobytes(), got, cpu))
    for ps in pubsubs:
        await ps.aclose()
    for client in clients:
        await client.aclose()


async def redis_floor(redis_url: str, cfg: Config, payload: int) -> dict:
    import redis.asyncio as aioredis

    ctx = mp.get_context("spawn")
    procs, pipes = [], []
    for i in range(2):
        parent, child = ctx.Pipe()
        n = cfg.subscribers // 2 + (cfg.subscribers % 2 if i == 0 else 0)
        p = ctx.Process(
            target=_floor_worker, args=(redis_url, n, cfg.floor_seconds, payload, child)
        )
        p.start()
        procs.append(p)
        pipes.append(parent)
    loop = asyncio.get_running_loop()
    for pipe in pipes:
        assert await loop.run_in_executor(None, pipe.recv) == "ready"
    pub = aioredis.Redis.from_url(redis_url)
    interval = 1.0 / cfg.rate
    start = time.monotonic()
    sent = 0
    publishing: set[asyncio.Task] = set()
    while time.monotonic() < start + cfg.floor_seconds:
        due = start + sent * interval
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        stamp = f"{time.time():.6f}|".encode()
        # an open loop, like the senders: a slow PUBLISH does not hold up the next
        task = asyncio.create_task(
            pub.publish("floor", stamp + b"x" * max(0, payload - len(stamp)))
        )
        publishing.add(task)
        task.add_done_callback(publishing.discard)
        sent += 1
    if publishing:
        await asyncio.wait(publishing, timeout=10)
    await pub.aclose()
    latencies = array("d")
    got, cpu = 0, 0.0
    for pipe in pipes:
        raw, n, c = await loop.run_in_executor(None, pipe.recv)
        part = array("d")
        part.frombytes(raw)
        latencies.extend(part)
        got += n
        cpu += c
    for p in procs:
        p.join(20)
    return {
        "sent": sent,
        "expected": sent * cfg.subscribers,
        "got": got,
        "latencies": list(latencies),
        "client_cpu_s": cpu,
        "seconds": cfg.floor_seconds,
    }


# --- the run ---------------------------------------------------------------------------


@dataclass
class Result:
    cfg: Config
    messages: int
    post_failures: int
    deliveries: int
    expected: int
    latencies: list[float]
    to_all: list[float]  # per message: the last subscriber's latency
    post_rtt: list[float]  # per message: POST written -> 201 read
    delete_to_all: list[float]
    delete_history_s: list[float]
    delete_failures: int
    deletes_reached_all: int
    server_cpu_s: float
    idle_cpu_s: float
    client_cpu_s: float
    subscriber_cpu_s: float
    streams_open_at_end: int
    serve_flags: list[str]
    load_avg: tuple[float, float]  # the machine's 1-minute load average, before and after
    window_s: float
    floor: dict

    def cpu_per_1000(self) -> float:
        """Server cores (CPU-seconds a second) per 1,000 subscribers."""
        return self.server_cpu_s / self.window_s / (self.cfg.subscribers / 1000)


def write_manifest(folder: Path) -> Path:
    path = folder / f"{SHOW}.toml"
    path.write_text(
        manifest_toml(
            SHOW,
            title="Chat bench",
            stream_key="bench-stream-key",
            staff_password=STAFF,
            # a tiny slate keeps the compositors' share of the two cores small
            video=VideoSize(320, 180, 5, 200),
            products='[[products]]\nsku = "MUG-01"\nname = "Mug"\nprice = "18.00"\nstock = 10\n',
        )
    )
    return path


async def run(cfg: Config) -> Result:
    tmp = Path(tempfile.mkdtemp(prefix="chat-bench-"))
    redis = EmbeddedRedis(tmp / "redis")
    redis.start()
    procs = []
    subscribers: SubscriberProcesses | None = None
    try:
        manifest = write_manifest(tmp)
        extra = loopback_load_flags()
        load_before = os.getloadavg()[0]
        for i in range(2):
            args = ["--manifest", str(manifest), "--port", str(free_port()), "--redis", redis.url]
            args += ["--data-dir", str(tmp / f"var{i}"), "--no-print-worker", *extra]
            procs.append(spawn_serve(args, log_path=tmp / f"serve{i}.log"))
        urls = [u for _, u in procs]
        pids = [p.pid for p, _ in procs]
        await asyncio.sleep(1.0)
        c0 = sum(proc_cpu_s(p) for p in pids)
        await asyncio.sleep(2.0)
        idle = (sum(proc_cpu_s(p) for p in pids) - c0) / 2.0

        subscribers = SubscriberProcesses(urls, cfg.subscribers)
        await subscribers.ready()
        senders = await make_senders(urls, cfg.senders)
        await asyncio.sleep(1.0)
        print(f"{cfg.subscribers} subscribers and {len(senders)} senders ready", file=sys.stderr)

        sent = Sent()
        subscribers.start()
        t0 = time.monotonic()
        cpu0, own0 = sum(proc_cpu_s(p) for p in pids), own_cpu_seconds()
        stop_at = t0 + cfg.seconds
        (post_failures, (delete_failures, history_s)) = await asyncio.gather(
            send_loop(cfg, sent, senders, stop_at), delete_loop(cfg, sent, urls, stop_at)
        )
        window = time.monotonic() - t0
        server_cpu = sum(proc_cpu_s(p) for p in pids) - cpu0
        client_cpu = own_cpu_seconds() - own0
        # stragglers: on a busy machine the last posts may still be on their way
        slowest = max(sent.answered.values(), default=0.0)
        await asyncio.sleep(2.0 + min(10.0, 2 * slowest))
        seen, subscriber_cpu, still_open = await subscribers.stop()
        for b in senders:
            b.close()

        n = cfg.subscribers
        latencies: list[float] = []
        last: dict[int, float] = {}
        got: dict[int, int] = {}
        for seq, at in zip(seen.seqs, seen.times, strict=True):
            sent_at = sent.at.get(seq)
            if sent_at is None:
                continue
            latencies.append(at - sent_at)
            last[seq] = max(last.get(seq, 0.0), at)
            got[seq] = got.get(seq, 0) + 1
        posted = [s for s in sent.at if s in sent.ids]  # answered 201
        to_all = [last[s] - sent.at[s] if got.get(s) == n else float("inf") for s in posted]
        del_last: dict[str, float] = {}
        del_got: dict[str, int] = {}
        for mid, at in seen.deleted:
            if mid in sent.deleted_at:
                del_last[mid] = max(del_last.get(mid, 0.0), at)
                del_got[mid] = del_got.get(mid, 0) + 1
        deletes = list(sent.deleted_at)
        del_all = [
            del_last[d] - sent.deleted_at[d] if del_got.get(d) == n else float("inf")
            for d in deletes
        ]
        payload = 260  # about the size of one chat event on the wire
        floor = await redis_floor(redis.url, cfg, payload)
        return Result(
            cfg=cfg,
            messages=len(posted),
            post_failures=post_failures,
            deliveries=len(latencies),
            expected=len(posted) * n,
            latencies=latencies,
            post_rtt=list(sent.answered.values()),
            to_all=to_all,
            delete_to_all=del_all,
            delete_history_s=history_s,
            delete_failures=delete_failures,
            deletes_reached_all=sum(1 for d in deletes if del_got.get(d) == n),
            server_cpu_s=server_cpu,
            idle_cpu_s=idle * window,
            client_cpu_s=client_cpu,
            subscriber_cpu_s=subscriber_cpu,
            streams_open_at_end=still_open,
            serve_flags=extra,
            load_avg=(load_before, os.getloadavg()[0]),
            window_s=window,
            floor=floor,
        )
    finally:
        if subscribers is not None:
            subscribers.kill()
        for proc, _ in procs:
            proc.terminate()
        for proc, _ in procs:
            try:
                proc.wait(15)
            except Exception:
                proc.kill()
        redis.stop()


def ms(v: float) -> float:
    return v * 1000


def plot(r: Result, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.5))
    for values, label, colour in (
        (r.latencies, "chat event via server SSE (every delivery)", "#c64"),
        (r.floor["latencies"], "raw Redis pub/sub, redis-py (every delivery)", "#48a"),
    ):
        ordered = sorted(ms(v) for v in values)
        if ordered:
            step = max(1, len(ordered) // 2000)
            xs = ordered[::step]
            ys = [i * step / len(ordered) * 100 for i in range(len(xs))]
            ax1.plot(xs, ys, label=label, color=colour)
    ax1.axvline(250, ls="--", color="gray", label="target p99 250 ms")
    ax1.set_xscale("log")
    ax1.set_xlabel("post -> subscriber (ms)")
    ax1.set_ylabel("% of deliveries")
    ax1.set_title(f"{r.cfg.subscribers} subscribers, {r.cfg.rate:.0f} messages/s")
    ax1.legend(fontsize=8)
    finite = [ms(v) for v in r.delete_to_all if v != float("inf")]
    ax2.bar(range(len(finite)), finite, color="#4a7")
    ax2.axhline(1000, ls="--", color="gray", label="target 1 s")
    ax2.set_xlabel("delete #")
    ax2.set_ylabel("DELETE -> last subscriber (ms)")
    ax2.set_title("Moderation delete, effective everywhere")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)


def report(r: Result, command: str) -> tuple[str, bool]:
    cfg = r.cfg
    fl = r.floor
    p99_all = percentile(r.to_all, 99)
    p99_del = percentile(r.delete_to_all, 99)
    rows = [
        [
            "chat via server SSE (2 processes)",
            cfg.subscribers,
            r.messages,
            f"{r.deliveries}/{r.expected}",
            f"{ms(median(r.latencies)):.1f}",
            f"{ms(percentile(r.latencies, 99)):.1f}",
            f"{ms(p99_all):.1f}",
            f"{ms(max(r.latencies, default=float('nan'))):.0f}",
        ],
        [
            "raw limit: Redis pub/sub via redis-py",
            cfg.subscribers,
            fl["sent"],
            f"{fl['got']}/{fl['expected']}",
            f"{ms(median(fl['latencies'])):.1f}",
            f"{ms(percentile(fl['latencies'], 99)):.1f}",
            "-",
            f"{ms(max(fl['latencies'], default=float('nan'))):.0f}",
        ],
    ]
    t1 = table(
        [
            "path",
            "subscribers",
            "messages",
            "delivered",
            "p50 ms",
            "p99 ms",
            "p99 to every subscriber ms",
            "max ms",
        ],
        rows,
    )
    cores = r.server_cpu_s / r.window_s
    idle_cores = r.idle_cpu_s / r.window_s
    t2 = table(
        ["figure", "value"],
        [
            [
                "POST /chat answered p50 / p99 ms",
                f"{ms(median(r.post_rtt)):.1f} / {ms(percentile(r.post_rtt, 99)):.1f}",
            ],
            ["moderation deletes", len(r.delete_to_all)],
            ["delete -> every subscriber p50 ms", f"{ms(median(r.delete_to_all)):.1f}"],
            ["delete -> every subscriber p99 ms", f"{ms(p99_del):.1f}"],
            [
                "delete -> gone from both histories, p99 ms",
                f"{ms(percentile(r.delete_history_s, 99)):.1f}",
            ],
            [
                "deletes that reached every subscriber",
                f"{r.deletes_reached_all}/{len(r.delete_to_all)}",
            ],
            ["failed posts / deletes", f"{r.post_failures} / {r.delete_failures}"],
            ["server CPU, both processes (cores)", f"{cores:.2f}"],
            ["of which idle (compositor, heartbeats; cores)", f"{idle_cores:.2f}"],
            ["server CPU per 1,000 subscribers (cores)", f"{r.cpu_per_1000():.3f}"],
            [
                "server CPU per delivered event (us)",
                f"{r.server_cpu_s / max(1, r.deliveries) * 1e6:.1f}",
            ],
            ["senders + moderator CPU (cores)", f"{r.client_cpu_s / r.window_s:.2f}"],
            ["subscriber processes CPU (cores)", f"{r.subscriber_cpu_s / (r.window_s + 2):.2f}"],
            ["streams still open at the end", f"{r.streams_open_at_end}/{cfg.subscribers}"],
            [
                "floor client CPU, 2 processes (cores)",
                f"{fl['client_cpu_s'] / (fl['seconds'] + 2):.2f}",
            ],
        ],
    )
    ok_delivery = p99_all <= 0.250
    ok_delete = p99_del <= 1.0
    ok_all = r.deliveries == r.expected and r.post_failures == 0
    verdict = (
        f"Targets: delivery to every subscriber p99 <= 250 ms: "
        f"{'met' if ok_delivery else 'NOT met'} ({ms(p99_all):.0f} ms); moderation delete "
        f"everywhere p99 <= 1 s: {'met' if ok_delete else 'NOT met'} ({ms(p99_del):.0f} ms); "
        f"every message to every subscriber and no failed post: {'yes' if ok_all else 'NO'}."
    )
    body = (
        f"{cfg.subscribers} SSE subscribers split over 2 `serve` processes on one Redis, "
        f"{cfg.senders} senders posting {cfg.rate:.0f} messages/s for {cfg.seconds:.0f} s "
        f"(open loop), a moderator deleting ~{cfg.deletes_per_s:.0f}/s. `serve` options: "
        f"`{' '.join(r.serve_flags)}` (per-address caps off: every client is 127.0.0.1). "
        f"Machine load average (1 min) {r.load_avg[0]:.1f} before, {r.load_avg[1]:.1f} after "
        "(the two cores are shared with other work).\n\n"
        f"{t1}\n\n{t2}\n\n{verdict}\n\n"
        "*p99 to every subscriber*: per message, the latency of the last subscriber to get "
        "it. The raw-limit row is the same fan-out (same subscribers in two processes, same "
        "rate, a payload of the same size) through redis-py pub/sub directly, with no "
        "HTTP: what Redis plus a Python client cost before any server work. All clients run "
        "on the same two cores as the servers, so both rows include client time.\n\n"
        f"![chat](load_tests/results/chat{'_quick' if cfg.quick else ''}.png)"
    )
    return body, ok_delivery and ok_delete and ok_all


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, a smoke run")
    parser.add_argument("--subscribers", type=int)
    parser.add_argument("--senders", type=int)
    parser.add_argument("--rate", type=float)
    parser.add_argument("--seconds", type=float)
    parser.add_argument("--write", action="store_true", help="write BENCHMARKS.md even if quick")
    args = parser.parse_args(argv)
    cfg = Config(quick=args.quick)
    if args.quick:
        cfg = Config(subscribers=100, senders=40, rate=10, seconds=4, floor_seconds=2, quick=True)
    for name in ("subscribers", "senders", "rate", "seconds"):
        if getattr(args, name) is not None:
            setattr(cfg, name, getattr(args, name))
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover
        pass
    result = asyncio.run(run(cfg))
    command = "python -m load_tests.chat" + (" --quick" if cfg.quick else "")
    body, ok = report(result, command)
    print(body)
    png = RESULTS / f"chat{'_quick' if cfg.quick else ''}.png"
    plot(result, png)
    if not cfg.quick or args.write:
        write_section("chat", command, body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
