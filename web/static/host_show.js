// Host page: the run of show (one Next button, N on the keyboard), preflight and the
// staff-action log. Everything comes from the API; the page keeps no state of its own.
import { api, el, liveEvents, pageData, setText, timeOfDay } from "./common.js";

const data = pageData();
const base = `/api/shows/${encodeURIComponent(data.id)}`;
let cues = { cues: [], next: 0, done: true };

function renderCues() {
  const list = document.getElementById("cue-list");
  document.getElementById("cue-empty").hidden = cues.cues.length > 0;
  list.replaceChildren(
    ...cues.cues.map((cue) =>
      el(
        "li",
        { class: cue.index < cues.next ? "done" : cue.index === cues.next ? "current" : "", dataset: { index: cue.index } },
        cue.label,
      ),
    ),
  );
  const next = cues.cues[cues.next];
  setText("cue-next-label", next ? next.label : cues.cues.length ? "the end of the run of show" : "–");
  document.getElementById("cue-next").disabled = !next;
}

async function loadCues() {
  const resp = await api("GET", `${base}/cues`);
  if (resp.ok) {
    cues = resp.data;
    renderCues();
  }
}

async function next() {
  const button = document.getElementById("cue-next");
  if (button.disabled) return;
  button.disabled = true;
  const resp = await api("POST", `${base}/cues/next`, { expect: cues.next });
  setText("cue-error", resp.ok ? "" : resp.data.detail || "That cue did not run.");
  await loadCues();
}

document.getElementById("cue-next").addEventListener("click", next);
document.addEventListener("keydown", (event) => {
  const typing = event.target.closest("input, textarea, select, [contenteditable]");
  if (!typing && !event.ctrlKey && !event.metaKey && !event.altKey && event.key.toLowerCase() === "n") {
    event.preventDefault();
    next();
  }
});

async function loadPreflight() {
  const badge = document.getElementById("preflight-overall");
  badge.textContent = "checking…";
  const resp = await api("GET", `${base}/preflight`);
  if (!resp.ok) {
    badge.textContent = "unavailable";
    return;
  }
  badge.textContent = resp.data.overall;
  badge.className = `badge level-${resp.data.overall}`;
  document.getElementById("preflight").replaceChildren(
    ...resp.data.checks.map((c) =>
      el("li", { class: `level-${c.level}` }, el("strong", {}, `${c.name}: `), el("span", { class: "visually-hidden" }, `${c.level}. `), c.detail),
    ),
  );
}
document.getElementById("preflight-refresh").addEventListener("click", loadPreflight);

async function loadAudit() {
  const resp = await api("GET", `${base}/audit`);
  if (!resp.ok) return;
  document.getElementById("audit-section").hidden = false;
  document.getElementById("audit").replaceChildren(
    ...resp.data.entries.slice(0, 30).map((e) => el("li", {}, `${timeOfDay(e.ts)} ${e.who}: ${e.action}${e.target ? ` ${e.target}` : ""}`)),
  );
}

// --- auction: start, watch bids live, cancel ---------------------------------------
let auction = null;
function renderAuction() {
  const running = auction && auction.status === "running";
  document.getElementById("auction-cancel").hidden = !running;
  document.getElementById("auction-form").hidden = running;
  let text = "No auction running.";
  if (auction) {
    const bid = auction.current_bid ? `${auction.current_bid} by ${auction.leader}` : `no bids yet (starts at ${auction.start_price})`;
    text = running
      ? `${auction.sku}: ${bid} · ${auction.bids} bids · ends ${timeOfDay(auction.ends_at)}`
      : auction.status === "sold" ? `Last: SOLD to ${auction.winner} for ${auction.sold_for}` : `Last: ${auction.status}`;
  }
  setText("host-auction", text);
}
async function loadAuction() {
  const resp = await api("GET", base); // the show state carries the current auction
  auction = resp.ok ? resp.data.auction || null : null;
  renderAuction();
}
document.getElementById("auction-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const v = (id) => document.getElementById(id).value.trim();
  const resp = await api("POST", `${base}/auctions`, {
    sku: v("auction-sku"),
    start_price: v("auction-start"),
    increment: v("auction-step"),
    duration_s: Number(v("auction-duration")),
    extend_s: Number(v("auction-extend")),
    sudden_death: document.getElementById("auction-sudden").checked,
  });
  setText("auction-error", resp.ok ? "" : resp.data.detail || "The auction did not start.");
  if (resp.ok) {
    auction = resp.data;
    renderAuction();
  }
});
document.getElementById("auction-cancel").addEventListener("click", async () => {
  if (!auction) return;
  const resp = await api("DELETE", `/api/auctions/${encodeURIComponent(auction.id)}`);
  setText("auction-error", resp.ok ? "" : resp.data.detail || "Could not cancel.");
  loadAuction();
});

liveEvents(data.id, (event) => {
  if (event.type === "auction" && event.auction) {
    auction = event.auction;
    renderAuction();
  }
  if (event.type === "cue") loadCues();
  if (["cue", "featured", "drop", "ticker", "pinned", "order", "auction"].includes(event.type)) loadAudit();
});
loadCues();
loadAuction();
loadPreflight();
loadAudit();
