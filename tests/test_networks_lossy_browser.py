"""Headless Chromium on a 700 kbps link: it moves to the low rung, keeps playing, and
comes back to the top rung when the cap lifts (its own receiver's REMB drives it).

The page's offer and the server's answer go through ``tests/udp_relay.py``'s candidate
surgery (exposed to the page), so every media packet crosses the relay."""

from __future__ import annotations

import asyncio
import time

import pytest
from playwright.async_api import async_playwright

from load_tests.chromium import CHROMIUM, CHROMIUM_ARGS
from tests.conftest import wait_until
from tests.test_networks_lossy import LOW_W, TOP_W, show  # noqa: F401 - the fixture
from tests.udp_relay import UdpRelay, rewrite_answer, rewrite_offer

pytestmark = pytest.mark.timeout(150)

PAGE = """<!doctype html><html><body style="margin:0;background:#000">
<video id=v autoplay muted playsinline style="width:640px;height:360px"></video>
<script>
async function gathered(pc) {
  if (pc.iceGatheringState === 'complete') return;
  await new Promise(resolve => {
    pc.addEventListener('icegatheringstatechange',
        () => { if (pc.iceGatheringState === 'complete') resolve(); });
    setTimeout(resolve, 3000);
  });
}
window.frames = [];
window.play = async (url) => {
  const v = document.getElementById('v');
  const pc = new RTCPeerConnection();
  pc.addTransceiver('video', {direction: 'recvonly'});
  const stream = new MediaStream();
  pc.ontrack = e => { stream.addTrack(e.track); v.srcObject = stream; };
  window.pc = pc;
  await pc.setLocalDescription(await pc.createOffer());
  await gathered(pc);
  const offer = await window.relayOffer(pc.localDescription.sdp);
  const resp = await fetch(url, {method: 'POST', headers: {'Content-Type': 'application/sdp'},
                                 body: offer});
  if (resp.status !== 201) throw new Error('HTTP ' + resp.status + ' ' + await resp.text());
  const answer = await window.relayAnswer(await resp.text());
  await pc.setRemoteDescription({type: 'answer', sdp: answer});
  const tick = () => { window.frames.push([performance.now(), v.videoWidth]);
                       v.requestVideoFrameCallback(tick); };
  v.requestVideoFrameCallback(tick);
  return true;
};
window.since = (t) => window.frames.filter(f => f[0] >= t);
</script></body></html>"""


async def test_chromium_on_a_capped_link_moves_down_and_back_up(show, artifacts):  # noqa: F811
    app, _http, runtime = show
    relay = await UdpRelay().start("0.0.0.0")
    async with async_playwright() as pw:
        args = [*CHROMIUM_ARGS, "--disable-features=WebRtcHideLocalIpsWithMdns"]
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=args)
        try:
            page = await browser.new_page(viewport={"width": 640, "height": 360})
            await page.goto(f"{app.url}/healthz")  # the page shares the server's origin
            await page.set_content(PAGE)
            await page.expose_function("relayOffer", lambda sdp: rewrite_offer(sdp, relay))
            await page.expose_function("relayAnswer", lambda sdp: rewrite_answer(sdp, relay))
            await page.evaluate("u => window.play(u)", f"{app.url}/whep/demo")

            async def width() -> int:
                frames = await page.evaluate("window.frames.slice(-1)")
                return frames[0][1] if frames else 0

            async def reaches(w: int, within_s: float) -> float:
                start = time.monotonic()

                async def there():
                    return await width() == w

                await wait_until(there, within_s, 0.1)
                return time.monotonic() - start

            await reaches(TOP_W, 20)
            relay.down.set(rate_bps=700_000, delay_s=0.01)
            down_s = await reaches(LOW_W, 5)
            t0 = await page.evaluate("performance.now()")
            await asyncio.sleep(15)
            frames = await page.evaluate("t => window.since(t)", t0)
            now = await page.evaluate("performance.now()")
            times = [t0] + [f[0] for f in frames] + [now]
            gap = max(b - a for a, b in zip(times, times[1:], strict=False)) / 1000
            assert gap <= 0.5, f"froze {gap:.2f} s at 700 kbps (down in {down_s:.1f} s)"
            assert len(frames) >= 15 * 15, f"{len(frames)} frames in 15 s"
            assert {f[1] for f in frames} == {LOW_W}, "stays on the low rung while capped"
            assert [r["viewers"] for r in runtime.stats()["rungs"]] == [0, 1]
            await page.screenshot(path=str(artifacts / "lossy_chromium_low_rung.png"))

            relay.down.set()
            up_s = await reaches(TOP_W, 20)
            print(f"Chromium: down in {down_s:.1f} s, longest gap {gap:.2f} s, up in {up_s:.1f} s")
        finally:
            await browser.close()
            relay.close()
