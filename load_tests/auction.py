"""Auction bidding under load: bid latency, bid -> leader in the composed picture, and
the raw Redis rate of the bid script.

    python -m load_tests.auction [--quick] [--bidders 500] [--rate 1000] [--seconds 10]

One ``showroom serve`` (embedded Redis and Stripe sandbox, a 640x360 show with one WHEP
viewer so its compositor runs) holds one auction. ``bidders`` lean HTTP clients (own
cookie, display name and saved sandbox card each) offer ``rate`` bids a second between
them on an open-loop schedule, each bidding the highest bid it knows (its last answer or
the live events) plus one or more increments, so many bids lose to an earlier one, as in
a real close finish. Measured:

- **bid**: request written -> answer read, p50/p99, by answer (201 accepted, 409
  bid_too_low), and the rate actually achieved;
- **picture**: a bid's acceptance in Redis (``accepted_at``, Redis TIME inside the
  script) -> ``media_ts`` of its ``auction`` event, the wall clock of the first composed
  frame showing the new leader (what every viewer's picture shows from then on);
- **raw EVALSHA**: the same bid script driven by redis-py straight at Redis (pipelined,
  and one round trip per bid), no HTTP: the limit the server is measured against.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import random
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import redis.asyncio as aioredis

from checkout import auctions, keys
from load_tests.chat import loopback_load_flags, own_cpu_seconds
from load_tests.common import (
    RESULTS,
    VideoSize,
    manifest_toml,
    percentile,
    proc_cpu_s,
    spawn_serve,
    table,
    write_section,
)
from load_tests.http_buyers import Buyer
from server.embedded import EmbeddedRedis, free_port

SHOW = "auctionbench"
KEY = "bench-stream-key"
STAFF = "bench-staff"
BID_P99_BUDGET_MS = 50
PICTURE_P99_BUDGET_MS = 300


@dataclass
class Config:
    bidders: int = 500
    rate: float = 1000.0
    seconds: float = 10.0
    raw_seconds: float = 3.0
    quick: bool = False


@dataclass
class Results:
    latencies: dict[int, list[float]] = field(default_factory=dict)  # status -> ms
    errors: int = 0
    sent: int = 0
    picture_ms: list[float] = field(default_factory=list)
    stale_events: int = 0
    window_s: float = 0.0
    server_cpu: float = 0.0
    raw_pipelined: float = 0.0
    raw_round_trip: float = 0.0
    raw_c: float = 0.0
    bidders_cpu: float = 0.0
    load_avg: float = 0.0  # the machine's 1-minute load average around the window


def cents_str(c: int) -> str:
    return f"{c // 100}.{c % 100:02d}"


async def make_bidder(url: str, i: int) -> Buyer:
    b = Buyer.for_url(url)
    a = await b.request("PUT", "/api/me", {"name": f"Bidder {i:03d}"})
    assert a.status == 200, a.body
    card = {"number": "4242424242424242", "exp_month": 12, "exp_year": 2034, "cvc": "123"}
    a = await b.request("POST", "/api/me/payment-method", {"card": card})
    assert a.status == 200, a.body
    return b


def watcher_process(url: str, ready, stop, out) -> None:
    """In its own process (so decoding video and parsing events does not slow the
    bidders): one WHEP viewer, so the show's compositor runs as in a live show, and the
    show's SSE stream, where every accepted bid's event arrives with media_ts."""
    asyncio.run(_watch(url, ready, stop, out))


async def _watch(url: str, ready, stop, out) -> None:
    from media.client import WhepPlayer

    picture: list[float] = []
    stale = 0
    http = aiohttp.ClientSession()
    player = WhepPlayer(f"{url}/whep/{SHOW}", audio=False)
    try:
        await player.start(http)
        await player.wait_first_frame(15)
        async with http.get(
            f"{url}/api/shows/{SHOW}/events", timeout=aiohttp.ClientTimeout(total=None)
        ) as resp:
            ready.set()
            while not stop.is_set():
                try:
                    line = await asyncio.wait_for(resp.content.readline(), 0.5)
                except TimeoutError:
                    continue
                if not line.startswith(b"data:"):
                    continue
                evt = json.loads(line[5:])
                if evt.get("type") == "auction" and "accepted_at" in evt:
                    if "media_ts" in evt:
                        picture.append(evt["media_ts"] - evt["accepted_at"])
                    else:
                        stale += 1
    finally:
        out.put((picture, stale))
        await player.close(http)
        await http.close()


async def bid_loop(
    b: Buyer, auction_id: str, cfg: Config, res: Results, latest: dict, t0: float, end: float
) -> None:
    interval = cfg.bidders / cfg.rate
    due = t0 + random.random() * interval
    path = f"/api/auctions/{auction_id}/bids"
    while True:
        await asyncio.sleep(max(0.0, due - time.monotonic()))
        if time.monotonic() >= end:
            return
        cents = latest["cents"] + 100 * random.choice((1, 1, 1, 2, 5))
        started = time.monotonic()
        res.sent += 1
        try:
            a = await b.request("POST", path, {"amount": cents_str(cents)})
        except Exception:
            res.errors += 1
            due += interval
            continue
        ms = (time.monotonic() - started) * 1000
        res.latencies.setdefault(a.status, []).append(ms)
        if a.status == 201:
            latest["cents"] = max(latest["cents"], cents)
        elif a.status == 409:  # the answer carries the current bid
            current = json.loads(a.body).get("auction", {}).get("current_bid")
            if current:
                latest["cents"] = max(latest["cents"], int(current.replace(".", "")))
        due = max(due + interval, time.monotonic())  # open loop, but one request at a time


async def raw_rate(redis_url: str, seconds: float) -> tuple[float, float]:
    """Bids a second of the bid script by EVALSHA straight at Redis: pipelined (100 per
    round trip) and one round trip each."""
    r = aioredis.Redis.from_url(redis_url)
    show = "rawbench"
    try:
        await r.hset(keys.stock(show), "RAW-1", 10)
        viewers = [f"raw{i}" for i in range(100)]
        for v in viewers:
            await r.hset(f"viewer:{v}:profile", "name", v)
            await r.hset(auctions.card_key(v), mapping={"customer": "c", "payment_method": "p"})
        out = {}
        for mode in ("pipelined", "round_trip"):
            req = auctions.AuctionRequest("RAW-1", 100, 1, 600, 10)
            a = await auctions.start_auction(r, show, req)
            await r.script_load(auctions.BID)
            fixed = auctions.bid_keys(a.id)
            cents, n = 100, 0
            end = time.monotonic() + seconds
            t = time.monotonic()
            while time.monotonic() < end:
                if mode == "pipelined":
                    pipe = r.pipeline(transaction=False)
                    for _ in range(100):
                        v = viewers[n % 100]
                        pipe.evalsha(
                            auctions.bid_script.sha, 4, *fixed, v, cents, auctions.LOG_KEEP, v, "1"
                        )
                        cents += 1
                        n += 1
                    await pipe.execute()
                else:
                    v = viewers[n % 100]
                    await r.evalsha(
                        auctions.bid_script.sha, 4, *fixed, v, cents, auctions.LOG_KEEP, v, "1"
                    )
                    cents += 1
                    n += 1
            out[mode] = n / (time.monotonic() - t)
            await auctions.cancel_auction(r, a.id)
        return out["pipelined"], out["round_trip"]
    finally:
        await r.aclose()


def redis_benchmark_rate(port: int, password: str, requests: int) -> float:
    """The bid script from redis-benchmark's C clients (50 connections): random amounts,
    so after the first few nearly every bid is refused as too low, the common case of a
    busy finish; the pipelined redis-py row above is the accepting case."""
    import csv
    import io
    import subprocess

    import redis as redis_sync

    client = redis_sync.Redis(port=port, password=password)
    client.hset(keys.stock("rawbench"), "RAW-1", 10)
    client.hset("viewer:rawc:profile", "name", "rawc")
    client.hset(auctions.card_key("rawc"), mapping={"customer": "c", "payment_method": "p"})
    sha = client.script_load(auctions.BID)
    client.close()
    a = asyncio.run(_start_raw(port, password))
    argv = ["redis-benchmark", "-p", str(port), "-a", password, "-c", "50", "-n", str(requests)]
    argv += ["-r", "1000000", "--csv", "EVALSHA", sha, "4", *auctions.bid_keys(a)]
    argv += ["rawc", "__rand_int__", str(auctions.LOG_KEEP), "rawc", "1"]
    out = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=120).stdout
    row = next(r for r in csv.DictReader(io.StringIO(out)) if r.get("rps"))
    return float(row["rps"])


async def _start_raw(port: int, password: str) -> str:
    r = aioredis.Redis(port=port, password=password)
    try:
        cur = await auctions.current_auction(r, "rawbench")
        if cur is not None and cur.status == "running":
            await auctions.cancel_auction(r, cur.id)
        req = auctions.AuctionRequest("RAW-1", 100, 1, 600, 10)
        return (await auctions.start_auction(r, "rawbench", req)).id
    finally:
        await r.aclose()


async def run(cfg: Config) -> Results:
    res = Results()
    tmp = Path(tempfile.mkdtemp(prefix="auction-bench-"))
    redis_server = EmbeddedRedis(tmp / "redis")
    redis_server.start()
    manifest = tmp / f"{SHOW}.toml"
    manifest.write_text(
        manifest_toml(
            SHOW,
            title="Auction bench",
            stream_key=KEY,
            staff_password=STAFF,
            video=VideoSize(640, 360, 30, 800),
            products='[[products]]\nsku = "LOT-1"\nname = "Vintage camera"\nprice = "50.00"\nstock = 5\n',
        )
    )
    args = ["--manifest", str(manifest), "--port", str(free_port()), "--redis", redis_server.url]
    args += ["--data-dir", str(tmp / "var"), "--buyers-per-ip", "0", *loopback_load_flags()]
    env = {k: v for k, v in os.environ.items() if not k.startswith("STRIPE_")}
    proc, url = spawn_serve(args, env=env, log_path=tmp / "serve.log")
    http = aiohttp.ClientSession()
    ctx = mp.get_context("spawn")
    ready, stop, out = ctx.Event(), ctx.Event(), ctx.Queue()
    watcher = ctx.Process(target=watcher_process, args=(url, ready, stop, out), daemon=True)
    watcher.start()
    bidders: list[Buyer] = []
    try:
        if not await asyncio.to_thread(ready.wait, 30):
            raise RuntimeError("the WHEP viewer and event stream did not start")
        for i in range(0, cfg.bidders, 25):
            bidders += await asyncio.gather(
                *(make_bidder(url, j) for j in range(i, min(cfg.bidders, i + 25)))
            )
        body = {
            "sku": "LOT-1",
            "start_price": "10.00",
            "increment": "1.00",
            "duration_s": 600,
            "extend_s": 10,
        }
        async with http.post(
            f"{url}/api/shows/{SHOW}/auctions",
            json=body,
            headers={"Authorization": f"Bearer {KEY}"},
        ) as resp:
            assert resp.status == 201, await resp.text()
            auction = await resp.json()
        latest = {"cents": 900}
        print(
            f"bidding: {cfg.rate:.0f} bids/s for {cfg.seconds:.0f} s", file=sys.stderr, flush=True
        )
        cpu0, own0, t0 = proc_cpu_s(proc.pid), own_cpu_seconds(), time.monotonic()
        load0 = os.getloadavg()[0]
        end = t0 + cfg.seconds
        await asyncio.gather(
            *(bid_loop(b, auction["id"], cfg, res, latest, t0, end) for b in bidders)
        )
        res.window_s = time.monotonic() - t0
        res.server_cpu = (proc_cpu_s(proc.pid) - cpu0) / res.window_s
        res.bidders_cpu = (own_cpu_seconds() - own0) / res.window_s
        res.load_avg = (load0 + os.getloadavg()[0]) / 2
        await asyncio.sleep(1.0)  # the last events' frames
        stop.set()
        res.picture_ms, res.stale_events = await asyncio.to_thread(out.get, True, 30)
        watcher.join(10)
        async with http.delete(
            f"{url}/api/auctions/{auction['id']}", headers={"Authorization": f"Bearer {KEY}"}
        ) as resp:
            assert resp.status == 200
        res.raw_pipelined, res.raw_round_trip = await raw_rate(redis_server.url, cfg.raw_seconds)
        res.raw_c = await asyncio.to_thread(
            redis_benchmark_rate,
            redis_server.port,
            redis_server.password,
            20_000 if cfg.quick else 200_000,
        )
    finally:
        for b in bidders:
            b.close()
        stop.set()
        if watcher.is_alive():
            watcher.join(5)
            watcher.kill()
        await http.close()
        proc.terminate()
        try:
            proc.wait(30)
        except Exception:
            proc.kill()
        redis_server.stop()
    return res


def report(cfg: Config, res: Results, command: str) -> tuple[str, bool]:
    answered = sum(len(v) for v in res.latencies.values())
    every = [ms for v in res.latencies.values() for ms in v]
    rows = []
    for status, label in ((201, "accepted (201)"), (409, "bid_too_low (409)"), (None, "all bids")):
        values = every if status is None else res.latencies.get(status, [])
        rows.append(
            [label, len(values), round(percentile(values, 50), 1), round(percentile(values, 99), 1)]
        )
    pic = res.picture_ms
    rows.append(
        [
            "accepted -> leader in composed picture",
            len(pic),
            round(percentile(pic, 50), 1),
            round(percentile(pic, 99), 1),
        ]
    )
    bid_p99 = percentile(every, 99)
    pic_p99 = percentile(pic, 99)
    ok = bid_p99 <= BID_P99_BUDGET_MS and pic_p99 <= PICTURE_P99_BUDGET_MS and res.errors == 0
    body = "\n".join(
        [
            f"{cfg.bidders} bidders offering {cfg.rate:.0f} bids/s for {cfg.seconds:.0f} s on one "
            f"serve process (640x360 show, one WHEP viewer); achieved "
            f"{answered / res.window_s:.0f} bids/s answered, {res.errors} connection errors, "
            f"server CPU {res.server_cpu * 100:.0f} % of a core (the bidders' process: "
            f"{res.bidders_cpu * 100:.0f} %; the WHEP viewer and event stream run in another); "
            f"machine load average {res.load_avg:.1f} on {os.cpu_count()} cores (others' work "
            "included: the raw rows below, measured right after, show how much Redis got).",
            "",
            table(["measure", "n", "p50 ms", "p99 ms"], rows),
            "",
            table(
                ["bid script, straight at Redis", "bids/s"],
                [
                    [
                        "EVALSHA pipelined (100 per round trip), every bid accepted",
                        round(res.raw_pipelined),
                    ],
                    ["EVALSHA one round trip each, every bid accepted", round(res.raw_round_trip)],
                    [
                        "redis-benchmark EVALSHA, 50 connections, random amounts (mostly too low)",
                        round(res.raw_c),
                    ],
                    ["through the server (this run, answered)", round(answered / res.window_s)],
                ],
            ),
            "",
            f"Events without media_ts (an older state that arrived after a newer one): "
            f"{res.stale_events}.",
            "",
            f"Verdict: bid p99 {bid_p99:.1f} ms (budget {BID_P99_BUDGET_MS} ms), picture p99 "
            f"{pic_p99:.1f} ms (budget {PICTURE_P99_BUDGET_MS} ms): {'PASS' if ok else 'FAIL'}.",
        ]
    )
    return body, ok


def plot(res: Results, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, values, title, budget in (
        (
            axes[0],
            [ms for v in res.latencies.values() for ms in v],
            "bid latency",
            BID_P99_BUDGET_MS,
        ),
        (axes[1], res.picture_ms, "accepted -> leader in picture", PICTURE_P99_BUDGET_MS),
    ):
        if values:
            ordered = sorted(values)
            ax.plot(ordered, [i / len(ordered) for i in range(len(ordered))])
        ax.axvline(budget, color="red", linestyle="--", label=f"p99 budget {budget} ms")
        ax.set_title(title)
        ax.set_xlabel("ms")
        ax.set_ylabel("fraction")
        ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m load_tests.auction")
    p.add_argument("--quick", action="store_true", help="small and short (a smoke test)")
    p.add_argument("--bidders", type=int, default=500)
    p.add_argument("--rate", type=float, default=1000.0)
    p.add_argument("--seconds", type=float, default=10.0)
    a = p.parse_args(argv)
    cfg = Config(a.bidders, a.rate, a.seconds, quick=a.quick)
    if a.quick:
        cfg = Config(bidders=40, rate=100.0, seconds=2.0, raw_seconds=0.5, quick=True)
    res = asyncio.run(run(cfg))
    command = "python -m load_tests.auction" + (" " + " ".join(argv or sys.argv[1:])).rstrip()
    body, ok = report(cfg, res, command)
    print(body)
    if not cfg.quick:
        out = RESULTS / "auction.png"
        plot(res, out)
        write_section(
            "auction", command.strip(), body + f"\n\n![auction](load_tests/results/{out.name})"
        )
    return 0 if ok or cfg.quick else 1


if __name__ == "__main__":
    sys.exit(main())
