"""Shared fixtures: a real redis-server, a real localstripe, the app on a real port.

Every test gets a flushed Redis and its own app instance listening on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
import redis as redis_sync
from aiohttp import web

from load_tests.common import VideoSize, manifest_toml, spawn_serve
from server.app import create_app
from server.config import Settings, load_shows
from server.embedded import EmbeddedRedis, EmbeddedStripe, free_port
from tests.gst_support import SYSTEM_PYTHON

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "tests" / "artifacts"

STREAM_KEY = "test-stream-key"
STAFF_PASSWORD = "test-staff-pw"


# Under ``make test`` (pytest-xdist, --dist loadgroup) these take turns on one process:
# each loads both cores (a server, a load generator, decoders), and two at once would
# measure each other rather than Showroom.
HEAVY_FILES = ("test_load_smoke_", "test_networks_lossy", "test_edges_lossy")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.name.startswith(HEAVY_FILES):
            item.add_marker(pytest.mark.xdist_group("heavy"))


@pytest.fixture(scope="module")
def gstreamer() -> None:
    """Fail (not skip) when GStreamer is missing: `make system` installs it."""
    check = (
        "import gi; gi.require_version('Gst', '1.0'); gi.require_version('GstWebRTC', '1.0');"
        "from gi.repository import Gst; Gst.init(None);"
        "missing = [e for e in ('webrtcbin', 'nicesrc', 'dtlssrtpenc', 'x264enc', 'vp8enc',"
        " 'avdec_h264', 'vp8dec', 'opusenc') if Gst.ElementFactory.find(e) is None];"
        "print(' '.join(missing))"
    )
    try:
        proc = subprocess.run(
            [SYSTEM_PYTHON, "-c", check], capture_output=True, text=True, timeout=30
        )
    except FileNotFoundError:
        pytest.fail(f"{SYSTEM_PYTHON} not found: run `make system` (GStreamer interop tests)")
    assert proc.returncode == 0 and not proc.stdout.strip(), (
        "GStreamer with webrtcbin is not installed for the system python3 "
        f"(missing: {proc.stdout.strip() or proc.stderr.strip()[-300:]}): run `make system`"
    )


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory) -> Iterator[EmbeddedRedis]:
    server = EmbeddedRedis(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: EmbeddedRedis) -> str:
    client = redis_sync.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    return redis_server.url


@pytest.fixture(scope="session")
def stripe_sandbox(tmp_path_factory) -> Iterator[EmbeddedStripe]:
    server = EmbeddedStripe(log_dir=tmp_path_factory.mktemp("localstripe"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def artifacts() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


def manifest_text(
    show_id: str = "demo",
    *,
    width: int = 640,
    height: int = 360,
    fps: int = 30,
    products: str | None = None,
    printers: str = "",
    extra_show: str = "",
) -> str:
    if products is None:
        products = """
        [[products]]
        sku = "MUG-01"
        name = "Stoneware mug"
        price = "18.00"
        stock = 40
        per_buyer_limit = 2

        [[products]]
        sku = "TEE-02"
        name = "Crewneck tee"
        price = "32.00"
        stock = 5
        """
    return manifest_toml(
        show_id,
        title=f"Test Show {show_id}",
        stream_key=STREAM_KEY,
        staff_password=STAFF_PASSWORD,
        video=VideoSize(width, height, fps, 800),
        products=products,
        printers=printers,
        show_extra=extra_show,
    )


@pytest.fixture
def write_manifest(tmp_path: Path) -> Callable[..., Path]:
    def write(show_id: str = "demo", **kwargs) -> Path:
        path = tmp_path / f"{show_id}.toml"
        path.write_text(manifest_text(show_id, **kwargs))
        return path

    return write


def buyer_session(
    url: str, connector: aiohttp.BaseConnector | None = None, **kwargs
) -> aiohttp.ClientSession:
    """A browser-like client with its own cookie jar (its own viewer id); buyers may
    share one connector so thousands of them do not each open a connection pool."""
    return aiohttp.ClientSession(
        url,
        cookie_jar=aiohttp.CookieJar(unsafe=True),  # cookies on 127.0.0.1
        connector=connector,
        connector_owner=connector is None,
        **kwargs,
    )


async def http_login(
    session: aiohttp.ClientSession, password: str, next_path: str = "/staff", **kwargs
) -> aiohttp.ClientResponse:
    """Log in as a browser does: load the form (its token and cookie), then post it."""
    async with session.get(f"/login?next={next_path}") as r:
        token = re.search(r'name="csrf" value="([^"]+)"', await r.text()).group(1)
    return await session.post(
        "/login", data={"password": password, "next": next_path, "csrf": token}, **kwargs
    )


@dataclass
class RunningApp:
    url: str
    app: web.Application
    runner: web.AppRunner
    settings: Settings
    session: aiohttp.ClientSession = field(repr=False)

    def auth(self, token: str = STAFF_PASSWORD) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"}

    async def stop(self) -> None:
        await self.session.close()
        try:
            await asyncio.wait_for(self.runner.cleanup(), 30)
        except TimeoutError:
            # A shutdown that hangs says where: every task's stack, then the failure.
            for task in asyncio.all_tasks():
                print(f"--- task {task.get_name()}", file=sys.stderr)
                task.print_stack(limit=12, file=sys.stderr)
            raise


async def start_app(
    manifests: list[Path], redis_url: str, tmp_path: Path, **settings_kwargs
) -> RunningApp:
    port = free_port()
    settings = Settings(
        manifests=manifests,
        port=port,
        redis_url=redis_url,
        data_dir=tmp_path / "var",
        **settings_kwargs,
    )
    app = create_app(settings, load_shows(manifests), redis_url)
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    url = f"http://127.0.0.1:{port}"
    return RunningApp(url, app, runner, settings, buyer_session(url))


@pytest.fixture
async def make_app(redis_url: str, tmp_path: Path) -> AsyncIterator[Callable[..., RunningApp]]:
    """Start an app for the given manifests (default: one 640x360 'demo' show)."""
    started: list[RunningApp] = []

    async def make(manifests: list[Path] | None = None, **settings_kwargs) -> RunningApp:
        if manifests is None:
            path = tmp_path / "demo.toml"
            path.write_text(manifest_text("demo"))
            manifests = [path]
        running = await start_app(manifests, redis_url, tmp_path, **settings_kwargs)
        started.append(running)
        return running

    yield make
    for running in reversed(started):
        await running.stop()


@pytest.fixture
async def app(make_app) -> RunningApp:
    return await make_app()


def start_server_process(
    manifests: list[Path],
    redis_url: str,
    data_dir: Path,
    env: dict | None = None,
    extra_args: list[str] | None = None,
) -> tuple[subprocess.Popen, str]:
    """``showroom serve`` as a child process; returns it and its base URL once listening."""
    args = ["--port", str(free_port()), "--redis", redis_url, "--data-dir", str(data_dir)]
    args += sum((["--manifest", str(m)] for m in manifests), [])
    args += extra_args or []
    return spawn_serve(args, env={**os.environ, **(env or {})})


def run_benchmark(module: str, *args: str, timeout: float) -> str:
    """``python -m load_tests.MODULE ARGS`` as a user runs it; its output (stdout, then
    stderr). Fails with that output if the benchmark exits non-zero."""
    # Its own process group: a run that overstays is killed with everything it started
    # (servers, nginx, browsers), so nothing outlives the test.
    proc = subprocess.Popen(
        [sys.executable, "-m", f"load_tests.{module}", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        raise AssertionError(
            f"load_tests.{module} did not finish within {timeout:.0f} s\n{stdout}{stderr}"
        ) from None
    out = stdout + stderr
    assert proc.returncode == 0, out
    return out


async def wait_until(
    predicate: Callable[[], object],
    timeout: float = 5.0,
    interval: float = 0.05,
    message: Callable[[], str] | None = None,
):
    """Poll an (a)sync predicate until it is truthy; return its value. On timeout, a
    ``TimeoutError``, or an ``AssertionError`` saying ``message()`` (what was last seen)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if loop.time() > deadline:
            if message is not None:
                raise AssertionError(f"{message()} (within {timeout}s)")
            raise TimeoutError(f"condition not met within {timeout}s")
        await asyncio.sleep(interval)
