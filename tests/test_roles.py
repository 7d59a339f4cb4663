"""Named staff members with roles: enforced on every endpoint and page, the stream key
for hosts only, the shared password still the owner, and every action audited by name."""

from __future__ import annotations

import re

import aiohttp
import pytest
from yarl import URL

from server.roles import hash_password
from tests.conftest import STREAM_KEY, buyer_session, manifest_text
from tests.test_floor import PRODUCTS

pytestmark = pytest.mark.timeout(90)

PASSWORDS = {
    "ana": "ana-hosts-tonight",
    "mo": "mo-keeps-chat-kind",
    "fi": "fi-packs-fast-1",
    "cas": "cas-at-the-till-9",
}
ROLE = {"ana": "host", "mo": "moderator", "fi": "floor", "cas": "cashier"}
HASHES = {name: hash_password(pw) for name, pw in PASSWORDS.items()}


def members_toml(hashes=HASHES) -> str:
    return "".join(
        f'\n[[staff.members]]\nname = "{n}"\nrole = "{ROLE[n]}"\npassword_hash = "{h}"\n'
        for n, h in hashes.items()
    )


def write(tmp_path, hashes=HASHES):
    path = tmp_path / "demo.toml"
    path.write_text(manifest_text("demo", products=PRODUCTS) + members_toml(hashes))
    return path


def bearer(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {name}:{PASSWORDS[name]}"}


async def login(url: str, name: str, password: str) -> aiohttp.ClientSession:
    s = buyer_session(url)
    async with s.get("/login") as r:
        token = re.search(r'name="csrf" value="([^"]+)"', await r.text())[1]
    async with s.post(
        "/login",
        data={"name": name, "password": password, "next": "/staff", "csrf": token},
        allow_redirects=False,
    ) as r:
        assert r.status in (302, 303), (name, r.status, await r.text())
    return s


async def test_roles_are_enforced_and_actions_audited_by_name(make_app, tmp_path):
    app = await make_app([write(tmp_path)], print_worker=False)
    s = app.session

    async def call(method, path, who, **kw):
        async with s.request(method, path, headers=bearer(who), **kw) as r:
            return r.status, await r.json()

    # a floor member cannot feature; the host can
    assert (await call("POST", "/api/shows/demo/feature", "fi", json={"sku": "MUG-01"}))[0] == 403
    status, body = await call("POST", "/api/shows/demo/feature", "mo", json={"sku": "MUG-01"})
    assert status == 403 and body["error"] == "forbidden"
    assert (await call("POST", "/api/shows/demo/feature", "ana", json={"sku": "MUG-01"}))[0] == 200
    # the cashier rings up a sale; floor staff may not, but may mark it ready
    sale = {"items": [{"sku": "MUG-01", "quantity": 1}], "payment": "cash"}
    assert (await call("POST", "/api/shows/demo/pos/sales", "fi", json=sale))[0] == 403
    status, order = await call("POST", "/api/shows/demo/pos/sales", "cas", json=sale)
    assert status == 201
    oid = order["order_id"]
    assert (await call("POST", f"/api/orders/{oid}/ready", "mo"))[0] == 403
    assert (await call("POST", f"/api/orders/{oid}/ready", "fi"))[0] == 200
    # a moderator cannot refund; a cashier can
    assert (await call("POST", f"/api/orders/{oid}/refund", "mo"))[0] == 403
    assert (await call("POST", f"/api/orders/{oid}/refund", "cas"))[1]["status"] == "refunded"
    # moderation is the moderator's (and the host's), not the floor's
    settings = {"slow_mode_s": 5, "blocked_words": []}
    assert (await call("PUT", "/api/shows/demo/chat/settings", "fi", json=settings))[0] == 403
    assert (await call("PUT", "/api/shows/demo/chat/settings", "mo", json=settings))[0] == 200
    # wrong password: 401, not 403
    async with s.post(
        "/api/shows/demo/feature", json={"sku": None}, headers={"Authorization": "Bearer ana:nope"}
    ) as r:
        assert r.status == 401
    # the owner's shared password still does everything
    assert (await call("POST", "/api/shows/demo/feature", "ana", json={"sku": None}))[0] == 200
    async with s.post("/api/shows/demo/feature", json={"sku": "TEE-02"}, headers=app.auth()) as r:
        assert r.status == 200

    status, audit = await call("GET", "/api/shows/demo/audit", "ana")
    assert status == 200
    seen = [(e["who"], e["action"]) for e in reversed(audit["entries"])]
    for entry in [
        ("ana", "feature"),
        ("cas", "sale"),
        ("fi", "ready"),
        ("cas", "refund"),
        ("ana", "feature"),
        ("owner", "feature"),
    ]:
        assert entry in seen, (entry, seen)
    assert (await call("GET", "/api/shows/demo/audit", "fi"))[0] == 403


async def test_only_hosts_see_the_stream_key(make_app, tmp_path):
    app = await make_app([write(tmp_path)])
    host = await login(app.url, "ana", PASSWORDS["ana"])
    floor = await login(app.url, "fi", PASSWORDS["fi"])
    try:
        async with host.get("/shows/demo/host") as r:
            assert r.status == 200 and STREAM_KEY in await r.text()
        async with floor.get("/shows/demo/host") as r:
            text = await r.text()
            assert r.status == 403 and STREAM_KEY not in text and "host role" in text
        async with floor.get("/staff") as r:
            assert r.status == 200 and STREAM_KEY not in await r.text()
        mod = await login(app.url, "mo", PASSWORDS["mo"])
        async with mod.get("/staff") as r:
            assert r.status == 403  # a moderator has no order queue
        await mod.close()
    finally:
        await host.close()
        await floor.close()


async def test_a_password_change_ends_that_members_sessions(make_app, tmp_path):
    first = await make_app([write(tmp_path)])
    session = await login(first.url, "fi", PASSWORDS["fi"])
    cookies = session.cookie_jar.filter_cookies(URL(first.url))
    await session.close()
    await first.stop()
    changed = {**HASHES, "fi": hash_password("a-new-password-for-fi")}
    (tmp_path / "again").mkdir()
    second = await make_app([write(tmp_path / "again", changed)])
    jar = {k: v.value for k, v in cookies.items()}
    async with aiohttp.ClientSession(cookies=jar) as s:
        async with s.get(f"{second.url}/api/orders?show=demo") as r:
            assert r.status == 401  # the old password's session is over
    other = await login(second.url, "cas", PASSWORDS["cas"])
    async with other.get("/api/orders?show=demo") as r:
        assert r.status == 200  # the others' sessions are unaffected
    await other.close()


def test_members_in_the_manifest_are_checked_at_start_up(tmp_path):
    from server.config import ManifestError, load_manifest

    for bad, key in [
        ('name = "ana"\nrole = "boss"\npassword_hash = "$argon2id$x"', "role"),
        ('name = "ana"\nrole = "host"\npassword_hash = "plaintext"', "password_hash"),
        ('name = "a b"\nrole = "host"\npassword_hash = "$argon2id$x"', "name"),
    ]:
        path = tmp_path / "m.toml"
        path.write_text(manifest_text("demo") + f"\n[[staff.members]]\n{bad}\n")
        with pytest.raises(ManifestError, match=key):
            load_manifest(path, env={})
