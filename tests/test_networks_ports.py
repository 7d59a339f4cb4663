"""``--udp-ports`` (every media socket of the server inside the range) and
``--public-ip`` (the address advertised in the server's candidates), issue 19 section 2."""

from __future__ import annotations

import random
import re

import aiohttp
import pytest

from media.client import WhepPlayer, WhipPublisher
from media.ice import advertise_address
from media.testsrc import TestPatternTrack
from media.udp_ports import PortRange, aioice_problems
from server import keys
from server.cli import build_parser
from tests.conftest import STREAM_KEY, manifest_text
from tests.test_media_http import real_offer, sdp_headers
from tests.test_networks_ice import ice_toml
from tests.turn_server import PASSWORD, USER, start_turn

pytestmark = pytest.mark.timeout(60)

CANDIDATE = re.compile(r"^a=candidate:\S+ \d+ udp \d+ (\S+) (\d+) typ (\w+)", re.M)


def test_aioice_internals_we_bind_through_are_the_pinned_ones():
    assert aioice_problems() == []


def test_udp_ports_and_public_ip_options():
    parser = build_parser()
    args = parser.parse_args(
        ["serve", "--manifest", "x", "--udp-ports", "40000-40099", "--public-ip", "203.0.113.7"]
    )
    assert args.udp_ports == PortRange(40000, 40099) and args.public_ip == "203.0.113.7"
    for bad in (["--udp-ports", "40099-40000"], ["--udp-ports", "80-90"], ["--public-ip", "x"]):
        with pytest.raises(SystemExit):
            parser.parse_args(["serve", "--manifest", "x", *bad])


def session_ports(pc) -> list[tuple[str, int]]:
    """The local UDP ports of one server peer's ICE sockets: host sockets, and the
    socket it talks to the TURN server from (aioice internals, read-only)."""
    out = []
    transport = pc.getTransceivers()[0].sender.transport.transport
    for protocol in transport._connection._protocols:
        inner = getattr(protocol.transport, "_TurnTransport__inner_protocol", None)
        if inner is not None:
            out.append(("turn-client", inner.transport.get_extra_info("sockname")[1]))
        else:
            out.append(("host", protocol.transport.get_extra_info("sockname")[1]))
    return out


async def test_every_media_socket_inside_udp_ports(make_app, tmp_path):
    # Below the kernel's ephemeral range (32768-60999): port-0 binds never land here.
    lo = random.randrange(20000, 32000, 100)
    ports = PortRange(lo, lo + 49)
    turn = start_turn(tmp_path)
    try:
        path = tmp_path / "demo.toml"
        path.write_text(manifest_text("demo") + ice_toml([], [(turn.url, USER, PASSWORD)]))
        running = await make_app([path], udp_ports=ports)
        runtime = running.app[keys.EXTRA]["media"]["demo"]
        async with aiohttp.ClientSession() as http:
            publisher = WhipPublisher(
                f"{running.url}/whip/demo", STREAM_KEY, TestPatternTrack(320, 180, 15)
            )
            await publisher.start(http)
            viewers = [WhepPlayer(f"{running.url}/whep/demo", audio=False) for _ in range(2)]
            for viewer in viewers:
                await viewer.start(http)
            for viewer in viewers:
                await viewer.wait_first_frame(15)  # the sockets carry media
            peers = [runtime.publisher.pc] + [v.pc for v in runtime.viewers.values()]
            seen = [p for pc in peers for p in session_ports(pc)]
            answer = viewers[0].pc.remoteDescription.sdp
            for viewer in viewers:
                await viewer.close(http)
            await publisher.close(http)
    finally:
        turn.stop()
    kinds = {kind for kind, _ in seen}
    assert kinds == {"host", "turn-client"}, seen
    outside = [(kind, port) for kind, port in seen if port not in ports]
    assert outside == [], f"sockets outside {ports}: {outside}"
    host_ports = [int(port) for _, port, typ in CANDIDATE.findall(answer) if typ == "host"]
    assert host_ports and all(p in ports for p in host_ports)


def test_advertise_address_rewrites_host_candidates_only():
    sdp = (
        "v=0\r\nc=IN IP4 10.0.0.5\r\n"
        "a=candidate:1 1 udp 2130706431 10.0.0.5 40001 typ host\r\n"
        "a=candidate:2 1 udp 2130706431 fd00::5 40002 typ host\r\n"
        "a=candidate:3 1 udp 16777215 198.51.100.9 50000 typ relay raddr 10.0.0.5 rport 40001\r\n"
    )
    out = advertise_address(sdp, "203.0.113.7")
    assert out == (
        "v=0\r\nc=IN IP4 203.0.113.7\r\n"
        "a=candidate:1 1 udp 2130706431 203.0.113.7 40001 typ host\r\n"
        "a=candidate:2 1 udp 2130706431 fd00::5 40002 typ host\r\n"
        "a=candidate:3 1 udp 16777215 198.51.100.9 50000 typ relay raddr 10.0.0.5 rport 40001\r\n"
    )


async def test_public_ip_is_advertised_in_whep_and_whip_answers(make_app):
    running = await make_app(public_ip="203.0.113.7")
    async with aiohttp.ClientSession() as http:
        for path, kind, key in (("whep", "view", None), ("whip", "publish", STREAM_KEY)):
            r = await http.post(
                f"{running.url}/{path}/demo", data=await real_offer(kind), headers=sdp_headers(key)
            )
            assert r.status == 201
            found = CANDIDATE.findall(await r.text())
            hosts = {addr for addr, _, typ in found if typ == "host" and "." in addr}
            assert hosts == {"203.0.113.7"}, found
