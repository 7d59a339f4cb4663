"""Issue 16, item 12 (commerce and printing share): private order events, no-store
answers, labels confirmed by the printer's status, the embedded Redis restarted, Stripe
calls bounded, finished orders and acknowledged print jobs cleaned up, per-show stream
keys. Real app, Redis, localstripe, TCP printers."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import threading
import time
import uuid
from pathlib import Path

import aiohttp
import pytest
import redis.asyncio as aioredis

from checkout.keys import orders_index
from checkout.orders import (
    Order,
    OrderItem,
    Status,
    load_order,
    mark_paid,
    order_key,
    print_stream,
    prune_order_index,
    save_new_order,
    transition,
)
from devices.worker import PrintWorker, WorkerOptions
from load_tests.common import spawn_serve
from server.config import load_manifest, load_shows
from server.embedded import free_port
from tests.conftest import STREAM_KEY, buyer_session, manifest_text, wait_until
from tests.test_checkout_events import read_events
from tests.test_printing_worker import LABEL, TcpPrinter, one_printer, paid_order, printer_manifest

pytestmark = pytest.mark.timeout(60)
CARD = {"card_number": "4242424242424242", "exp_month": 12, "exp_year": 2034, "cvc": "123"}


@pytest.fixture
async def redis(redis_url):
    client = aioredis.Redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
async def start_worker(redis):
    workers: list[PrintWorker] = []

    async def start(manifest: Path, **opts) -> PrintWorker:
        worker = PrintWorker(
            redis,
            load_shows([manifest]),
            base_url="http://shop.test",
            options=WorkerOptions(**opts),
        )
        await worker.start()
        workers.append(worker)
        return worker

    yield start
    for w in workers:
        await w.stop()


# --- order events are private; counts are public -----------------------------------------


async def test_order_events_go_to_their_buyer_and_staff_others_see_only_counts(
    make_app, stripe_sandbox
):
    app = await make_app(stripe_api_base=stripe_sandbox.url, print_worker=False)
    streams = {"buyer": [], "stranger": [], "staff": []}
    stop = asyncio.Event()
    async with (
        buyer_session(app.url) as buyer,
        buyer_session(app.url) as stranger,
        aiohttp.ClientSession(app.url, headers=app.auth()) as staff,
    ):
        async with buyer.get("/api/cart") as r:  # the buyer's cookie first
            assert r.status == 200
        async with stranger.get("/api/cart") as r:
            assert r.status == 200
        readers = []
        for name, s in (("buyer", buyer), ("stranger", stranger), ("staff", staff)):
            resp = await s.get("/api/shows/demo/events")
            await resp.content.readline()
            readers.append((resp, asyncio.create_task(read_events(resp, streams[name], stop))))
        async with buyer.post("/api/cart/items", json={"show": "demo", "sku": "MUG-01"}) as r:
            assert r.status == 200
        async with buyer.post("/api/checkout", json={"name": "Ada", "email": "a@x.org"}) as r:
            order = await r.json()
        async with buyer.post(f"/api/orders/{order['order_id']}/sandbox-pay", json=CARD) as r:
            assert r.status == 200
        await wait_until(
            lambda: any(e.get("type") == "orders" for e in streams["stranger"]), timeout=20
        )
        stop.set()
        for resp, task in readers:
            await task
            resp.close()
    oid = order["order_id"]
    mine = [e for e in streams["buyer"] if e["type"] == "order"]
    assert [e["status"] for e in mine] == ["pending_payment", "paid"]
    assert all(e["order_id"] == oid and "viewer" not in e for e in mine)
    assert [e["status"] for e in streams["staff"] if e["type"] == "order"] == [
        "pending_payment",
        "paid",
    ]
    raw = json.dumps(streams["stranger"])
    assert oid not in raw and "pending_payment" not in raw and "viewer" not in raw
    assert not [e for e in streams["stranger"] if e["type"] == "order"]
    assert [e["paid"] for e in streams["stranger"] if e["type"] == "orders"] == [1]


async def test_answers_with_personal_data_are_not_cached(make_app, stripe_sandbox):
    app = await make_app(stripe_api_base=stripe_sandbox.url, print_worker=False)
    s = app.session
    answers = []
    async with s.get("/api/cart") as r:
        answers.append(r.headers.get("Cache-Control"))
    async with s.post("/api/cart/items", json={"show": "demo", "sku": "MUG-01"}) as r:
        answers.append(r.headers.get("Cache-Control"))
    async with s.post("/api/checkout", json={"name": "Ada", "email": "a@x.org"}) as r:
        answers.append(r.headers.get("Cache-Control"))
        order = await r.json()
    async with s.get(f"/api/orders/{order['order_id']}") as r:
        answers.append(r.headers.get("Cache-Control"))
    async with s.get("/api/orders", headers=app.auth()) as r:
        answers.append(r.headers.get("Cache-Control"))
    async with s.post("/api/checkout", json={"name": "x\x1b"}) as r:  # errors too
        assert r.status == 400
        answers.append(r.headers.get("Cache-Control"))
    assert answers == ["no-store"] * 6
    async with s.get("/api/shows/demo") as r:  # public show state may be cached
        assert r.headers.get("Cache-Control") != "no-store"


# --- a label is printed when the printer says so ------------------------------------------


class StatusPrinter(TcpPrinter):
    """A printer that answers DLE EOT status queries (online, paper present) and, while
    ``cut_after`` is set, drops the connection (RST) after that many bytes of a label."""

    ONLINE = b"\x12"

    def __init__(self) -> None:
        self.cut_after: int | None = None
        self.cuts = 0
        super().__init__()

    def _serve(self, conn, record) -> None:
        conn.settimeout(0.2)
        seen = b""
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                try:
                    chunk = conn.recv(65536)
                except TimeoutError:
                    continue
                except OSError:
                    return
                if not chunk:
                    return
                with self._lock:
                    record.data += chunk
                seen = (seen + chunk)[-3:]
                labelled = len(record.data) > 16
                if self.cut_after is not None and labelled and len(record.data) >= self.cut_after:
                    self.cuts += 1
                    with self._lock:  # the paper ran out here: the rest never printed
                        del record.data[self.cut_after :]
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
                    return  # closed with unread bytes: the sender sees a reset
                if seen[:2] == b"\x10\x04":
                    conn.sendall(self.ONLINE)
        finally:
            record.closed = True
            conn.close()


async def test_a_label_cut_mid_send_is_not_printed_until_the_printer_confirms(
    redis, tmp_path, start_worker
):
    printer = StatusPrinter()
    try:
        manifest = printer_manifest(tmp_path, one_printer(printer.url))
        await start_worker(manifest, backoff_min_s=0.3, backoff_max_s=0.3, park_after=50)
        await asyncio.sleep(0.5)  # the worker's first probe: this printer answers status
        printer.cut_after = 300
        order = await paid_order(redis, buyer="Cut Short")
        await wait_until(lambda: printer.cuts >= 2, timeout=15)
        assert (await load_order(redis, order.order_id)).status == Status.PAID
        assert printer.labels() == []  # only pieces of labels so far
        printer.cut_after = None  # the printer is fixed
        await wait_until(lambda: _status(redis, order.order_id, Status.PRINTED), timeout=15)
        assert len(printer.labels()) == 1 and b"Cut Short" in printer.labels()[0]
    finally:
        printer.close()


async def _status(redis, order_id, status):
    return (await load_order(redis, order_id)).status == status


# --- the embedded Redis comes back ------------------------------------------------------


def _children(pid: int) -> list[tuple[int, str]]:
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            stat = (entry / "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid == pid:
                cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                out.append((int(entry.name), cmd))
    return out


@pytest.mark.timeout(90)
async def test_embedded_redis_is_restarted_when_it_dies(write_manifest, stripe_sandbox, tmp_path):
    env = {**os.environ, "STRIPE_API_BASE": stripe_sandbox.url}
    args = ["--manifest", str(write_manifest("demo")), "--port", str(free_port())]
    proc, url = spawn_serve([*args, "--data-dir", str(tmp_path / "var")], env=env)
    try:
        async with buyer_session(url) as s:
            async with s.post("/api/cart/items", json={"show": "demo", "sku": "MUG-01"}) as r:
                assert r.status == 200
            [(pid, _)] = [c for c in _children(proc.pid) if "redis-server" in c[1]]
            os.kill(pid, signal.SIGKILL)

            async def healthy() -> bool:
                with contextlib.suppress(aiohttp.ClientError):
                    async with s.get("/healthz") as r:
                        return r.status == 200
                return False

            await wait_until(lambda: not _alive(pid), timeout=5)
            await wait_until(healthy, timeout=30, interval=0.2)
            [(new_pid, _)] = [c for c in _children(proc.pid) if "redis-server" in c[1]]
            assert new_pid != pid
            async with s.get("/api/cart") as r:  # the hold survived (AOF)
                assert [i["sku"] for i in (await r.json())["items"]] == ["MUG-01"]
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert not [c for c in _children(proc.pid) if "redis-server" in c[1]]


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


# --- Stripe calls are bounded; the buyer keeps the items ------------------------------------


class SilentServer:
    """A TCP server that accepts and never answers (a Stripe that hangs)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.conns: list[socket.socket] = []
        self._t = threading.Thread(target=self._accept, daemon=True)
        self._t.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)

    def close(self) -> None:
        self.sock.close()
        for c in self.conns:
            c.close()


async def test_a_hanging_stripe_is_a_bounded_503_and_the_cart_is_kept(make_app):
    stripe = SilentServer()
    try:
        app = await make_app(
            stripe_secret_key="sk_test_" + uuid.uuid4().hex,
            stripe_webhook_secret="whsec_" + uuid.uuid4().hex,
            stripe_api_base=f"http://127.0.0.1:{stripe.port}",
            stripe_timeout_s=2,
            print_worker=False,
        )
        s = app.session
        async with s.post(
            "/api/cart/items", json={"show": "demo", "sku": "MUG-01", "quantity": 2}
        ) as r:
            assert r.status == 200
        started = time.monotonic()
        async with s.post("/api/checkout", json={"name": "Ada", "email": "a@x.org"}) as r:
            took = time.monotonic() - started
            assert r.status == 503, await r.text()
            assert r.headers["Retry-After"].isdigit()
            err = await r.json()
        assert err["error"] == "unavailable" and "cart" in err["detail"]
        assert took < 4
        async with s.get("/api/cart") as r:
            items = (await r.json())["items"]
        assert [(i["sku"], i["quantity"], i["unit_price"]) for i in items] == [
            ("MUG-01", 2, "18.00")
        ]
        async with s.get("/api/shows/demo") as r:
            mug = next(p for p in (await r.json())["products"] if p["sku"] == "MUG-01")
        assert mug["available"] == 38  # still held for this buyer, not back on sale
        # The limit still counts the restored units once: 2 of 2.
        async with s.post("/api/cart/items", json={"show": "demo", "sku": "MUG-01"}) as r:
            assert r.status == 409 and (await r.json())["error"] == "limit_reached"
    finally:
        stripe.close()


# --- finished orders expire; acknowledged print jobs leave the stream --------------------------


async def test_finished_orders_expire_after_the_retention(redis, monkeypatch):
    items = [OrderItem("MUG-01", "Stoneware mug", 1, 1800)]

    async def new(status_path):
        order = Order(
            uuid.uuid4().hex[:16], "demo", "v", Status.PENDING_PAYMENT, items, 1800, "usd"
        )
        await save_new_order(redis, order)
        for step in status_path:
            if step == Status.PAID:
                await mark_paid(redis, order.order_id, "pi_x")
            else:
                await transition(redis, order.order_id, step)
        return order.order_id

    done = await new([Status.PAID, Status.PRINTED, Status.FULFILLED])
    waiting = await new([Status.PAID, Status.PRINTED])
    lapsed = await new([Status.EXPIRED])
    day = 86400
    assert 29 * day < await redis.ttl(order_key(done)) <= 30 * day
    assert 29 * day < await redis.ttl(order_key(lapsed)) <= 30 * day
    assert await redis.ttl(order_key(waiting)) == -1  # still to be picked up: kept

    monkeypatch.setenv("SHOWROOM_ORDER_RETENTION_DAYS", str(1 / day))  # one second
    short = await new([Status.PAID, Status.FULFILLED])
    await wait_until(lambda: _gone(redis, short), timeout=5)
    assert await prune_order_index(redis, "demo", now=time.time() + 2) == 1
    index = {m.decode() for m in await redis.zrange(orders_index("demo"), 0, -1)}
    assert short not in index and {done, waiting, lapsed} <= index


async def _gone(redis, order_id) -> bool:
    return not await redis.exists(order_key(order_id))


async def test_print_stream_keeps_only_unacknowledged_jobs(redis, tmp_path, start_worker):
    printer = TcpPrinter()
    try:
        manifest = printer_manifest(tmp_path, one_printer(printer.url))
        await start_worker(manifest, trim_interval_s=0.2, backoff_max_s=0.3, park_after=2)
        orders = [await paid_order(redis) for _ in range(3)]
        for o in orders:
            await wait_until(lambda o=o: _status(redis, o.order_id, Status.PRINTED), 15)
        await wait_until(lambda: _xlen(redis, 0), timeout=5)
        # The printer goes away: its job stays in the stream (pending, then parked).
        printer.refuse()
        stuck = await paid_order(redis, buyer="Waiting")
        await wait_until(lambda: redis.hlen("print:parked"), timeout=15)
        await asyncio.sleep(0.6)  # several trim passes
        entries = await redis.xrange(print_stream("demo"))
        assert len(entries) == 1
        printer.accept()
        await wait_until(lambda: _status(redis, stuck.order_id, Status.PRINTED), 20)
        await wait_until(lambda: _xlen(redis, 0), timeout=5)
        assert sum(1 for label in printer.labels() if LABEL.match(label)) == 4
    finally:
        printer.close()


async def _xlen(redis, n) -> bool:
    return await redis.xlen(print_stream("demo")) == n


# --- per-show stream keys ---------------------------------------------------------------------


def test_per_show_stream_key_from_the_environment_wins(tmp_path):
    a = tmp_path / "a.toml"
    a.write_text(manifest_text("friday-drop"))
    b = tmp_path / "b.toml"
    b.write_text(manifest_text("sat"))
    env = {
        "SHOWROOM_FRIDAY_DROP_STREAM_KEY": "friday-secret-key",
        "SHOWROOM_STREAM_KEY": "all-shows-key",
    }
    assert load_manifest(a, env).stream_key == "friday-secret-key"
    assert load_manifest(b, env).stream_key == "all-shows-key"
    assert load_manifest(b, {}).stream_key == STREAM_KEY  # the manifest's own


def test_a_serial_printer_that_answers_status_must_confirm_each_label():
    """A real pty is the serial line; the 'printer' on its other end answers DLE EOT 1
    with ``reply`` (None: stays silent)."""
    from devices.connections import PrinterError, open_connection

    master, slave = os.openpty()
    reply: list[bytes | None] = [b"\x12"]
    got = bytearray()
    done = threading.Event()

    def printer() -> None:
        while not done.is_set():
            try:
                chunk = os.read(master, 4096)
            except OSError:
                return
            got.extend(chunk)
            if got.endswith(b"\x10\x04\x01") and reply[0] is not None:
                os.write(master, reply[0])

    threading.Thread(target=printer, daemon=True).start()
    try:
        conn = open_connection(f"serial://{os.ttyname(slave)}?baud=19200")
        conn.probe(2)  # it answers: from now on every label must be confirmed
        assert conn.answers_status is True
        conn.send(b"\x1b@label one\n\x1dV\x00", 5)
        reply[0] = b"\x1a"  # cover open: offline
        with pytest.raises(PrinterError, match="offline"):
            conn.send(b"\x1b@label two\n\x1dV\x00", 5)
        reply[0] = None  # unplugged mid-label: no answer at all
        with pytest.raises(PrinterError, match="did not confirm"):
            conn.send(b"\x1b@label three\n\x1dV\x00", 5)
        assert b"label one" in got and b"label three" in got
    finally:
        done.set()
        os.close(slave)
        os.close(master)
