"""DTLS interop without GStreamer: the aiortc internals media/dtls.py is pinned to, the
widened cipher list against an RSA-certificate DTLS server, the passive answer, and the
one warning a failed handshake leaves in the log."""

from __future__ import annotations

import asyncio
import inspect
import logging
import re

import aiohttp
import aiortc
import pytest
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.rtcdtlstransport import SRTP_PROFILES, RTCCertificate, RTCDtlsTransport
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from OpenSSL import SSL

from media import dtls
from media.dtls import DtlsInterop, InteropCertificate
from media.ice import peer_connection
from media.sdp import SdpError, check_publish_offer, choose_view_codec, parse_offer
from media.testsrc import TestPatternTrack
from server import keys
from tests.certs import self_signed
from tests.conftest import STREAM_KEY, wait_until

pytestmark = pytest.mark.timeout(60)


def rsa_certificate() -> tuple[rsa.RSAPrivateKey, x509.Certificate]:
    """A self-signed RSA-2048 certificate, like the one GStreamer's DTLS elements make."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key, self_signed(key, "rsa-peer")


def rsa_dtls_server() -> SSL.Connection:
    """An RSA-certificate DTLS-SRTP server with OpenSSL's default suites (GStreamer's)."""
    key, cert = rsa_certificate()
    ctx = SSL.Context(SSL.DTLS_METHOD)
    ctx.use_certificate(cert)
    ctx.use_privatekey(key)
    ctx.set_cipher_list(b"ALL:!ADH:!LOW:!EXP:!MD5:@STRENGTH")
    ctx.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, lambda *args: True)
    ctx.set_tlsext_use_srtp(b"SRTP_AES128_CM_SHA1_80")
    conn = SSL.Connection(ctx)
    conn.set_accept_state()
    return conn


def handshake(client: SSL.Connection, server: SSL.Connection) -> None:
    """Run a DTLS handshake in memory; raise the SSL.Error of the side that gave up."""
    done = {id(client): False, id(server): False}
    for _ in range(50):
        for conn, other in ((client, server), (server, client)):
            if not done[id(conn)]:
                try:
                    conn.do_handshake()
                    done[id(conn)] = True
                except SSL.WantReadError:
                    pass
            try:
                other.bio_write(conn.bio_read(65536))
            except SSL.WantReadError:
                pass
        if all(done.values()):
            return
    raise AssertionError("handshake did not finish")


def test_aiortc_internals_media_dtls_relies_on_are_still_there():
    version = aiortc.__version__
    assert version.startswith(dtls.AIORTC_VERSION + "."), (
        f"media/dtls.py is pinned to aiortc {dtls.AIORTC_VERSION} internals but aiortc is "
        f"{version}: re-check each internal its docstring lists, then update AIORTC_VERSION"
    )
    pc = peer_connection()
    certificates = getattr(pc, "_RTCPeerConnection__certificates", None)
    assert isinstance(certificates, list) and isinstance(certificates[0], RTCCertificate), (
        "aiortc no longer keeps its certificate in RTCPeerConnection.__certificates"
    )
    params = list(inspect.signature(RTCCertificate._create_ssl_context).parameters)
    assert params == ["self", "srtp_profiles"], f"_create_ssl_context changed: {params}"
    assert callable(getattr(RTCDtlsTransport, "_set_role", None)), "RTCDtlsTransport._set_role gone"
    # aiortc's own list is still ECDSA-only (if it gained RSA suites, ours may be dropped).
    stock = RTCCertificate.generateCertificate()._create_ssl_context(SRTP_PROFILES)
    conn = SSL.Connection(stock)
    names = conn.get_cipher_list()
    assert names and all("ECDSA" in n for n in names if not n.startswith("TLS_")), names


async def test_actpass_offer_gets_a_passive_answer_with_our_certificate():
    offerer, answerer = (
        peer_connection(),
        peer_connection(),
    )
    interop = DtlsInterop(answerer, "test peer")
    try:
        offerer.addTransceiver(TestPatternTrack(320, 180, 10), direction="sendonly")
        await offerer.setLocalDescription(await offerer.createOffer())
        offer = offerer.localDescription.sdp
        assert parse_offer(offer).dtls_setup == "actpass"
        await answerer.setRemoteDescription(RTCSessionDescription(offer, "offer"))
        interop.answer_passive(parse_offer(offer))
        await answerer.setLocalDescription(await answerer.createAnswer())
        answer = answerer.localDescription.sdp
        assert "a=setup:passive" in answer and "a=setup:active" not in answer
        ours = interop.certificate.getFingerprints()[0].value
        assert ours in answer, "the answer's fingerprint is not the InteropCertificate's"
        transport = answerer.getTransceivers()[0].receiver.transport
        assert transport._role == "server"
        nominated = getattr(transport.transport._connection, "_nominated", None)
        assert isinstance(nominated, dict), "aioice Connection._nominated is gone"
    finally:
        await offerer.close()
        await answerer.close()


async def test_active_or_passive_offers_keep_aiortcs_role():
    for setup, role in (("active", "server"), ("passive", "client")):
        offerer, answerer = (
            peer_connection(),
            peer_connection(),
        )
        interop = DtlsInterop(answerer, "test peer")
        offerer.addTransceiver(TestPatternTrack(320, 180, 10), direction="sendonly")
        await offerer.setLocalDescription(await offerer.createOffer())
        offer = offerer.localDescription.sdp.replace("a=setup:actpass", f"a=setup:{setup}")
        await answerer.setRemoteDescription(RTCSessionDescription(offer, "offer"))
        interop.answer_passive(parse_offer(offer))
        await answerer.setLocalDescription(await answerer.createAnswer())
        expected = {"server": "passive", "client": "active"}[role]
        assert f"a=setup:{expected}" in answerer.localDescription.sdp, setup
        await offerer.close()
        await answerer.close()


def test_our_dtls_client_finds_a_suite_with_an_rsa_server_and_aiortcs_alone_does_not():
    ours = InteropCertificate.generateCertificate()
    client = SSL.Connection(ours._create_ssl_context(SRTP_PROFILES))
    client.set_connect_state()
    server = rsa_dtls_server()
    handshake(client, server)
    assert client.get_cipher_name().startswith("ECDHE-RSA-"), client.get_cipher_name()
    assert ours.handshake is not None and ours.handshake.done
    assert ours.handshake.srtp_profile == "SRTP_AES128_CM_SHA1_80"

    stock = SSL.Connection(RTCCertificate.generateCertificate()._create_ssl_context(SRTP_PROFILES))
    stock.set_connect_state()
    with pytest.raises(SSL.Error, match="no shared cipher|handshake failure"):
        handshake(stock, rsa_dtls_server())


def test_sdp_dtls_setup_is_parsed_and_unusable_roles_are_refused():
    base = (
        "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n{session}"
        "m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=rtpmap:96 VP8/90000\r\na=sendonly\r\n{media}"
    )
    assert parse_offer(base.format(session="", media="a=setup:actpass\r\n")).dtls_setup == "actpass"
    assert parse_offer(base.format(session="a=setup:passive\r\n", media="")).dtls_setup == "passive"
    assert parse_offer(base.format(session="", media="")).dtls_setup is None
    held = parse_offer(base.format(session="", media="a=setup:holdconn\r\n"))
    for check in (check_publish_offer, choose_view_codec):
        with pytest.raises(SdpError) as exc:
            check(held)
        assert exc.value.status == 422 and "a=setup" in exc.value.detail


class RsaOnlyCertificate(RTCCertificate):
    """A peer like old GStreamer builds: an RSA certificate, aiortc's ECDSA-only suites, so
    as a DTLS server it shares no suite with anybody."""


def rsa_peer(pc: RTCPeerConnection) -> None:
    key, cert = rsa_certificate()
    pc._RTCPeerConnection__certificates = [RsaOnlyCertificate(key, cert)]  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "case, expected",
    [
        (
            "no_shared_cipher",
            r"DTLS handshake failed as client: the peer sent fatal alert handshake_failure",
        ),
        (
            "fingerprint",
            r"DTLS handshake failed as server: the peer's certificate does not match the a=fingerprint",
        ),
    ],
)
async def test_failed_handshake_is_one_warning_naming_the_peer_and_reason(
    app, caplog, case, expected
):
    caplog.set_level(logging.WARNING, logger="showroom.media.dtls")
    runtime = app.app[keys.EXTRA]["media"]["demo"]
    pc = peer_connection()
    if case == "no_shared_cipher":
        rsa_peer(pc)  # before the transceiver: its DTLS transport takes the certificate
    pc.addTransceiver(TestPatternTrack(320, 180, 10), direction="sendonly")
    await pc.setLocalDescription(await pc.createOffer())
    sdp = pc.localDescription.sdp  # what this publisher sends differs from what it uses:
    if case == "no_shared_cipher":  # it insists on being the DTLS server
        sdp = sdp.replace("a=setup:actpass", "a=setup:passive")
    else:  # a fingerprint that is not its certificate's
        sdp = re.sub(r"(a=fingerprint:sha-256 )([0-9A-F]{2})", r"\g<1>00", sdp)
    headers = {"Content-Type": "application/sdp", "Authorization": f"Bearer {STREAM_KEY}"}
    async with aiohttp.ClientSession() as http:
        try:
            async with http.post(f"{app.url}/whip/demo", data=sdp, headers=headers) as resp:
                assert resp.status == 201, await resp.text()
                answer = await resp.text()
            await pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))
            session_id = runtime.publisher.id
            record = await wait_until(
                lambda: next((r for r in caplog.records if r.name == "showroom.media.dtls"), None),
                timeout=15,
            )
            line = record.getMessage()
            assert f"WHIP publisher {session_id} of show demo" in line, line
            assert re.search(r" at [0-9a-f.:]+:\d+: connection failed, ", line), line
            assert re.search(expected, line), line
            await wait_until(lambda: runtime.publisher is None, timeout=5)
            await asyncio.sleep(0.3)
            assert len([r for r in caplog.records if r.name == "showroom.media.dtls"]) == 1
        finally:
            await pc.close()


async def test_offer_with_an_unusable_dtls_role_is_a_422_and_leaves_no_session(app):
    runtime = app.app[keys.EXTRA]["media"]["demo"]
    pc = peer_connection()
    pc.addTransceiver(TestPatternTrack(320, 180, 10), direction="sendonly")
    await pc.setLocalDescription(await pc.createOffer())
    offer = pc.localDescription.sdp.replace("a=setup:actpass", "a=setup:holdconn")
    await pc.close()
    headers = {"Content-Type": "application/sdp", "Authorization": f"Bearer {STREAM_KEY}"}
    for path in ("/whip/demo", "/whep/demo"):
        body = offer if path == "/whip/demo" else offer.replace("a=sendonly", "a=recvonly")
        resp = await app.session.post(path, data=body, headers=headers)
        payload = await resp.json()
        assert resp.status == 422 and "a=setup" in payload["detail"], (path, payload)
    assert runtime.publisher is None and not runtime.viewers
