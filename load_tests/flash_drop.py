"""Flash-drop benchmark: add-to-cart over HTTP against ``showroom serve``, next to the
raw limit of the same Redis running the same Lua script.

    python -m load_tests.flash_drop [--quick] [--workers N]

- **HTTP add-to-cart** (Showroom): one ``showroom serve`` process on its own Redis;
  N concurrent buyers, each with its own connection and cookie jar, press Buy in a closed
  loop for a fixed window (every add takes a hold through the add-to-cart Lua script).
  Latency is measured at the client, so it includes the client's own event loop on this
  machine. The client is the lean one in ``http_buyers.py``: aiohttp's client costs about
  as much CPU per request as the server, and on two cores would cap what it measures.
- **raw limit**: ``redis-benchmark`` running the same script via EVALSHA against the
  same Redis in the same run: what Redis alone can do with no HTTP, JSON or Python.
- ``--workers N``: instead, the HTTP closed loop against ``serve --workers 1`` and then
  ``serve --workers N`` in the same run (CPU summed over every server process), for the
  scaling ratio; its own BENCHMARKS.md section. ``wrk`` drives these buyers: on two cores
  the load generator's CPU comes out of the workers' share, and wrk's is the smallest.
- ``--cluster``: instead, the HTTP closed loop and the Python client rows against a
  single Redis and a 3-master Redis Cluster (``redis+cluster://``) in the same run, in
  alternating windows; its own BENCHMARKS.md section.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import functools
import io
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from checkout import keys, scripts
from checkout.carts import add_keys
from load_tests import wrk
from load_tests.common import (
    RESULTS,
    manifest_toml,
    median,
    percentile,
    spawn_serve,
    stop_process,
    table,
    tree_cpu_s,
    write_section,
)
from load_tests.http_buyers import Buyer, HttpError
from server.embedded import EmbeddedRedis, EmbeddedRedisCluster, free_port

MANIFEST = manifest_toml(
    "bench",
    title="Flash drop benchmark",
    stream_key="bench-stream-key",
    staff_password="bench-staff",
    products='[[products]]\nsku = "BAG-07"\nname = "Canvas tote"\nprice = "25.00"\nstock = 100000000\n',
)


@dataclass
class Config:
    concurrency: tuple[int, ...] = (200, 1000)
    window_s: float = 8.0
    warmup_s: float = 1.0
    redis_requests: int = 200_000
    presses_per_buyer_s: float = 1.0  # paced: each buyer presses Buy once a second
    burst_rounds: int = 5
    quick: bool = False


@dataclass
class Result:
    name: str
    concurrency: int
    ops: int
    seconds: float
    latencies_ms: list[float]
    errors: int = 0
    server_cpu_s: float | None = None  # CPU time the server process used in the window
    client_cpu_s: float | None = None  # and the load generator (this process)
    redis_cpu_s: float | None = None  # and Redis, where measured
    # (p50, p99) ms as redis-benchmark reported them (its latencies are not listed)
    percentiles: tuple[float, float] | None = None

    @property
    def capacity(self) -> float | None:
        """Adds per second one server process could do at 100% of one core."""
        if not self.server_cpu_s:
            return None
        return self.ops / self.server_cpu_s

    @property
    def rate(self) -> float:
        return self.ops / self.seconds if self.seconds else 0.0


def start_server(
    manifest: Path, redis_url: str, data_dir: Path, workers: int = 1
) -> tuple[subprocess.Popen, str]:
    args = ["--manifest", str(manifest), "--port", str(free_port()), "--redis", redis_url]
    args += ["--workers", str(workers)]
    # Every simulated buyer is on 127.0.0.1: no per-IP limits (--buyers-per-ip 0).
    args += ["--buyers-per-ip", "0"]
    # Thousands of buyers from one loopback address: no per-address connection cap.
    args += ["--max-connections-per-ip", "0"]
    return spawn_serve([*args, "--data-dir", str(data_dir), "--no-print-worker"])


async def _buyers(url: str, n: int) -> list[Buyer]:
    """n buyers, each with its own connection, cookie jar and viewer cookie."""
    buyers = [Buyer.for_url(url) for _ in range(n)]
    for i in range(0, n, 100):
        await asyncio.gather(*(b.request("GET", "/api/cart") for b in buyers[i : i + 100]))
    return buyers


def _close(buyers: list[Buyer]) -> None:
    for b in buyers:
        b.close()


BODY = json.dumps({"show": "bench", "sku": "BAG-07", "quantity": 1}).encode()


async def press(b: Buyer) -> bool:
    """One add-to-cart; False on an error answer or a failed connection (counted)."""
    try:
        return (await b.request("POST", "/api/cart/items", BODY)).status == 200
    except (HttpError, OSError):
        return False


def own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def burst_run(url: str, buyers: int, rounds: int) -> Result:
    """The flash-drop moment: every buyer presses Buy at the same instant."""
    sessions = await _buyers(url, buyers)
    latencies: list[float] = []
    errors = 0
    total = 0.0

    async def buy(b: Buyer, gate: asyncio.Event, released: list[float]) -> None:
        nonlocal errors
        await gate.wait()
        if not await press(b):
            errors += 1
        latencies.append((time.perf_counter() - released[0]) * 1000)

    for _ in range(rounds):
        gate, released = asyncio.Event(), [0.0]
        tasks = [asyncio.create_task(buy(b, gate, released)) for b in sessions]
        await asyncio.sleep(0.2)
        released[0] = time.perf_counter()
        gate.set()
        await asyncio.gather(*tasks)
        total += time.perf_counter() - released[0]
        await asyncio.sleep(0.3)
    _close(sessions)
    return Result(
        "HTTP burst: all press Buy at once", buyers, len(latencies), total, latencies, errors
    )


async def paced_run(url: str, buyers: int, rate: float, window_s: float) -> Result:
    """Open loop: buyers together offer ``rate`` adds/s; latency counts from the moment
    each press was due, so queueing in the server is not hidden."""
    sessions = await _buyers(url, buyers)
    latencies: list[float] = []
    errors = 0
    interval = buyers / rate
    start = time.perf_counter() + 0.2
    end = start + window_s

    async def buyer(i: int, b: Buyer) -> None:
        nonlocal errors
        due = start + interval * i / buyers
        while due < end:
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            if not await press(b):
                errors += 1
            latencies.append((time.perf_counter() - due) * 1000)
            due += interval

    await asyncio.gather(*(buyer(i, b) for i, b in enumerate(sessions)))
    _close(sessions)
    return Result(
        f"HTTP paced: {rate:.0f} adds/s offered",
        buyers,
        len(latencies),
        window_s,
        latencies,
        errors,
    )


@dataclass
class Tally:
    """What the presses of one window got: set ``measuring`` and record each answer."""

    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    measuring: bool = False

    def record(self, ok: bool, sent_at: float) -> None:
        if self.measuring:
            if ok:
                self.latencies.append((time.perf_counter() - sent_at) * 1000)
            else:
                self.errors += 1


async def measure_window(
    name: str,
    concurrency: int,
    tally: Tally,
    window_s: float,
    warmup_s: float,
    server_pid: int | None = None,
    redis_pid: int | None = None,
) -> Result:
    """While presses run and record into ``tally``: a warm-up, then adds, latencies and
    CPU (this process's, the server's and Redis's when their pids are given) over the
    window."""
    await asyncio.sleep(warmup_s)
    tally.measuring = True
    started, own0 = time.perf_counter(), own_cpu_seconds()
    cpu0 = tree_cpu_s(server_pid) if server_pid else 0.0
    redis0 = tree_cpu_s(redis_pid) if redis_pid else 0.0
    await asyncio.sleep(window_s)
    tally.measuring = False
    elapsed, own = time.perf_counter() - started, own_cpu_seconds() - own0
    return Result(
        name, concurrency, len(tally.latencies), elapsed, tally.latencies, tally.errors,
        server_cpu_s=tree_cpu_s(server_pid) - cpu0 if server_pid else None,
        client_cpu_s=own,
        redis_cpu_s=tree_cpu_s(redis_pid) - redis0 if redis_pid else None,
    )  # fmt: skip


async def closed_loop(
    name: str,
    presses: list[Callable[[], Awaitable[bool]]],
    window_s: float,
    warmup_s: float,
    server_pid: int | None = None,
) -> Result:
    """Each press function runs again as soon as it returns (True = the add succeeded),
    measured over one window (``measure_window``)."""
    tally, stop = Tally(), False

    async def loop(press_once: Callable[[], Awaitable[bool]]) -> None:
        while not stop:
            t0 = time.perf_counter()
            tally.record(await press_once(), t0)

    tasks = [asyncio.create_task(loop(p)) for p in presses]
    result = await measure_window(name, len(presses), tally, window_s, warmup_s, server_pid)
    stop = True
    await asyncio.gather(*tasks, return_exceptions=True)
    return result


async def http_closed_loop(
    name: str,
    buyers: list[Buyer],
    window_s: float,
    warmup_s: float,
    server_pid: int,
    redis_pid: int | None = None,
) -> Result:
    """``closed_loop`` for HTTP buyers, run from their connections' callbacks
    (``Buyer.press_repeatedly``): the same presses for a fraction of the load generator's
    CPU (no task, future and coroutine chain per press), which shares the server's cores."""
    tally = Tally()
    for b in buyers:
        b.press_repeatedly(
            "POST", "/api/cart/items", BODY, lambda st, t: tally.record(st == 200, t)
        )
    result = await measure_window(
        name, len(buyers), tally, window_s, warmup_s, server_pid, redis_pid
    )
    for b in buyers:
        b.stop_repeating()
    for _ in range(500):  # the presses in flight get their answers (at most one each)
        if not any(b.in_flight for b in buyers):
            break
        await asyncio.sleep(0.01)
    return result


async def http_run(url: str, buyers: int, cfg: Config, server_pid: int) -> Result:
    sessions = await _buyers(url, buyers)
    try:
        return await http_closed_loop(
            "HTTP closed loop (saturation)", sessions, cfg.window_s, cfg.warmup_s, server_pid
        )
    finally:
        _close(sessions)


async def python_client_run(redis_url: str, coalesced: bool, callers: int, cfg: Config) -> Result:
    """The add-to-cart script from Python with no HTTP: redis-py one call at a time (each
    takes a pooled connection) next to the coalescing client the server uses."""
    from checkout import carts, keys
    from server.redis_client import connect

    client = await connect(redis_url, coalesce=coalesced, max_connections=callers + 8)
    await client.hset(keys.stock("pybench"), "BAG-07", 10**12)

    async def add(buyer: str) -> bool:
        added = await carts.add_item(
            client, buyer, "pybench", "BAG-07", 1,
            price_cents=2500, per_buyer_limit=None, hold_seconds=600,
        )  # fmt: skip
        return added.result == "ok"

    how = "coalesced pipelines (Showroom)" if coalesced else "one EVALSHA per call (plain redis-py)"
    presses = [functools.partial(add, f"py{i}") for i in range(callers)]
    try:
        return await closed_loop(
            f"Python client (no HTTP): {how}", presses, cfg.window_s / 2, cfg.warmup_s
        )
    finally:
        await client.aclose()


def redis_benchmark(port: int, password: str, clients: int, requests: int) -> Result:
    """The add-to-cart script itself, via EVALSHA, from redis-benchmark's C clients."""
    import redis as redis_sync

    client = redis_sync.Redis(port=port, password=password)
    client.hset(keys.stock("rawbench"), "BAG-07", 10**12)
    sha = client.script_load(scripts.ADD_TO_CART)
    assert sha == scripts.add_to_cart.sha
    client.close()
    now = int(time.time() * 1000)
    argv = [
        "redis-benchmark",
        "-p",
        str(port),
        "-a",
        password,
        "-c",
        str(clients),
        "-n",
        str(requests),
        "-r",
        "100000",
        "--csv",
        "EVALSHA",
        sha,
        str(len(raw_keys := add_keys("rawbench", "__rand_int__"))),
        *raw_keys,  # the server's keys for a viewer redis-benchmark numbers at random
        "rawbench",
        "BAG-07",
        "1",
        str(now),
        str(now + 600_000),
        "0",
        "2500",
        "__rand_int__",
        "",  # no client IP: per-IP limits off, as in the HTTP rows
        "0",
        str(now + 600_000),
        "2592000",
    ]
    out = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=300).stdout
    row = next(r for r in csv.DictReader(io.StringIO(out)) if r.get("rps"))
    rps = float(row["rps"])
    return Result(
        f"raw limit: redis-benchmark EVALSHA ({clients} conns)",
        clients,
        requests,
        requests / rps,
        [],
        percentiles=(float(row["p50_latency_ms"]), float(row["p99_latency_ms"])),
    )


def plot(results: list[Result], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(14, 4.5))
    labels = [f"{_short(r)}\n{r.concurrency}" for r in results]
    ax1.bar(labels, [r.rate for r in results], color="#4a7")
    ax1.set_ylabel("add-to-cart per second")
    ax1.set_yscale("log")
    ax1.set_title("Throughput")
    ax2.bar(labels, [_p(r, 99) for r in results], color="#c64")
    ax2.axhline(25, ls="--", color="gray", label="target p99 at 200 buyers")
    ax2.set_ylabel("p99 latency (ms)")
    ax2.set_title("p99 latency")
    ax2.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)


def _short(r: Result) -> str:
    where = "\ncluster" if "Cluster" in r.name else "\nsingle" if "single Redis" in r.name else ""
    return _kind(r) + where


def _kind(r: Result) -> str:
    for prefix, short in (
        ("Python client, coalesced", "coalesced"),
        ("Python client, one", "redis-py"),
        ("HTTP closed", "closed"),
        ("HTTP paced", "paced"),
        ("HTTP burst", "burst"),
        ("Python client (no HTTP): one", "redis-py"),
        ("Python client (no HTTP): coalesced", "coalesced"),
        ("raw", "Redis"),
    ):
        if r.name.startswith(prefix):
            return short
    return r.name


def _p(r: Result, q: float) -> float:
    if r.percentiles is not None:
        return r.percentiles[0] if q == 50 else r.percentiles[1]
    return median(r.latencies_ms) if q == 50 else percentile(r.latencies_ms, q)


async def run(cfg: Config) -> list[Result]:
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="flashdrop-") as tmp:
        tmp_path = Path(tmp)
        redis_server = EmbeddedRedis(tmp_path / "redis")
        redis_server.start()
        manifest = tmp_path / "bench.toml"
        manifest.write_text(MANIFEST)
        proc, url = start_server(manifest, redis_server.url, tmp_path / "var")
        try:
            for n in cfg.concurrency:
                results.append(await http_run(url, n, cfg, proc.pid))
            for n in cfg.concurrency:
                results.append(await paced_run(url, n, n * cfg.presses_per_buyer_s, cfg.window_s))
            for n in cfg.concurrency:
                results.append(await burst_run(url, n, cfg.burst_rounds))
            for coalesced in (False, True):
                low = min(cfg.concurrency)
                results.append(await python_client_run(redis_server.url, coalesced, low, cfg))
            for clients in sorted({50, min(cfg.concurrency)}):
                results.append(
                    await asyncio.to_thread(
                        redis_benchmark,
                        redis_server.port,
                        redis_server.password,
                        clients,
                        cfg.redis_requests,
                    )
                )
        finally:
            stop_process(proc)
            redis_server.stop()
    return results


ROUNDS = 4  # alternating windows per configuration, so drift in the machine's load hits both


async def alternating_closed_loops(
    cfg: Config,
    servers: dict[str, tuple[subprocess.Popen, str]],
    redis_pid: int | None = None,
    use_wrk: bool = False,
) -> list[Result]:
    """The HTTP closed loop against each running server, in alternating windows (so a
    change in the machine's other load falls on all); a row per server sums its windows.
    ``use_wrk``: wrk drives the buyers (``wrk_closed_loop``) instead of this process."""
    results = []
    rounds = 1 if cfg.quick else ROUNDS
    window_s = cfg.window_s / rounds
    with tempfile.TemporaryDirectory(prefix="flashdrop-wrk-") as scripts:
        for n in cfg.concurrency:
            buyers = {label: await _buyers(url, n) for label, (_p, url) in servers.items()}
            try:
                runs: dict[str, Callable[[], Awaitable[Result]]] = {}
                for i, (label, (proc, url)) in enumerate(servers.items()):
                    if use_wrk:  # the buyers' cookies, once into a script for every window
                        script = await asyncio.to_thread(
                            wrk.write_script,
                            Path(scripts) / f"{n}-{i}.lua",
                            add_requests(buyers[label]),
                        )
                        runs[label] = functools.partial(
                            wrk_closed_loop, url, script, n, window_s, proc.pid, redis_pid
                        )
                    else:
                        runs[label] = functools.partial(
                            http_closed_loop, "", buyers[label], window_s, cfg.warmup_s,
                            proc.pid, redis_pid,
                        )  # fmt: skip
                if use_wrk:
                    for sessions in buyers.values():
                        _close(sessions)  # wrk opens its own connections
                    await alternating(runs, 1)  # unmeasured: wrk has no warm-up of its own
                windows = await alternating(runs, rounds)
            finally:
                for sessions in buyers.values():
                    _close(sessions)
            for label, parts in windows.items():
                results.append(_summed(f"HTTP closed loop, {label}", n, parts))
    return results


def add_requests(buyers: list[Buyer]) -> list[wrk.Request]:
    """``press`` as wrk sends it: one add-to-cart per buyer, with that buyer's cookies."""
    headers = {"Content-Type": "application/json"}
    return [
        wrk.Request("POST", "/api/cart/items", {"Cookie": b.cookie_header(), **headers}, BODY)
        for b in buyers
    ]


async def wrk_closed_loop(
    url: str,
    script: Path,
    connections: int,
    window_s: float,
    server_pid: int,
    redis_pid: int | None = None,
) -> Result:
    """One window of wrk's closed loop (``add_requests`` in ``script``, a connection per
    buyer); server and Redis CPU over wrk's run."""
    cpu0 = tree_cpu_s(server_pid)
    redis0 = tree_cpu_s(redis_pid) if redis_pid else 0.0
    run = await wrk.closed_loop(url, script, connections, window_s)
    return Result(
        "", connections, run.requests, run.seconds, run.latencies_ms, run.errors,
        server_cpu_s=tree_cpu_s(server_pid) - cpu0,
        client_cpu_s=run.cpu_s,
        redis_cpu_s=tree_cpu_s(redis_pid) - redis0 if redis_pid else None,
    )  # fmt: skip


async def alternating(
    runs: dict[Any, Callable[[], Awaitable[Result]]], rounds: int
) -> dict[Any, list[Result]]:
    """Each run once a round, in reverse order every other round, so a change in the
    machine's other load falls on all of them; each run's windows in order."""
    windows: dict[Any, list[Result]] = {key: [] for key in runs}
    for i in range(rounds):
        for key in list(runs) if i % 2 == 0 else list(reversed(runs)):
            windows[key].append(await runs[key]())
    return windows


def _summed(name: str, n: int, parts: list[Result]) -> Result:
    return Result(
        name,
        n,
        sum(r.ops for r in parts),
        sum(r.seconds for r in parts),
        [x for r in parts for x in r.latencies_ms],
        sum(r.errors for r in parts),
        server_cpu_s=sum(r.server_cpu_s or 0.0 for r in parts) or None,
        client_cpu_s=sum(r.client_cpu_s or 0.0 for r in parts) or None,
        redis_cpu_s=sum(r.redis_cpu_s or 0.0 for r in parts) or None,
    )


async def workers_run(cfg: Config, workers: int) -> list[Result]:
    """The HTTP closed loop against ``serve --workers 1`` and ``--workers N`` (both running,
    on one Redis), measured in alternating windows; each row sums its windows."""
    results = []
    with tempfile.TemporaryDirectory(prefix="flashdrop-") as tmp:
        tmp_path = Path(tmp)
        redis_server = EmbeddedRedis(tmp_path / "redis")
        redis_server.start()
        manifest = tmp_path / "bench.toml"
        manifest.write_text(MANIFEST)
        servers: dict[int, tuple[subprocess.Popen, str]] = {}
        try:
            started = await asyncio.gather(  # both at once: start-up takes seconds
                *(
                    asyncio.to_thread(
                        start_server, manifest, redis_server.url, tmp_path / f"var{w}", w
                    )
                    for w in (1, workers)
                ),
                return_exceptions=True,
            )
            for w, server in zip((1, workers), started, strict=True):
                if not isinstance(server, BaseException):
                    servers[w] = server  # stopped below, even if the other failed
            for server in started:
                if isinstance(server, BaseException):
                    raise server
            labels = {w: f"{w} worker{'s' if w > 1 else ''}" for w in servers}
            results += await alternating_closed_loops(
                cfg,
                {labels[w]: server for w, server in servers.items()},
                redis_server.proc.pid,
                use_wrk=True,
            )
        finally:
            for proc, _url in servers.values():
                stop_process(proc, 30)
            redis_server.stop()
    return results


def machine_bound(one: Result, workers: int) -> float:
    """The throughput ratio ``workers`` workers can reach over one when the load generator
    and Redis share the machine's cores: one worker has a core to itself (they run beside
    it); with more, each add also takes its share of their CPU:
    min(workers, cores) / (1 + s x (g + r)), s the adds per server core, g and r the load
    generator's and Redis's CPU per add."""
    if not (one.ops and one.server_cpu_s):
        return 0.0
    s = one.ops / one.server_cpu_s
    g_r = ((one.client_cpu_s or 0.0) + (one.redis_cpu_s or 0.0)) / one.ops
    return min(workers, os.cpu_count() or 1) / (1 + s * g_r)


def workers_report(cfg: Config, results: list[Result], workers: int) -> None:
    rows = [
        [
            r.name,
            r.concurrency,
            round(r.rate),
            f"{_p(r, 50):.2f}",
            f"{_p(r, 99):.2f}",
            r.errors,
            f"{r.server_cpu_s:.2f}" if r.server_cpu_s else "-",
            f"{r.client_cpu_s:.2f}" if r.client_cpu_s else "-",
            f"{r.redis_cpu_s:.2f}" if r.redis_cpu_s else "-",
            round(r.capacity) if r.capacity else "-",
        ]
        for r in results
    ]
    body = table(
        [
            "path",
            "concurrent",
            "adds/s",
            "p50 ms",
            "p99 ms",
            "errors",
            "server CPU s",
            "client CPU s",
            "Redis CPU s",
            "adds/s per server core",
        ],
        rows,
    )
    lines = []
    for n in cfg.concurrency:
        one = next(r for r in results if r.concurrency == n and " 1 worker" in r.name)
        many = next(r for r in results if r.concurrency == n and " 1 worker" not in r.name)
        ratio = many.rate / one.rate if one.rate else 0.0
        bound = machine_bound(one, workers)
        lines.append(
            f"Target >= 1.7x add-to-cart/s at {workers} workers vs 1 ({n} buyers): "
            f"{'met' if ratio >= 1.7 else 'NOT met'} ({ratio:.2f}x: {one.rate:.0f}/s -> "
            f"{many.rate:.0f}/s; server CPU {one.server_cpu_s or 0:.1f} s -> "
            f"{many.server_cpu_s or 0:.1f} s of a {cfg.window_s:.0f} s window, load generator "
            f"{one.client_cpu_s or 0:.1f} s -> {many.client_cpu_s or 0:.1f} s, Redis "
            f"{one.redis_cpu_s or 0:.1f} s -> {many.redis_cpu_s or 0:.1f} s). The most "
            f"{os.cpu_count()} shared cores allow at the 1-worker row's costs per add: "
            f"{bound:.2f}x (reached: {ratio / bound * 100 if bound else 0:.0f} %)."
        )
    load = os.getloadavg()
    lines.append(
        f"Machine load average at the end of the run: {load[0]:.1f} / {load[1]:.1f} "
        f"(1 / 5 min, {os.cpu_count()} cores): other work shared the cores, so read the "
        "CPU columns with the throughput."
    )
    print(body)
    print("\n".join(lines))
    if cfg.quick:
        return
    notes = (
        f"The same closed loop as the flash_drop section, against `serve --workers 1` and "
        f"`serve --workers {workers}` (SO_REUSEPORT: the kernel spreads the buyers' "
        "connections over the workers), both running on one Redis, measured in "
        f"{ROUNDS} alternating windows each (their sums are the rows), so a change in "
        "the machine's other load falls on both, after one unmeasured window each. The "
        "load generator is `wrk` (C, one thread, `load_tests/wrk.py`): a keep-alive "
        "connection per buyer, each add carrying one of the buyers' viewer cookies in turn "
        "(taken from a first `GET /api/cart` per buyer); the Python generator of the "
        "flash_drop section costs more CPU per add (its *client* column there against "
        "this one), and on 2 cores that share comes out of what the workers could use. "
        "*server CPU s* sums every "
        "server process (parent and workers, from /proc) over wrk's runs; *client CPU s* is "
        "wrk, which runs on the same cores (nproc above), as does "
        "Redis (*Redis CPU s*): with 2 cores the workers cannot each have a core to "
        "themselves, so the throughput ratio is bounded by what the load generator and "
        "Redis leave over (the bound in the lines above). p50/p99 are wrk's, pooled over "
        "the windows from 999 quantiles each. *adds/s per server core* shows "
        "the cost per add does not grow with workers."
    )
    write_section(
        "flash_drop_workers",
        f"python -m load_tests.flash_drop --workers {workers}",
        "\n\n".join([body, "\n".join(f"- {v}" for v in lines), notes]),
    )


async def cluster_run(cfg: Config) -> list[Result]:
    """Add-to-cart on a single Redis and on a 3-master Redis Cluster, same run: the HTTP
    closed loop against one ``serve`` on each (alternating windows), then the coalescing
    Python client (no HTTP) on each."""
    results = []
    with tempfile.TemporaryDirectory(prefix="flashdrop-") as tmp:
        tmp_path = Path(tmp)
        single = EmbeddedRedis(tmp_path / "redis")
        cluster = EmbeddedRedisCluster(tmp_path / "cluster")
        servers: dict[str, tuple[subprocess.Popen, str]] = {}
        try:
            single.start()
            cluster.start()
            manifest = tmp_path / "bench.toml"
            manifest.write_text(MANIFEST)
            urls = {"single Redis": single.url, "Redis Cluster (3 masters)": cluster.url}
            for label, redis_url in urls.items():
                servers[label] = start_server(manifest, redis_url, tmp_path / f"var-{len(servers)}")
            results += await alternating_closed_loops(cfg, servers)
            low = min(cfg.concurrency)
            rounds = 1 if cfg.quick else 2
            # The coalescing client on both, and on the cluster also one call at a time:
            # what coalescing still buys there.
            runs = [(label, True) for label in urls] + [("Redis Cluster (3 masters)", False)]
            parts = await alternating(
                {
                    (label, coalesced): functools.partial(
                        python_client_run, urls[label], coalesced, low, cfg
                    )
                    for label, coalesced in runs
                },
                rounds,
            )
            for (label, coalesced), windows in parts.items():
                how = "coalesced" if coalesced else "one EVALSHA per call"
                results.append(_summed(f"Python client, {how} (no HTTP), {label}", low, windows))
        finally:
            for proc, _url in servers.values():
                stop_process(proc, 30)
            single.stop()
            cluster.stop()
    return results


def result_row(r: Result) -> list:
    """A result's columns every table has: path, concurrency, rate, latency, errors, the
    server's CPU per add."""
    return [
        r.name,
        r.concurrency,
        round(r.rate),
        f"{_p(r, 50):.2f}",
        f"{_p(r, 99):.2f}",
        r.errors,
        f"{r.server_cpu_s / r.ops * 1000:.3f}" if r.server_cpu_s and r.ops else "-",
    ]


def cluster_report(cfg: Config, results: list[Result]) -> None:
    rows = [result_row(r) for r in results]
    body = table(
        ["path", "concurrent", "adds/s", "p50 ms", "p99 ms", "errors", "server CPU ms/add"],
        rows,
    )
    lines = []
    for prefix in ("HTTP closed loop", "Python client, coalesced"):
        for n in sorted({r.concurrency for r in results if r.name.startswith(prefix)}):
            pair = [r for r in results if r.name.startswith(prefix) and r.concurrency == n]
            one = next(r for r in pair if r.name.endswith("single Redis"))
            many = next(r for r in pair if not r.name.endswith("single Redis"))
            ratio = many.rate / one.rate if one.rate else 0.0
            lines.append(
                f"{prefix}, {n} concurrent: cluster {many.rate:.0f}/s vs single Redis "
                f"{one.rate:.0f}/s ({ratio:.2f}x)."
            )
    plain = next(r for r in results if "one EVALSHA" in r.name)
    pooled = next(
        r for r in results if r.name.startswith("Python client, coalesced") and "Cluster" in r.name
    )
    lines.append(
        f"Coalescing on the cluster: {pooled.rate:.0f}/s coalesced vs {plain.rate:.0f}/s "
        f"one EVALSHA per call ({pooled.rate / plain.rate if plain.rate else 0:.2f}x)."
    )
    load = os.getloadavg()
    lines.append(
        f"Machine load average at the end of the run: {load[0]:.1f} / {load[1]:.1f} "
        f"(1 / 5 min, {os.cpu_count()} cores), shared with other work."
    )
    print(body)
    print("\n".join(lines))
    png = RESULTS / ("flash_drop_cluster_quick.png" if cfg.quick else "flash_drop_cluster.png")
    plot(results, png)
    if cfg.quick:
        return
    notes = (
        "One `showroom serve` process on a single embedded Redis and one on a 3-master "
        "Redis Cluster (three `redis-server --cluster-enabled yes` on this machine, joined "
        "by `redis-cli --cluster create`, no replicas; the server on `redis+cluster://`), "
        f"both running, measured in {ROUNDS} alternating windows each. Every add is the "
        "add-to-cart Lua script in the show's slot, so on the cluster all of one show's "
        "adds go to one master: a cluster spreads *shows* over masters, it does not make "
        "one show's drop faster. The *Python client* rows call the script from Python with "
        "the coalescing client the server uses (on the cluster, redis-py's cluster "
        "pipeline sends each node its share), and on the cluster also one call at a time "
        "(plain redis-py): what coalescing still buys there. The cluster costs the "
        "server more CPU per add (the *server CPU* column): redis-py's cluster client works "
        "out each command's slot and node and splits each pipeline per node. The servers, "
        "the three cluster nodes, the single Redis and the load generator all share the "
        "same cores."
    )
    write_section(
        "flash_drop_cluster",
        "python -m load_tests.flash_drop --cluster",
        "\n\n".join(
            [
                body,
                "\n".join(f"- {v}" for v in lines),
                notes,
                "![flash drop on a cluster](load_tests/results/flash_drop_cluster.png)",
            ]
        ),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, a few seconds")
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="compare serve --workers 1 with --workers N (HTTP closed loop only)",
    )
    parser.add_argument(
        "--cluster",
        action="store_true",
        help="compare a single Redis with a 3-master Redis Cluster (add-to-cart)",
    )
    args = parser.parse_args(argv)
    cfg = Config()
    if args.quick:
        cfg = Config(
            concurrency=(20, 50),
            window_s=1.0,
            warmup_s=0.3,
            redis_requests=5000,
            presses_per_buyer_s=4.0,
            burst_rounds=2,
            quick=True,
        )
    try:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:  # pragma: no cover
        runner = asyncio.Runner()
    if args.cluster:
        with runner:
            results = runner.run(cluster_run(cfg))
        cluster_report(cfg, results)
        return 0
    if args.workers:
        with runner:
            results = runner.run(workers_run(cfg, args.workers))
        workers_report(cfg, results, args.workers)
        return 0
    with runner:
        results = runner.run(run(cfg))
    rows = [
        [
            *result_row(r),
            f"{r.client_cpu_s / r.ops * 1000:.3f}" if r.client_cpu_s and r.ops else "-",
            round(r.capacity) if r.capacity else "-",
        ]
        for r in results
    ]
    body = table(
        [
            "path",
            "concurrent",
            "adds/s",
            "p50 ms",
            "p99 ms",
            "errors",
            "server CPU ms/add",
            "client CPU ms/add",
            "adds/s per server core",
        ],
        rows,
    )
    low = min(cfg.concurrency)
    closed = [r for r in results if r.name.startswith("HTTP closed")]
    paced = next(r for r in results if r.name.startswith("HTTP paced") and r.concurrency == low)
    burst = next(r for r in results if r.name.startswith("HTTP burst") and r.concurrency == low)
    paced_p99 = _p(paced, 99)
    verdict = (
        f"Target p99 <= 25 ms at {low} concurrent buyers: "
        f"{'met' if paced_p99 <= 25 else 'NOT met'} ({paced_p99:.1f} ms with each pressing Buy "
        f"once a second; {_p(burst, 99):.1f} ms when all {low} press at the same instant, "
        f"{_p(closed[0], 99):.1f} ms in a saturating closed loop)."
        "\nTarget >= 3,000 add-to-cart/s per server process: "
        f"{'met' if min(r.rate for r in closed) >= 3000 else 'NOT met'} "
        f"({', '.join(f'{r.rate:.0f}/s at {r.concurrency} buyers' for r in closed)} measured "
        "with the load generator on the same cores; "
        f"{', '.join(f'{r.capacity or 0:.0f}/s' for r in closed)} per core of server CPU)."
    )
    print(body)
    print(verdict)
    # A quick (smoke) run must not overwrite the plot of the full run.
    png = RESULTS / ("flash_drop_quick.png" if cfg.quick else "flash_drop.png")
    plot(results, png)
    if not cfg.quick:
        notes = (
            "One `showroom serve` process (uvloop) and its Redis; the load generator "
            "(`load_tests/http_buyers.py`: one keep-alive connection and cookie jar per buyer, "
            "its CPU per add in the *client* column) runs on the same machine and shares its "
            "cores, so HTTP figures are a floor. *closed loop*: every buyer presses again as soon as it has "
            "its answer (saturation: throughput). *paced*: each buyer presses "
            "once a second (open loop), latency counted from when each press was due. *burst*: every buyer "
            "presses once at the same instant (the drop moment), latency from that instant. Every add is a real hold through the "
            "add-to-cart Lua script. The *Python client* rows call the same script from Python "
            "with no HTTP, the way the server does: plain redis-py one call at a time (a "
            "pooled connection, timeout and reply parse each) against the coalescing client "
            "the server uses (scripts ready in the same loop turn share one pipeline); their "
            "CPU column is this process. The raw-limit rows run the same script via EVALSHA "
            "from `redis-benchmark` against the same Redis in the same run (p50/p99 as "
            "reported by redis-benchmark). *adds/s per server core* = adds completed / CPU "
            "seconds the server process used in the window (from /proc): the rate one "
            "process reaches when it has a core to itself."
        )
        write_section(
            "flash_drop",
            "python -m load_tests.flash_drop",
            "\n\n".join(
                [
                    body,
                    "\n".join(f"- {v}" for v in verdict.splitlines()),
                    notes,
                    "![flash drop](load_tests/results/flash_drop.png)",
                ]
            ),
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
