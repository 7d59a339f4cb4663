"""ICE candidates from peers (issue 16, item 5): malformed lines are a 400, a session
takes at most MAX_CANDIDATES, trickle PATCH is rate-limited, and the server never sends
connectivity checks to loopback (unless allowed), link-local, multicast or private
addresses (unless allowed). The check is observed on a real UDP socket."""

from __future__ import annotations

import asyncio
import ipaddress

import aiohttp
import pytest

from media.candidates import (
    MAX_CANDIDATES,
    CandidatePolicy,
    TrickleBudget,
    allowed,
    candidate_address,
)
from media.sdp import SdpError
from tests.test_media_http import real_offer

pytestmark = pytest.mark.timeout(60)

SDP = {"Content-Type": "application/sdp"}
FRAG = {"Content-Type": "application/trickle-ice-sdpfrag"}


def cand(address: str = "192.0.2.50", port: object = 5000, priority: object = 2130706431) -> str:
    return f"a=candidate:1 1 udp {priority} {address} {port} typ host"


def with_candidates(offer: str, lines: list[str]) -> str:
    """The offer with its own candidates replaced by ``lines`` (in the first section)."""
    out, placed = [], False
    for line in offer.splitlines():
        if line.startswith(("a=candidate:", "a=end-of-candidates")):
            continue
        out.append(line)
        if line.startswith("a=mid:") and not placed:
            out.extend(lines)
            placed = True
    return "\r\n".join(out) + "\r\n"


@pytest.mark.parametrize(
    "line",
    [
        "candidate:1 1 udp x 192.0.2.1 5000 typ host",
        "candidate:1 1 udp 100 192.0.2.1 port typ host",
        "candidate:1 1 udp 100 192.0.2.1 70000 typ host",
        "candidate:1 1 udp 100 evil.example 5000 typ host",
        "candidate:1 1 udp 100 999.1.1.1 5000 typ host",
        "candidate:1 x udp 100 192.0.2.1 5000 typ host",
        "candidate:1 1 sctp 100 192.0.2.1 5000 typ host",
        "candidate:1 1 udp 100 192.0.2.1 5000 typ bogus",
        "candidate:1 1 udp 100 192.0.2.1",
    ],
)
def test_malformed_candidate_lines_are_rejected(line):
    with pytest.raises(SdpError) as info:
        candidate_address(line)
    assert info.value.status == 400


def test_which_addresses_are_checked():
    strict, lab = CandidatePolicy(), CandidatePolicy(allow_loopback=True, allow_private=True)
    cases = {
        "8.8.8.8": (True, True),
        "2001:4860:4860::8888": (True, True),
        "127.0.0.1": (False, True),
        "::1": (False, True),
        "::ffff:127.0.0.1": (False, True),
        "10.1.2.3": (False, True),
        "192.168.1.20": (False, True),
        "fd00::2": (False, True),
        "169.254.1.1": (False, False),
        "fe80::1": (False, False),
        "224.0.0.251": (False, False),
        "ff02::1": (False, False),
        "0.0.0.0": (False, False),
        "255.255.255.255": (False, False),
    }
    for text, (public, dev) in cases.items():
        address = ipaddress.ip_address(text)
        assert allowed(address, strict) is public, text
        assert allowed(address, lab) is dev, text


def test_trickle_budget_refills():
    budget = TrickleBudget(burst=3, per_s=1)
    assert [budget.take_request(0.0) for _ in range(4)] == [True, True, True, False]
    assert budget.take_request(1.01) and not budget.take_request(1.02)


class StunTrap(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.packets = 0

    def datagram_received(self, data: bytes, addr) -> None:
        self.packets += 1


async def checks_sent_to_loopback(running) -> int:
    """Datagrams the server sends within 3 s toward a loopback candidate in an offer."""
    loop = asyncio.get_running_loop()
    transport, trap = await loop.create_datagram_endpoint(StunTrap, local_addr=("127.0.0.1", 0))
    port = transport.get_extra_info("sockname")[1]
    offer = with_candidates(await real_offer("view"), [cand("127.0.0.1", port)])
    try:
        async with aiohttp.ClientSession() as http:
            r = await http.post(f"{running.url}/whep/demo", data=offer, headers=SDP)
            assert r.status == 201, await r.text()
            await asyncio.sleep(3)
            await http.delete(f"{running.url}{r.headers['Location']}")
        return trap.packets
    finally:
        transport.close()


async def test_no_checks_toward_loopback_on_a_public_server(make_app):
    public = await make_app(allow_loopback_candidates=False, allow_private_candidates=False)
    assert await checks_sent_to_loopback(public) == 0
    # The same offer on a server that allows loopback (a test box): checks do go out,
    # so the trap above would have seen them.
    lab = await make_app()
    assert lab.settings.candidate_allowed("loopback")
    assert await checks_sent_to_loopback(lab) > 0


async def test_malformed_and_excess_candidates_are_400(app):
    base = await real_offer("view")
    async with aiohttp.ClientSession() as http:
        for bad in (cand(priority="high"), cand(port="http"), cand(address="evil.example")):
            r = await http.post(
                f"{app.url}/whep/demo", data=with_candidates(base, [bad]), headers=SDP
            )
            assert r.status == 400, bad
            assert (await r.json())["error"] == "bad_request"
        many = [cand(port=5000 + i) for i in range(MAX_CANDIDATES + 1)]
        r = await http.post(f"{app.url}/whep/demo", data=with_candidates(base, many), headers=SDP)
        assert r.status == 400 and "Too many" in (await r.json())["detail"]

        r = await http.post(
            f"{app.url}/whep/demo", data=with_candidates(base, [cand(port=4000)]), headers=SDP
        )
        assert r.status == 201
        session = f"{app.url}{r.headers['Location']}"
        r = await http.patch(session, data=cand(priority="1e9") + "\r\n", headers=FRAG)
        assert r.status == 400, "a non-numeric priority in a PATCH used to be a 500"
        assert (await r.json())["error"] == "bad_request"
        r = await http.patch(session, data=cand(port="-1") + "\r\n", headers=FRAG)
        assert r.status == 400
        # 1 from the offer + 19 trickled = 20; the 21st is refused.
        frag = "".join(cand(port=6000 + i) + "\r\n" for i in range(MAX_CANDIDATES - 1))
        r = await http.patch(session, data=frag, headers=FRAG)
        assert r.status == 204
        r = await http.patch(session, data=cand(port=7000) + "\r\n", headers=FRAG)
        assert r.status == 400 and "Too many" in (await r.json())["detail"]
        await http.delete(session)


async def test_trickle_patch_is_rate_limited(app):
    async with aiohttp.ClientSession() as http:
        r = await http.post(f"{app.url}/whep/demo", data=await real_offer("view"), headers=SDP)
        assert r.status == 201
        session = f"{app.url}{r.headers['Location']}"
        statuses = []
        for _ in range(30):
            async with http.patch(session, data="a=end-of-candidates\r\n", headers=FRAG) as resp:
                statuses.append(resp.status)
                if resp.status == 429:
                    assert (await resp.json())["error"] == "rate_limited"
                    assert int(resp.headers["Retry-After"]) >= 1
        assert statuses[:5] == [204] * 5
        assert 429 in statuses
        await http.delete(session)
