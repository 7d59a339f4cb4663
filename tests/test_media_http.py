"""WHIP/WHEP HTTP contract: statuses, CORS, trickle, capacity. Bad requests never leave
a session (or a PeerConnection) behind."""

from __future__ import annotations

import aiohttp
import pytest

from media.client import WhepPlayer, WhipPublisher, negotiate
from media.ice import peer_connection
from media.testsrc import TestPatternTrack
from server import keys
from tests.conftest import STREAM_KEY

pytestmark = pytest.mark.timeout(60)


async def real_offer(kind: str = "publish") -> str:
    pc = peer_connection()
    if kind == "publish":
        pc.addTransceiver(TestPatternTrack(160, 90, 10), direction="sendonly")
    else:
        pc.addTransceiver("video", direction="recvonly")
    await pc.setLocalDescription(await pc.createOffer())
    sdp = pc.localDescription.sdp
    await pc.close()
    return sdp


def sdp_headers(key: str | None = STREAM_KEY, ctype: str = "application/sdp") -> dict:
    headers = {"Content-Type": ctype}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    return headers


async def test_whip_error_statuses_leave_no_session(app):
    offer = await real_offer()
    runtime = app.app[keys.EXTRA]["media"]["demo"]
    s = app.session
    cases = [
        ("/whip/demo", sdp_headers(None), offer, 401),
        ("/whip/demo", sdp_headers("wrong-key"), offer, 401),
        ("/whip/nope", sdp_headers(), offer, 404),
        ("/whip/demo", sdp_headers(), "this is not sdp", 400),
        ("/whip/demo", sdp_headers(), "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\n", 400),
        ("/whip/demo", sdp_headers(ctype="application/json"), offer, 415),
        ("/whip/demo", sdp_headers(ctype="text/plain"), offer, 415),
        ("/whip/demo", sdp_headers(), "v=0\r\n" + "a=x\r\n" * 20000, 413),
        # Parses, but a WHIP offer must send video we can decode.
        ("/whip/demo", sdp_headers(), await real_offer("view"), 422),
        ("/whip/demo", sdp_headers(), offer.replace("H264", "H999").replace("VP8", "VP0"), 422),
    ]
    for path, headers, body, status in cases:
        resp = await s.post(path, data=body, headers=headers)
        assert resp.status == status, (path, headers, body[:30], await resp.text())
        payload = await resp.json()
        assert payload["error"] and payload["detail"]
        assert resp.headers["Access-Control-Allow-Origin"] == "*"
        if status == 401:
            assert "WWW-Authenticate" in resp.headers
        assert runtime.publisher is None, f"{status} left a publisher behind"
        assert not runtime.live


async def test_whip_publish_patch_delete_and_cors(app):
    http = aiohttp.ClientSession()
    runtime = app.app[keys.EXTRA]["media"]["demo"]
    pub = WhipPublisher(f"{app.url}/whip/demo", STREAM_KEY, TestPatternTrack(160, 90, 15))
    try:
        pc = pub.pc
        await pc.setLocalDescription(await pc.createOffer())
        resp = await http.post(
            f"{app.url}/whip/demo", data=pc.localDescription.sdp, headers=sdp_headers()
        )
        assert resp.status == 201
        assert resp.headers["Content-Type"].startswith("application/sdp")
        location = resp.headers["Location"]
        assert location.startswith("/whip/demo/")
        etag = resp.headers["ETag"]
        assert "Location" in resp.headers["Access-Control-Expose-Headers"]
        assert "ETag" in resp.headers["Access-Control-Expose-Headers"]
        answer = await resp.text()
        assert answer.startswith("v=0") and "a=recvonly" in answer

        # Trickle ICE: candidates are accepted, an ICE restart is not.
        frag = (
            "a=ice-ufrag:{u}\r\na=ice-pwd:{p}\r\nm=video 9 UDP/TLS/RTP/SAVPF 0\r\na=mid:0\r\n"
            "a=candidate:1 1 udp 2122260223 127.0.0.1 50000 typ host\r\na=end-of-candidates\r\n"
        )
        ufrag = next(
            line.split(":", 1)[1]
            for line in pc.localDescription.sdp.splitlines()
            if line.startswith("a=ice-ufrag:")
        )
        patch_headers = {
            "Authorization": f"Bearer {STREAM_KEY}",
            "Content-Type": "application/trickle-ice-sdpfrag",
            "If-Match": etag,
        }
        url = app.url + location
        r = await http.patch(url, data=frag.format(u=ufrag, p="x" * 22), headers=patch_headers)
        assert r.status == 204
        r = await http.patch(url, data=frag.format(u="other", p="y" * 22), headers=patch_headers)
        assert r.status == 422
        r = await http.patch(
            url,
            data=frag.format(u=ufrag, p="x" * 22),
            headers={**patch_headers, "Content-Type": "application/sdp"},
        )
        assert r.status == 415
        r = await http.patch(url, data="garbage", headers=patch_headers)
        assert r.status == 400
        r = await http.patch(
            url, data=frag.format(u=ufrag, p="x"), headers={**patch_headers, "If-Match": '"no"'}
        )
        assert r.status == 412
        r = await http.patch(
            url,
            data=frag.format(u=ufrag, p="x"),
            headers={"Content-Type": patch_headers["Content-Type"]},
        )
        assert r.status == 401

        # CORS preflight from a browser on another origin.
        r = await http.options(
            f"{app.url}/whip/demo",
            headers={
                "Origin": "http://other.example:9999",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization, content-type",
            },
        )
        assert r.status == 204
        assert r.headers["Accept-Post"] == "application/sdp"
        assert r.headers["Access-Control-Allow-Origin"] == "*"
        assert "POST" in r.headers["Access-Control-Allow-Methods"]
        assert "Authorization" in r.headers["Access-Control-Allow-Headers"]
        r = await http.options(f"{app.url}/whep/demo")
        assert r.status == 204 and r.headers["Accept-Post"] == "application/sdp"

        assert runtime.publisher is not None
        r = await http.delete(url, headers={"Authorization": "Bearer wrong"})
        assert r.status == 401 and runtime.publisher is not None
        r = await http.delete(url, headers={"Authorization": f"Bearer {STREAM_KEY}"})
        assert r.status == 200
        assert runtime.publisher is None
        r = await http.delete(url, headers={"Authorization": f"Bearer {STREAM_KEY}"})
        assert r.status == 404
    finally:
        await pub.close()
        await http.close()


async def test_whep_statuses_and_capacity(make_app):
    running = await make_app(max_viewers_per_show=2)
    runtime = running.app[keys.EXTRA]["media"]["demo"]
    http = aiohttp.ClientSession()
    viewers = []
    try:
        r = await http.post(
            f"{running.url}/whep/nope", data=await real_offer("view"), headers=sdp_headers(None)
        )
        assert r.status == 404
        r = await http.post(f"{running.url}/whep/demo", data="nonsense", headers=sdp_headers(None))
        assert r.status == 400
        r = await http.post(
            f"{running.url}/whep/demo",
            data=await real_offer("view"),
            headers=sdp_headers(None, "text/plain"),
        )
        assert r.status == 415
        r = await http.post(
            f"{running.url}/whep/demo", data=await real_offer("publish"), headers=sdp_headers(None)
        )
        assert r.status == 422, "a sendonly offer cannot watch"
        assert not runtime.viewers

        for _ in range(2):
            v = WhepPlayer(f"{running.url}/whep/demo", audio=False)
            await v.start(http)
            viewers.append(v)
        assert v.location and v.location.startswith(f"{running.url}/whep/demo/")
        # The slate is watchable before any publisher: viewers get frames right away.
        await viewers[0].wait_first_frame(5)

        extra = peer_connection()
        extra.addTransceiver("video", direction="recvonly")
        with pytest.raises(Exception) as info:
            await negotiate(http, extra, f"{running.url}/whep/demo")
        assert getattr(info.value, "status", None) == 503
        await extra.close()
        r = await http.post(
            f"{running.url}/whep/demo", data=await real_offer("view"), headers=sdp_headers(None)
        )
        assert r.status == 503 and int(r.headers["Retry-After"]) > 0
        assert len(runtime.viewers) == 2

        state = await (await running.session.get("/api/shows/demo")).json()
        assert state["live"] is False

        # A viewer leaving frees a place.
        await viewers.pop().close(http)
        assert len(runtime.viewers) == 1
        r = await http.delete(viewers[0].location)
        assert r.status == 200 and not runtime.viewers
        r = await http.delete(viewers[0].location)
        assert r.status == 404
        late = WhepPlayer(f"{running.url}/whep/demo", audio=False)
        await late.start(http)
        viewers.append(late)
        await late.wait_first_frame(5)
    finally:
        for v in viewers:
            await v.close(http)
        await http.close()
