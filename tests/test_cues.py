"""The run of show: manifest cues stepped through with one "Next", in order, seen in
the picture a real WebRTC viewer decodes; two devices pressing at once run a cue once."""

from __future__ import annotations

import asyncio
import contextlib
import time

import aiohttp
import numpy as np
import pytest

from media.client import WhepPlayer
from server import keys
from server.config import ManifestError, load_manifest
from tests.conftest import manifest_text, wait_until

pytestmark = pytest.mark.timeout(120)

CUES = """
[[cues]]
action = "feature"
sku = "MUG-01"

[[cues]]
action = "drop"
sku = "TEE-02"
quantity = 3
duration_s = 60
label = "Tee drop"

[[cues]]
action = "ticker"
text = "Free shipping tonight"
"""


def write(tmp_path, cues: str = CUES):
    path = tmp_path / "demo.toml"
    path.write_text(manifest_text("demo") + cues)
    return path


class PictureWatcher(WhepPlayer):
    """A real viewer keeping the luma plane of every decoded frame."""

    def __init__(self, url: str) -> None:
        super().__init__(url, audio=False)
        self.frames: list[tuple[float, np.ndarray]] = []

    async def _consume(self, track) -> None:
        with contextlib.suppress(Exception):
            while True:
                frame = await track.recv()
                y = frame.to_ndarray(format="yuv420p")[: frame.height].astype(np.int16)
                self.frames.append((time.monotonic(), y))
                del self.frames[:-60]
                self.stats.video_frames += 1
                if self.stats.first_video_at is None:
                    self.stats.first_video_at = time.monotonic()
                    self._first_video.set()


def region(y: np.ndarray, box) -> np.ndarray:
    return y[box.y : box.bottom, box.x : box.right]


async def test_three_nexts_feature_drop_ticker_in_order_in_the_picture(make_app, tmp_path):
    app = await make_app([write(tmp_path)])
    layout = app.app[keys.EXTRA]["scenes"]["demo"].layout
    s = app.session
    async with s.get("/api/shows/demo/cues") as r:
        assert r.status == 401  # the run of show is the host's
    async with s.get("/api/shows/demo/cues", headers=app.auth()) as r:
        view = await r.json()
    assert [c["action"] for c in view["cues"]] == ["feature", "drop", "ticker"]
    assert view["next"] == 0 and view["cues"][1]["label"] == "Tee drop"

    http = aiohttp.ClientSession()
    viewer = PictureWatcher(f"{app.url}/whep/demo")
    try:
        await viewer.start(http)
        await viewer.wait_first_frame(15)
        await asyncio.sleep(0.5)
        base = viewer.frames[-1][1]

        def changed(box) -> bool:
            last = viewer.frames[-1][1]
            return float(np.abs(region(last, box) - region(base, box)).mean()) > 12

        steps = [("feature", layout.card), ("drop", layout.drop), ("ticker", layout.ticker)]
        for i, (action, box) in enumerate(steps):
            assert not changed(box), f"{action} region changed before its cue"
            async with s.post(
                "/api/shows/demo/cues/next", json={"expect": i}, headers=app.auth()
            ) as r:
                assert r.status == 200, await r.text()
                body = await r.json()
            assert body["ran"]["action"] == action and body["next"] == i + 1
            await wait_until(lambda box=box: changed(box), timeout=5)
    finally:
        await viewer.close(http)
        await http.close()

    async with s.get("/api/shows/demo", headers=app.auth()) as r:
        state = await r.json()
    assert state["featured"] == "MUG-01" and state["drop"]["sku"] == "TEE-02"
    assert state["ticker"] == "Free shipping tonight"
    async with s.post("/api/shows/demo/cues/next", headers=app.auth()) as r:
        assert r.status == 409  # that was the last one


async def test_two_devices_pressing_next_run_the_cue_once(make_app, tmp_path):
    app = await make_app([write(tmp_path)])

    async def press():
        async with app.session.post(
            "/api/shows/demo/cues/next", json={"expect": 0}, headers=app.auth()
        ) as r:
            return r.status

    assert sorted(await asyncio.gather(press(), press())) == [200, 409]
    async with app.session.get("/api/shows/demo/cues", headers=app.auth()) as r:
        assert (await r.json())["next"] == 1


async def test_a_cue_that_fails_keeps_its_place(make_app, tmp_path):
    app = await make_app([write(tmp_path)])
    s = app.session
    # A drop already running: the cue's drop is refused and Next can be pressed again.
    async with s.post(
        "/api/shows/demo/drops",
        json={"sku": "MUG-01", "quantity": 1, "duration_s": 60},
        headers=app.auth(),
    ) as r:
        assert r.status == 201
    async with s.post("/api/shows/demo/cues/goto", json={"index": 1}, headers=app.auth()) as r:
        assert r.status == 200 and (await r.json())["next"] == 1
    async with s.post("/api/shows/demo/cues/next", json={"expect": 1}, headers=app.auth()) as r:
        assert r.status == 409 and (await r.json())["error"] == "conflict"
    async with s.get("/api/shows/demo/cues", headers=app.auth()) as r:
        assert (await r.json())["next"] == 1
    for bad in ({"index": -1}, {"index": 9}, {"index": "1"}, {}):
        async with s.post("/api/shows/demo/cues/goto", json=bad, headers=app.auth()) as r:
            assert r.status == 400


@pytest.mark.parametrize(
    "cue, key",
    [
        ('action = "dance"', "action"),
        ('action = "feature"\nsku = "NOPE"', "sku"),
        ('action = "drop"\nsku = "MUG-01"\nquantity = 0\nduration_s = 60', "cues[0]"),
        ('action = "ticker"', "text"),
        ('action = "feature"\nsku = "MUG-01"\ncolour = "red"', "colour"),
    ],
)
def test_bad_cues_are_refused_at_start_up(tmp_path, cue, key):
    path = write(tmp_path, f"\n[[cues]]\n{cue}\n")
    with pytest.raises(ManifestError) as err:
        load_manifest(path, env={})
    assert key in str(err.value)
