"""Read the time code in headless Chromium, from the viewer page's <video> element.

Each presented frame (``requestVideoFrameCallback``) is drawn to a canvas, only the
code's top strip is read back, and the code is decoded in the page (the same layout as
``media/timecode.py``: guard cells, adaptive threshold, CRC-16), so no pixels cross
the DevTools connection. If the viewer page shows no video, a tiny WHEP page served
by a side aiohttp server (which proxies ``/whep`` to the server, same origin) is used
instead and the result says so.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web

from load_tests.chromium import CHROMIUM
from load_tests.chromium import CHROMIUM_ARGS as _ALL_ARGS
from media import timecode
from server.embedded import free_port

# A viewer only: no fake camera needed.
CHROMIUM_ARGS = [a for a in _ALL_ARGS if "fake" not in a]

# Records when the first <video> starts playing (join = that - the WHEP POST's start).
INIT_JS = """
window.__latency = { playing: null };
document.addEventListener("playing", () => {
  if (window.__latency.playing === null) window.__latency.playing = performance.now();
}, true);
"""

# The reader, in the page: the same geometry and rules as media/timecode.py.
MEASURE_JS = """
async ({seconds, cells, x0f, x1f, y0f, y1f, startGuard, endGuard, minContrast,
        dataBits, crcBits}) => {
  const video = document.querySelector("video");
  const canvas = document.createElement("canvas");
  const ctx = canvas.getContext("2d", { willReadFrequently: true });
  const crc16 = (bytes) => {
    let crc = 0xffff;
    for (const b of bytes) {
      crc ^= b << 8;
      for (let i = 0; i < 8; i++) crc = (crc & 0x8000 ? (crc << 1) ^ 0x1021 : crc << 1) & 0xffff;
    }
    return crc;
  };
  // Python's round() is round-half-to-even; match it so both sample the same pixels.
  const pyRound = (v) => { const f = Math.floor(v), d = v - f;
    return d > 0.5 ? f + 1 : d < 0.5 ? f : (f % 2 === 0 ? f : f + 1); };
  const read = () => {
    const w = video.videoWidth, h = video.videoHeight;
    if (!w || !h) return null;
    const y0 = pyRound(y0f * h), y1 = pyRound(y1f * h);
    const xs = [];
    for (let i = 0; i <= cells; i++) xs.push(pyRound(x0f * w + (x1f - x0f) * w * i / cells));
    if (canvas.width !== w || canvas.height !== y1) { canvas.width = w; canvas.height = y1; }
    ctx.drawImage(video, 0, 0, w, y1, 0, 0, w, y1);
    const px = ctx.getImageData(0, 0, w, y1).data;
    const span = y1 - y0, r0 = y0 + Math.floor(span / 4);
    const r1 = Math.max(y1 - Math.floor(span / 4), r0 + 1);
    const cell = (xs[cells] - xs[0]) / cells, size = Math.max(1, pyRound(cell / 2));
    const means = [];
    for (let c = 0; c < cells; c++) {
      const start = Math.floor(xs[c] + (cell - size) / 2);
      let sum = 0;
      for (let y = r0; y < r1; y++) for (let x = start; x < start + size; x++) {
        const i = (y * w + Math.min(x, w - 1)) * 4;
        sum += 0.299 * px[i] + 0.587 * px[i + 1] + 0.114 * px[i + 2];
      }
      means.push(sum / ((r1 - r0) * size));
    }
    const whites = [], blacks = [];
    startGuard.forEach((b, i) => (b ? whites : blacks).push(means[i]));
    endGuard.forEach((b, i) => (b ? whites : blacks).push(means[cells - endGuard.length + i]));
    if (Math.min(...whites) - Math.max(...blacks) < minContrast) return null;
    const avg = (a) => a.reduce((x, y) => x + y, 0) / a.length;
    const threshold = (avg(whites) + avg(blacks)) / 2;
    let value = 0, crc = 0;
    for (let i = 0; i < dataBits + crcBits; i++) {
      const bit = means[startGuard.length + i] > threshold ? 1 : 0;
      if (i < dataBits) value = value * 2 + bit; else crc = crc * 2 + bit;
    }
    const bytes = [];
    for (let i = dataBits / 8 - 1; i >= 0; i--) bytes.push(Math.floor(value / 2 ** (8 * i)) % 256);
    return crc16(bytes) === crc ? value : null;
  };
  const latencies = [], startedAt = performance.now();
  let frames = 0, unreadable = 0;
  await new Promise((resolve) => {
    const onFrame = (now, meta) => {
      frames += 1;
      const code = read();
      // Glass: when the compositor expects to show this frame, on the wall clock.
      const shown = performance.timeOrigin + (meta.expectedDisplayTime || now);
      if (code === null) unreadable += 1; else latencies.push(shown - code);
      if (performance.now() - startedAt < seconds * 1000) video.requestVideoFrameCallback(onFrame);
      else resolve();
    };
    video.requestVideoFrameCallback(onFrame);
  });
  const whep = performance.getEntriesByType("resource")
    .filter((e) => e.name.includes("/whep/")).sort((a, b) => a.startTime - b.startTime)[0];
  const join = whep && window.__latency.playing !== null
    ? window.__latency.playing - whep.startTime : null;
  return { latencies, frames, unreadable, join, width: video.videoWidth,
           height: video.videoHeight };
}
"""

# A minimal WHEP player, used only if the viewer page shows no video.
FALLBACK_PAGE = """<!doctype html><meta charset=utf-8><title>latency probe</title>
<video id=v muted autoplay playsinline></video>
<script>
(async () => {
  const pc = new RTCPeerConnection();
  pc.addTransceiver("video", { direction: "recvonly" });
  pc.ontrack = (e) => { const v = document.getElementById("v");
    v.srcObject = new MediaStream([e.track]); v.play().catch(() => {}); };
  await pc.setLocalDescription(await pc.createOffer());
  await new Promise((r) => { if (pc.iceGatheringState === "complete") r();
    pc.onicegatheringstatechange = () => pc.iceGatheringState === "complete" && r();
    setTimeout(r, 2000); });
  const resp = await fetch("/whep/SHOW", { method: "POST",
    headers: { "Content-Type": "application/sdp" }, body: pc.localDescription.sdp });
  await pc.setRemoteDescription({ type: "answer", sdp: await resp.text() });
})();
</script>"""


@dataclass
class BrowserResult:
    page: str
    latencies: list[float] = field(default_factory=list)
    frames: int = 0
    unreadable: int = 0
    join_ms: float | None = None
    size: str = ""
    error: str | None = None


async def _fallback_server(base: str, show: str) -> tuple[web.AppRunner, str]:
    """Serve FALLBACK_PAGE and proxy /whep/* to the server (same origin, no CORS)."""
    http = aiohttp.ClientSession(base)

    async def page(_request: web.Request) -> web.Response:
        return web.Response(text=FALLBACK_PAGE.replace("SHOW", show), content_type="text/html")

    async def proxy(request: web.Request) -> web.Response:
        async with http.request(
            request.method,
            request.path,
            data=await request.read(),
            headers={"Content-Type": request.headers.get("Content-Type", "application/sdp")},
        ) as resp:
            return web.Response(
                status=resp.status,
                body=await resp.read(),
                headers={
                    k: v for k, v in resp.headers.items() if k in ("Content-Type", "Location")
                },
            )

    app = web.Application()
    app.router.add_get("/", page)
    app.router.add_route("*", "/whep/{tail:.*}", proxy)

    async def close_http(_app):
        await http.close()

    app.on_cleanup.append(close_http)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, f"http://127.0.0.1:{port}/"


async def _measure(browser, url: str, seconds: float, label: str) -> BrowserResult:
    page = await browser.new_page()
    try:
        await page.add_init_script(INIT_JS)
        await page.goto(url)
        await page.wait_for_function(
            "() => { const v = document.querySelector('video');"
            " return v && v.readyState >= 2 && v.videoWidth > 0; }",
            timeout=15000,
        )
        out = await page.evaluate(
            MEASURE_JS,
            {
                "seconds": seconds,
                "cells": timecode.CELLS,
                "x0f": timecode.X0,
                "x1f": timecode.X1,
                "y0f": timecode.Y0,
                "y1f": timecode.Y1,
                "startGuard": list(timecode.START_GUARD),
                "endGuard": list(timecode.END_GUARD),
                "minContrast": timecode.MIN_CONTRAST,
                "dataBits": timecode.DATA_BITS,
                "crcBits": timecode.CRC_BITS,
            },
        )
        return BrowserResult(
            page=label,
            latencies=list(out["latencies"]),
            frames=out["frames"],
            unreadable=out["unreadable"],
            join_ms=out["join"],
            size=f"{out['width']}x{out['height']}",
        )
    finally:
        await page.close()


async def measure_in_chromium(
    base: str, show: str, seconds: float, mdns: bool = True
) -> BrowserResult:
    """Glass-to-glass and join time as the viewer page in headless Chromium sees them.

    ``mdns=False`` turns off Chromium's hiding of local addresses behind ``.local``
    names, to show what resolving those names costs the server at join.
    """
    from playwright.async_api import Error as PlaywrightError
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        args = CHROMIUM_ARGS + ([] if mdns else ["--disable-features=WebRtcHideLocalIpsWithMdns"])
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=args)
        try:
            try:
                return await _measure(browser, f"{base}/shows/{show}", seconds, "viewer page")
            except PlaywrightError as exc:
                first_error = str(exc).splitlines()[0]
            runner, url = await _fallback_server(base, show)
            try:
                result = await _measure(browser, url, seconds, "fallback WHEP page")
                result.error = f"viewer page unusable: {first_error}"
                return result
            except PlaywrightError as exc:
                return BrowserResult(
                    page="none",
                    error=f"viewer page: {first_error}; fallback: {str(exc).splitlines()[0]}",
                )
            finally:
                await runner.cleanup()
        finally:
            with contextlib.suppress(Exception):
                await browser.close()
