"""A GStreamer webrtcbin peer for the interop tests: publishes over WHIP or plays over WHEP.

Run with Debian's system Python (``/usr/bin/python3``, where python3-gi lives), not the
project's venv. It does the WHIP/WHEP HTTP exchange itself with urllib and drives
``webrtcbin`` like a hardware encoder or capture kit would: an RSA DTLS certificate
(webrtcbin's own) and ``a=setup:actpass`` in its offer.

    gst_peer.py publish URL --key KEY --codec h264|vp8 [--color 0xAARRGGBB]
    gst_peer.py play URL --codec h264|vp8 --seconds 6 --dump FILE
    gst_peer.py serve --port P --key KEY --dump FILE

``serve`` is a WHIP server (the role of an SFU's or a CDN's ingest): POST ``/whip`` with
``Authorization: Bearer KEY`` and an SDP offer gets a webrtcbin answer (201, Location);
the H.264 it receives is decoded; it prints ``{"event": "frames", ...}`` about once a
second and writes the newest decoded frame (I420) to ``--dump``; SIGTERM ends it.

``publish`` runs until SIGTERM/SIGINT, then DELETEs its session. ``play`` runs for
``--seconds`` and writes the last decoded frame (I420) to ``--dump``. Both print JSON
lines on stdout: ``{"event": "answered", ...}``, ``{"event": "dtls", "state": ...}`` and a
final ``{"event": "summary", ...}``. ``--offer-setup passive`` rewrites the offer sent to
the server (webrtcbin itself stays actpass), so the server must be the DTLS client of
webrtcbin's RSA-certificate server.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
import urllib.error
import urllib.request
from urllib.parse import urljoin

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstWebRTC", "1.0")
gi.require_version("GstSdp", "1.0")
from gi.repository import GLib, Gst, GstSdp, GstWebRTC  # noqa: E402

VIDEO_CAPS = {
    "h264": "application/x-rtp,media=video,encoding-name=H264,payload=102,clock-rate=90000,"
    "packetization-mode=(string)1",
    "vp8": "application/x-rtp,media=video,encoding-name=VP8,payload=96,clock-rate=90000",
}
# What a player asks for: constrained baseline, as browsers do (the server's encoder).
PLAY_CAPS = {
    "h264": VIDEO_CAPS["h264"] + ",profile-level-id=(string)42e01f",
    "vp8": VIDEO_CAPS["vp8"],
}
ENCODERS = {
    "h264": "x264enc tune=zerolatency speed-preset=ultrafast key-int-max=30 bitrate=600 "
    "! video/x-h264,profile=constrained-baseline ! rtph264pay config-interval=-1 "
    "aggregate-mode=zero-latency",
    "vp8": "vp8enc deadline=1 keyframe-max-dist=30 target-bitrate=600000 ! rtpvp8pay",
}
DECODERS = {
    "h264": "rtph264depay ! h264parse ! avdec_h264",
    "vp8": "rtpvp8depay ! vp8dec",
}
AUDIO_CAPS = "application/x-rtp,media=audio,encoding-name=OPUS,payload=111,clock-rate=48000"


def emit(event: str, **fields) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


def wait_promise(promise: Gst.Promise, what: str) -> Gst.Structure | None:
    if promise.wait() != Gst.PromiseResult.REPLIED:  # webrtcbin always answers or fails it
        raise RuntimeError(f"webrtcbin did not reply to {what}")
    return promise.get_reply()


class Peer:
    def __init__(self, pipeline_desc: str) -> None:
        pipe = Gst.parse_launch(pipeline_desc)
        if not isinstance(pipe, Gst.Pipeline):  # a lone element comes back as itself
            element, pipe = pipe, Gst.Pipeline.new("peer")
            pipe.add(element)
        self.pipe = pipe
        self.webrtc = self.pipe.get_by_name("webrtc")
        self.webrtc.set_property("bundle-policy", GstWebRTC.WebRTCBundlePolicy.MAX_BUNDLE)
        self.location: str | None = None
        self.dtls_states: list[str] = []
        self.errors: list[str] = []
        self._lock = threading.Lock()

    def dtls_state(self) -> str | None:
        """The DTLS state of the (bundled) transport, as reported by webrtcbin."""
        trans = self.webrtc.emit("get-transceiver", 0)
        if trans is None or trans.get_property("sender") is None:
            return None
        transport = trans.get_property("sender").get_property("transport")
        if transport is None:
            return None
        return transport.get_property("state").value_nick

    def watch(self) -> None:
        """Record DTLS state changes and pipeline errors (polled; no GLib main loop)."""
        state = self.dtls_state()
        if state and (not self.dtls_states or self.dtls_states[-1] != state):
            self.dtls_states.append(state)
            emit("dtls", state=state)
        bus = self.pipe.get_bus()
        while True:
            msg = bus.pop_filtered(Gst.MessageType.ERROR | Gst.MessageType.WARNING)
            if msg is None:
                break
            err, debug = (
                msg.parse_error() if msg.type == Gst.MessageType.ERROR else msg.parse_warning()
            )
            line = f"{msg.src.get_name()}: {err.message} ({debug})"
            self.errors.append(line)
            emit("gst_error" if msg.type == Gst.MessageType.ERROR else "gst_warning", message=line)

    def send_only(self) -> None:
        """Like a WHIP client: each transceiver webrtcbin made for a sink pad only sends."""
        i = 0
        while (trans := self.webrtc.emit("get-transceiver", i)) is not None:
            trans.set_property("direction", GstWebRTC.WebRTCRTPTransceiverDirection.SENDONLY)
            i += 1

    def negotiate(self, url: str, token: str | None, offer_setup: str | None) -> None:
        self.pipe.set_state(Gst.State.PLAYING)
        reply = wait_promise(self._create_offer(), "create-offer")
        offer = reply.get_value("offer")
        promise = Gst.Promise.new()
        self.webrtc.emit("set-local-description", offer, promise)
        wait_promise(promise, "set-local-description")
        sdp = self.gathered_sdp()
        if offer_setup:
            sdp = sdp.replace("a=setup:actpass", f"a=setup:{offer_setup}")
        headers = {"Content-Type": "application/sdp"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        req = urllib.request.Request(url, data=sdp.encode(), headers=headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=15) as resp:
                answer_text = resp.read().decode()
                self.location = urljoin(url, resp.headers["Location"])
                status = resp.status
        except urllib.error.HTTPError as exc:
            emit("http_error", status=exc.code, body=exc.read().decode(errors="replace")[:300])
            raise SystemExit(2) from None
        setup = next((ln for ln in answer_text.splitlines() if ln.startswith("a=setup:")), None)
        emit("answered", status=status, location=self.location, setup=setup)
        ok, sdpmsg = GstSdp.SDPMessage.new_from_text(answer_text)
        answer = GstWebRTC.WebRTCSessionDescription.new(GstWebRTC.WebRTCSDPType.ANSWER, sdpmsg)
        promise = Gst.Promise.new()
        self.webrtc.emit("set-remote-description", answer, promise)
        wait_promise(promise, "set-remote-description")

    def gathered_sdp(self, timeout_s: float = 5.0) -> str:
        """The local description once ICE gathering is complete (no trickle ICE)."""
        deadline = time.monotonic() + timeout_s
        while (
            self.webrtc.get_property("ice-gathering-state")
            != GstWebRTC.WebRTCICEGatheringState.COMPLETE
            and time.monotonic() < deadline
        ):
            time.sleep(0.02)
        return self.webrtc.get_property("local-description").sdp.as_text()

    def _create_offer(self) -> Gst.Promise:
        promise = Gst.Promise.new()
        self.webrtc.emit("create-offer", None, promise)
        return promise

    def delete(self, token: str | None) -> None:
        if not self.location:
            return
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        req = urllib.request.Request(self.location, headers=headers, method="DELETE")
        try:
            with urllib.request.urlopen(req, timeout=5) as resp:
                emit("deleted", status=resp.status)
        except (urllib.error.URLError, OSError) as exc:
            emit("deleted", error=str(exc))

    def stop(self) -> None:
        self.pipe.set_state(Gst.State.NULL)


def publish(args: argparse.Namespace) -> None:
    video = (
        f"videotestsrc is-live=true pattern=solid-color foreground-color={args.color} "
        f"! video/x-raw,width={args.width},height={args.height},framerate=30/1 "
        f"! videoconvert ! queue ! {ENCODERS[args.codec]} ! {VIDEO_CAPS[args.codec]} ! webrtc."
    )
    audio = (
        "audiotestsrc is-live=true wave=sine freq=440 ! audioconvert ! audioresample "
        f"! opusenc ! rtpopuspay ! {AUDIO_CAPS} ! webrtc."
    )
    peer = Peer(f"webrtcbin name=webrtc {video} {audio}")
    stopping = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopping.set())
    try:
        peer.pipe.set_state(Gst.State.PAUSED)  # links the sink pads: transceivers exist
        peer.send_only()
        peer.negotiate(args.url, args.key, args.offer_setup)
        while not stopping.is_set():
            peer.watch()
            stopping.wait(0.1)
        peer.delete(args.key)
    finally:
        peer.watch()
        emit("summary", dtls_states=peer.dtls_states, errors=peer.errors)
        peer.stop()


class FrameSink:
    """Counts decoded frames and keeps the newest one (I420 bytes)."""

    def __init__(self) -> None:
        self.frames = 0
        self.size: tuple[int, int] | None = None
        self.last: bytes | None = None

    def on_sample(self, sink) -> Gst.FlowReturn:
        sample = sink.emit("pull-sample")
        caps = sample.get_caps().get_structure(0)
        self.size = (caps.get_value("width"), caps.get_value("height"))
        buf = sample.get_buffer()
        ok, info = buf.map(Gst.MapFlags.READ)
        if ok:
            self.last = bytes(info.data)
            buf.unmap(info)
        self.frames += 1
        return Gst.FlowReturn.OK

    def dump(self, path: str | None) -> None:
        """The newest frame to ``path``, whole or not at all: a reader may be reading it
        (written beside it, then renamed over it)."""
        if path and self.last is not None:
            tmp = f"{path}.tmp"
            with open(tmp, "wb") as f:
                f.write(self.last)
            os.replace(tmp, path)


def decode_pad(peer: Peer, pad, codec: str, sink: FrameSink) -> None:
    """A received track's pad (webrtcbin's pad-added): video decoded into ``sink``, audio
    decoded and dropped."""
    if pad.get_direction() != Gst.PadDirection.SRC:
        return
    media = pad.get_current_caps().get_structure(0).get_string("media")
    if media == "video":
        desc = (
            f"queue ! {DECODERS[codec]} ! videoconvert ! video/x-raw,format=I420 "
            "! appsink name=frames emit-signals=true sync=false max-buffers=2 drop=true"
        )
    else:
        desc = "queue ! rtpopusdepay ! opusdec ! fakesink sync=false"
    branch = Gst.parse_bin_from_description(desc, True)
    peer.pipe.add(branch)
    branch.sync_state_with_parent()
    linked = pad.link(branch.get_static_pad("sink"))
    emit("track", media=media, linked=linked.value_nick)
    appsink = branch.get_by_name("frames")
    if appsink is not None:
        appsink.connect("new-sample", sink.on_sample)


def play(args: argparse.Namespace) -> None:
    peer = Peer("webrtcbin name=webrtc")
    sink = FrameSink()
    direction = GstWebRTC.WebRTCRTPTransceiverDirection.RECVONLY
    peer.webrtc.emit("add-transceiver", direction, Gst.Caps.from_string(PLAY_CAPS[args.codec]))
    if args.audio:
        peer.webrtc.emit("add-transceiver", direction, Gst.Caps.from_string(AUDIO_CAPS))

    peer.webrtc.connect("pad-added", lambda _w, pad: decode_pad(peer, pad, args.codec, sink))
    try:
        peer.negotiate(args.url, None, args.offer_setup)
        deadline = time.monotonic() + args.seconds
        while time.monotonic() < deadline:
            peer.watch()
            time.sleep(0.1)
        peer.delete(None)
    finally:
        peer.watch()
        sink.dump(args.dump)
        emit(
            "summary",
            frames=sink.frames,
            size=sink.size,
            dtls_states=peer.dtls_states,
            errors=peer.errors,
        )
        peer.stop()


def serve(args: argparse.Namespace) -> None:
    """A one-session WHIP server on webrtcbin: answers an offer, decodes the video."""
    import http.server

    sink = FrameSink()
    peers: list[Peer] = []
    stopping = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopping.set())

    def answer(offer_text: str) -> str:
        peer = Peer("webrtcbin name=webrtc")
        peers.append(peer)
        peer.webrtc.connect("pad-added", lambda _w, pad: decode_pad(peer, pad, "h264", sink))
        peer.pipe.set_state(Gst.State.PLAYING)
        ok, sdpmsg = GstSdp.SDPMessage.new_from_text(offer_text)
        offer = GstWebRTC.WebRTCSessionDescription.new(GstWebRTC.WebRTCSDPType.OFFER, sdpmsg)
        promise = Gst.Promise.new()
        peer.webrtc.emit("set-remote-description", offer, promise)
        wait_promise(promise, "set-remote-description")
        promise = Gst.Promise.new()
        peer.webrtc.emit("create-answer", None, promise)
        reply = wait_promise(promise, "create-answer")
        local = reply.get_value("answer")
        promise = Gst.Promise.new()
        peer.webrtc.emit("set-local-description", local, promise)
        wait_promise(promise, "set-local-description")
        return peer.gathered_sdp()

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *_args) -> None:
            pass

        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            if self.headers.get("Authorization") != f"Bearer {args.key}":
                self.send_response(401)
                self.end_headers()
                emit("refused", reason="bad key")
                return
            offer = self.rfile.read(int(self.headers.get("Content-Length", "0"))).decode()
            try:
                text = answer(offer)
            except Exception as exc:  # reported to the test; the client sees a 500
                emit("gst_error", message=f"answer: {exc}")
                self.send_response(500)
                self.end_headers()
                return
            body = text.encode()
            self.send_response(201)
            self.send_header("Content-Type", "application/sdp")
            self.send_header("Location", f"/whip/session/{len(peers)}")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            emit("answered", sessions=len(peers))

        def do_DELETE(self) -> None:  # noqa: N802
            self.send_response(200)
            self.end_headers()
            emit("deleted")

        def do_PATCH(self) -> None:  # noqa: N802 - trickle ICE: not needed on loopback
            self.send_response(204)
            self.end_headers()

    server = http.server.ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    emit("listening", port=server.server_address[1])
    try:
        while not stopping.is_set():
            for peer in peers:
                peer.watch()
            sink.dump(args.dump)
            emit("frames", frames=sink.frames, size=sink.size)
            stopping.wait(1.0)
    finally:
        server.shutdown()
        emit("summary", frames=sink.frames, size=sink.size, sessions=len(peers))
        for peer in peers:
            peer.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    pub = sub.add_parser("publish")
    pub.add_argument("url")
    pub.add_argument("--key", required=True)
    pub.add_argument("--codec", choices=sorted(VIDEO_CAPS), default="h264")
    pub.add_argument("--color", default="0xffe01010", help="solid picture colour, 0xAARRGGBB")
    pub.add_argument("--width", type=int, default=320)
    pub.add_argument("--height", type=int, default=180)
    pub.add_argument("--offer-setup", choices=["active", "passive"])
    ply = sub.add_parser("play")
    ply.add_argument("url")
    ply.add_argument("--codec", choices=sorted(VIDEO_CAPS), default="h264")
    ply.add_argument("--seconds", type=float, default=6)
    ply.add_argument("--dump", help="write the last decoded I420 frame here")
    ply.add_argument("--audio", action="store_true", help="also receive the show's audio")
    ply.add_argument("--offer-setup", choices=["active", "passive"])
    srv = sub.add_parser("serve")
    srv.add_argument("--port", type=int, default=0)
    srv.add_argument("--key", required=True)
    srv.add_argument("--dump", help="write the newest decoded I420 frame here")
    args = parser.parse_args()
    Gst.init(None)
    GLib.set_prgname("showroom-gst-peer")
    {"publish": publish, "play": play, "serve": serve}[args.mode](args)


if __name__ == "__main__":
    sys.exit(main())
