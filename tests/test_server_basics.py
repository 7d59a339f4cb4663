"""The server's shared pieces: health, metrics, JSON errors, host auth, live events."""

from __future__ import annotations

import asyncio
import json
import signal

from tests.conftest import STREAM_KEY, buyer_session, http_login, start_server_process


async def test_healthz_and_metrics(app):
    async with app.session.get("/healthz") as r:
        assert r.status == 200
        assert await r.json() == {"ok": True, "redis": "ok"}
    async with app.session.get("/metrics", headers=app.auth()) as r:
        assert r.status == 200
        text = await r.text()
        assert "showroom_viewers" in text
        assert "showroom_server_latency_seconds" in text


async def test_unknown_show_is_json_404(app):
    async with app.session.get("/api/shows/nope") as r:
        assert r.status == 404
        body = await r.json()
        assert body["error"] == "not_found" and "nope" in body["detail"]


async def test_feature_needs_host_and_valid_input(app):
    async with app.session.post("/api/shows/demo/feature", json={"sku": "MUG-01"}) as r:
        assert r.status == 401
        assert (await r.json())["error"] == "unauthorized"
    hdr = {"Authorization": f"Bearer {STREAM_KEY}", "Content-Type": "application/json"}
    async with app.session.post("/api/shows/demo/feature", data=b"{not json", headers=hdr) as r:
        assert r.status == 400
        assert (await r.json())["error"] == "bad_request"
    async with app.session.post("/api/shows/demo/feature", json={"sku": "NOPE"}, headers=hdr) as r:
        assert r.status == 404
    async with app.session.get("/api/shows/demo") as r:
        assert (await r.json())["featured"] is None  # nothing changed
    async with app.session.post(
        "/api/shows/demo/feature", json={"sku": "MUG-01"}, headers=hdr
    ) as r:
        assert r.status == 200
        assert (await r.json())["featured"] == "MUG-01"


async def test_featured_event_reaches_sse_subscriber(app):
    async with app.session.get("/api/shows/demo/events") as stream:
        assert stream.status == 200
        assert stream.headers["Content-Type"].startswith("text/event-stream")

        async def first_event():  # the first featured one: a viewer count may come first
            async for line in stream.content:
                if line.startswith(b"data: ") and json.loads(line[6:])["type"] == "featured":
                    return json.loads(line[6:])

        reader = asyncio.create_task(first_event())
        await asyncio.sleep(0.1)
        async with app.session.post(
            "/api/shows/demo/feature",
            json={"sku": "TEE-02"},
            headers={"Authorization": f"Bearer {STREAM_KEY}"},
        ) as r:
            assert r.status == 200
        event = await asyncio.wait_for(reader, 5)
        assert event["type"] == "featured" and event["sku"] == "TEE-02"


async def test_staff_login_sets_session(app):
    async with buyer_session(app.url) as s:
        async with await http_login(s, "wrong", allow_redirects=False) as r:
            assert r.status == 401
        async with await http_login(
            s, "test-staff-pw", "https://evil.example/", allow_redirects=False
        ) as r:
            assert r.status == 302
            assert r.headers["Location"] == "/staff"  # never off-site
        async with s.post("/api/shows/demo/feature", json={"sku": None}) as r:
            assert r.status == 200


def test_serve_prints_listening_line_and_stops_on_sigterm(write_manifest, redis_url, tmp_path):
    proc, url = start_server_process([write_manifest("demo")], redis_url, tmp_path / "var")
    try:
        assert url.startswith("http://127.0.0.1:")
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0


def test_killed_server_takes_its_embedded_redis_with_it(tmp_path):
    """kill -9 of showroom must not leave an orphan redis-server holding the data dir."""
    import os
    import subprocess
    import sys
    import time

    code = (
        "from server.embedded import EmbeddedRedis; import sys, time;"
        f"r = EmbeddedRedis({str(tmp_path)!r}); r.start(); print(r.proc.pid, flush=True); time.sleep(60)"
    )
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    os.kill(child, signal.SIGKILL)
    raise AssertionError("redis-server outlived its SIGKILLed parent")


async def test_body_arriving_in_pieces_is_read_whole(app):
    """A slow client (chunked upload) must not have its body cut at the first piece."""

    async def slow_body():
        yield b'{"sku": '
        await asyncio.sleep(0.2)
        yield b'"MUG-01"}'

    hdr = {"Authorization": f"Bearer {STREAM_KEY}", "Content-Type": "application/json"}
    async with app.session.post("/api/shows/demo/feature", data=slow_body(), headers=hdr) as r:
        assert r.status == 200, await r.text()
        assert (await r.json())["featured"] == "MUG-01"

    async def endless():
        for _ in range(40):
            yield b" " * 1024

    async with app.session.post("/api/shows/demo/feature", data=endless(), headers=hdr) as r:
        assert r.status == 413
        assert (await r.json())["error"] == "too_large"
