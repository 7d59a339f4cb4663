// Host page: the recording's state (a warning when it stopped, e.g. the disk is nearly
// full: the show itself goes on) and the show's clips with their views, add-to-carts and
// orders.
import { api, el, liveEvents, pageData, setText, showNotice } from "./common.js";

const cfg = pageData();
const $ = (id) => document.getElementById(id);
const show = encodeURIComponent(cfg.id);
const names = new Map((cfg.products || []).map((p) => [p.sku, p.name]));

function fmt(s) {
  const t = Math.max(0, Math.round(s));
  return `${Math.floor(t / 60)}:${String(t % 60).padStart(2, "0")}`;
}

function renderRecorder(body) {
  const rec = body.recorder || {};
  const status = $("rec-status");
  const current = (body.recordings || [])[0];
  if (rec.state === "recording") {
    status.className = "";
    status.textContent = `Recording · ${fmt(rec.duration_s || 0)}`;
  } else if (rec.state === "stopped") {
    status.className = "error";
    status.textContent = rec.reason === "disk_full"
      ? "Recording stopped: the server's disk is nearly full. The show goes on; free some space for the next recording."
      : "Recording stopped after an error. The show goes on.";
  } else {
    status.className = "muted";
    status.textContent = "Recording starts when the show goes live.";
  }
  const latest = (body.recordings || []).find((r) => r.ended_at);
  $("rec-latest").hidden = !latest;
  if (latest) {
    const link = $("rec-latest-link");
    link.href = latest.page_url;
    link.textContent = `${new Date(latest.started_at).toLocaleString()} · ${fmt(latest.duration_s)}`;
  }
  return current;
}

function renderClips(clips) {
  $("clips").replaceChildren(
    ...clips.map((c) =>
      el(
        "tr",
        { "data-clip": c.id },
        el("td", {}, el("a", { href: c.page_url }, names.get(c.sku) || c.sku)),
        el("td", { class: "num" }, fmt(c.duration_s)),
        el("td", { class: "num" }, String(c.views)),
        el("td", { class: "num" }, String(c.add_to_carts)),
        el("td", { class: "num" }, String(c.orders)),
      ),
    ),
  );
}

async function load() {
  const [recs, clips] = await Promise.all([
    api("GET", `/api/shows/${show}/recordings`),
    api("GET", `/api/shows/${show}/clips`),
  ]);
  if (recs.ok) renderRecorder(recs.data);
  if (clips.ok) renderClips(clips.data.clips || []);
}

liveEvents(cfg.id, (ev) => {
  if (ev.type === "recording") {
    if (ev.state === "stopped") {
      const text = ev.reason === "disk_full"
        ? `Recording stopped: only ${ev.free_mb} MB free on the server's disk. The show goes on.`
        : "Recording stopped after an error. The show goes on.";
      showNotice($("notice"), text, "bad");
    }
    load();
  } else if (ev.type === "clip" || ev.type === "order") {
    load();
  }
}, load);
load();
setInterval(load, 5000);
setText("rec-status", "Recording starts when the show goes live.");
