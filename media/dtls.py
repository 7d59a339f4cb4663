"""DTLS for every WebRTC session: peers with RSA certificates, and a reason when it fails.

GStreamer's ``webrtcbin`` (and the hardware encoders and capture kits built on it) offers
``a=setup:actpass`` and serves DTLS with an RSA certificate. aiortc answers ``active``
and its DTLS client offers only ECDHE-ECDSA suites, so the handshake with such a peer
ends in "no shared cipher" after the WHIP/WHEP POST got its 201. Two changes fix it, and
either alone would do for webrtcbin; both together also cover a peer that insists on
being the DTLS server (``a=setup:passive``):

- offered ``actpass``, we answer ``passive``: the peer is the DTLS client, and a client
  accepts our ECDSA certificate whatever its own certificate is (browsers too, and they
  retransmit lost handshake flights on their own timers);
- our DTLS context offers ECDHE-RSA suites after aiortc's ECDHE-ECDSA ones, so when we
  are the client an RSA-certificate server finds a suite in common.

When a session's connection fails, one warning names the session, the peer's address
and the reason (the alert sent or received, an SRTP profile or fingerprint mismatch, or
ICE that never connected): aiortc itself only logs it at debug level.

aiortc internals this relies on, pinned to aiortc 1.16 (``tests/test_media_dtls.py``
fails loudly when any of them changes):

- ``RTCPeerConnection._RTCPeerConnection__certificates``: the connection's certificate
  list, read when each DTLS transport is created (``addTransceiver`` and
  ``setRemoteDescription``); we put an ``InteropCertificate`` there first;
- ``RTCCertificate._create_ssl_context(srtp_profiles)``: builds the ``SSL.Context`` of each
  handshake; ours widens its cipher list and watches the handshake (info callback);
- ``RTCDtlsTransport._role`` / ``_set_role``: the DTLS role ``setRemoteDescription`` leaves
  at ``"auto"`` for an ``actpass`` offer; ``createAnswer`` writes ``"server"`` as
  ``a=setup:passive``;
- ``RTCIceTransport._connection._nominated`` (aioice): the selected candidate pair, only
  to name the peer's address in the failure line.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from aiortc import RTCPeerConnection
from aiortc.rtcdtlstransport import RTCCertificate, RTCDtlsTransport
from OpenSSL import SSL

from media.sdp import Offer

log = logging.getLogger("showroom.media.dtls")

AIORTC_VERSION = "1.16"
# aiortc's own suites first (our certificate is ECDSA), then the ones an RSA-certificate
# DTLS server can pick. DTLS 1.2 has no TLS 1.3 suites to add.
ECDSA_SUITES = (
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-CHACHA20-POLY1305:"
    "ECDHE-ECDSA-AES128-SHA:ECDHE-ECDSA-AES256-SHA"
)
RSA_SUITES = (
    "ECDHE-RSA-AES128-GCM-SHA256:ECDHE-RSA-CHACHA20-POLY1305:ECDHE-RSA-AES256-GCM-SHA384:"
    "ECDHE-RSA-AES128-SHA:ECDHE-RSA-AES256-SHA"
)
CIPHERS = f"{ECDSA_SUITES}:{RSA_SUITES}"

# TLS alert descriptions (RFC 5246 7.2, RFC 8446 6) as OpenSSL reports them.
ALERTS = {
    0: "close_notify",
    10: "unexpected_message",
    20: "bad_record_mac",
    22: "record_overflow",
    40: "handshake_failure",
    42: "bad_certificate",
    43: "unsupported_certificate",
    44: "certificate_revoked",
    45: "certificate_expired",
    46: "certificate_unknown",
    47: "illegal_parameter",
    48: "unknown_ca",
    49: "access_denied",
    50: "decode_error",
    51: "decrypt_error",
    70: "protocol_version",
    71: "insufficient_security",
    80: "internal_error",
    86: "inappropriate_fallback",
    90: "user_canceled",
    109: "missing_extension",
    110: "unsupported_extension",
    112: "unrecognized_name",
    120: "no_application_protocol",
}
FATAL = 2


@dataclass
class Handshake:
    """What one DTLS handshake did, as OpenSSL reported it while it ran."""

    alerts: list[tuple[str, int, str]] = field(default_factory=list)  # (sent|received, level, name)
    done: bool = False
    cipher: str | None = None
    srtp_profile: str | None = None

    def on_info(self, conn: SSL.Connection, where: int, ret: int) -> None:
        if where & SSL.SSL_CB_ALERT:
            direction = "received" if where & SSL.SSL_CB_READ else "sent"
            level, code = ret >> 8, ret & 0xFF
            self.alerts.append((direction, level, ALERTS.get(code, f"alert {code}")))
        if where & SSL.SSL_CB_HANDSHAKE_DONE:
            self.done = True
            self.cipher = conn.get_cipher_name()
            self.srtp_profile = conn.get_selected_srtp_profile().decode() or None

    def failure_reason(self, role: str) -> str:
        """Why a handshake that aiortc marked failed failed, in one phrase."""
        failed = f"DTLS handshake failed as {role}"
        fatal = [(d, name) for d, level, name in self.alerts if level == FATAL]
        if fatal:
            direction, name = fatal[0]
            if direction == "received":
                hint = (
                    " (no cipher suite or SRTP profile in common)"
                    if name == "handshake_failure"
                    else ""
                )
                return f"{failed}: the peer sent fatal alert {name}{hint}"
            hint = " (no cipher suite in common)" if name == "handshake_failure" else ""
            return f"{failed}: we sent fatal alert {name}{hint}"
        if self.done and self.srtp_profile is None:
            return f"{failed}: no SRTP protection profile in common"
        if self.done:
            return (
                f"{failed}: the peer's certificate does not match the a=fingerprint of its SDP "
                f"(handshake done, {self.cipher})"
            )
        return f"{failed}: it never completed (the peer went silent or closed it)"


class InteropCertificate(RTCCertificate):
    """aiortc's ECDSA certificate with a DTLS context that also speaks to RSA servers."""

    handshake: Handshake | None = None

    def _create_ssl_context(self, srtp_profiles) -> SSL.Context:
        ctx = super()._create_ssl_context(srtp_profiles)
        ctx.set_cipher_list(CIPHERS.encode())
        self.handshake = Handshake()  # one context per handshake: a fresh record each time
        ctx.set_info_callback(self.handshake.on_info)
        return ctx


def _dtls_transports(pc: RTCPeerConnection) -> list[RTCDtlsTransport]:
    seen: list[RTCDtlsTransport] = []
    for transceiver in pc.getTransceivers():
        transport = transceiver.receiver.transport
        if transport is not None and transport not in seen:
            seen.append(transport)
    return seen


def _peer_address(transport: RTCDtlsTransport) -> str | None:
    """The selected ICE pair's remote address, if aioice has one (best effort)."""
    connection = getattr(transport.transport, "_connection", None)
    for pair in getattr(connection, "_nominated", {}).values():
        host, port = pair.remote_addr[:2]
        return f"{host}:{port}"
    return None


class DtlsInterop:
    """The DTLS side of one session's PeerConnection (see the module docstring).

    Create it right after the ``RTCPeerConnection`` (before any transceiver exists), call
    ``answer_passive(offer)`` between ``setRemoteDescription`` and ``createAnswer``.
    """

    def __init__(self, pc: RTCPeerConnection, peer: str) -> None:
        self.pc = pc
        self.peer = peer
        self.certificate = InteropCertificate.generateCertificate()
        pc._RTCPeerConnection__certificates = [self.certificate]  # type: ignore[attr-defined]
        self._reported = False
        pc.on("connectionstatechange", self._on_state)

    def answer_passive(self, offer: Offer) -> None:
        """Be the DTLS server (``a=setup:passive``) where the offer left us the choice."""
        if offer.dtls_setup != "actpass":
            return
        for transport in _dtls_transports(self.pc):
            if transport._role == "auto":
                transport._set_role("server")

    def failure(self) -> str | None:
        """Why the connection failed, or None while it has not."""
        for transport in _dtls_transports(self.pc):
            if transport.state == "failed":
                handshake = self.certificate.handshake or Handshake()
                return handshake.failure_reason(transport._role)
        if self.pc.iceConnectionState == "failed":
            return "ICE failed: no candidate pair worked (nothing reached us, or our candidates never reached the peer)"
        return None

    def _on_state(self) -> None:
        if self.pc.connectionState == "connected":
            handshake = self.certificate.handshake
            if handshake is not None:
                log.debug(
                    "%s: DTLS up (%s, %s)", self.peer, handshake.cipher, handshake.srtp_profile
                )
        elif self.pc.connectionState == "failed" and not self._reported:
            self._reported = True
            address = next(filter(None, map(_peer_address, _dtls_transports(self.pc))), None)
            where = f" at {address}" if address else ""
            log.warning(
                "%s%s: connection failed, %s", self.peer, where, self.failure() or "cause unknown"
            )
