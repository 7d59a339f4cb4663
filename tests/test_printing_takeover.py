"""A print station dies mid-label; another worker takes the job over; one label comes out."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys

import pytest

from checkout.orders import OrderItem, Status, load_order, print_stream
from devices import store
from tests.conftest import wait_until
from tests.test_printing_worker import (  # noqa: F401  (fixtures)
    TcpPrinter,
    has_status,
    one_printer,
    paid_order,
    printer_manifest,
    redis,
    start_worker,
)

CLAIM_IDLE_MS = 1500


def start_station(manifest, redis_url: str) -> subprocess.Popen:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "server.cli",
            "printer-worker",
            "--manifest",
            str(manifest),
            "--redis",
            redis_url,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "SHOWROOM_PRINT_CLAIM_IDLE_MS": str(CLAIM_IDLE_MS)},
    )


async def wait_running(proc: subprocess.Popen) -> str:
    """The station's consumer name, once it says it is running."""

    def read() -> str:
        assert proc.stdout is not None
        seen = []
        for line in proc.stdout:
            seen.append(line)
            if "printer-worker" in line and "running" in line:
                return line.split()[1]
        raise RuntimeError("printer-worker did not start:\n" + "".join(seen))

    return await asyncio.wait_for(asyncio.to_thread(read), 30)


@pytest.mark.timeout(90)
async def test_killed_station_job_is_taken_over_and_printed_exactly_once(
    redis,  # noqa: F811
    redis_url,
    tmp_path,
    start_worker,  # noqa: F811
):
    printer = TcpPrinter(small_buffer=True)
    station = None
    try:
        printer.stall = True  # jammed: takes 64 bytes of a connection, then nothing
        manifest = printer_manifest(tmp_path, one_printer(printer.url))
        station = start_station(manifest, redis_url)
        consumer = await wait_running(station)
        # Many items: the label is larger than what the jammed printer's buffers accept.
        items = [OrderItem(f"SKU-{i:02d}", f"Product number {i}", 1, 100 + i) for i in range(40)]
        order = await paid_order(redis, items=items, buyer="Killed Mid-Label")

        async def station_is_sending() -> bool:
            pending = await redis.xpending_range(print_stream("demo"), store.GROUP, "-", "+", 10)
            owned = any(p["consumer"].decode() == consumer for p in pending)
            return owned and b"\x1b@" in printer.stalled_bytes()

        await wait_until(station_is_sending, 20)
        station.send_signal(signal.SIGKILL)
        station.wait(10)
        printer.release_stalled()  # the printer is reset: the half-sent label is gone
        assert printer.labels() == []
        assert (await load_order(redis, order.order_id)).status == Status.PAID

        await start_worker(manifest, claim_idle_ms=CLAIM_IDLE_MS)
        await wait_until(lambda: has_status(redis, order.order_id, Status.PRINTED), 20)
        await asyncio.sleep(CLAIM_IDLE_MS / 1000 + 0.5)  # nobody prints it a second time
        assert printer.numbers() == [order.number]
        assert b"Killed Mid-Label" in printer.labels()[0]
        assert (await redis.xpending(print_stream("demo"), store.GROUP))["pending"] == 0
    finally:
        if station is not None and station.poll() is None:
            station.kill()
            station.wait(10)
        printer.close()


@pytest.mark.timeout(60)
async def test_station_stops_cleanly_on_sigterm_handing_its_jobs_back(
    redis,  # noqa: F811
    redis_url,
    tmp_path,
    start_worker,  # noqa: F811
):
    printer = TcpPrinter()
    station = None
    try:
        printer.refuse()  # the station cannot print: its job stays in flight
        manifest = printer_manifest(tmp_path, one_printer(printer.url))
        station = start_station(manifest, redis_url)
        consumer = await wait_running(station)
        order = await paid_order(redis)

        async def owned() -> bool:
            pending = await redis.xpending_range(print_stream("demo"), store.GROUP, "-", "+", 10)
            return any(p["consumer"].decode() == consumer for p in pending)

        await wait_until(owned, 10)
        station.send_signal(signal.SIGTERM)
        assert station.wait(15) == 0
        assert (await load_order(redis, order.order_id)).status == Status.PAID
        printer.accept()
        # The stopped station handed its job back: even a worker that waits a minute
        # before taking over a silent worker's jobs prints it right away.
        await start_worker(manifest, claim_idle_ms=60_000)
        await wait_until(lambda: has_status(redis, order.order_id, Status.PRINTED), 10)
        assert printer.numbers() == [order.number]
    finally:
        if station is not None and station.poll() is None:
            station.kill()
            station.wait(10)
        printer.close()
