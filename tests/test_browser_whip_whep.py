"""Headless Chromium publishes its fake camera over WHIP from a page on another origin,
and a second page plays the show over WHEP."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp import web
from playwright.async_api import async_playwright

from load_tests.chromium import CHROMIUM, CHROMIUM_ARGS
from server import keys
from server.embedded import free_port
from tests.conftest import STREAM_KEY, wait_until

pytestmark = pytest.mark.timeout(120)


COMMON_JS = """
async function gathered(pc) {
  if (pc.iceGatheringState === 'complete') return;
  await new Promise(resolve => {
    const done = () => { if (pc.iceGatheringState === 'complete') resolve(); };
    pc.addEventListener('icegatheringstatechange', done);
    setTimeout(resolve, 3000);
  });
}
async function negotiate(pc, url, token) {
  await pc.setLocalDescription(await pc.createOffer());
  await gathered(pc);
  const headers = {'Content-Type': 'application/sdp'};
  if (token) headers['Authorization'] = 'Bearer ' + token;
  const resp = await fetch(url, {method: 'POST', headers, body: pc.localDescription.sdp});
  if (resp.status !== 201) throw new Error('HTTP ' + resp.status + ' ' + await resp.text());
  window.sessionUrl = new URL(resp.headers.get('Location'), url).href;
  window.etag = resp.headers.get('ETag');
  await pc.setRemoteDescription({type: 'answer', sdp: await resp.text()});
}
"""

PUBLISH_PAGE = f"""<!doctype html><html><body><video id=v autoplay muted playsinline></video>
<script>{COMMON_JS}
window.publish = async (url, token) => {{
  const stream = await navigator.mediaDevices.getUserMedia(
      {{video: {{width: 640, height: 360}}, audio: true}});
  document.getElementById('v').srcObject = stream;
  const pc = new RTCPeerConnection();
  for (const track of stream.getTracks()) pc.addTransceiver(track, {{direction: 'sendonly'}});
  window.pc = pc;
  await negotiate(pc, url, token);
  return true;
}};
window.unpublish = async (token) => {{
  const r = await fetch(window.sessionUrl,
      {{method: 'DELETE', headers: {{'Authorization': 'Bearer ' + token}}}});
  window.pc.close();
  return r.status;
}};
</script></body></html>"""

PLAY_PAGE = f"""<!doctype html><html><body style="margin:0;background:#000">
<video id=v autoplay muted playsinline style="width:640px;height:360px"></video>
<script>{COMMON_JS}
window.play = async (url) => {{
  const pc = new RTCPeerConnection();
  pc.addTransceiver('video', {{direction: 'recvonly'}});
  pc.addTransceiver('audio', {{direction: 'recvonly'}});
  const stream = new MediaStream();
  pc.ontrack = e => {{ stream.addTrack(e.track);
                       document.getElementById('v').srcObject = stream; }};
  window.pc = pc;
  await negotiate(pc, url, null);
  return true;
}};
window.videoState = () => {{
  const v = document.getElementById('v');
  return {{w: v.videoWidth, h: v.videoHeight, t: v.currentTime, state: window.pc.connectionState}};
}};
window.rtpStats = async () => {{
  const out = {{audio: {{}}, video: {{}}, sr: []}};
  (await window.pc.getStats()).forEach(s => {{
    if (s.type === 'inbound-rtp') out[s.kind] = {{packets: s.packetsReceived,
        samples: s.totalSamplesReceived || 0, concealed: s.concealedSamples || 0,
        decoded: s.framesDecoded || 0}};
    if (s.type === 'remote-outbound-rtp') out.sr.push(s.kind);
  }});
  return out;
}};
window.codec = async () => {{
  const stats = await window.pc.getStats();
  let mime = null;
  stats.forEach(s => {{ if (s.type === 'codec' && s.mimeType.startsWith('video/')) mime = s.mimeType; }});
  return mime;
}};
</script></body></html>"""


async def other_origin_site() -> tuple[web.AppRunner, str]:
    """The pages live on a different origin (another port) than the Showroom server."""
    pages = {"publish.html": PUBLISH_PAGE, "play.html": PLAY_PAGE}

    async def page(request: web.Request) -> web.Response:
        return web.Response(text=pages[request.match_info["name"]], content_type="text/html")

    site = web.Application()
    site.router.add_get("/{name}", page)
    runner = web.AppRunner(site, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, f"http://127.0.0.1:{port}"


async def test_chromium_publishes_via_whip_and_plays_via_whep(app, artifacts):
    runtime = app.app[keys.EXTRA]["media"]["demo"]
    runner, origin = await other_origin_site()
    try:
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                publisher = await browser.new_page()
                await publisher.goto(f"{origin}/publish.html")
                await publisher.evaluate(
                    "([u, k]) => window.publish(u, k)", [f"{app.url}/whip/demo", STREAM_KEY]
                )
                await wait_until(lambda: runtime.live, 15)
                assert runtime.publisher is not None and runtime.publisher.frames > 0

                viewer = await browser.new_page(viewport={"width": 640, "height": 360})
                await viewer.goto(f"{origin}/play.html")
                await viewer.evaluate("u => window.play(u)", f"{app.url}/whep/demo")

                async def playing():
                    s = await viewer.evaluate("window.videoState()")
                    return s if s["w"] > 0 and s["t"] > 0.5 else None

                first = await wait_until(playing, 20, 0.2)
                assert (first["w"], first["h"]) == (640, 360), "the show's size, not the camera's"
                await asyncio.sleep(2.0)
                later = await viewer.evaluate("window.videoState()")
                assert later["t"] > first["t"] + 1.0, f"video time advances: {first} -> {later}"
                assert later["state"] == "connected"
                assert len(runtime.viewers) == 1
                codec = await viewer.evaluate("window.codec()")
                assert codec in ("video/H264", "video/VP8")
                # Audio plays too, and the server's RTCP sender reports arrive for both.
                rtp0 = await viewer.evaluate("window.rtpStats()")
                await asyncio.sleep(1.0)
                rtp1 = await viewer.evaluate("window.rtpStats()")
                heard = rtp1["audio"]["samples"] - rtp0["audio"]["samples"]
                hidden = rtp1["audio"]["concealed"] - rtp0["audio"]["concealed"]
                assert heard > 30000 and hidden < 0.2 * heard, f"audio {rtp0} -> {rtp1}"
                assert rtp1["video"]["decoded"] > rtp0["video"]["decoded"] + 15
                assert sorted(rtp1["sr"]) == ["audio", "video"], rtp1
                await viewer.screenshot(path=str(artifacts / "whep_viewer.png"))
                await publisher.screenshot(path=str(artifacts / "whip_publisher.png"))

                # The browser ends its WHIP session: the viewer's picture goes to the slate.
                status = await publisher.evaluate("k => window.unpublish(k)", STREAM_KEY)
                assert status == 200
                await wait_until(lambda: not runtime.live, 3)
                await asyncio.sleep(0.5)
                still = await viewer.evaluate("window.videoState()")
                assert still["state"] == "connected" and still["t"] > later["t"]
                await viewer.screenshot(path=str(artifacts / "whep_viewer_slate.png"))
            finally:
                await browser.close()
    finally:
        await runner.cleanup()
