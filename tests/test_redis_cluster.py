"""Showroom on a real Redis Cluster: three ``redis-server --cluster-enabled yes`` masters
joined by ``redis-cli --cluster create``, the app on ``redis+cluster://``.

The flash-drop race through the HTTP API, cart and checkout, a Stripe webhook moving an
order to paid and its label out of the TCP printer, and two shows whose keys live on
different masters.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator

import aiohttp
import pytest
import redis.cluster as sync_cluster
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.crc import key_slot

from checkout import auctions, keys
from checkout.orders import (
    Order,
    OrderItem,
    Status,
    mark_paid,
    order_key,
    print_stream,
    save_new_order,
)
from server.embedded import EmbeddedRedisCluster
from server.redis_client import connect, plain_url
from server.redis_pipelining import CoalescingRedisCluster
from tests.conftest import buyer_session, manifest_text, start_app, wait_until
from tests.test_auctions import bid, bidder
from tests.test_auctions import start as auction_start
from tests.test_checkout_flash_drop import (
    BUYERS,
    PRODUCTS,
    UNITS,
    _next_event,
    close_all,
    race,
    start_drop,
)
from tests.test_checkout_payments import add, checkout, pay
from tests.test_redis_pipelining import _flash_drop
from tests.test_web_support import PrinterSocket, printer_toml

# One worker runs them all (pytest-xdist), on one cluster.
pytestmark = [pytest.mark.timeout(180), pytest.mark.xdist_group("redis_cluster")]


@pytest.fixture(scope="module")
def redis_cluster(tmp_path_factory) -> Iterator[EmbeddedRedisCluster]:
    cluster = EmbeddedRedisCluster(tmp_path_factory.mktemp("redis-cluster"))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def cluster_url(redis_cluster: EmbeddedRedisCluster) -> str:
    client = sync_cluster.RedisCluster.from_url(plain_url(redis_cluster.url))
    client.flushall()  # every master
    client.close()
    return redis_cluster.url


@pytest.fixture
async def apps(tmp_path):
    started = []

    async def make(manifests, url, **settings):
        running = await start_app(manifests, url, tmp_path, **settings)
        started.append(running)
        return running

    yield make
    for running in reversed(started):
        await running.stop()


def node_of(cluster_url: str, key: str) -> str:
    client = sync_cluster.RedisCluster.from_url(plain_url(cluster_url))
    try:
        node = client.get_node_from_key(key)
        return f"{node.host}:{node.port}"
    finally:
        client.close()


class ClusterSampler:
    """The drop's remaining units and the product's stock, read as fast as possible from
    a thread, through the cluster client (both keys are in the show's slot)."""

    def __init__(self, url: str) -> None:
        self.redis = sync_cluster.RedisCluster.from_url(plain_url(url))
        self.samples: list[tuple[int, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            pipe = self.redis.pipeline()
            pipe.hget(keys.drop("demo"), "remaining")
            pipe.hget(keys.stock("demo"), "BAG-07")
            remaining, stock = pipe.execute()
            self.samples.append((int(remaining or 0), int(stock or 0)))

    def __enter__(self) -> ClusterSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(5)
        self.redis.close()


async def test_flash_drop_2000_buyers_50_units_on_a_cluster(apps, write_manifest, cluster_url):
    app = await apps([write_manifest("demo", products=PRODUCTS)], cluster_url, buyers_per_ip=0)
    drop = await start_drop(app.url)
    assert drop["remaining"] == UNITS
    with ClusterSampler(cluster_url) as sampler:
        results, handles = await race([app.url], BUYERS)
    try:
        assert sum(1 for r in results if r[0] == 200) == UNITS
        assert sum(1 for r in results if r == (409, "sold_out")) == BUYERS - UNITS
        assert len(sampler.samples) > 20
        assert min(s[0] for s in sampler.samples) >= 0  # never negative at any moment
        assert {s[1] for s in sampler.samples} == {100 - UNITS}  # only drop units sold
        redis = await connect(cluster_url)
        assert int(await redis.hget(keys.drop("demo"), "remaining")) == 0
        assert await redis.zcard(keys.holds_expiry("demo")) == UNITS
        await redis.aclose()
    finally:
        await close_all(handles)


async def test_checkout_webhook_paid_and_label_on_a_cluster(
    apps, tmp_path, cluster_url, stripe_sandbox
):
    printer = await PrinterSocket().start()
    path = tmp_path / "demo.toml"
    path.write_text(manifest_text("demo", printers=printer_toml(printer.url)))
    try:
        app = await apps([path], cluster_url, stripe_api_base=stripe_sandbox.url)
        s = app.session
        added = await add(s, "MUG-01", 2)
        assert [(i["sku"], i["quantity"]) for i in added["items"]] == [("MUG-01", 2)]
        async with s.get("/api/cart") as r:
            cart = await r.json()
        assert cart["total"] == "36.00" and cart["items"][0]["show"] == "demo"
        body = await checkout(s)
        order_id = body["order_id"]
        assert keys.order_show(order_id) == "demo"
        status, res = await pay(s, order_id)
        assert status == 200 and res["payment_status"] == "succeeded"

        async def printed():
            async with s.get(f"/api/orders/{order_id}") as r:
                return (await r.json())["status"] == "printed"

        # localstripe's signed webhook -> paid + print job (one script) -> the TCP printer.
        await wait_until(printed, timeout=30)
        assert len(printer.received) > 100
        redis = await connect(cluster_url)
        try:
            assert await redis.zscore(keys.orders_index("demo"), order_id) is not None
            assert int(await redis.hget(keys.stock("demo"), "MUG-01")) == 38
            # One job, acknowledged by the printer worker of the app.
            assert await redis.xlen(print_stream("demo")) == 1
            assert (await redis.xpending(print_stream("demo"), "printers"))["pending"] == 0
        finally:
            await redis.aclose()
        # The order, its stock record and the print stream share the show's slot.
        slot = key_slot(keys.stock("demo").encode())
        assert key_slot(order_key(order_id).encode()) == slot
        assert key_slot(print_stream("demo").encode()) == slot
        async with s.get("/api/cart") as r:
            assert (await r.json())["items"] == []
    finally:
        await printer.stop()


def two_shows_on_two_masters(url: str) -> tuple[str, str]:
    first = "demo"
    for i in range(200):
        other = f"show-{i}"
        if node_of(url, keys.stock(other)) != node_of(url, keys.stock(first)):
            return first, other
    raise AssertionError("no show id on another master")


async def test_two_shows_live_on_different_masters(apps, tmp_path, cluster_url, stripe_sandbox):
    a, b = two_shows_on_two_masters(cluster_url)
    paths = []
    for show in (a, b):
        path = tmp_path / f"{show}.toml"
        path.write_text(manifest_text(show))
        paths.append(path)
    app = await apps(paths, cluster_url, stripe_api_base=stripe_sandbox.url, print_worker=False)
    orders = {}
    for show in (a, b):
        async with buyer_session(app.url) as s:
            async with s.post(
                "/api/cart/items", json={"show": show, "sku": "MUG-01", "quantity": 1}
            ) as r:
                assert r.status == 200, await r.text()
            other = b if show == a else a
            # The cart holds one show at a time, across the two slots.
            async with s.post(
                "/api/cart/items", json={"show": other, "sku": "MUG-01", "quantity": 1}
            ) as r:
                assert r.status == 409 and (await r.json())["error"] == "conflict"
            body = await checkout(s)
            orders[show] = body["order_id"]
    assert keys.order_show(orders[a]) == a and keys.order_show(orders[b]) == b
    assert key_slot(keys.tag(a).encode()) != key_slot(keys.tag(b).encode())
    assert node_of(cluster_url, order_key(orders[a])) == node_of(cluster_url, keys.stock(a))
    assert node_of(cluster_url, order_key(orders[b])) == node_of(cluster_url, keys.stock(b))
    assert node_of(cluster_url, keys.stock(a)) != node_of(cluster_url, keys.stock(b))
    # Each master holds its show's keys and none of the other's.
    nodes = {}
    for show in (a, b):
        client = sync_cluster.RedisCluster.from_url(plain_url(cluster_url))
        node = client.get_node_from_key(keys.stock(show))
        found = client.keys(target_nodes=node)
        client.close()
        nodes[show] = {k.decode() for k in found}
    assert keys.stock(a) in nodes[a] and order_key(orders[a]) in nodes[a]
    assert keys.stock(b) not in nodes[a] and order_key(orders[b]) not in nodes[a]
    assert keys.stock(b) in nodes[b] and order_key(orders[b]) in nodes[b]
    # The staff's view of each show lists its own order.
    async with aiohttp.ClientSession() as s:
        for show in (a, b):
            async with s.get(
                f"{app.url}/api/orders", params={"show": show}, headers=app.auth()
            ) as r:
                assert r.status == 200, await r.text()
                ids = [o["order_id"] for o in (await r.json())["orders"]]
            assert ids == [orders[show]]


async def test_script_calls_are_coalesced_on_a_cluster(cluster_url):
    """300 buyers at once for 100 units through the servers' client on the cluster: each
    gets its own answer, exactly 100 yes, over a handful of connections to the show's
    master; after SCRIPT FLUSH on every master the scripts load again by themselves."""
    client = await connect(cluster_url, coalesce=True, client_name="burst", max_connections=1024)
    try:
        await client.script_flush()
        results = await _flash_drop(client, buyers=300, stock=100)
        node = client.get_node_from_key(keys.stock("drop"))
        clients = await client.client_list(target_nodes=node)
        connections = sum(1 for c in clients if c.get("name") == "burst")
    finally:
        await client.aclose()
    assert isinstance(client, CoalescingRedisCluster)
    assert results.count("ok") == 100 and results.count("sold_out") == 200
    assert 1 <= connections <= CoalescingRedisCluster.MAX_IN_FLIGHT + 1


async def test_auction_bids_and_settles_on_a_cluster(apps, tmp_path, cluster_url, stripe_sandbox):
    """Start (the unit leaves stock), bids judged in one script, the end claimed and
    charged off-session: sold, paid, the label printed; all in the show's slot."""
    printer = await PrinterSocket().start()
    path = tmp_path / "demo.toml"
    path.write_text(manifest_text("demo", printers=printer_toml(printer.url)))
    sessions = []
    try:
        app = await apps([path], cluster_url, stripe_api_base=stripe_sandbox.url, buyers_per_ip=0)
        status, a = await auction_start(app, duration_s=10, extend_s=0)
        assert status == 201, a
        assert keys.order_show(auctions.auction_order_id(a["id"], 0)) == "demo"
        ana, ben = await bidder(app.url, "Ana"), await bidder(app.url, "Ben")
        sessions += [ana, ben]
        assert (await bid(ana, a["id"], "10.00"))[0] == 201
        assert (await bid(ben, a["id"], "10.50"))[1]["error"] == "bid_too_low"
        assert (await bid(ben, a["id"], "12.00"))[0] == 201

        async def sold():
            r = await app.session.get("/api/shows/demo/auctions/current")
            body = await r.json()
            return body if body["status"] == "sold" else None

        done = await wait_until(sold, timeout=40)
        assert done["winner"] == "Ben" and done["sold_for"] == "12.00"
        redis = await connect(cluster_url)
        try:
            order = await redis.hgetall(order_key(done["order_id"]))
            assert order[b"status"] in (b"paid", b"printed") and order[b"amount_cents"] == b"1200"
            assert int(await redis.hget(keys.stock("demo"), "MUG-01")) == 39
        finally:
            await redis.aclose()
        await wait_until(lambda: len(printer.received) > 100, timeout=30)
    finally:
        for s in sessions:
            await s.close()
        await printer.stop()


async def test_chat_post_moderate_pin_delete_on_a_cluster(apps, write_manifest, cluster_url):
    """Chat's scripts and transactions (post, timeout with WATCH, pin, delete) on a
    cluster, through the HTTP API."""
    app = await apps([write_manifest("demo")], cluster_url, buyers_per_ip=0)
    async with buyer_session(app.url) as ana:
        assert (await ana.put("/api/me", json={"name": "Ana"})).status == 200
        r = await ana.post("/api/shows/demo/chat", json={"text": "hello"})
        assert r.status == 201, await r.text()
        message = await r.json()
        host = app.auth()
        moderation = {"action": "timeout", "author": message["author"], "minutes": 5}
        r = await app.session.post("/api/shows/demo/chat/moderation", json=moderation, headers=host)
        assert r.status == 200, await r.text()
        r = await ana.post("/api/shows/demo/chat", json={"text": "again"})
        assert r.status in (403, 429), await r.text()  # timed out: refused
        r = await app.session.post(
            "/api/shows/demo/chat/pin", json={"id": message["id"]}, headers=host
        )
        assert r.status == 200, await r.text()
        r = await app.session.delete(f"/api/shows/demo/chat/{message['id']}", headers=host)
        assert r.status == 200, await r.text()
        async with ana.get("/api/shows/demo/chat") as r:
            body = await r.json()
        assert body["messages"] == [] and body["pinned"] is None


async def test_printer_worker_station_prints_from_a_cluster(tmp_path, cluster_url):
    """``showroom printer-worker --redis redis+cluster://...``: a paid order's job is read
    from the show's stream on its master and the label goes to the TCP printer."""
    printer = await PrinterSocket().start()
    path = tmp_path / "demo.toml"
    path.write_text(manifest_text("demo", printers=printer_toml(printer.url)))
    redis = await connect(cluster_url)
    station = None
    try:
        order = Order(
            order_id=keys.new_order_id("demo"),
            show="demo",
            viewer="v1",
            status=Status.PENDING_PAYMENT,
            items=[OrderItem("MUG-01", "Stoneware mug", 1, 1800)],
            amount_cents=1800,
            currency="usd",
            number=42,
        )
        await save_new_order(redis, order)
        await mark_paid(redis, order.order_id, "pi_test")
        station = subprocess.Popen(  # noqa: ASYNC220 (started once, not waited on here)
            [sys.executable, "-m", "server.cli", "printer-worker", "--manifest", str(path)]
            + ["--redis", cluster_url],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

        async def printed():
            return (await redis.hget(order_key(order.order_id), "status")) == b"printed"

        await wait_until(printed, timeout=30)
        assert len(printer.received) > 100
    finally:
        if station is not None:
            station.terminate()
            station.wait(15)
        await redis.aclose()
        await printer.stop()


async def test_live_events_cross_processes_on_a_cluster(apps, write_manifest, cluster_url):
    """The event bus on a cluster: a drop started on one app reaches another app's SSE
    stream (PUBLISH on one node, the subscriber's pattern on another)."""
    manifest = write_manifest("demo", products=PRODUCTS)
    one = await apps([manifest], cluster_url)
    two = await apps([manifest], cluster_url)
    async with (
        aiohttp.ClientSession() as s,
        s.get(f"{two.url}/api/shows/demo/events") as sse,
    ):
        await sse.content.readline()  # retry line: subscribed
        await start_drop(one.url)
        event = await _next_event(sse, "drop", within=10)
    assert event["drop"]["sku"] == "BAG-07" and event["drop"]["remaining"] == UNITS


async def test_a_plain_url_of_a_cluster_node_gets_the_cluster_client(cluster_url, redis_url):
    detected = await connect(plain_url(cluster_url))
    single = await connect(redis_url)
    try:
        assert isinstance(detected, AsyncRedisCluster)
        assert not isinstance(single, AsyncRedisCluster)
        await detected.set(keys.stock("a"), 1)  # no MOVED: the client follows the slots
        await detected.set(keys.stock("b"), 1)
    finally:
        await detected.aclose()
        await single.aclose()


async def test_serve_on_a_cluster_drains_and_exits_on_sigterm(
    write_manifest, cluster_url, tmp_path
):
    """An operator's SIGTERM ends ``serve`` on a cluster as on one Redis (it once hung:
    the cluster client swallowed a cancel and the event bus never stopped). Three times,
    as the hang depended on timing."""
    from load_tests.common import spawn_serve
    from server.embedded import free_port

    manifest = write_manifest("demo")
    for i in range(3):
        args = ["--manifest", str(manifest), "--port", str(free_port()), "--redis", cluster_url]
        args += ["--data-dir", str(tmp_path / f"var{i}"), "--no-print-worker"]
        proc, url = spawn_serve(args)
        try:
            async with aiohttp.ClientSession() as http, http.get(f"{url}/healthz") as resp:
                assert resp.status == 200
            proc.terminate()
            assert proc.wait(20) == 0, "serve exits cleanly on SIGTERM"
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
