"""Chat and moderation through the real server (real Redis, real SSE streams): history
for a joining viewer, badges, delete/ban/timeout/slow mode/blocked words, every bad
input refused without a change, limits per IP, and two ``serve`` processes as one chat."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import numpy as np
import pytest

from media.client import WhepPlayer
from server import keys
from server.auth import VIEWER, read_token
from server.chat.rules import author_handle
from tests.conftest import (
    STREAM_KEY,
    buyer_session,
    http_login,
    manifest_text,
    start_server_process,
    wait_until,
)
from tests.sse_client import EventStream

pytestmark = pytest.mark.timeout(60)

CHAT_TABLE = '[chat]\nblocked_words = ["spoiler", "Buy Followers"]\nslow_mode_s = 0'


@pytest.fixture
async def chat_app(make_app, tmp_path):
    path = tmp_path / "demo.toml"
    path.write_text(manifest_text("demo", extra_show=CHAT_TABLE))
    return await make_app([path], chat_ip_per_min=0)


async def viewer(app_url: str, name: str | None) -> aiohttp.ClientSession:
    session = buyer_session(app_url)
    if name is not None:
        resp = await session.put("/api/me", json={"name": name})
        body = await resp.json()
        if resp.status != 200 or body != {"name": name.strip()}:
            await session.close()
            raise AssertionError(f"PUT /api/me {name!r}: {resp.status} {body}")
    return session


async def say(session: aiohttp.ClientSession, text: str, **kw) -> tuple[int, dict]:
    resp = await session.post("/api/shows/demo/chat", json={"text": text}, **kw)
    return resp.status, await resp.json()


async def history(session: aiohttp.ClientSession) -> dict:
    resp = await session.get("/api/shows/demo/chat")
    assert resp.status == 200
    return await resp.json()


async def test_two_viewers_chat_and_a_third_joins_with_history(chat_app):
    app = chat_app
    ana, ben = await viewer(app.url, "Ana"), await viewer(app.url, " Ben  ")
    try:
        async with EventStream(ana, app.url) as a_events, EventStream(ben, app.url) as b_events:
            status, m1 = await say(ana, "Hi! Is the mug dishwasher safe? https://example.com/x")
            assert status == 201, m1
            status, m2 = await say(ben, "  <script>alert(1)</script> 👨‍👩‍👧  ")
            assert status == 201, m2
            status, m3 = await say(app.session, "Yes it is!", headers=app.auth())
            assert status == 201, m3
            for events in (a_events, b_events):
                for m in (m1, m2, m3):
                    _, ev = await events.wait_for(
                        lambda e, m=m: e.get("type") == "chat" and e["message"]["id"] == m["id"]
                    )
                    assert ev["message"] == m
        assert m1["name"] == "Ana" and m1["role"] == "viewer"
        assert m1["text"] == "Hi! Is the mug dishwasher safe? https://example.com/x"
        assert m2["name"] == "Ben" and m2["text"] == "<script>alert(1)</script> 👨‍👩‍👧"
        assert m3["role"] == "host" and m3["name"] == "Host"
        assert m1["author"] != m2["author"] != m3["author"]
        # the author is an opaque handle, never the cookie or the viewer id
        cookie = next(c for c in ana.cookie_jar if c.key == "sr_viewer").value
        vid = read_token(app.app[keys.SECRET], VIEWER, cookie)
        assert vid not in m1["author"] and m1["author"] not in cookie
        assert m1["author"] == author_handle(app.app[keys.SECRET], vid)

        carl = buyer_session(app.url)  # a third viewer, no name yet: may read, not post
        try:
            body = await history(carl)
            assert [m["id"] for m in body["messages"]] == [m1["id"], m2["id"], m3["id"]]
            assert body["messages"][0] == m1 and body["pinned"] is None
            status, err = await say(carl, "hello")
            assert status == 400 and err["error"] == "name_required"
            me = await (await carl.get("/api/me")).json()
            assert me == {"name": None, "has_payment_method": False}
        finally:
            await carl.close()
        # the same viewer keeps their handle across messages
        await asyncio.sleep(1.0)  # the one-a-second floor per viewer
        status, again = await say(ana, "me again")
        assert status == 201 and again["author"] == m1["author"]
        assert (await (await ana.get("/api/me")).json())["name"] == "Ana"
    finally:
        await ana.close()
        await ben.close()


async def test_history_is_the_newest_50(chat_app):
    app = chat_app
    ids = []
    for i in range(55):
        status, m = await say(app.session, f"host line {i}", headers=app.auth())
        assert status == 201
        ids.append(m["id"])
    body = await history(app.session)
    assert [m["id"] for m in body["messages"]] == ids[-50:]


async def test_moderator_delete_is_gone_on_both_streams_within_a_second(chat_app):
    app = chat_app
    ana, ben = await viewer(app.url, "Ana"), await viewer(app.url, "Ben")
    try:
        status, bad = await say(ana, "something rude")
        assert status == 201
        status, keep = await say(ben, "something nice")
        assert status == 201
        # viewers may not delete
        resp = await ben.delete(f"/api/shows/demo/chat/{bad['id']}")
        assert resp.status == 401 and (await resp.json())["error"] == "unauthorized"
        async with EventStream(ana, app.url) as a_events, EventStream(ben, app.url) as b_events:
            t0 = time.monotonic()
            resp = await app.session.delete(f"/api/shows/demo/chat/{bad['id']}", headers=app.auth())
            assert resp.status == 200
            for events in (a_events, b_events):
                at, _ = await events.wait_for(
                    lambda e: e.get("type") == "chat_deleted" and e["id"] == bad["id"], 1.0
                )
                assert at - t0 < 1.0
        ids = [m["id"] for m in (await history(ana))["messages"]]
        assert bad["id"] not in ids and keep["id"] in ids
        resp = await app.session.delete(f"/api/shows/demo/chat/{bad['id']}", headers=app.auth())
        assert resp.status == 404 and (await resp.json())["error"] == "not_found"
        resp = await app.session.delete("/api/shows/demo/chat/not-an-id", headers=app.auth())
        assert resp.status == 404
    finally:
        await ana.close()
        await ben.close()


async def moderate(app, body: dict) -> dict:
    resp = await app.session.post("/api/shows/demo/chat/moderation", json=body, headers=app.auth())
    assert resp.status == 200, await resp.text()
    return await resp.json()


async def test_ban_blocks_the_next_message_until_unban(chat_app):
    app = chat_app
    troll, other = await viewer(app.url, "Troll"), await viewer(app.url, "Other")
    try:
        status, m = await say(troll, "first")
        assert status == 201
        resp = await troll.post(
            "/api/shows/demo/chat/moderation", json={"action": "ban", "author": m["author"]}
        )
        assert resp.status == 401  # a viewer cannot ban
        out = await moderate(app, {"action": "ban", "author": m["author"]})
        assert out["banned"] is True
        await asyncio.sleep(1.0)
        status, err = await say(troll, "still here?")
        assert status == 403 and err["error"] == "forbidden" and "banned" in err["detail"]
        # renaming does not help: the ban is on the viewer, not the name
        await troll.put("/api/me", json={"name": "Not A Troll"})
        status, err = await say(troll, "now?")
        assert status == 403
        assert (await history(troll))["me"]["banned"] is True
        status, _ = await say(other, "others still chat")
        assert status == 201
        out = await moderate(app, {"action": "unban", "author": m["author"]})
        assert out["banned"] is False and out["timeout_until"] is None
        status, _ = await say(troll, "sorry")
        assert status == 201
    finally:
        await troll.close()
        await other.close()


async def test_timeout_expires(chat_app):
    app = chat_app
    ana = await viewer(app.url, "Ana")
    try:
        status, m = await say(ana, "hey")
        assert status == 201
        out = await moderate(app, {"action": "timeout", "author": m["author"], "minutes": 2 / 60})
        assert out["timeout_until"] > time.time() * 1000
        await asyncio.sleep(1.0)
        status, err = await say(ana, "hey again")
        assert status == 403 and err["error"] == "forbidden" and "timed out" in err["detail"]
        await asyncio.sleep(1.2)
        status, _ = await say(ana, "back")
        assert status == 201
        # a whole-minute timeout is refused right away and lifted by unban
        await moderate(app, {"action": "timeout", "author": m["author"], "minutes": 5})
        await asyncio.sleep(1.0)
        assert (await say(ana, "x"))[0] == 403
        await moderate(app, {"action": "unban", "author": m["author"]})
        assert (await say(ana, "y"))[0] == 201
    finally:
        await ana.close()


async def test_slow_mode_429_with_retry_after(chat_app):
    app = chat_app
    ana, ben = await viewer(app.url, "Ana"), await viewer(app.url, "Ben")
    try:
        resp = await ana.put("/api/shows/demo/chat/settings", json={"slow_mode_s": 3})
        assert resp.status == 401  # viewers cannot change settings
        async with EventStream(ana, app.url) as events:
            resp = await app.session.put(
                "/api/shows/demo/chat/settings", json={"slow_mode_s": 3}, headers=app.auth()
            )
            assert resp.status == 200
            assert (await resp.json())["slow_mode_s"] == 3
            await events.wait_for(lambda e: e.get("type") == "chat_settings")
        assert (await history(ana))["slow_mode_s"] == 3
        assert (await say(ana, "one"))[0] == 201
        resp = await ana.post("/api/shows/demo/chat", json={"text": "two"})
        assert resp.status == 429
        err = await resp.json()
        assert err["error"] == "rate_limited" and "Slow mode" in err["detail"]
        assert 1 <= int(resp.headers["Retry-After"]) <= 3
        assert (await say(ben, "other viewers are not held up"))[0] == 201
        assert (await say(app.session, "host is exempt", headers=app.auth()))[0] == 201
        assert (await say(app.session, "host again", headers=app.auth()))[0] == 201
        await asyncio.sleep(int(resp.headers["Retry-After"]) + 0.1)
        assert (await say(ana, "two"))[0] == 201
        texts = [m["text"] for m in (await history(ana))["messages"]]
        assert texts.count("two") == 1
        # without slow mode a viewer still posts at most once a second
        await app.session.put(
            "/api/shows/demo/chat/settings", json={"slow_mode_s": 0}, headers=app.auth()
        )
        await asyncio.sleep(1.0)
        assert (await say(ben, "a"))[0] == 201
        resp = await ben.post("/api/shows/demo/chat", json={"text": "b"})
        assert resp.status == 429 and resp.headers["Retry-After"] == "1"
    finally:
        await ana.close()
        await ben.close()


async def test_slow_mode_holds_for_parallel_posts(chat_app):
    """Ten posts at once from one viewer: exactly one gets through."""
    app = chat_app
    ana = await viewer(app.url, "Ana")
    try:
        results = await asyncio.gather(*(say(ana, f"spam {i}") for i in range(10)))
        assert sorted(s for s, _ in results) == [201] + [429] * 9
        assert len((await history(ana))["messages"]) == 1
    finally:
        await ana.close()


async def test_blocked_words_from_manifest_and_live_edits(chat_app):
    app = chat_app
    ana = await viewer(app.url, "Ana")
    try:
        for text in ("SPOILER: it sells out", "want to buy   followers?", "ｓｐｏｉｌｅｒ"):
            status, err = await say(ana, text)
            assert status == 400 and err["error"] == "bad_request", text
            assert "not allowed in this chat" in err["detail"]
        status, _ = await say(ana, "no spoilers please")  # a whole word only
        assert status == 201
        resp = await app.session.get("/api/shows/demo/chat/settings", headers=app.auth())
        assert (await resp.json())["blocked_words"] == ["spoiler", "buy followers"]
        resp = await app.session.put(
            "/api/shows/demo/chat/settings",
            json={"blocked_words": ["scam", "spoiler"]},
            headers=app.auth(),
        )
        assert resp.status == 200
        assert (await resp.json()) == {"slow_mode_s": 0, "blocked_words": ["scam", "spoiler"]}
        await asyncio.sleep(1.0)
        status, err = await say(ana, "this is a Scam!")
        assert status == 400 and "'scam'" in err["detail"]
        status, _ = await say(ana, "buy followers")  # taken off the list live
        assert status == 201
    finally:
        await ana.close()


async def test_every_bad_input_is_400_and_changes_nothing(chat_app):
    app = chat_app
    ana = await viewer(app.url, "Ana")
    try:
        status, first = await say(ana, "the only message")
        assert status == 201
        await asyncio.sleep(1.0)
        before = await history(ana)
        settings_before = await (
            await app.session.get("/api/shows/demo/chat/settings", headers=app.auth())
        ).json()
        async with EventStream(ana, app.url) as events:
            bad_texts = [
                "",
                "   ",
                "x" * 201,
                "bell\x07",
                "two\nlines",
                "tab\there",
                "rtl \u202eevil",
                "zero\u200bwidth",
                "line\u2028sep",
                "bom\ufeff",
            ]
            for text in bad_texts:
                status, err = await say(ana, text)
                assert status == 400 and err["error"] == "bad_request", repr(text)
                assert err["detail"]
            for raw in (b"{nope", b"[]", b'"text"', b'{"text": 5}', b"{}", b'{"text": null}'):
                resp = await ana.post(
                    "/api/shows/demo/chat", data=raw, headers={"Content-Type": "application/json"}
                )
                assert resp.status == 400, raw
                assert (await resp.json())["error"] == "bad_request"
            resp = await ana.post("/api/shows/nope/chat", json={"text": "hi"})
            assert resp.status == 404
            for name in ("", "   ", "x" * 33, "a\x00b", "a\nb", 7, None, "\u202eadmin"):
                resp = await ana.put("/api/me", json={"name": name})
                assert resp.status == 400, repr(name)
                assert (await resp.json())["error"] == "bad_request"
            assert (await (await ana.get("/api/me")).json())["name"] == "Ana"

            host = app.auth()
            bad_settings = [
                {"slow_mode_s": 301},
                {"slow_mode_s": -1},
                {"slow_mode_s": "5"},
                {"slow_mode_s": True},
                {"slow_mode_s": 2.5},
                {"blocked_words": "scam"},
                {"blocked_words": ["ok", ""]},
                {"blocked_words": ["x" * 65]},
                {"blocked_words": [3]},
                {"slow_mode": 5},
                {},
            ]
            for body in bad_settings:
                resp = await app.session.put(
                    "/api/shows/demo/chat/settings", json=body, headers=host
                )
                assert resp.status == 400, body
            author = first["author"]
            bad_moderation = [
                {"action": "kick", "author": author},
                {"action": "ban"},
                {"action": "ban", "author": "cookie-value"},
                {"action": "timeout", "author": author},
                {"action": "timeout", "author": author, "minutes": 0},
                {"action": "timeout", "author": author, "minutes": -3},
                {"action": "timeout", "author": author, "minutes": "5"},
                {"action": "timeout", "author": author, "minutes": 10**9},
            ]
            for body in bad_moderation:
                resp = await app.session.post(
                    "/api/shows/demo/chat/moderation", json=body, headers=host
                )
                assert resp.status == 400, body
            for body, status in (({"id": "1-0"}, 404), ({"id": 5}, 400), ({}, 400)):
                resp = await app.session.post("/api/shows/demo/chat/pin", json=body, headers=host)
                assert resp.status == status, body
            await asyncio.sleep(0.3)
            changes = [e for _, e in events.events if e.get("type", "").startswith(("chat", "pin"))]
            assert changes == []
        after = await history(ana)
        assert after["messages"] == before["messages"] and after["pinned"] is None
        assert after["me"] == {"author": author, "banned": False, "timeout_until": None}
        settings_after = await (
            await app.session.get("/api/shows/demo/chat/settings", headers=app.auth())
        ).json()
        assert settings_after == settings_before
        assert (await say(ana, "still fine"))[0] == 201  # nothing counted against the viewer
    finally:
        await ana.close()


async def test_per_ip_limit_holds_against_fresh_cookies(make_app):
    app = await make_app(chat_ip_per_min=3)
    sessions = [await viewer(app.url, f"Fresh {i}") for i in range(5)]
    try:
        results = [await say(s, "hello") for s in sessions]
        assert [s for s, _ in results] == [201, 201, 201, 429, 429]
        resp = await sessions[4].post("/api/shows/demo/chat", json={"text": "again"})
        assert resp.status == 429 and int(resp.headers["Retry-After"]) >= 55
        assert "network" in (await resp.json())["detail"]
    finally:
        for s in sessions:
            await s.close()


async def test_pin_and_unpin_go_out_as_events(chat_app):
    app = chat_app
    ana = await viewer(app.url, "Ana")
    try:
        status, m = await say(ana, "Free gift with every mug tonight")
        assert status == 201
        async with EventStream(ana, app.url) as events:
            resp = await ana.post("/api/shows/demo/chat/pin", json={"id": m["id"]})
            assert resp.status == 401
            resp = await app.session.post(
                "/api/shows/demo/chat/pin", json={"id": m["id"]}, headers=app.auth()
            )
            assert resp.status == 200 and (await resp.json())["pinned"] == m
            _, ev = await events.wait_for(lambda e: e.get("type") == "pinned")
            assert ev["message"] == m
            assert (await history(ana))["pinned"] == m
            # deleting the pinned message unpins it everywhere
            resp = await app.session.delete(f"/api/shows/demo/chat/{m['id']}", headers=app.auth())
            assert resp.status == 200
            await events.wait_for(lambda e: e.get("type") == "pinned" and e["message"] is None)
        assert (await history(ana))["pinned"] is None
    finally:
        await ana.close()


@pytest.mark.timeout(120)
async def test_chat_across_two_serve_processes(redis_url, tmp_path):
    path = tmp_path / "demo.toml"
    path.write_text(manifest_text("demo"))
    procs = []
    try:
        for i in range(2):
            procs.append(start_server_process([path], redis_url, tmp_path / f"var{i}"))
        (_, url_a), (_, url_b) = procs
        ana, ben = await viewer(url_a, "Ana"), await viewer(url_b, "Ben")
        host = buyer_session(url_b)
        try:
            # ana's name was set on process A; process B knows it (Redis, not memory)
            async with EventStream(ana, url_a) as a_events, EventStream(ben, url_b) as b_events:
                status, m = await say(ana, "posted on A")
                assert status == 201
                status, m2 = await say(ben, "posted on B")
                assert status == 201
                for events in (a_events, b_events):
                    for msg in (m, m2):
                        await events.wait_for(
                            lambda e, msg=msg: (
                                e.get("type") == "chat" and e["message"]["id"] == msg["id"]
                            )
                        )
                hist_b = await history(ben)
                assert [x["id"] for x in hist_b["messages"]] == [m["id"], m2["id"]]
                t0 = time.monotonic()
                resp = await host.delete(
                    f"/api/shows/demo/chat/{m['id']}",
                    headers={"Authorization": f"Bearer {STREAM_KEY}"},
                )
                assert resp.status == 200
                for events in (a_events, b_events):
                    at, _ = await events.wait_for(
                        lambda e: e.get("type") == "chat_deleted" and e["id"] == m["id"], 1.0
                    )
                    assert at - t0 < 1.0
                # slow mode set on B holds on A
                resp = await host.put(
                    "/api/shows/demo/chat/settings",
                    json={"slow_mode_s": 30},
                    headers={"Authorization": f"Bearer {STREAM_KEY}"},
                )
                assert resp.status == 200
                resp = await ana.post("/api/shows/demo/chat", json={"text": "too soon"})
                assert resp.status == 429
            assert [x["id"] for x in (await history(ana))["messages"]] == [m2["id"]]
        finally:
            for s in (ana, ben, host):
                await s.close()
    finally:
        for proc, _ in procs:
            proc.terminate()
        for proc, _ in procs:
            proc.wait(15)


async def test_staff_session_posts_as_host(chat_app):
    app = chat_app
    staff = buyer_session(app.url)
    try:
        resp = await http_login(staff, "test-staff-pw")
        assert resp.status in (200, 302, 303) or resp.ok
        await wait_until(lambda: any(c.key == "sr_staff" for c in staff.cookie_jar), 2)
        status, m = await say(staff, "Welcome everyone")
        assert status == 201 and m["role"] == "host"
        status, m = await say(staff, "Second in a row: no slow mode for the host")
        assert status == 201
    finally:
        await staff.close()


def y_region(frame, box) -> np.ndarray:
    y = frame.to_ndarray(format="yuv420p")[: frame.height]
    return y[box.y : box.bottom, box.x : box.right].astype(int)


@pytest.mark.timeout(90)
async def test_pinned_message_is_in_the_video_pixels_and_clear_of_the_card(chat_app):
    app = chat_app
    scene = app.app[keys.EXTRA]["scenes"]["demo"]
    lay = scene.layout
    assert not lay.pinned.overlaps(lay.card) and not lay.pinned.overlaps(lay.qr)
    ana = await viewer(app.url, "Ana")
    http = aiohttp.ClientSession()
    player = WhepPlayer(f"{app.url}/whep/demo", audio=False)
    try:
        resp = await app.session.post(
            "/api/shows/demo/feature", json={"sku": "MUG-01"}, headers=app.auth(STREAM_KEY)
        )
        assert resp.status == 200
        status, m = await say(ana, "Free gift with every mug tonight")
        assert status == 201
        await player.start(http)
        await player.wait_first_frame(10)
        await asyncio.sleep(0.8)  # the card has slid in and rests
        before = player.latest_video
        pinned_before, card_before = y_region(before, lay.pinned), y_region(before, lay.card)

        resp = await app.session.post(
            "/api/shows/demo/chat/pin", json={"id": m["id"]}, headers=app.auth()
        )
        assert resp.status == 200
        answered = time.monotonic()

        def pinned_shown() -> bool:
            frame = player.latest_video
            return np.abs(y_region(frame, lay.pinned) - pinned_before).mean() > 25

        await wait_until(pinned_shown, 2.0)
        assert time.monotonic() - answered < 1.0, "on screen within a second of the pin"
        await asyncio.sleep(0.3)
        now = player.latest_video
        assert np.abs(y_region(now, lay.card) - card_before).mean() < 4, "card untouched"

        # unpinning clears it from the picture
        resp = await app.session.post(
            "/api/shows/demo/chat/pin", json={"id": None}, headers=app.auth()
        )
        assert resp.status == 200
        await wait_until(
            lambda: np.abs(y_region(player.latest_video, lay.pinned) - pinned_before).mean() < 6,
            2.0,
        )
    finally:
        await player.close(http)
        await http.close()
        await ana.close()


async def test_scene_starts_with_the_stored_pin(make_app, tmp_path):
    app = await make_app()
    ana = await viewer(app.url, "Ana")
    try:
        status, m = await say(ana, "Pinned before a restart")
        assert status == 201
        resp = await app.session.post(
            "/api/shows/demo/chat/pin", json={"id": m["id"]}, headers=app.auth()
        )
        assert resp.status == 200
    finally:
        await ana.close()
    again = await make_app()  # another process on the same Redis
    scene = again.app[keys.EXTRA]["scenes"]["demo"]
    await wait_until(lambda: scene.state.pinned is not None, 5)
    assert scene.state.pinned.text == "Pinned before a restart" and scene.state.pinned.name == "Ana"
