// Our own small WHEP player and WHIP publisher (RFC 9725 and the WHEP draft): one
// HTTP POST with the full offer (ICE gathered first, no trickle needed), the answer in
// the body, the session URL in Location, DELETE when leaving.

import { pageData } from "./common.js";

const GATHER_TIMEOUT_MS = 2500;

// The show's STUN/TURN servers (manifest [ice], rendered into the page: the browser needs
// them before it makes its offer). ?relay=1 forces TURN, to check a relay works.
function rtcConfig() {
  const relay = new URLSearchParams(window.location.search).get("relay") === "1";
  return {
    bundlePolicy: "max-bundle",
    iceServers: pageData().ice_servers || [],
    ...(relay ? { iceTransportPolicy: "relay" } : {}),
  };
}

function waitForIce(pc) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      pc.removeEventListener("icegatheringstatechange", check);
      clearTimeout(timer);
      resolve();
    };
    const check = () => pc.iceGatheringState === "complete" && done();
    const timer = setTimeout(done, GATHER_TIMEOUT_MS);
    pc.addEventListener("icegatheringstatechange", check);
  });
}

async function exchange(url, sdp, headers) {
  let resp;
  try {
    resp = await fetch(url, {
      method: "POST",
      headers: { "Content-Type": "application/sdp", ...headers },
      body: sdp,
    });
  } catch (err) {
    err.network = true; // no answer at all (e.g. redirected to an edge that just died)
    throw err;
  }
  if (resp.status !== 201) {
    const err = new Error(`${url} answered ${resp.status}`);
    err.status = resp.status;
    err.retryAfter = Number(resp.headers.get("Retry-After")) || 0;
    try {
      const body = await resp.json();
      err.detail = body.detail;
    } catch (_) { /* not JSON */ }
    throw err;
  }
  const session = resp.headers.get("Location");
  const answer = await resp.text();
  // resp.url: where the answer came from (the origin may send a viewer to an edge, 307).
  const base = new URL(resp.url || url, window.location.href);
  return { answer, location: session ? new URL(session, base).href : null };
}

function deleteSession(location, headers = {}) {
  if (!location) return Promise.resolve();
  // keepalive: the request survives the page being closed (pagehide).
  return fetch(location, { method: "DELETE", headers, keepalive: true }).catch(() => {});
}

// Plays a show: reconnects with exponential backoff (1 s .. 15 s) whenever the
// connection fails or the server is at capacity. The server may send the POST on to an
// edge node (307); when that brings no answer at all, the next attempt asks the
// server to serve this viewer itself (?direct=1), so a dead edge is never a dead end.
export class WhepPlayer {
  constructor(url, video, { onState = () => {} } = {}) {
    this.url = url;
    this.video = video;
    this.onState = onState;
    this.pc = null;
    this.location = null;
    this.attempt = 0;
    this.stopped = true;
    this.timer = null;
    this.startedAt = 0;
    this.firstFrameMs = null;
    this.playing = false;
    this.direct = false;
    this._leave = () => this.stop();
    video.addEventListener("playing", () => {
      this.playing = true;
      if (this.firstFrameMs === null && this.startedAt) this.firstFrameMs = performance.now() - this.startedAt;
      this.onState("playing");
    });
  }

  start() {
    if (!this.stopped) return;
    this.stopped = false;
    window.addEventListener("pagehide", this._leave);
    this._connect();
  }

  stop() {
    this.stopped = true;
    clearTimeout(this.timer);
    window.removeEventListener("pagehide", this._leave);
    this._teardown();
    this.onState("stopped");
  }

  _teardown() {
    const deleted = deleteSession(this.location);
    this.location = null;
    const pc = this.pc;
    if (pc) {
      pc.onconnectionstatechange = null;
      // Close once the DELETE is answered: closed first, the server may end the session
      // on its own and answer the DELETE 404.
      deleted.finally(() => pc.close());
      this.pc = null;
    }
    this.playing = false;
  }

  _retry(delayMs) {
    if (this.stopped) return;
    this._teardown();
    this.attempt += 1;
    const backoff = delayMs || Math.min(15000, 1000 * 2 ** Math.min(this.attempt - 1, 4));
    this.onState("reconnecting", backoff);
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this._connect(), backoff);
  }

  async _connect() {
    if (this.stopped) return;
    this.onState("connecting");
    this.startedAt = performance.now();
    const pc = new RTCPeerConnection(rtcConfig());
    this.pc = pc;
    pc.addTransceiver("video", { direction: "recvonly" });
    pc.addTransceiver("audio", { direction: "recvonly" });
    const stream = new MediaStream();
    pc.ontrack = (ev) => {
      stream.addTrack(ev.track);
      if (this.video.srcObject !== stream) this.video.srcObject = stream;
      this.video.play().catch(() => {});
    };
    let failTimer = null;
    pc.onconnectionstatechange = () => {
      if (pc !== this.pc) return;
      const s = pc.connectionState;
      clearTimeout(failTimer);
      if (s === "connected") {
        this.attempt = 0;
        this.direct = false;
        this.onState("connected");
      } else if (s === "failed" || s === "closed") {
        this._retry();
      } else if (s === "disconnected") {
        // Often recovers by itself within a few seconds; give it that chance.
        failTimer = setTimeout(() => pc === this.pc && pc.connectionState !== "connected" && this._retry(), 4000);
      }
    };
    try {
      await pc.setLocalDescription(await pc.createOffer());
      await waitForIce(pc);
      const url = new URL(this.url, window.location.href);
      if (this.direct) url.searchParams.set("direct", "1");
      const { answer, location } = await exchange(url.href, pc.localDescription.sdp, {});
      if (pc !== this.pc) {
        deleteSession(location);
        return;
      }
      this.location = location;
      await pc.setRemoteDescription({ type: "answer", sdp: answer });
    } catch (err) {
      if (pc !== this.pc) return;
      if (err.network) this.direct = true;
      this._retry(err.retryAfter ? err.retryAfter * 1000 : 0);
    }
  }

  // How long a frame waits in this browser before it is shown (jitter buffer +
  // a decode/render allowance), from the receiver's own statistics.
  async playoutDelayMs() {
    const fallback = 150;
    if (!this.pc) return fallback;
    try {
      const stats = await this.pc.getStats();
      for (const report of stats.values()) {
        if (report.type === "inbound-rtp" && report.kind === "video" && report.jitterBufferEmittedCount) {
          return (1000 * report.jitterBufferDelay) / report.jitterBufferEmittedCount + 16;
        }
      }
    } catch (_) { /* closed meanwhile */ }
    return fallback;
  }

  async framesDecoded() {
    if (!this.pc) return 0;
    const stats = await this.pc.getStats();
    for (const report of stats.values()) {
      if (report.type === "inbound-rtp" && report.kind === "video") return report.framesDecoded || 0;
    }
    return 0;
  }
}

// Publishes a camera (MediaStream) to a show with its stream key.
export class WhipPublisher {
  constructor(url, streamKey, { onState = () => {} } = {}) {
    this.url = url;
    this.auth = { Authorization: `Bearer ${streamKey}` };
    this.onState = onState;
    this.pc = null;
    this.location = null;
    this._leave = () => this.stop();
  }

  async start(stream) {
    const pc = new RTCPeerConnection(rtcConfig());
    this.pc = pc;
    for (const track of stream.getTracks()) pc.addTransceiver(track, { direction: "sendonly", streams: [stream] });
    pc.onconnectionstatechange = () => this.onState(pc.connectionState);
    await pc.setLocalDescription(await pc.createOffer());
    await waitForIce(pc);
    const { answer, location } = await exchange(this.url, pc.localDescription.sdp, this.auth);
    this.location = location;
    await pc.setRemoteDescription({ type: "answer", sdp: answer });
    window.addEventListener("pagehide", this._leave);
  }

  stop() {
    window.removeEventListener("pagehide", this._leave);
    deleteSession(this.location, this.auth);
    this.location = null;
    if (this.pc) {
      this.pc.onconnectionstatechange = null;
      this.pc.getSenders().forEach((s) => s.track && s.track.stop());
      this.pc.close();
      this.pc = null;
    }
    this.onState("stopped");
  }
}
