"""Product card vs picture: how far apart the viewer page's card and the video switch.

    python -m load_tests.card_sync [--quick] [--switches 30]

A real server, a host page publishing Chromium's fake camera over WHIP, and a
phone-sized viewer page playing over WHEP, both in headless Chromium. The host
features products in turn (A, B, C, ...). In the viewer page every presented video
frame (``requestVideoFrameCallback``) is sampled where the composed product card sits,
so the moment the picture switches is seen the way the viewer sees it. For each switch
it records:

- **picture**: the first presented frame whose card area changed;
- **page card (media_ts + playout)**: when the page's card switched — what we ship: it
  waits for ``media_ts`` plus the player's own jitter-buffer delay;
- **naive (on event)**: when the ``featured`` event arrived — what a page that switches
  its card as soon as it hears about it would do (the comparison).

Positive offsets mean the card switched after the picture, negative before it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
from aiohttp import web
from playwright.async_api import async_playwright

from load_tests.chromium import CHROMIUM, CHROMIUM_ARGS
from load_tests.common import (
    RESULTS,
    VideoSize,
    manifest_toml,
    median,
    percentile,
    table,
    write_section,
)
from server.app import create_app
from server.config import Settings, load_shows
from server.embedded import EmbeddedRedis, free_port

STAFF = "bench-staff"
PRODUCTS = [("A-RED", "Red scarf"), ("B-BLUE", "Blue mug"), ("C-GOLD", "Gold ring")]

# Keeps the page's peer connections reachable, to deepen the jitter buffer like a phone's.
CAPTURE_PC_JS = """
window.__pcs = [];
const Native = window.RTCPeerConnection;
window.RTCPeerConnection = function (...args) { const pc = new Native(...args); window.__pcs.push(pc); return pc; };
window.RTCPeerConnection.prototype = Native.prototype;
"""
SET_BUFFER_JS = """
(ms) => { for (const pc of window.__pcs) for (const r of pc.getReceivers()) r.jitterBufferTarget = ms; }
"""

# Installed in the viewer page: frame samples of the card area, card switches, events.
PROBE_JS = """
() => {
  const m = window.__probe = { frames: [], cards: [], events: [] };
  const video = document.getElementById('video');
  const canvas = document.createElement('canvas');
  const g = canvas.getContext('2d', { willReadFrequently: true });
  const onFrame = (now, meta) => {
    const w = video.videoWidth, h = video.videoHeight;
    if (w && h) {
      canvas.width = w; canvas.height = h;
      g.drawImage(video, 0, 0);
      const d = g.getImageData(Math.round(w * 0.72), Math.round(h * 0.12),
                               Math.round(w * 0.18), Math.round(h * 0.3)).data;
      let r = 0, gr = 0, b = 0;
      for (let i = 0; i < d.length; i += 4) { r += d[i]; gr += d[i + 1]; b += d[i + 2]; }
      const n = d.length / 4;
      const shown = performance.timeOrigin + (meta.expectedDisplayTime || now);
      m.frames.push([shown, r / n, gr / n, b / n]);
      if (m.frames.length > 20000) m.frames.splice(0, 10000);
    }
    video.requestVideoFrameCallback(onFrame);
  };
  video.requestVideoFrameCallback(onFrame);
  new MutationObserver(() => m.cards.push([Date.now(),
      document.getElementById('f-name').textContent]))
    .observe(document.getElementById('f-name'), { childList: true, characterData: true, subtree: true });
  const es = new EventSource('/api/shows/bench/events');
  es.onmessage = (msg) => {
    const e = JSON.parse(msg.data);
    if (e.type === 'featured') m.events.push([Date.now(), e.sku]);
  };
}
"""


def manifest_text() -> str:
    products = "".join(
        f'\n[[products]]\nsku = "{sku}"\nname = "{name}"\nprice = "10.00"\nstock = 100\n'
        for sku, name in PRODUCTS
    )
    return manifest_toml(
        "bench",
        title="Card sync bench",
        stream_key="bench-stream-key",
        staff_password=STAFF,
        video=VideoSize(640, 360, 30, 1000),
        products=products,
    )


def picture_switch(frames: list[list[float]], t0: float, threshold: float = 25.0) -> float | None:
    """Pure: the display time of the first frame after t0 whose card area differs from
    the frames just before t0 (their mean colour) by more than threshold (L1, 0..765)."""
    before = [f for f in frames if t0 - 400 <= f[0] < t0]
    if not before:
        return None
    base = [sum(f[i] for f in before) / len(before) for i in (1, 2, 3)]
    for f in frames:
        if f[0] >= t0 and sum(abs(f[i + 1] - base[i]) for i in range(3)) > threshold:
            return f[0]
    return None


def first_after(records: list[list], t0: float, value: str) -> float | None:
    for t, v in records:
        if t >= t0 and v == value:
            return t
    return None


async def start_server(tmp: Path, redis_url: str) -> tuple[web.AppRunner, str]:
    manifest = tmp / "bench.toml"
    manifest.write_text(manifest_text())
    port = free_port()
    settings = Settings(manifests=[manifest], port=port, redis_url=redis_url, data_dir=tmp)
    app = create_app(settings, load_shows([manifest]), redis_url)
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, f"http://127.0.0.1:{port}"


async def measure(
    url: str, switches: int, gap_s: float, buffers_ms: list[int]
) -> dict[int, tuple[dict[str, list[float]], int]]:
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            host = await (
                await browser.new_context(viewport={"width": 1280, "height": 900})
            ).new_page()
            await host.goto(f"{url}/login?next=/shows/bench/host")
            await host.fill("#password", STAFF)
            await host.click("button[type=submit]")
            await host.wait_for_url("**/shows/bench/host")
            await host.click("#go-live")
            await host.wait_for_function(
                "() => document.getElementById('video-status').textContent.includes('live')",
                timeout=30000,
            )
            results = {}
            for buffer_ms in buffers_ms:
                results[buffer_ms] = await one_viewer(browser, url, switches, gap_s, buffer_ms)
        finally:
            await browser.close()
    return results


async def one_viewer(
    browser, url: str, switches: int, gap_s: float, buffer_ms: int
) -> tuple[dict[str, list[float]], int]:
    context = await browser.new_context(viewport={"width": 390, "height": 844})
    await context.add_init_script(CAPTURE_PC_JS)
    viewer = await context.new_page()
    await viewer.goto(f"{url}/shows/bench")
    await viewer.wait_for_function(
        "() => document.getElementById('video').currentTime > 1", timeout=30000
    )
    if buffer_ms:
        await viewer.evaluate(SET_BUFFER_JS, buffer_ms)
        await asyncio.sleep(3.0)  # the buffer grows gradually
    await viewer.evaluate(PROBE_JS)
    await asyncio.sleep(1.0)
    starts: list[tuple[float, str]] = []
    headers = {"Authorization": f"Bearer {STAFF}"}
    async with aiohttp.ClientSession() as http:
        for i in range(switches):
            sku, _ = PRODUCTS[i % len(PRODUCTS)]
            t0 = time.time() * 1000
            async with http.post(
                f"{url}/api/shows/bench/feature", json={"sku": sku}, headers=headers
            ) as r:
                r.raise_for_status()
            starts.append((t0, sku))
            await asyncio.sleep(gap_s)
    probe = await viewer.evaluate("window.__probe")
    await context.close()
    names = dict(PRODUCTS)
    out: dict[str, list[float]] = {"page": [], "naive": [], "picture_after_api": []}
    missed = 0
    for i, (t0, sku) in enumerate(starts):
        if i == 0:
            continue  # the first switch starts from "nothing featured": a different picture
        shown = picture_switch(probe["frames"], t0)
        card = first_after(probe["cards"], t0, names[sku])
        event = first_after(probe["events"], t0, sku)
        if shown is None or card is None or event is None:
            missed += 1
            continue
        out["page"].append(card - shown)
        out["naive"].append(event - shown)
        out["picture_after_api"].append(shown - t0)
    return out, missed


def plot(results: dict[int, dict[str, list[float]]], quick: bool) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / ("card_sync-quick.png" if quick else "card_sync.png")
    data, labels = [], []
    for buffer_ms, series in results.items():
        where = f"jitter buffer {buffer_ms} ms" if buffer_ms else "default buffer"
        data += [series["page"], series["naive"]]
        labels += [f"page card, {where}", f"naive, {where}"]
    fig, ax = plt.subplots(figsize=(9, 1.2 + 0.6 * len(data)))
    ax.boxplot(data, orientation="horizontal", tick_labels=labels)
    ax.axvline(0, color="grey", linestyle="--")
    ax.set_xlabel("card switch minus picture switch (ms); negative = card shows too early")
    ax.set_title("Viewer page: product card vs composed picture")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def report(
    results: dict[int, tuple[dict[str, list[float]], int]], switches: int, path: Path
) -> str:
    def row(name: str, values: list[float]) -> list[object]:
        absolute = [abs(v) for v in values]
        return [
            name,
            len(values),
            median(values),
            percentile(values, 1),
            percentile(values, 99),
            median(absolute),
            percentile(absolute, 99),
        ]

    rows, notes = [], []
    for buffer_ms, (series, missed) in results.items():
        where = (
            f"{buffer_ms} ms jitter buffer (phone-like)" if buffer_ms else "default jitter buffer"
        )
        rows.append(row(f"page card (media_ts + playout), {where}", series["page"]))
        rows.append(row(f"naive (on event), {where}", series["naive"]))
        api = series["picture_after_api"]
        notes.append(
            f"{where}: feature API call -> picture switch at the viewer median "
            f"{median(api):.0f} ms, p99 {percentile(api, 99):.0f} ms; "
            f"{len(series['page'])} of {switches - 1} switches measured ({missed} not detected)."
        )
    body = table(
        [
            "card switches at",
            "switches",
            "median offset ms",
            "p1 ms",
            "p99 ms",
            "median abs offset ms",
            "p99 abs offset ms",
        ],
        rows,
    )
    body += "\n\n" + "\n".join(f"- {n}" for n in notes)
    load = os.getloadavg()[0]
    body += (
        f"\n\nLoad average (1 min) at the end of the run: {load:.1f} on {os.cpu_count()} cores; "
        "a busy machine delays frames irregularly, and the browser's default jitter buffer "
        "then grows by itself, which the page's playout estimate follows."
    )
    body += f"\n\nPlot: `{path.relative_to(RESULTS.parents[1])}`.\n"
    return body


async def run(switches: int, gap_s: float, quick: bool) -> tuple[str, bool]:
    tmp = Path(tempfile.mkdtemp(prefix="card-sync-"))
    redis = EmbeddedRedis(tmp / "redis")
    redis.start()
    try:
        runner, url = await start_server(tmp, redis.url)
        try:
            results = await measure(url, switches, gap_s, [0, 300])
        finally:
            await runner.cleanup()
    finally:
        redis.stop()
    path = plot({b: r[0] for b, r in results.items()}, quick)
    ok = all(len(r[0]["page"]) >= max(1, (switches - 1) // 2) for r in results.values())
    return report(results, switches, path), ok


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="5 switches: a smoke run of seconds")
    p.add_argument("--switches", type=int, default=None)
    args = p.parse_args(argv)
    n = args.switches or (5 if args.quick else 40)
    body, ok = asyncio.run(run(n, 1.2, args.quick))
    print(body)
    if not args.quick:
        command = "python -m load_tests.card_sync" + (f" --switches {n}" if args.switches else "")
        write_section("card_sync", command, body)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
