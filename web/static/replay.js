// Replay and clip pages: the recording plays in a plain <video>; the product card follows
// the playback position (the featured chapter at the current time), and Buy adds to the
// same Redis-backed cart as the live page, against live stock.
import { api, el, liveEvents, money, pageData, setText, showNotice } from "./common.js";

const cfg = pageData();
const $ = (id) => document.getElementById(id);
const video = $("video");
const notice = $("notice");
const clip = cfg.clip || null; // clip page: one product, its clip id goes with each Buy
const recording = cfg.recording || null;
const chapters = recording ? recording.chapters.filter((c) => c.kind === "featured") : [];
const products = new Map(cfg.products.map((p) => [p.sku, { ...p, available: null }]));
const state = { sku: clip ? clip.sku : null };

function fmtTime(s) {
  const t = Math.max(0, Math.floor(s));
  return `${Math.floor(t / 60)}:${String(t % 60).padStart(2, "0")}`;
}

function stockText(p) {
  if (p.available === null) return { text: "", cls: "" };
  if (p.available <= 0) return { text: "Sold out", cls: "stock-out" };
  if (p.available <= 5) return { text: `Only ${p.available} left`, cls: "stock-low" };
  return { text: `${p.available} in stock`, cls: "" };
}

// The featured chapter at time t (the last one that started at or before it).
function chapterAt(t) {
  let found = null;
  for (const c of chapters) {
    const end = c.end_s === null ? Infinity : c.end_s;
    if (c.start_s <= t + 0.05 && t < end) found = c;
  }
  return found;
}

function renderCard() {
  const card = $("featured");
  const p = state.sku ? products.get(state.sku) : null;
  card.hidden = !p;
  card.dataset.sku = p ? p.sku : "";
  if (!p) return;
  const img = $("f-img");
  if (img.getAttribute("src") !== p.image_url) img.src = p.image_url;
  setText("f-name", p.name);
  setText("f-price", money(p.price, cfg.currency));
  const stock = stockText(p);
  const node = setText("f-stock", stock.text);
  node.className = stock.cls;
  const buy = $("f-buy");
  const soldOut = p.available !== null && p.available <= 0;
  buy.disabled = soldOut;
  buy.textContent = soldOut ? "Sold out" : `Buy · ${money(p.price, cfg.currency)}`;
  buy.setAttribute("aria-label", soldOut ? `${p.name} is sold out` : `Buy ${p.name}`);
}

function renderChapters() {
  const list = $("chapters");
  if (!list) return;
  $("chapters-empty").hidden = chapters.length > 0;
  list.replaceChildren(
    ...chapters.map((c, i) => {
      const p = products.get(c.sku) || { name: c.sku, price: "0", image_url: "" };
      const stock = stockText(p);
      return el(
        "li",
        { class: `product chapter${state.chapter === i ? " on-screen" : ""}`, "data-sku": c.sku },
        el("img", { src: p.image_url, alt: "", width: 56, height: 56, loading: "lazy" }),
        el(
          "div",
          {},
          el("div", { class: "name" }, p.name),
          el("div", {}, money(p.price, cfg.currency), stock.text ? " · " : "", el("span", { class: stock.cls }, stock.text)),
        ),
        el("button", { type: "button", class: "small seek", "data-start": c.start_s, "aria-label": `Watch ${p.name} from ${fmtTime(c.start_s)}`, onclick: () => seek(c.start_s) }, fmtTime(c.start_s)),
      );
    }),
  );
}

function seek(t) {
  video.currentTime = t + 0.05;
  video.play().catch(() => {});
}

function follow() {
  if (clip) return;
  const c = chapterAt(video.currentTime);
  const index = c ? chapters.indexOf(c) : null;
  const sku = c ? c.sku : null;
  if (sku === state.sku && index === state.chapter) return;
  state.sku = sku;
  state.chapter = index;
  renderCard();
  renderChapters();
}

async function loadStock() {
  const resp = await api("GET", `/api/shows/${encodeURIComponent(cfg.id)}`);
  if (!resp.ok) return;
  for (const p of resp.data.products || []) {
    if (products.has(p.sku)) products.get(p.sku).available = p.available;
  }
  renderCard();
  renderChapters();
}

function setCart(cart) {
  const count = (cart.items || []).reduce((n, i) => n + i.quantity, 0);
  setText("cart-summary", count ? `${count} item${count === 1 ? "" : "s"} held · ${money(cart.total, cart.currency || cfg.currency)}` : "Your cart is empty. Tap Buy to hold a product for you.");
  $("cart-go").hidden = !count;
}

const MESSAGES = {
  sold_out: "Sorry — that one is sold out.",
  limit_reached: "You already have the most of this item one person can buy.",
  not_found: "That product is not on sale any more.",
  rate_limited: "Too many taps at once — please try again in a moment.",
};

async function buy() {
  const sku = state.sku;
  const p = sku ? products.get(sku) : null;
  if (!p) return;
  const button = $("f-buy");
  button.disabled = true;
  const body = { show: cfg.id, sku, quantity: 1 };
  if (clip) body.clip = clip.id; // the clip gets the credit for this add (and its order)
  const resp = await api("POST", "/api/cart/items", body);
  button.disabled = false;
  if (resp.ok) {
    setCart(resp.data);
    showNotice(notice, `Added ${p.name} — it is held for you. Check out on the show page.`, "ok");
  } else {
    const code = resp.data && resp.data.error;
    showNotice(notice, MESSAGES[code] || (resp.data && resp.data.detail) || "We could not add that to your cart.", "bad");
    if (code === "sold_out") p.available = 0;
  }
  renderCard();
}

$("f-buy").addEventListener("click", buy);
video.addEventListener("timeupdate", follow);
video.addEventListener("seeked", follow);
video.addEventListener("loadeddata", follow);
// The first presented frame (ms since navigation), for the replay benchmark.
if (video.requestVideoFrameCallback) {
  video.requestVideoFrameCallback(() => (document.body.dataset.firstFrame = String(performance.now())));
}

// ?t=SECONDS (a link into a chapter): start playing there.
const startAt = Number(new URLSearchParams(location.search).get("t"));
if (Number.isFinite(startAt) && startAt > 0) {
  video.muted = true; // browsers only autoplay muted video
  const go = () => seek(Math.min(startAt, video.duration || startAt));
  // The metadata may already be in (a fast connection) before this module runs.
  if (video.readyState >= 1) go();
  else video.addEventListener("loadedmetadata", go, { once: true });
} else if (new URLSearchParams(location.search).has("t")) {
  video.muted = true;
  video.play().catch(() => {});
}

const share = $("share");
if (share) {
  share.addEventListener("click", async () => {
    const url = $("share-url").value;
    try {
      if (navigator.share) await navigator.share({ title: document.title, url });
      else {
        await navigator.clipboard.writeText(url);
        showNotice(notice, "Link copied.", "ok");
      }
    } catch (_) {
      $("share-url").select();
    }
  });
}

// Stock changes live while the replay plays: a sold-out product shows as such.
liveEvents(cfg.id, (event) => {
  if (event.type === "stock" && products.has(event.sku) && Number.isInteger(event.available)) {
    products.get(event.sku).available = event.available;
    renderCard();
    renderChapters();
  }
}, loadStock);

renderCard();
renderChapters();
loadStock();
api("GET", "/api/cart").then((resp) => resp.ok && setCart(resp.data));
