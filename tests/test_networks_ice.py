"""ICE servers from the manifest (issue 19, section 2): validated at start-up, sent as
WHIP/WHEP ``Link`` headers (RFC 9725 4.6), rendered into the pages, used by the server's
own peers; and a real TURN server (coturn) carrying video to relay-only viewers (aiortc
and Chromium)."""

from __future__ import annotations

import json
import re

import aiohttp
import pytest
from aiortc import RTCConfiguration, RTCIceServer
from aiortc.rtcconfiguration import RTCIceTransportPolicy

from media.client import WhepPlayer
from server import keys
from server.config import ManifestError, load_manifest
from tests.conftest import ROOT, manifest_text
from tests.test_media_http import real_offer, sdp_headers
from tests.test_web_support import PHONE, JsErrors, chromium, new_page
from tests.turn_server import PASSWORD, USER, start_turn

pytestmark = pytest.mark.timeout(60)

LINK = re.compile(r'<(?P<url>[^>]+)>; rel="ice-server"(?P<attrs>(; [a-z-]+="[^"]*")*)$')


def ice_toml(stun: list[str], turn: list[tuple[str, str, str]]) -> str:
    out = "\n[ice]\nstun = [" + ", ".join(json.dumps(s) for s in stun) + "]\n"
    for url, user, cred in turn:
        out += f"[[ice.turn]]\nurl = {json.dumps(url)}\nusername = {json.dumps(user)}\n"
        out += f"credential = {json.dumps(cred)}\n"
    return out


@pytest.fixture
def turn(tmp_path):
    server = start_turn(tmp_path)
    yield server
    server.stop()


def parse_links(values: list[str]) -> list[dict]:
    out = []
    for value in values:
        m = LINK.match(value)
        assert m, f"malformed Link header {value!r}"
        attrs = dict(re.findall(r'; ([a-z-]+)="([^"]*)"', m["attrs"]))
        out.append({"url": m["url"], **attrs})
    return out


@pytest.mark.parametrize(
    ("ice", "where"),
    [
        ('[ice]\nstun = ["http://x"]', "ice.stun[0]"),
        ('[ice]\nstun = ["turn:x:3478"]', "ice.stun[0]"),
        ('[ice]\nstun = "stun:x"', "ice.stun"),
        ('[ice]\nstunn = ["stun:x"]', "ice.stunn"),
        ('[[ice.turn]]\nurl = "turn:x:3478"\nusername = "u"', "ice.turn[0].credential"),
        ('[[ice.turn]]\nurl = "stun:x"\nusername = "u"\ncredential = "p"', "ice.turn[0].url"),
        (
            '[[ice.turn]]\nurl = "turns:x:5349?transport=udp"\nusername = "u"\ncredential = "p"',
            "ice.turn[0].url",
        ),
        (
            '[[ice.turn]]\nurl = "turn:x"\nusername = "u\\""\ncredential = "p"',
            "ice.turn[0].username",
        ),
        ('[[ice.turn]]\nurl = "turn:x:99999"\nusername = "u"\ncredential = "p"', "ice.turn[0].url"),
    ],
)
def test_bad_ice_section_is_refused_at_startup(tmp_path, ice, where):
    path = tmp_path / "demo.toml"
    path.write_text(manifest_text("demo") + "\n" + ice + "\n")
    with pytest.raises(ManifestError) as info:
        load_manifest(path)
    assert where in str(info.value)


async def test_link_headers_on_whip_and_whep_and_ice_in_pages(make_app, tmp_path, turn):
    path = tmp_path / "demo.toml"
    path.write_text(
        manifest_text("demo")
        + ice_toml(
            ["stun:127.0.0.1:3478"],
            [(turn.url, USER, PASSWORD), (turn.url_for("tcp"), USER, PASSWORD)],
        )
    )
    running = await make_app([path])
    async with aiohttp.ClientSession() as http:
        r = await http.post(
            f"{running.url}/whip/demo", data=await real_offer("publish"), headers=sdp_headers()
        )
        assert r.status == 201, await r.text()
        whip = parse_links(r.headers.getall("Link"))
        # The server's own publisher peer uses the TURN server: a relay candidate.
        assert " typ relay" in await r.text()
        r = await http.post(
            f"{running.url}/whep/demo", data=await real_offer("view"), headers=sdp_headers(None)
        )
        assert r.status == 201, await r.text()
        whep = parse_links(r.headers.getall("Link"))
        assert "Link" in r.headers["Access-Control-Expose-Headers"]
    expected = [
        {"url": "stun:127.0.0.1:3478"},
        {
            "url": turn.url,
            "username": USER,
            "credential": PASSWORD,
            "credential-type": "password",
        },
        {
            "url": turn.url_for("tcp"),
            "username": USER,
            "credential": PASSWORD,
            "credential-type": "password",
        },
    ]
    assert whip == expected and whep == expected
    page = await (await running.session.get("/shows/demo")).text()
    data = json.loads(re.search(r'id="page-data"[^>]*>(.*?)</script>', page, re.S).group(1))
    assert data["ice_servers"] == [
        {"urls": "stun:127.0.0.1:3478"},
        {"urls": turn.url, "username": USER, "credential": PASSWORD},
        {"urls": turn.url_for("tcp"), "username": USER, "credential": PASSWORD},
    ]


async def test_no_link_headers_without_ice(app):
    async with aiohttp.ClientSession() as http:
        r = await http.post(
            f"{app.url}/whep/demo", data=await real_offer("view"), headers=sdp_headers(None)
        )
        assert r.status == 201
        assert "Link" not in r.headers
        answer = await r.text()
    assert " typ relay" not in answer and " typ srflx" not in answer
    # aiortc's default asks Google's STUN server from every peer, and the answer waits
    # for it: up to 5 s on a showroom network without internet. The server's peer asks
    # no STUN or TURN server it was not given.
    runtime = app.app[keys.EXTRA]["media"]["demo"]
    viewers = list(runtime.viewers.values())
    assert viewers
    for viewer in viewers:
        for transceiver in viewer.pc.getTransceivers():
            ice = transceiver.receiver.transport.transport.iceGatherer._connection
            assert ice.stun_server is None and ice.turn_server is None
    page = await (await app.session.get("/shows/demo")).text()
    assert '"ice_servers": []' in page


def test_no_python_peer_of_ours_takes_aiortcs_default_ice_servers():
    """An aiortc peer made with no configuration asks Google's STUN server (the check
    above): every one in the project comes from ``media.ice`` or is given its own."""
    call = "RTCPeerConnection" + "()"  # spelled apart, so this file does not match
    bare = [
        f"{path.relative_to(ROOT)}:{n}"
        for folder in ("media", "server", "load_tests", "tests", "checkout", "devices")
        for path in sorted((ROOT / folder).rglob("*.py"))
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if call in line and f"new {call}" not in line  # a browser's is not aiortc's
    ]
    assert not bare, f"use media.ice.peer_connection(): {bare}"


def relay_only(turn_url: str) -> RTCConfiguration:
    return RTCConfiguration(
        iceServers=[RTCIceServer(turn_url, USER, PASSWORD)],
        iceTransportPolicy=RTCIceTransportPolicy.RELAY,
    )


def nominated_types(pc) -> tuple[str, str]:
    """The local and remote candidate types of the pair ICE nominated."""
    transport = pc.getTransceivers()[0].receiver.transport.transport
    pair = transport._connection._nominated[1]  # aioice: component 1's nominated pair
    return pair.local_candidate.type, pair.remote_candidate.type


@pytest.mark.parametrize("transport", ["udp", "tcp"])
async def test_relay_only_aiortc_viewer_plays_through_coturn(make_app, tmp_path, turn, transport):
    path = tmp_path / "demo.toml"
    path.write_text(manifest_text("demo") + ice_toml([], [(turn.url, USER, PASSWORD)]))
    running = await make_app([path])
    runtime = running.app[keys.EXTRA]["media"]["demo"]
    async with aiohttp.ClientSession() as http:
        viewer = WhepPlayer(
            f"{running.url}/whep/demo",
            audio=False,
            configuration=relay_only(turn.url_for(transport)),
        )
        try:
            await viewer.start(http)
            assert "typ host" not in viewer.pc.localDescription.sdp
            await viewer.wait_first_frame(15)  # the slate: no publisher needed
            assert viewer.latest_video.width == 640
            assert nominated_types(viewer.pc)[0] == "relay"
            assert len(runtime.viewers) == 1
        finally:
            await viewer.close(http)


# The local candidate types of the browser's selected (succeeded, nominated) pairs.
RELAY_PAIR_JS = """async () => {
  const stats = await window.__pcs[0].getStats();
  const out = [];
  for (const r of stats.values()) {
    if (r.type === "candidate-pair" && r.nominated && r.state === "succeeded") {
      const local = stats.get(r.localCandidateId);
      out.push(`${local.candidateType}/${local.relayProtocol}`);
    }
  }
  return out;
}"""

# Keep the page's peer connections reachable from the test.
TRACK_PCS_JS = """(() => {
  const Orig = window.RTCPeerConnection;
  window.__pcs = [];
  window.RTCPeerConnection = function (config) {
    const pc = new Orig(config);
    window.__pcs.push(pc);
    return pc;
  };
  window.RTCPeerConnection.prototype = Orig.prototype;
})();"""


@pytest.mark.timeout(90)
# tcp: a network that blocks UDP; tls: one that only lets HTTPS-like traffic out.
@pytest.mark.parametrize("transport", ["udp", "tcp", "tls"])
async def test_chromium_relay_only_viewer_page_plays_through_coturn(
    make_app, tmp_path, turn, artifacts, transport
):
    path = tmp_path / "demo.toml"
    path.write_text(
        manifest_text("demo") + ice_toml([], [(turn.url_for(transport), USER, PASSWORD)])
    )
    running = await make_app([path])
    # The test's TURN certificate is self-signed; a deployment's is a real one.
    trust = ("--ignore-certificate-errors",) if transport == "tls" else ()
    async with chromium(running, trust) as browser:
        errors = JsErrors()
        _, page = await new_page(browser, errors, "viewer", PHONE, is_mobile=True)
        # iceTransportPolicy "relay" from ?relay=1: only coturn's relay candidates.
        await page.add_init_script(TRACK_PCS_JS)
        await page.goto(f"{running.url}/shows/demo?relay=1")
        await page.wait_for_function(
            "() => { const v = document.getElementById('video');"
            " return v.videoWidth === 640 && v.currentTime > 0.5; }",
            timeout=30000,
        )
        await page.screenshot(path=str(artifacts / f"networks-relay-viewer-{transport}.png"))
        # The browser reached the server only through coturn: a relay candidate pair, its
        # leg to coturn over the transport asked for ("tls" for turns:).
        types = await page.evaluate(RELAY_PAIR_JS)
    assert types == [f"relay/{transport}"], types
    assert errors.unexpected() == []
