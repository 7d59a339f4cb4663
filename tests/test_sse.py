"""The SSE fan-out (server.sse) through the real server: one stalled client is closed
without holding up the others, gone clients are let go, bursts arrive whole."""

from __future__ import annotations

import asyncio
import socket

import pytest

from server import keys
from server.sse import MAX_BUFFER, SWEEP_S
from tests.conftest import wait_until
from tests.sse_client import EventStream

pytestmark = pytest.mark.timeout(60)


def stalled_stream(port: int) -> socket.socket:
    """An SSE client that sends its request and then never reads."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(("127.0.0.1", port))
    s.sendall(b"GET /api/shows/demo/events HTTP/1.1\r\nHost: x\r\n\r\n")
    return s


async def test_a_stalled_client_is_closed_and_the_others_get_everything(app):
    hub = app.app[keys.BUS].streams
    port = int(app.url.rsplit(":", 1)[1])
    async with EventStream(app.session, app.url) as events:
        stalled = stalled_stream(port)
        try:
            await wait_until(lambda: hub.count("demo") == 2, 5)
            bus = app.app[keys.BUS]
            blob = "x" * 32_000
            # past what the kernel buffers on loopback (a few MB), then past MAX_BUFFER
            n = (MAX_BUFFER + 12 * 1024 * 1024) // 32_000
            for i in range(n):
                await bus.publish("demo", {"type": "bench", "i": i, "blob": blob})
            await wait_until(lambda: len(events.of("bench")) == n, 20)
            assert [e["i"] for e in events.of("bench")] == list(range(n)), "in order, none lost"
            await wait_until(lambda: hub.evicted >= 1, 5)
            assert hub.count("demo") == 1
        finally:
            stalled.close()


async def test_gone_clients_are_let_go(app):
    hub = app.app[keys.BUS].streams
    async with EventStream(app.session, app.url):
        await wait_until(lambda: hub.count("demo") == 1, 5)
    # nothing is written to it any more: the sweep notices the closed socket by itself
    await wait_until(lambda: hub.count("demo") == 0, SWEEP_S * 3)


async def test_a_burst_is_delivered_whole_and_in_order(app):
    async with EventStream(app.session, app.url) as events:
        bus = app.app[keys.BUS]
        await asyncio.gather(*(bus.publish("demo", {"type": "burst", "i": i}) for i in range(300)))
        await wait_until(lambda: len(events.of("burst")) == 300, 10)
        assert sorted(e["i"] for e in events.of("burst")) == list(range(300))


async def test_an_http_1_0_client_gets_plain_events(app):
    """nginx speaks HTTP/1.0 to its upstream unless told otherwise: no chunk framing."""
    reader, writer = await asyncio.open_connection("127.0.0.1", int(app.url.rsplit(":", 1)[1]))
    try:
        writer.write(b"GET /api/shows/demo/events HTTP/1.0\r\nHost: x\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert b" 200 " in head.split(b"\r\n")[0] and b"chunked" not in head.lower()
        assert await asyncio.wait_for(reader.readuntil(b"\n\n"), 5) == b"retry: 2000\n\n"
        hub = app.app[keys.BUS].streams
        await wait_until(lambda: hub.count("demo") == 1, 5)
        await app.app[keys.BUS].publish("demo", {"type": "plain", "n": 1})
        line = await asyncio.wait_for(reader.readuntil(b"\n\n"), 5)
        assert line.startswith(b'data: {"type":"plain","n":1'), line
    finally:
        writer.close()
