"""The print worker against a real loopback TCP printer and the real Redis.

``TcpPrinter`` is the printer: a listening socket on 127.0.0.1 that records what each
connection sent. It can refuse connections (listener closed) or stall (accept, read a few
bytes, then stop reading), like a network printer that is off or jammed.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import struct
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from checkout.orders import (
    Order,
    OrderItem,
    PrintJob,
    Status,
    load_order,
    mark_paid,
    print_stream,
    save_new_order,
    transition,
)
from devices import store
from devices.worker import PrintWorker, WorkerOptions
from server.config import load_shows
from tests.conftest import manifest_text, wait_until

LABEL = re.compile(rb"\x1b@.*?\x1dV.", re.S)
NUMBER = re.compile(rb"#(\d+)\n")
QR_STORE = re.compile(rb"\x1d\(k..1P0(http[^\x1d]*)", re.S)


@dataclass
class PrinterConnection:
    data: bytearray = field(default_factory=bytearray)
    stalled: bool = False
    closed: bool = False


class TcpPrinter:
    """A raw-port (9100) printer on loopback that keeps every byte it receives."""

    def __init__(self, small_buffer: bool = False) -> None:
        self.small_buffer = small_buffer
        self.connections: list[PrinterConnection] = []
        self.stall = False
        self._release = threading.Event()
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._threads: list[threading.Thread] = []
        self.port = 0
        self.accept()

    @property
    def url(self) -> str:
        return f"tcp://127.0.0.1:{self.port}"

    # -- control ------------------------------------------------------------------
    def accept(self) -> None:
        """Listen (again, on the same port)."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if self.small_buffer:  # so a stalled printer really stops taking bytes
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
        sock.bind(("127.0.0.1", self.port))
        sock.listen(16)
        self.port = sock.getsockname()[1]
        self._listener = sock
        t = threading.Thread(target=self._accept_loop, args=(sock,), daemon=True)
        t.start()
        self._threads.append(t)

    def refuse(self) -> None:
        """Close the listener: connections are refused (ECONNREFUSED)."""
        if self._listener is not None:
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)
            self._listener.close()
            self._listener = None

    def release_stalled(self) -> None:
        """The jammed printer is reset: stalled connections are dropped (RST)."""
        self.stall = False
        self._release.set()

    def close(self) -> None:
        self.refuse()
        self._release.set()

    # -- what it printed -----------------------------------------------------------
    def labels(self) -> list[bytes]:
        with self._lock:
            streams = [bytes(c.data) for c in self.connections if not c.stalled]
        return [m.group(0) for data in streams for m in LABEL.finditer(data)]

    def numbers(self) -> list[int]:
        return [int(NUMBER.search(label).group(1)) for label in self.labels()]

    def stalled_bytes(self) -> bytes:
        with self._lock:
            return b"".join(bytes(c.data) for c in self.connections if c.stalled)

    # -- socket handling -----------------------------------------------------------
    def _accept_loop(self, listener: socket.socket) -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            record = PrinterConnection(stalled=self.stall)
            with self._lock:
                self.connections.append(record)
            threading.Thread(target=self._serve, args=(conn, record), daemon=True).start()

    def _serve(self, conn: socket.socket, record: PrinterConnection) -> None:
        conn.settimeout(0.2)
        try:
            if record.stalled:
                with contextlib.suppress(OSError):
                    record.data += conn.recv(64)  # take a little, then jam
                self._release.wait(60)
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                return
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
        finally:
            record.closed = True
            conn.close()


@pytest.fixture
def printer():
    p = TcpPrinter()
    yield p
    p.close()


def printer_manifest(tmp_path: Path, printers: str, products: str | None = None) -> Path:
    path = tmp_path / "demo.toml"
    path.write_text(manifest_text("demo", printers=printers, products=products))
    return path


def one_printer(url: str, name: str = "counter", profile: str = "TM-T88V", paper: int = 80) -> str:
    return f"""
    [[printers]]
    name = "{name}"
    connection = "{url}"
    profile = "{profile}"
    paper_mm = {paper}
    default = true
    """


_numbers = iter(range(1000, 100000))


async def paid_order(
    redis, *, items: list[OrderItem] | None = None, buyer: str = "Ada Lovelace", show: str = "demo"
) -> Order:
    items = items or [OrderItem("MUG-01", "Stoneware mug", 2, 1800)]
    order = Order(
        order_id=uuid.uuid4().hex[:16],
        show=show,
        viewer="v1",
        status=Status.PENDING_PAYMENT,
        items=items,
        amount_cents=sum(i.total_cents for i in items),
        currency="usd",
        buyer_name=buyer,
        number=next(_numbers),
    )
    await save_new_order(redis, order)
    await mark_paid(redis, order.order_id, "pi_test")
    return order


@pytest.fixture
async def redis(redis_url):
    client = aioredis.Redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
async def start_worker(redis):
    workers: list[PrintWorker] = []

    async def start(manifest: Path, events: list | None = None, **opts) -> PrintWorker:
        async def publish(show_id, event):
            if events is not None:
                events.append(event)

        worker = PrintWorker(
            redis,
            load_shows([manifest]),
            base_url="http://shop.test",
            publish=publish,
            options=WorkerOptions(**opts),
        )
        await worker.start()
        workers.append(worker)
        return worker

    yield start
    for w in workers:
        await w.stop()


async def drained(redis) -> bool:
    counts = await store.job_counts(redis, [print_stream("demo")])
    return counts["waiting"] == 0 and counts["in_flight"] == 0


async def has_status(redis, order_id: str, status: Status) -> bool:
    return await status_of(redis, order_id) == status


async def status_of(redis, order_id: str) -> Status:
    order = await load_order(redis, order_id)
    assert order is not None
    return order.status


@pytest.mark.timeout(30)
async def test_paid_order_prints_its_label_and_becomes_printed(
    redis, printer, tmp_path, start_worker
):
    events: list[dict] = []
    await start_worker(printer_manifest(tmp_path, one_printer(printer.url)), events)
    order = await paid_order(
        redis,
        items=[
            OrderItem("MUG-01", "Stoneware mug", 2, 1800),
            OrderItem("TEE-02", "Crewneck tee", 1, 3200),
        ],
        buyer="Grace Hopper",
    )
    await wait_until(lambda: printer.labels(), 10)
    await wait_until(lambda: has_status(redis, order.order_id, Status.PRINTED), 5)
    [label] = printer.labels()
    assert f"#{order.number}\n".encode() in label
    assert b"Grace Hopper" in label
    assert b"2 x Stoneware mug" in label and b"MUG-01" in label
    assert b"1 x Crewneck tee" in label and b"TEE-02" in label
    assert b"USD 68.00" in label
    qr = QR_STORE.search(label)  # native QR: GS ( k, store data, then print
    assert qr and qr.group(1) == f"http://shop.test/staff/orders/{order.order_id}".encode()
    assert b"\x1d(k\x03\x001Q0" in label
    assert label.endswith((b"\x1dVA", b"\x1dV\x00", b"\x1dV\x01", b"\x1dVB"))
    # acknowledged, status published, printer counted
    pending = await redis.xpending(print_stream("demo"), store.GROUP)
    assert pending["pending"] == 0
    await wait_until(lambda: any(e["type"] == "order" for e in events), 3)
    order_event = next(e for e in events if e["type"] == "order")
    assert order_event["status"] == "printed" and order_event["number"] == order.number
    status = await store.read_status(redis, "counter")
    assert status.online and status.printed == 1 and status.last_error is None


@pytest.mark.timeout(60)
async def test_printer_refusing_for_5s_prints_every_label_once_in_order(
    redis, printer, tmp_path, start_worker
):
    events: list[dict] = []
    printer.refuse()
    await start_worker(
        printer_manifest(tmp_path, one_printer(printer.url)),
        events,
        park_after=3,
        backoff_max_s=1.0,
        probe_interval_s=0.5,
    )
    orders = [await paid_order(redis, buyer=f"Buyer {i}") for i in range(6)]
    refused_from = time.monotonic()
    # While refused: the first job is parked with its error, visible to staff.
    parked = await wait_until(lambda: store.parked_jobs(redis), 8)
    assert parked[0].order_id == orders[0].order_id
    assert "cannot connect" in parked[0].error and parked[0].attempts >= 3
    assert "cannot connect" in ((await load_order(redis, orders[0].order_id)).print_error or "")
    status = await store.read_status(redis, "counter")
    assert not status.online and "cannot connect" in status.last_error
    assert any(e["type"] == "printer" and e["online"] is False for e in events)
    assert printer.labels() == []
    await asyncio.sleep(max(0.0, 5.0 - (time.monotonic() - refused_from)))
    printer.accept()
    await wait_until(lambda: len(printer.labels()) >= len(orders), 15)
    await asyncio.sleep(0.5)  # nothing more arrives
    assert printer.numbers() == [o.number for o in orders]
    for o in orders:
        after = await load_order(redis, o.order_id)
        assert after.status == Status.PRINTED and after.print_error is None
    assert await store.parked_jobs(redis) == []
    assert (await store.read_status(redis, "counter")).online
    assert any(e["type"] == "printer" and e["online"] is True for e in events)


@pytest.mark.timeout(90)
async def test_burst_of_100_orders_prints_100_labels_exactly_once(
    redis, printer, tmp_path, start_worker
):
    await start_worker(printer_manifest(tmp_path, one_printer(printer.url)))
    gate = asyncio.Semaphore(20)  # the test client's pool has 100 connections

    async def one(i: int) -> Order:
        async with gate:
            return await paid_order(redis, buyer=f"Burst {i}")

    orders = await asyncio.gather(*(one(i) for i in range(100)))
    await wait_until(lambda: len(printer.labels()) >= 100, 60)
    await asyncio.sleep(0.5)
    numbers = printer.numbers()
    assert len(numbers) == 100 and sorted(numbers) == sorted(o.number for o in orders)
    # each label left in the order it was paid (stream order)
    stream = await redis.xrange(print_stream("demo"))
    by_id = {o.order_id: o.number for o in orders}
    assert numbers == [by_id[PrintJob.unpack(f[b"job"]).order_id] for _, f in stream]
    statuses = [await status_of(redis, o.order_id) for o in orders]
    assert set(statuses) == {Status.PRINTED}


@pytest.mark.timeout(30)
async def test_order_spanning_printers_prints_one_label_per_station(redis, tmp_path, start_worker):
    counter, packing = TcpPrinter(), TcpPrinter()
    try:
        printers = (
            one_printer(counter.url, "counter")
            + f"""
        [[printers]]
        name = "packing"
        connection = "{packing.url}"
        profile = "TM-T88V"
        paper_mm = 58
        """
        )
        products = """
        [[products]]
        sku = "MUG-01"
        name = "Stoneware mug"
        price = "18.00"
        stock = 40

        [[products]]
        sku = "TEE-02"
        name = "Crewneck tee"
        price = "32.00"
        stock = 5
        printer = "packing"
        """
        await start_worker(printer_manifest(tmp_path, printers, products))
        order = await paid_order(
            redis,
            items=[
                OrderItem("MUG-01", "Stoneware mug", 1, 1800),
                OrderItem("TEE-02", "Crewneck tee", 1, 3200),
            ],
        )
        await wait_until(lambda: counter.labels() and packing.labels(), 10)
        await wait_until(lambda: has_status(redis, order.order_id, Status.PRINTED), 5)
        [at_counter], [at_packing] = counter.labels(), packing.labels()
        assert b"MUG-01" in at_counter and b"TEE-02" not in at_counter
        assert b"TEE-02" in at_packing and b"MUG-01" not in at_packing
        assert b"Part 1 of 2" in at_counter and b"Part 2 of 2" in at_packing
        # 58 mm: no text line is wider than 32 columns
        lines = re.findall(rb"([ -~]+)\n", at_packing)
        assert lines and max(len(line) for line in lines) <= 32
    finally:
        counter.close()
        packing.close()


@pytest.mark.timeout(30)
async def test_printed_order_is_not_printed_again_unless_reprint(
    redis, printer, tmp_path, start_worker
):
    await start_worker(printer_manifest(tmp_path, one_printer(printer.url)))
    order = await paid_order(redis)
    await wait_until(lambda: has_status(redis, order.order_id, Status.PRINTED), 10)
    # a duplicated (non-reprint) job for the same order is skipped
    await redis.xadd(print_stream("demo"), {"job": PrintJob(order.order_id, "demo").pack()})
    await wait_until(lambda: drained(redis), 5)
    await asyncio.sleep(0.3)
    assert len(printer.labels()) == 1
    # a reprint prints again and leaves the status alone
    await transition(redis, order.order_id, Status.FULFILLED)
    await redis.xadd(
        print_stream("demo"), {"job": PrintJob(order.order_id, "demo", reprint=True).pack()}
    )
    await wait_until(lambda: len(printer.labels()) == 2, 10)
    assert b"REPRINT" in printer.labels()[1]
    assert await status_of(redis, order.order_id) == Status.FULFILLED
