"""Preflight before going live: the host's API and ``showroom check``, against a real
Redis, a real socket printer and a real publisher."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest

from media.client import WhipPublisher
from media.testsrc import TestPatternTrack
from server.embedded import free_port
from server.preflight import grade_clock, grade_disk, grade_persistence, grade_publisher
from tests.conftest import ROOT, STREAM_KEY, manifest_text, wait_until
from tests.test_web_support import PrinterSocket, printer_toml

pytestmark = pytest.mark.timeout(90)


def write(tmp_path, printers: str = ""):
    path = tmp_path / "demo.toml"
    path.write_text(manifest_text("demo", width=320, height=180, fps=15, printers=printers))
    return path


def levels(body) -> dict[str, str]:
    return {c["name"]: c["level"] for c in body["checks"]}


async def test_host_preflight_shows_publisher_printer_stripe_redis_disk_clock(make_app, tmp_path):
    printer = await PrinterSocket().start()
    app = await make_app([write(tmp_path, printer_toml(printer.url))])
    s = app.session
    try:
        async with s.get("/api/shows/demo/preflight") as r:
            assert r.status == 401
        async with s.get("/api/shows/demo/preflight", headers=app.auth()) as r:
            before = await r.json()
        got = levels(before)
        assert got["publisher"] == "amber" and got["stripe"] == "amber"  # slate; sandbox
        assert got["redis"] == "green" and got["clock"] == "green" and got["disk"] != "red"
        assert "printer counter" in got
        pub = WhipPublisher(f"{app.url}/whip/demo", STREAM_KEY, TestPatternTrack(320, 180, 15))
        await pub.start(s)
        try:

            async def live():
                async with s.get("/api/shows/demo") as r:
                    return (await r.json())["live"]

            await wait_until(live, timeout=15)
            async with s.get("/api/shows/demo/preflight", headers=app.auth()) as r:
                after = await r.json()
        finally:
            await pub.close(s)
        [publisher] = [c for c in after["checks"] if c["name"] == "publisher"]
        assert publisher["level"] in ("green", "amber") and "fps" in publisher["detail"]
        assert after["overall"] in ("green", "amber")
    finally:
        await printer.stop()


def test_grades():
    assert grade_persistence("no", "everysec").level == "red"
    assert grade_persistence("yes", "always").level == "green"
    assert grade_disk(512 * 1024**2, "/x").level == "red"
    assert grade_disk(50 * 1024**3, "/x").level == "green"
    assert grade_clock(8000).level == "red" and grade_clock(-700).level == "amber"

    class Show:
        class video:
            fps, bitrate_kbps = 30, 1500

    assert grade_publisher(True, 12, 900, Show).level == "red"
    assert grade_publisher(True, 30, 1400, Show).level == "green"


async def run_check(*args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "server.cli",
        "check",
        *args,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    out = (await asyncio.wait_for(proc.communicate(), 60))[0].decode()
    return proc.returncode, out


async def test_showroom_check_passes_and_fails_as_it_should(tmp_path, redis_url):
    printer = await PrinterSocket().start()
    try:
        good = write(tmp_path, printer_toml(printer.url))
        code, out = await run_check(
            "--manifest", str(good), "--redis", redis_url, "--data-dir", str(tmp_path / "var")
        )
        assert code == 0, out
        assert "printer counter" in out and "overall:" in out
    finally:
        await printer.stop()
    # A printer nobody listens on is red, and so is the whole check.
    bad = tmp_path / "bad"
    bad.mkdir()
    dead = write(bad, printer_toml(f"tcp://127.0.0.1:{free_port()}"))
    code, out = await run_check("--manifest", str(dead), "--data-dir", str(tmp_path / "var"))
    assert code == 1, out
    assert "RED" in out and "overall: red" in out
    # A bad manifest says so and exits 2.
    (bad / "broken.toml").write_text("[show]\nid = 'x'\n")
    code, out = await run_check("--manifest", str(bad / "broken.toml"))
    assert code == 2 and "bad manifest" in out
