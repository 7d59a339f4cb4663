"""Hardening of the HTTP edge: secret guessing, cross-site requests, sessions, headers.

Each test replays what an attacker did on loopback against a real server and Redis
(issue 16, items 2, 8, 9 and the HTTP part of 12)."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import subprocess
import sys
import time

import aiohttp
import pytest
import redis as redis_sync
import redis.asyncio as aioredis
from aiohttp import web

from server import keys, throttle
from server.auth import STAFF, VIEWER, issue_token, read_token
from server.config import ManifestError, load_manifest
from server.embedded import EmbeddedRedis, free_port
from tests.conftest import (
    ROOT,
    STAFF_PASSWORD,
    STREAM_KEY,
    buyer_session,
    http_login,
    manifest_text,
)
from tests.test_web_pages import make_order
from tests.test_web_support import JsErrors, chromium, new_page, staff_login

FEATURE = "/api/shows/demo/feature"


def from_ip(url: str, ip: str) -> aiohttp.ClientSession:
    """A client whose connections come from another loopback address (another IP)."""
    return buyer_session(url, aiohttp.TCPConnector(local_addr=(ip, 0)))


def staff_cookie(s: aiohttp.ClientSession) -> str:
    return next(c.value for c in s.cookie_jar if c.key == "sr_staff")


# --- 2. guessing secrets ------------------------------------------------------------


async def test_wrong_logins_are_throttled_and_locked_answers_say_nothing(app):
    async with buyer_session(app.url) as s:
        statuses = []
        for _ in range(20):
            async with await http_login(s, "not-the-password", allow_redirects=False) as r:
                statuses.append(r.status)
                if r.status == 429:
                    page = await r.text()
                    retry = int(r.headers["Retry-After"])
        assert statuses.count(401) <= 7 and statuses[-1] == 429, statuses
        assert "Too many failed attempts" in page and retry >= 1
        # While locked, even the right password is refused the same way: no oracle.
        async with await http_login(s, STAFF_PASSWORD, allow_redirects=False) as r:
            assert r.status == 429
        await asyncio.sleep(retry + 0.2)
        async with await http_login(s, STAFF_PASSWORD, allow_redirects=False) as r:
            assert r.status == 302 and r.headers["Location"] == "/staff"


async def test_staff_bearer_and_stream_key_guesses_are_rate_limited(app):
    async with buyer_session(app.url) as s:
        seen = []
        for i in range(15):
            hdr = {"Authorization": f"Bearer guess-{i}"}
            async with s.get("/api/orders", headers=hdr) as r:
                seen.append(r.status)
                body = await r.json()
        assert seen[:5] == [401] * 5 and seen[-1] == 429, seen
        assert body["error"] == "rate_limited" and int(r.headers["Retry-After"]) >= 1
    # The stream key (WHIP Bearer) from another address: its own IP and show account.
    async with from_ip(app.url, "127.0.0.2") as s:
        seen = []
        for i in range(15):
            hdr = {"Authorization": f"Bearer key-guess-{i}", "Content-Type": "application/sdp"}
            async with s.post("/whip/demo", data="v=0\r\n", headers=hdr) as r:
                seen.append(r.status)
                body = await r.json()
        assert seen[0] == 401 and seen[-1] == 429, seen
        assert r.headers["Retry-After"] and body["error"] == "rate_limited"


async def test_a_locked_account_still_admits_an_address_that_logged_in_before(app):
    url = app.url
    async with from_ip(url, "127.0.0.2") as staff:  # the real staff, earlier in the day
        async with await http_login(staff, STAFF_PASSWORD, allow_redirects=False) as r:
            assert r.status == 302
    async with from_ip(url, "127.0.0.3") as guesser:
        for i in range(12):
            async with await http_login(guesser, f"guess-{i}", allow_redirects=False) as r:
                pass
        assert r.status == 429
        async with await http_login(guesser, STAFF_PASSWORD, allow_redirects=False) as r:
            assert r.status == 429  # the guesser learns nothing, even with the right one
    async with from_ip(url, "127.0.0.4") as newcomer:  # the account lock holds elsewhere
        async with await http_login(newcomer, STAFF_PASSWORD, allow_redirects=False) as r:
            assert r.status == 429
    async with from_ip(url, "127.0.0.2") as staff:  # ...but not for the known address
        async with await http_login(staff, STAFF_PASSWORD, allow_redirects=False) as r:
            assert r.status == 302


async def test_a_lock_set_on_one_process_holds_on_another(make_app, write_manifest):
    """Right secrets skip Redis while no lock is known; every process hears of new locks."""
    manifest = write_manifest("demo")
    first, second = await make_app([manifest]), await make_app([manifest])
    async with buyer_session(second.url) as s, s.get("/api/orders", headers=second.auth()) as r:
        assert r.status == 200  # the right secret, before any lock
    async with buyer_session(first.url) as s:
        for i in range(12):
            async with s.get("/api/orders", headers=first.auth(f"guess-{i}")) as r:
                pass
        assert r.status == 429
    await asyncio.sleep(0.2)  # the lock event crosses Redis pub/sub
    async with buyer_session(second.url) as s, s.get("/api/orders", headers=second.auth()) as r:
        assert r.status == 429 and (await r.json())["error"] == "rate_limited"


async def test_at_most_100_failures_an_hour_per_account_from_any_number_of_ips(redis_url):
    """An attacker rotating addresses, guessing whenever the lock allows, for an hour."""
    redis = aioredis.Redis.from_url(redis_url)
    limits = throttle.Limits()
    t, end, evaluated, locked_waits = 1_000_000.0, 1_000_000.0 + 3600, 0, []
    try:
        while t < end:
            v = await throttle.attempt(
                redis,
                limits,
                f"10.0.{evaluated // 250}.{evaluated % 250}",
                "staff",
                ok=False,
                now=t,
            )
            if v.status == throttle.FAILED:
                evaluated += 1
                t += 0.01
            else:
                locked_waits.append(v.retry_after_s)
                t += v.retry_after_s
    finally:
        await redis.aclose()
    assert 60 <= evaluated <= 100, evaluated
    assert locked_waits[:4] == pytest.approx([1, 2, 4, 8], abs=0.05)  # backoff doubles


def test_short_secrets_are_refused_at_manifest_load(tmp_path):
    path = tmp_path / "show.toml"
    for old, new, key in [
        (STAFF_PASSWORD, "short-pw", "staff.password"),
        (STREAM_KEY, "short-key", "show.stream_key"),
    ]:
        path.write_text(manifest_text("demo").replace(old, new))
        with pytest.raises(ManifestError) as err:
            load_manifest(path, env={})
        assert err.value.key == key and "at least" in err.value.problem
    # The demo's own secrets are long enough.
    demo = (ROOT / "server/demo/show.toml").read_text().replace("{labels_dir}", str(tmp_path))
    path.write_text(demo)
    assert load_manifest(path, env={}).staff_password == "demo-staff"


def _serve(args: list[str], env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "server.cli", "serve", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env=env,
    )


def test_serve_off_loopback_refuses_the_demo_secrets(tmp_path, redis_url):
    demo = (ROOT / "server/demo/show.toml").read_text().replace("{labels_dir}", str(tmp_path))
    path = tmp_path / "demo.toml"
    path.write_text(demo)
    common = ["--manifest", str(path), "--redis", redis_url, "--port", str(free_port())]
    proc = _serve([*common, "--host", "0.0.0.0", "--sandbox"])
    assert proc.returncode == 2
    [line] = proc.stderr.strip().splitlines()
    assert "refusing" in line and "staff.password" in line and "show.stream_key" in line


# --- 8. cross-site requests ---------------------------------------------------------

ATTACK_PAGE = """<!doctype html><html><body><script>
(async () => {
  const target = %(target)r;
  const opts = {method: "POST", mode: "no-cors", credentials: "include"};
  await fetch(target + "/api/orders/%(order)s/fulfil", opts).catch(() => {});
  await fetch(target + "/api/shows/demo/feature", {...opts,
    headers: {"Content-Type": "text/plain"}, body: '{"sku": "TEE-02"}'}).catch(() => {});
  document.title = "sent";
})();
</script></body></html>"""


@pytest.mark.timeout(90)
async def test_a_same_site_page_on_another_port_cannot_act_with_the_staff_cookie(app):
    order = await make_order(app)
    attacker = web.Application()

    async def attack_page(request: web.Request) -> web.Response:
        text = ATTACK_PAGE % {"target": app.url, "order": order.order_id}
        return web.Response(text=text, content_type="text/html")

    attacker.router.add_get("/", attack_page)
    runner = web.AppRunner(attacker)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    errors = JsErrors()
    try:
        async with chromium(app) as browser:
            _, page = await new_page(browser, errors, "staff")
            await staff_login(page, app.url, "/staff")
            await page.goto(f"http://127.0.0.1:{port}/")
            await page.wait_for_function("document.title === 'sent'", timeout=15000)
            # The staff's own page still works: same-origin JSON calls pass.
            await page.goto(f"{app.url}/staff")
            ok = await page.evaluate(
                """async () => (await fetch('/api/shows/demo/feature', {method: 'POST',
                   headers: {'Content-Type': 'application/json'},
                   body: JSON.stringify({sku: 'MUG-01'})})).status"""
            )
            assert ok == 200
    finally:
        await runner.cleanup()
    async with app.session.get(f"/api/orders/{order.order_id}", headers=app.auth()) as r:
        assert (await r.json())["status"] == "paid"  # not fulfilled by the other page
    async with app.session.get("/api/shows/demo") as r:
        assert (await r.json())["featured"] == "MUG-01"  # the staff's choice, not TEE-02


async def test_origin_checks_json_type_and_form_tokens(app):
    async with buyer_session(app.url) as s:
        async with await http_login(s, STAFF_PASSWORD) as r:
            assert r.status == 200
        own = app.url
        other = own.rsplit(":", 1)[0] + ":1"
        cases = [
            ({"Origin": other}, 403),
            ({"Sec-Fetch-Site": "same-site", "Origin": other}, 403),
            ({"Sec-Fetch-Site": "cross-site"}, 403),
            ({"Origin": "null"}, 403),
            ({"Origin": own}, 200),
            ({"Sec-Fetch-Site": "same-origin", "Origin": own}, 200),
            ({}, 200),  # not a browser: scripts and tests with a cookie jar
        ]
        for headers, status in cases:
            async with s.post(FEATURE, json={"sku": None}, headers=headers) as r:
                assert r.status == status, (headers, await r.text())
                if status == 403:
                    assert (await r.json())["error"] == "forbidden"
        # A JSON body must say so (a plain form can only send text/plain and friends).
        for ctype in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data"):
            hdr = {"Content-Type": ctype}
            async with s.post(FEATURE, data='{"sku": "TEE-02"}', headers=hdr) as r:
                assert r.status == 415 and (await r.json())["error"] == "bad_request"
        # Logout without the page's token does not log out.
        async with s.post("/logout", data={}, allow_redirects=False) as r:
            assert r.status == 403
        async with s.get("/api/orders") as r:
            assert r.status == 200
    # A cross-site request without any cookie acts for nobody: WHIP/WHEP keep open CORS.
    async with aiohttp.ClientSession() as anon:
        hdr = {"Origin": "https://player.example", "Content-Type": "application/sdp"}
        async with anon.post(f"{app.url}/whep/demo", data="v=0\r\n", headers=hdr) as r:
            assert r.status in (400, 422) and r.headers["Access-Control-Allow-Origin"] == "*"
        # A login form posted without its token sets no session.
        async with anon.post(
            f"{app.url}/login", data={"password": STAFF_PASSWORD}, allow_redirects=False
        ) as r:
            assert r.status == 403 and "sr_staff" not in r.cookies


# --- 9. sessions --------------------------------------------------------------------


async def test_logout_ends_the_session_everywhere(app):
    async with buyer_session(app.url) as s:
        async with await http_login(s, STAFF_PASSWORD) as r:
            assert r.status == 200
            token = re.search(r'name="csrf" value="([^"]+)"', await r.text()).group(1)
        stolen = staff_cookie(s)
        async with s.post("/logout", data={"csrf": token}, allow_redirects=False) as r:
            assert r.status == 302
    async with aiohttp.ClientSession(cookies={"sr_staff": stolen}) as replay:
        async with replay.get(f"{app.url}/api/orders") as r:
            assert r.status == 401


async def test_a_password_change_ends_sessions_and_a_restart_keeps_them(
    make_app, tmp_path, redis_url
):
    path = tmp_path / "demo.toml"
    path.write_text(manifest_text("demo"))
    first = await make_app([path])
    async with buyer_session(first.url) as s:
        async with await http_login(s, STAFF_PASSWORD) as r:
            assert r.status == 200
        cookie = staff_cookie(s)
    await first.stop()

    async def works(running) -> bool:
        async with aiohttp.ClientSession(cookies={"sr_staff": cookie}) as c:
            async with c.get(f"{running.url}/api/orders") as r:
                return r.status == 200

    same = await make_app([path])  # a restart with the same password: still logged in
    assert await works(same)
    changed = tmp_path / "changed" / "demo.toml"
    changed.parent.mkdir()
    changed.write_text(manifest_text("demo").replace(STAFF_PASSWORD, "a-new-staff-password"))
    assert not await works(await make_app([changed]))


async def test_viewer_and_staff_tokens_carry_their_type_and_both_time_limits(app):
    secret = app.app[keys.SECRET]
    async with buyer_session(app.url) as s:
        async with await http_login(s, STAFF_PASSWORD) as r:
            assert r.status == 200
        staff_token = staff_cookie(s)
        async with s.get("/api/cart") as r:
            viewer_token = r.cookies["sr_viewer"].value
    session_id = read_token(secret, STAFF, staff_token)
    assert session_id and read_token(secret, VIEWER, staff_token) is None
    # A viewer cookie is no staff login, and a staff cookie is no viewer id.
    async with aiohttp.ClientSession(cookies={"sr_staff": viewer_token}) as c:
        async with c.get(f"{app.url}/api/orders") as r:
            assert r.status == 401
    async with aiohttp.ClientSession(cookies={"sr_viewer": staff_token}) as c:
        async with c.get(f"{app.url}/api/cart") as r:
            assert "sr_viewer" in r.cookies  # treated as a newcomer: a fresh viewer id
    # Not yet valid, and no longer valid: both refused for a live session id.
    future = issue_token(secret, STAFF, session_id, 3600, now=time.time() + 7200)
    expired = issue_token(secret, STAFF, session_id, 60, now=time.time() - 120)
    for token in (future, expired):
        async with aiohttp.ClientSession(cookies={"sr_staff": token}) as c:
            async with c.get(f"{app.url}/api/orders") as r:
                assert r.status == 401


def test_signing_key_from_showroom_secret_with_a_minimum_length(tmp_path, redis_url):
    path = tmp_path / "demo.toml"
    path.write_text(manifest_text("demo"))
    common = ["--manifest", str(path), "--redis", redis_url, "--port", str(free_port())]
    proc = _serve(common, env={**os.environ, "SHOWROOM_SECRET": "too-short"})
    assert proc.returncode == 2 and "SHOWROOM_SECRET must be at least 32" in proc.stderr


async def test_showroom_secret_signs_cookies_instead_of_redis(make_app, redis_url, monkeypatch):
    secret = "s" * 40
    monkeypatch.setenv("SHOWROOM_SECRET", secret)
    app = await make_app()
    async with app.session.get("/api/cart") as r:
        token = r.cookies["sr_viewer"].value
    assert read_token(secret.encode(), VIEWER, token)
    r = redis_sync.Redis.from_url(redis_url)
    try:
        assert r.get("showroom:secret") is None
    finally:
        r.close()


def test_embedded_redis_is_loopback_only_with_a_generated_password(tmp_path):
    server = EmbeddedRedis(tmp_path / "redis")
    server.start()
    try:
        anonymous = redis_sync.Redis(host="127.0.0.1", port=server.port)
        with pytest.raises(redis_sync.AuthenticationError):
            anonymous.ping()
        anonymous.close()
        client = redis_sync.Redis.from_url(server.url)
        assert client.ping()
        assert client.config_get("bind")["bind"] == "127.0.0.1"
        client.close()
        assert len(server.password) >= 32 and server.password in server.url
    finally:
        server.stop()


# --- 12. smaller ones ---------------------------------------------------------------


async def test_login_next_never_leaves_the_site(app):
    async with buyer_session(app.url) as s:
        for evil in ("/%09/evil.example", "/%0a/evil.example", "//evil.example", "/\\evil"):
            async with s.get(f"/login?next={evil}") as r:
                assert 'name="next" value="/staff"' in await r.text(), evil
        async with await http_login(
            s, STAFF_PASSWORD, "/\t/evil.example", allow_redirects=False
        ) as r:
            assert r.headers["Location"] == "/staff"
        async with await http_login(
            s, STAFF_PASSWORD, "/shows/demo/host", allow_redirects=False
        ) as r:
            assert r.headers["Location"] == "/shows/demo/host"


async def test_metrics_and_media_figures_need_a_token_or_staff(make_app, monkeypatch):
    monkeypatch.setenv("SHOWROOM_METRICS_TOKEN", "metrics-token-0123456789")
    app = await make_app()
    for path in ("/metrics", "/api/shows/demo/media"):
        async with app.session.get(path) as r:
            assert r.status == 401, path
            assert (await r.json())["error"] == "unauthorized"
        for hdr in (app.auth("metrics-token-0123456789"), app.auth()):
            async with app.session.get(path, headers=hdr) as r:
                assert r.status == 200, path


async def test_secure_cookies_and_hsts_only_behind_an_https_public_url(make_app):
    plain = await make_app()
    async with plain.session.get("/api/cart") as r:
        assert not r.cookies["sr_viewer"]["secure"]
        assert "Strict-Transport-Security" not in r.headers
    tls = await make_app(public_url="https://shop.example")
    async with tls.session.get("/api/cart") as r:
        assert r.cookies["sr_viewer"]["secure"]
        assert r.headers["Strict-Transport-Security"].startswith("max-age=")
    async with buyer_session(tls.url) as s, s.get("/login") as r:
        assert r.cookies["sr_csrf"]["secure"] and r.cookies["sr_csrf"]["samesite"] == "Strict"


async def test_nosniff_on_every_kind_of_answer(app):
    html = await (await app.session.get("/shows/demo")).text()
    static = re.search(r'src="(/static/[^"]+)"', html).group(1)
    for path in (
        "/healthz",
        "/api/shows/demo",
        "/api/nope",
        "/nope",
        static,
        "/login",
        "/media/products/demo/MUG-01.png",
        "/metrics",
    ):
        async with app.session.get(path) as r:
            assert r.headers.get("X-Content-Type-Options") == "nosniff", path


async def test_viewer_latency_reports_are_limited_per_address_too(app):
    async with aiohttp.ClientSession() as s:  # no cookie jar: a fresh viewer every time

        async def report() -> int:
            async with s.post(f"{app.url}/api/shows/demo/stats", json={"join_ms": 100}) as r:
                return r.status

        t0 = time.time()
        statuses = await asyncio.gather(*(report() for _ in range(300)))
        seconds = int(time.time()) - int(t0) + 1  # the per-second windows touched
    # At most 50 a second from one address, however many viewers it claims to be.
    assert statuses.count(202) <= 50 * seconds and statuses.count(429) > 0, (seconds, statuses)


async def test_a_client_gone_mid_body_is_not_logged_as_a_server_error(app, caplog):
    """A phone that loses its connection half-way through a request is not an error of
    ours: no "unhandled error" in the operator's log, and the server carries on."""
    host, port = app.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(
        b"POST /api/cart/items HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 1000\r\n\r\n" + b'{"show": "demo", "sku": '
    )
    await writer.drain()
    await asyncio.sleep(0.2)
    writer.transport.abort()
    await asyncio.sleep(0.3)
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, errors
    async with app.session.get("/api/cart") as r:
        assert r.status == 200
