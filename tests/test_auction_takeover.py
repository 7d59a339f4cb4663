"""An auction's settlement survives the process settling it dying: two app processes on
one Redis; the one that claimed the ended auction is SIGKILLed while its off-session
charge is on the way to Stripe; once its lease has lapsed the other process takes the
settlement over and finishes it: one order, one charge, one label.

The dying process talks to the Stripe sandbox (localstripe) through a small relay that
forwards every request but holds the charge (POST /v1/payment_intents): the process dies
with its charge unsent, the auction ``settling`` and its order made. (localstripe keeps
no idempotency keys, so a charge that reached Stripe before the death cannot be tested
here; the test checks both processes send the same key, which real Stripe deduplicates.)"""

from __future__ import annotations

import asyncio
import signal
import time

import aiohttp
import pytest
import redis.asyncio as aioredis
from aiohttp import web

from checkout import auctions
from server.embedded import free_port
from tests.conftest import start_server_process, wait_until
from tests.test_auctions import (
    GOOD_CARD,
    HOST,
    bid,
    bidder,
    print_jobs,
    sandbox_intents,
    show_orders,
    wait_settled,
)
from tests.test_web_support import PrinterSocket, printer_toml

pytestmark = pytest.mark.timeout(120)

_HOP = {"host", "content-length", "transfer-encoding", "connection"}


class Relay:
    """Forwards to the sandbox and notes each charge's Idempotency-Key; with ``hold``,
    holds every charge request (never sending it on) until ``stop``."""

    def __init__(self, upstream: str, hold: bool) -> None:
        self.upstream, self.hold = upstream, hold
        self.charge_keys: list[str] = []
        self.charge_arrived = asyncio.Event()
        self._stopping = asyncio.Event()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"

    async def start(self) -> Relay:
        self.client = aiohttp.ClientSession()
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._relay)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()
        return self

    async def _relay(self, request: web.Request) -> web.Response:
        if request.method == "POST" and request.path == "/v1/payment_intents":
            self.charge_keys.append(request.headers.get("Idempotency-Key", ""))
            self.charge_arrived.set()
            if self.hold:
                await self._stopping.wait()  # never sent on
                return web.Response(status=503)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP}
        async with self.client.request(
            request.method,
            f"{self.upstream}{request.path_qs}",
            data=await request.read(),
            headers=headers,
        ) as up:
            body = await up.read()
            return web.Response(
                body=body, status=up.status, content_type=up.content_type or "application/json"
            )

    async def stop(self) -> None:
        self._stopping.set()
        await self.runner.cleanup()
        await self.client.close()


async def test_a_settler_killed_mid_charge_is_taken_over_once(
    make_app, write_manifest, stripe_sandbox, redis_url, tmp_path
):
    printer = await PrinterSocket().start()
    relay = await Relay(stripe_sandbox.url, hold=True).start()
    relay2 = await Relay(stripe_sandbox.url, hold=False).start()
    redis = aioredis.Redis.from_url(redis_url)
    manifest = write_manifest("demo", printers=printer_toml(printer.url))
    first = None
    ana = None
    try:
        env = {"STRIPE_API_BASE": relay.url, "SHOWROOM_BUYERS_PER_IP": "0"}
        # In a thread: the process registers its webhook through the relay on this loop.
        first, url = await asyncio.to_thread(
            start_server_process, [manifest], redis_url, tmp_path / "first", env
        )
        ana = await bidder(url, "Ana", card=GOOD_CARD)
        async with aiohttp.ClientSession(url) as host:
            r = await host.post(
                "/api/shows/demo/auctions",
                json={
                    "sku": "MUG-01",
                    "start_price": "10.00",
                    "increment": "1.00",
                    "duration_s": 10,
                    "extend_s": 0,
                },
                headers=HOST,
            )
            assert r.status == 201, await r.text()
            a = await r.json()
        assert (await bid(ana, a["id"], "12.00"))[0] == 201

        # The clock runs out; the only process claims the auction and starts charging.
        await asyncio.wait_for(relay.charge_arrived.wait(), a["ends_at"] / 1000 - time.time() + 15)
        first.send_signal(signal.SIGKILL)
        await asyncio.to_thread(first.wait, 10)
        state = await auctions.load_auction(redis, a["id"])
        assert state.status == "settling"
        lease = await redis.zscore(auctions.settling_key("demo"), a["id"])
        assert lease is not None and lease > time.time() * 1000 + 60_000  # still leased
        order_id = auctions.auction_order_id(a["id"], 0)
        orders = [o for o in await show_orders(redis_url) if o.get("auction_id") == a["id"]]
        assert [(o["order_id"], o["status"]) for o in orders] == [(order_id, "pending_payment")]

        # A second process on the same Redis leaves a leased settlement alone...
        second = await make_app([manifest], stripe_api_base=relay2.url)
        await asyncio.sleep(1.5)
        assert (await auctions.load_auction(redis, a["id"])).status == "settling"
        assert await sandbox_intents(stripe_sandbox.url, order_id) == []

        # ...and takes it over once the lease has lapsed (here: its deadline moved to
        # the past instead of waiting the full SETTLE_LEASE_MS).
        await redis.zadd(auctions.settling_key("demo"), {a["id"]: 0})
        done = await wait_settled(second, timeout=20)
        assert done["status"] == "sold" and done["winner"] == "Ana" and done["sold_for"] == "12.00"
        assert done["order_id"] == order_id

        await wait_until(lambda: b"Ana" in printer.received, 15)
        labels = printer.received.count(b"Ana")
        await asyncio.sleep(1.0)  # the worker's later ticks settle nothing again
        assert printer.received.count(b"Ana") == labels
        intents = await sandbox_intents(stripe_sandbox.url, order_id)
        assert [(pi["status"], pi["amount"]) for pi in intents] == [("succeeded", 1200)]
        orders = [o for o in await show_orders(redis_url) if o.get("auction_id") == a["id"]]
        assert len(orders) == 1 and orders[0]["status"] in ("paid", "printed")
        assert orders[0]["payment_intent"] == intents[0]["id"]
        assert len(await print_jobs(redis_url, order_id)) == 1
        # Both processes asked Stripe with the same key, from the auction id: had the
        # dead one's charge gone through, Stripe would answer the second with it.
        assert relay.charge_keys == relay2.charge_keys == [f"showroom-auction-{a['id']}-0"]
        assert await redis.zscore(auctions.settling_key("demo"), a["id"]) is None
        r = await second.session.get("/api/shows/demo")
        mug = next(p for p in (await r.json())["products"] if p["sku"] == "MUG-01")
        assert mug["available"] == 39  # the unit went to Ana, not back on sale
    finally:
        if ana is not None:
            await ana.close()
        if first is not None and first.poll() is None:
            first.kill()
            first.wait(10)
        await relay.stop()
        await relay2.stop()
        await printer.stop()
        await redis.aclose()
