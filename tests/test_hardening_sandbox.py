"""The Stripe sandbox cannot be reached from the network, and a public server does not
take test-card payments by accident (issue 16, item 7)."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from load_tests.common import spawn_serve
from server.embedded import free_port
from tests.conftest import ROOT, STAFF_PASSWORD, STREAM_KEY, manifest_text

pytestmark = pytest.mark.timeout(60)


def listening_addresses(port: int) -> set[str]:
    """Local addresses of the TCP sockets listening on ``port`` (from /proc/net)."""
    found = set()
    for name, width in (("tcp", 8), ("tcp6", 32)):
        for line in Path(f"/proc/net/{name}").read_text().splitlines()[1:]:
            fields = line.split()
            addr, hexport = fields[1].split(":")
            if int(hexport, 16) == port and fields[3] == "0A":  # LISTEN
                if width == 8:
                    found.add(socket.inet_ntoa(bytes.fromhex(addr)[::-1]))
                else:
                    raw = b"".join(bytes.fromhex(addr[i : i + 8])[::-1] for i in range(0, 32, 8))
                    found.add(socket.inet_ntop(socket.AF_INET6, raw))
    return found


def outward_address() -> str | None:
    """This machine's address on its network (not loopback), if it has one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # no packet is sent for a UDP connect
        except OSError:
            return None
        ip = s.getsockname()[0]
    return None if ip.startswith("127.") else ip


def test_embedded_localstripe_listens_on_loopback_only(stripe_sandbox):
    assert listening_addresses(stripe_sandbox.port) == {"127.0.0.1"}
    with socket.create_connection(("127.0.0.1", stripe_sandbox.port), timeout=2):
        pass
    ip = outward_address()
    if ip is not None:
        with pytest.raises(OSError), socket.create_connection((ip, stripe_sandbox.port), 2):
            pass


@pytest.fixture
def manifest(tmp_path: Path) -> Path:
    path = tmp_path / "demo.toml"
    # Long secrets: this server listens on every interface.
    text = manifest_text("demo").replace(STREAM_KEY, "stream-" + os.urandom(12).hex())
    path.write_text(text.replace(STAFF_PASSWORD, "staff-" + os.urandom(12).hex()))
    return path


def serve(manifest: Path, redis_url: str, *extra: str, env: dict) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("STRIPE_")}
    args = ["--manifest", str(manifest), "--port", str(free_port()), "--redis", redis_url]
    return subprocess.run(
        [sys.executable, "-m", "server.cli", "serve", *args, *extra],
        env={**clean, **env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_serve_refuses_unsafe_payment_settings(manifest, redis_url, tmp_path):
    # No live keys on a public address: test cards would "pay" for real goods.
    proc = serve(manifest, redis_url, "--host", "0.0.0.0", env={})
    assert proc.returncode != 0 and "listening" not in proc.stdout
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and "refusing to start" in err[0] and "--sandbox" in err[0]
    # Live keys without the webhook secret or the publishable key: refused, saying which.
    live = {"STRIPE_SECRET_KEY": "sk_live_x" + "0" * 20}
    proc = serve(manifest, redis_url, env=live)
    assert proc.returncode != 0
    assert "STRIPE_WEBHOOK_SECRET" in proc.stderr and "STRIPE_PUBLISHABLE_KEY" in proc.stderr
    proc = serve(manifest, redis_url, env={**live, "STRIPE_PUBLISHABLE_KEY": "pk_live_x"})
    assert proc.returncode != 0 and "STRIPE_WEBHOOK_SECRET" in proc.stderr
    assert "STRIPE_PUBLISHABLE_KEY" not in proc.stderr


def test_serve_runs_the_sandbox_on_a_public_host_when_asked(
    manifest, redis_url, stripe_sandbox, tmp_path
):
    env = {k: v for k, v in os.environ.items() if not k.startswith("STRIPE_")}
    env["STRIPE_API_BASE"] = stripe_sandbox.url
    args = ["--manifest", str(manifest), "--port", str(free_port()), "--redis", redis_url]
    args += ["--host", "0.0.0.0", "--sandbox", "--data-dir", str(tmp_path / "var")]
    proc, url = spawn_serve(args, env=env)
    try:
        assert url.startswith("http://0.0.0.0:")
    finally:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(15)
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.timeout(60)
async def test_sandbox_orders_are_marked_test_for_staff_and_on_the_label(
    make_app, stripe_sandbox, tmp_path
):
    from tests.conftest import wait_until
    from tests.test_printing_worker import TcpPrinter, one_printer

    printer = TcpPrinter()
    try:
        path = tmp_path / "shop.toml"
        path.write_text(manifest_text("demo", printers=one_printer(printer.url)))
        app = await make_app([path], stripe_api_base=stripe_sandbox.url)
        s = app.session
        async with s.post("/api/cart/items", json={"show": "demo", "sku": "MUG-01"}) as r:
            assert r.status == 200
        async with s.post("/api/checkout", json={"name": "Tess", "email": "t@example.com"}) as r:
            order = await r.json()
        card = {"card_number": "4242424242424242", "exp_month": 12, "exp_year": 2034, "cvc": "123"}
        async with s.post(f"/api/orders/{order['order_id']}/sandbox-pay", json=card) as r:
            assert r.status == 200
        await wait_until(lambda: printer.labels(), timeout=20)
        assert b"TEST" in printer.labels()[0] and b"Tess" in printer.labels()[0]
        async with s.get("/api/orders?show=demo", headers=app.auth()) as r:
            listed = (await r.json())["orders"]
        assert [o["sandbox"] for o in listed] == [True]
    finally:
        printer.close()
