// Viewer page: the live picture fills the screen; Buy, chat and hearts float over the part
// of the picture the product card does not use; cart, checkout and order status open as
// sheets over the video, which keeps playing.
import { api, clock, ClockOffset, el, epochMs, liveEvents, loadStripe, money, pageData, setText, timeOfDay } from "./common.js";
import { WhepPlayer } from "./webrtc.js";

const cfg = pageData();
const $ = (id) => document.getElementById(id);
const showPath = `/api/shows/${encodeURIComponent(cfg.id)}`;
const ORDER_KEY = `showroom:order:${cfg.id}`;
const NAME_KEY = "showroom:chat-name";
const CHAT_KEEP = 100; // messages kept in the list

const state = {
  show: null, // GET /api/shows/{show}
  products: new Map(), // sku -> product (with live `available`)
  featured: null, // sku shown on the card (follows the picture)
  drop: null,
  live: false,
  everLive: false,
  cart: { items: [], total: "0.00", currency: cfg.currency },
  limited: new Set(), // skus the server said this buyer has reached the limit of
  order: null, // {order_id, amount, currency, number, status, items, pay_by}
  pendingSwitch: null,
  name: localStorage.getItem(NAME_KEY) || "",
  pendingChat: null, // text waiting for a display name
  slowUntil: 0,
};
const offset = new ClockOffset();

// --- notices: toasts out of the layout; a keyed one stays until its problem is gone ----
const toasts = $("notice");
function toast(text, kind = "", { key = "", ms = 6000 } = {}) {
  if (key) clearToast(key);
  const node = el("div", { class: `toast ${kind}`.trim(), "data-key": key || null }, text);
  toasts.prepend(node);
  while (toasts.children.length > 3) toasts.lastElementChild.remove();
  if (!key) setTimeout(() => node.remove(), kind === "bad" ? Math.max(ms, 8000) : ms);
  return node;
}
function clearToast(key) {
  for (const node of toasts.querySelectorAll(`[data-key="${CSS.escape(key)}"]`)) node.remove();
}

// Every API call of the page: a server that is briefly away (Redis restarting: 503
// "unavailable", or no network) gets one lasting notice, cleared as soon as it is back.
let recovery = null;
async function call(method, url, body) {
  const resp = await api(method, url, body);
  if (resp.status === 0 || (resp.status === 503 && resp.data.error === "unavailable")) {
    toast(resp.status === 0 ? "You are offline — we'll carry on when the connection is back." : "The shop is briefly unavailable — retrying…", "bad", { key: "away" });
    watchRecovery();
  } else if (resp.status && resp.status < 500) {
    clearToast("away");
  }
  return resp;
}
function watchRecovery() {
  if (recovery) return;
  recovery = setInterval(async () => {
    const resp = await api("GET", "/healthz");
    if (resp.ok) {
      clearInterval(recovery);
      recovery = null;
      clearToast("away");
      loadState();
      loadCart();
    }
  }, 1500);
}

// --- video ---------------------------------------------------------------------------
const video = $("video");
// The picture comes from this server, or from the WHEP service the manifest names
// ([show.playback]) for an audience one origin could not serve; cart and chat stay here.
const whepUrl = cfg.playback_whep_url || `/whep/${encodeURIComponent(cfg.id)}`;
const player = new WhepPlayer(whepUrl, video, { onState: renderStage });
let joinReported = false;

function renderStage(playerState) {
  const box = $("stage-state");
  if (playerState === "playing" && !joinReported && player.firstFrameMs !== null) {
    joinReported = true;
    api("POST", `${showPath}/stats`, { join_ms: Math.round(player.firstFrameMs) });
  }
  if (playerState === "playing") placeOverlays();
  let title = "", sub = "";
  const ended = !state.live && !state.everLive && state.show && state.show.latest_replay;
  if (ended) {
    title = "This show has ended";
    sub = "Missed it? The replay keeps every product buyable.";
  } else if (!state.live) {
    title = state.everLive ? "We'll be right back" : "Starting soon";
    sub = state.everLive ? "The host stepped away for a moment. Stay tuned." : "The show will start here. Stay on this page.";
  } else if (!player.playing) {
    title = "Connecting…";
    sub = "Getting the live picture.";
  }
  box.hidden = !title;
  // A playing picture while offline is the server's own slate ("We'll be right back"):
  // one break screen, so ours is only announced to screen readers.
  box.classList.toggle("on-slate", Boolean(title) && player.playing);
  setText("stage-title", title);
  setText("stage-sub", sub);
  // Once a show has ended (its recording is finished), point to the replay.
  const replay = state.show && state.show.latest_replay;
  const banner = $("replay-banner");
  banner.hidden = state.live || !replay;
  if (replay) $("replay-link").href = replay.page_url;
}

const unmute = $("unmute");
unmute.addEventListener("click", () => {
  video.muted = !video.muted;
  if (!video.muted) video.play().catch(() => {});
  unmute.setAttribute("aria-pressed", String(!video.muted));
  unmute.textContent = video.muted ? "Sound off" : "Sound on";
  unmute.setAttribute("aria-label", video.muted ? "Sound off · tap to unmute" : "Sound on · tap to mute");
});

// --- where our overlays go -----------------------------------------------------------
// The card (and its QR code) burned into the picture are at fixed fractions of the frame
// (overlays/layout.py, sent by the server). We find the largest band of the screen they
// leave free and put the chat and hearts there (portrait: a horizontal band; landscape:
// a vertical band beside the card, which also takes the dock).
const playerBox = $("player");
const MODES = { desktop: matchMedia("(min-width: 900px) and (min-height: 560px)"), landscape: matchMedia("(orientation: landscape) and (max-height: 559px)") };

function pictureRect() {
  const r = video.getBoundingClientRect();
  const vw = video.videoWidth || cfg.video.width;
  const vh = video.videoHeight || cfg.video.height;
  const scale = Math.min(r.width / vw, r.height / vh);
  const w = vw * scale, h = vh * scale;
  const landscapeLayout = MODES.landscape.matches || MODES.desktop.matches;
  const x = r.left + (r.width - w) / 2;
  const y = landscapeLayout ? r.top + (r.height - h) / 2 : r.top; // portrait: object-position top
  return { x, y, w, h };
}

function obstacles() {
  const p = pictureRect();
  return Object.values(cfg.picture || {}).map((b) => ({ x: p.x + b.x * p.w, y: p.y + b.y * p.h, w: b.w * p.w, h: b.h * p.h }));
}

// The largest gap in [lo, hi] left by the intervals.
function largestGap(lo, hi, intervals) {
  const spans = intervals.map(([a, b]) => [Math.max(lo, a), Math.min(hi, b)]).filter(([a, b]) => b > a).sort((s, t) => s[0] - t[0]);
  let best = [lo, lo], cursor = lo;
  for (const [a, b] of spans) {
    if (a - cursor > best[1] - best[0]) best = [cursor, a];
    cursor = Math.max(cursor, b);
  }
  if (hi - cursor > best[1] - best[0]) best = [cursor, hi];
  return best;
}

function placeOverlays() {
  const mode = MODES.desktop.matches ? "desktop" : MODES.landscape.matches ? "landscape" : "portrait";
  playerBox.dataset.mode = mode;
  if (mode !== "portrait") playerBox.classList.remove("dock-over");
  const style = playerBox.style;
  const margin = 6;
  if (mode === "portrait") {
    // The dock may float over the picture's bottom if the card stays clear of it.
    const dockH = $("dock").getBoundingClientRect().height;
    const stageTop = $("stage").getBoundingClientRect().top;
    const vw = video.videoWidth || cfg.video.width, vh = video.videoHeight || cfg.video.height;
    const fullH = vh * Math.min(window.innerWidth / vw, (window.innerHeight - stageTop) / vh);
    const lowest = Math.max(...Object.values(cfg.picture || {}).map((b) => b.y + b.h), 0);
    const over = stageTop + fullH * lowest + margin < window.innerHeight - dockH;
    if (playerBox.classList.contains("dock-over") !== over) {
      playerBox.classList.toggle("dock-over", over);
      requestAnimationFrame(placeOverlays);
      return;
    }
    const top = $("stage").getBoundingClientRect().top;
    const bottom = $("dock").getBoundingClientRect().top;
    const [a, b] = largestGap(top, bottom, obstacles().map((o) => [o.y - margin, o.y + o.h + margin]));
    style.setProperty("--chat-top", `${a}px`);
    style.setProperty("--chat-h", `${Math.max(0, b - a)}px`);
    // Notices sit at the bottom of the same free band: over chat for a moment, never the card.
    style.setProperty("--toast-bottom", `${window.innerHeight - b + 8}px`);
  } else if (mode === "landscape") {
    const width = playerBox.clientWidth;
    const [a, b] = largestGap(0, width, obstacles().map((o) => [o.x - margin, o.x + o.w + margin]));
    const bandW = Math.min(b - a, 420);
    const x = b === width && a > 0 ? b - bandW : a;
    style.setProperty("--band-x", `${x}px`);
    style.setProperty("--band-w", `${bandW}px`);
    const head = document.querySelector(".viewer-bar").getBoundingClientRect().bottom;
    const dockTop = $("dock").getBoundingClientRect().top;
    style.setProperty("--chat-top", `${head}px`);
    style.setProperty("--chat-h", `${Math.max(0, dockTop - head)}px`);
  }
}
window.addEventListener("resize", placeOverlays);
video.addEventListener("loadedmetadata", placeOverlays);
video.addEventListener("resize", placeOverlays);
new ResizeObserver(placeOverlays).observe($("dock"));

// --- products and the featured card ---------------------------------------------------
function stockText(p) {
  if (p.available <= 0) return { text: "Sold out", cls: "stock-out" };
  if (p.available <= 5) return { text: `Only ${p.available} left`, cls: "stock-low" };
  return { text: `${p.available} in stock`, cls: "" };
}

function inCart(sku) {
  return state.cart.items.filter((i) => i.sku === sku).reduce((n, i) => n + i.quantity, 0);
}

// What the Buy button can do before it is tapped: sold out, or this buyer's limit.
function buyState(p) {
  if (p.available <= 0) return { ok: false, label: "Sold out", why: `${p.name} is sold out` };
  const limit = activeDrop(p.sku)?.per_buyer_limit || p.per_buyer_limit;
  if (state.limited.has(p.sku) || (limit && inCart(p.sku) >= limit)) {
    return { ok: false, label: "Limit reached", why: `You have the most of ${p.name} one person can buy` };
  }
  return { ok: true };
}

function renderProducts() {
  const list = $("products");
  const focused = document.activeElement && list.contains(document.activeElement) ? document.activeElement.dataset.sku : null;
  list.replaceChildren();
  for (const p of state.products.values()) {
    const stock = stockText(p);
    const highlighted = cfg.highlight === p.sku;
    // A drop shows on its product here too: the host may run it on a product that is
    // not the one on screen.
    const drop = activeDrop(p.sku);
    const can = buyState(p);
    const item = el(
      "li",
      { class: `product${highlighted ? " highlight" : ""}${state.featured === p.sku ? " on-screen" : ""}`, id: `product-${p.sku}`, "aria-current": highlighted ? "true" : null },
      el("img", { src: p.image_url, alt: "", width: 56, height: 56, loading: "lazy" }),
      el(
        "div",
        {},
        el("div", { class: "name" }, p.name),
        el("div", {}, money(drop?.price || p.price, p.currency), " · ", el("span", { class: stock.cls }, stock.text)),
        drop ? el("div", { class: "drop drop-line", id: `pdrop-${p.sku}` }, "Drop: ", el("strong", {}, String(drop.remaining)), " left · ends in ", el("time", {}, clock(epochMs(drop.ends_at) - Date.now()))) : null,
      ),
      el("button", { type: "button", class: "small", "data-sku": p.sku, disabled: !can.ok, "aria-label": can.ok ? `Add ${p.name} to cart` : can.why, onclick: () => buy(p.sku) }, can.ok ? "Add" : can.label),
    );
    list.append(item);
  }
  if (focused) list.querySelector(`button[data-sku="${CSS.escape(focused)}"]`)?.focus();
}

function renderFeatured() {
  const card = $("featured");
  const p = state.featured ? state.products.get(state.featured) : null;
  const wasHidden = card.hidden;
  card.hidden = !p;
  card.dataset.sku = p ? p.sku : "";
  if (wasHidden !== card.hidden) placeOverlays();
  if (!p) return;
  const img = $("f-img");
  if (img.getAttribute("src") !== p.image_url) img.src = p.image_url;
  setText("f-name", p.name);
  const stock = stockText(p);
  const stockNode = setText("f-stock", stock.text);
  stockNode.className = stock.cls;
  // During a drop its price (if it has one) is what the buyer pays; the regular one is
  // struck through, as on the card in the picture.
  const drop = activeDrop(p.sku);
  const price = drop?.price || p.price;
  setText("f-price", money(price, p.currency));
  const was = $("f-was");
  was.hidden = !(drop?.price && drop.price !== p.price);
  setText(was, was.hidden ? "" : money(p.price, p.currency));
  const buyBtn = $("f-buy");
  const can = buyState(p);
  buyBtn.disabled = !can.ok;
  buyBtn.classList.toggle("unavailable", !can.ok);
  buyBtn.textContent = can.ok ? `Buy · ${money(price, p.currency)}` : can.label;
  buyBtn.setAttribute("aria-label", can.ok ? `Buy ${p.name}` : can.why);
  renderDrop();
}

function activeDrop(sku) {
  const d = state.drop;
  const endsAt = d ? epochMs(d.ends_at) : null;
  return d && d.sku === sku && endsAt && endsAt > Date.now() ? d : null;
}

function renderDrop() {
  const box = $("drop");
  const d = state.drop;
  const endsAt = d ? epochMs(d.ends_at) : null;
  const running = Boolean(d && endsAt && endsAt > Date.now());
  const active = running && (!state.featured || d.sku === state.featured);
  renderDropLine(running ? d : null, endsAt);
  box.hidden = !active;
  if (!active) return;
  setText("drop-left", d.remaining);
  setText("drop-time", clock(endsAt - Date.now()));
  setText("drop-price", d.price ? ` at ${money(d.price, cfg.currency)}` : "");
}

// The product list's drop line: its countdown ticks in place; the list is rebuilt only
// when a drop starts or ends (rebuilding every second would steal keyboard focus).
function renderDropLine(d, endsAt) {
  const lines = document.querySelectorAll(".drop-line");
  const line = d ? document.getElementById(`pdrop-${d.sku}`) : null;
  if ((d && !line && state.products.has(d.sku)) || lines.length > (line ? 1 : 0)) {
    renderProducts();
    return;
  }
  if (!line) return;
  setText(line.querySelector("strong"), d.remaining);
  setText(line.querySelector("time"), clock(endsAt - Date.now()));
}

function applyFeatured(sku) {
  state.featured = sku || null;
  renderFeatured();
  renderProducts();
}

// Switch the card when the picture switches: the event says when the first composed
// frame with the change left the server (media_ts); this browser shows that frame
// after the network and its own jitter buffer.
async function scheduleAtPicture(event, apply) {
  if (!event.media_ts || !player.playing) {
    apply();
    return;
  }
  const playout = await player.playoutDelayMs();
  const showAt = Number(event.media_ts) + offset.value + playout;
  const wait = Math.min(3000, Math.max(0, showAt - Date.now()));
  if (state.pendingSwitch) clearTimeout(state.pendingSwitch);
  state.pendingSwitch = setTimeout(() => {
    state.pendingSwitch = null;
    apply();
  }, wait);
}

// --- sheets ---------------------------------------------------------------------------
const SHEETS = ["shop", "cart", "checkout", "order", "name-sheet"];
let sheetOpener = null;
function openSheet(id, focusTarget) {
  if (!document.getElementById(id).hidden && !focusTarget) return;
  sheetOpener = sheetOpener || document.activeElement;
  for (const other of SHEETS) if (other !== id) $(other).hidden = true;
  const sheet = $(id);
  sheet.hidden = false;
  document.body.classList.toggle("sheet-open", id !== "shop" || !MODES.desktop.matches);
  (focusTarget || sheet).focus({ preventScroll: true });
}
function closeSheet(id) {
  $(id).hidden = true;
  document.body.classList.remove("sheet-open");
  if (sheetOpener && document.contains(sheetOpener)) sheetOpener.focus({ preventScroll: true });
  sheetOpener = null;
}
for (const id of SHEETS) {
  $(id).querySelector("[data-close]")?.addEventListener("click", () => closeSheet(id));
}
document.addEventListener("keydown", (ev) => {
  if (ev.key !== "Escape") return;
  const open = SHEETS.find((id) => !$(id).hidden && !(id === "shop" && MODES.desktop.matches));
  if (open) closeSheet(open);
});
$("shop-open").addEventListener("click", () => openSheet("shop"));
$("cart-bar-go").addEventListener("click", () => {
  if (!state.cart.items.length && state.order && !inCheckout()) openSheet("order");
  else openSheet("cart");
});

// --- cart --------------------------------------------------------------------------
const MESSAGES = {
  sold_out: "Sorry — that one just sold out.",
  limit_reached: "You already have the most of this item one person can buy.",
  cart_empty: "Your cart is empty — your holds may have expired. Add the product again.",
  not_found: "That product is not available in this show.",
  rate_limited: "Too many taps at once — please try again in a moment.",
};

function errorText(resp, fallback) {
  const code = resp.data && resp.data.error;
  const detail = resp.data && resp.data.detail;
  if (code === "limit_reached" && detail) return `Limit reached: ${detail}`;
  return MESSAGES[code] || detail || fallback;
}

async function buy(sku) {
  const p = state.products.get(sku);
  const buttons = document.querySelectorAll(`button[data-sku="${CSS.escape(sku)}"], #f-buy`);
  buttons.forEach((b) => (b.disabled = true));
  const resp = await call("POST", "/api/cart/items", { show: cfg.id, sku, quantity: 1 });
  buttons.forEach((b) => (b.disabled = false));
  if (resp.ok) {
    setCart(resp.data);
    toast(`Added ${p ? p.name : sku} — held for you for ${clock(cfg.hold_seconds * 1000)}.`, "ok");
  } else if (resp.status && resp.status !== 503) {
    toast(errorText(resp, "We could not add that to your cart."), "bad");
    if (resp.data.error === "sold_out" && p) p.available = 0;
    if (resp.data.error === "limit_reached") state.limited.add(sku);
  }
  renderFeatured();
  renderProducts();
}

async function removeItem(sku) {
  const resp = await call("DELETE", `/api/cart/items/${encodeURIComponent(sku)}`);
  if (resp.ok) {
    state.limited.delete(sku);
    setCart(resp.data);
  } else if (resp.status && resp.status !== 503) toast(errorText(resp, "We could not change your cart."), "bad");
}

async function loadCart() {
  const resp = await call("GET", "/api/cart");
  if (resp.ok) setCart(resp.data);
}

function setCart(cart) {
  state.cart = cart && Array.isArray(cart.items) ? cart : { items: [], total: "0.00", currency: cfg.currency };
  renderCart();
  renderFeatured();
}

// During checkout the cart's holds belong to the order: the cart keeps showing them (as
// held for the order, until its payment deadline) so nothing seems to vanish.
function inCheckout() {
  return Boolean(state.order && ["pending_payment", "payment_failed"].includes(state.order.status));
}

function cartLines() {
  if (state.cart.items.length || !inCheckout()) return { items: state.cart.items, total: state.cart.total, currency: state.cart.currency, held: false };
  const o = state.order;
  return { items: (o.items || []).map((i) => ({ ...i, hold_expires_at: o.pay_by })), total: o.amount, currency: o.currency, held: true };
}

function renderCart() {
  const { items, total, currency, held } = cartLines();
  const list = $("cart-items");
  list.replaceChildren();
  for (const item of items) {
    list.append(
      el(
        "li",
        { class: "cart-item", "data-sku": item.sku },
        el("span", { class: "name" }, `${item.quantity} × ${item.name}`),
        held
          ? el("span", { class: "actions muted" }, money(Number(item.unit_price || 0) * item.quantity, currency))
          : el(
              "span",
              { class: "actions" },
              el("button", { type: "button", class: "small", "aria-label": `Add one more ${item.name}`, onclick: () => buy(item.sku) }, "+1"),
              el("button", { type: "button", class: "small", "aria-label": `Remove ${item.name} from cart`, onclick: () => removeItem(item.sku) }, "Remove"),
            ),
        el("span", { class: "hold", "data-expires": epochMs(item.hold_expires_at) || "", "data-order": held ? "1" : null }, ""),
      ),
    );
  }
  const empty = items.length === 0;
  $("cart-empty").hidden = !empty;
  $("cart-pending").hidden = !held;
  setText("cart-pending", held ? `In checkout: order${state.order.number ? " #" + state.order.number : ""} keeps these for you until you pay.` : "");
  $("cart-total-row").hidden = empty;
  $("checkout-open").hidden = empty || held;
  $("checkout-resume").hidden = !held;
  setText("cart-total", money(total || 0, currency));
  const count = items.reduce((n, i) => n + i.quantity, 0);
  setText("cart-bar-text", empty ? (state.order && !inCheckout() ? "Your order" : "Cart empty") : `${count} item${count === 1 ? "" : "s"} · ${money(total, currency)}`);
  setText("cart-bar-go", empty && state.order && !inCheckout() ? "Order status" : "View cart");
  if (empty && !$("checkout").hidden && !state.order) $("checkout").hidden = true;
  tickHolds();
}

let expiryRefresh = null;
function tickHolds() {
  let soonest = null;
  for (const node of document.querySelectorAll(".cart-item .hold")) {
    const expires = Number(node.dataset.expires);
    if (!expires) continue;
    const left = expires - Date.now();
    soonest = soonest === null ? left : Math.min(soonest, left);
    node.classList.toggle("soon", left < 60000);
    const what = node.dataset.order ? "Held for your order" : "Held for you";
    node.textContent = left > 0 ? `${what} · ${clock(left)}` : "Hold expired";
    if (left <= 0 && !expiryRefresh && !node.dataset.order) {
      const name = node.parentElement.querySelector(".name").textContent;
      toast(`Your hold expired: ${name} went back on sale. Add it again if it is still available.`, "bad");
      expiryRefresh = setTimeout(async () => {
        expiryRefresh = null;
        loadCart();
      }, 1500);
    }
  }
  // The hold timer in the cart bar, with a warning in its last minute.
  const bar = $("cart-bar-hold");
  bar.classList.toggle("soon", soonest !== null && soonest < 60000 && soonest > 0);
  setText(bar, soonest === null ? "" : soonest > 0 ? `${soonest < 60000 ? "Hurry · " : "Held "}${clock(soonest)}` : "Expired");
  if (soonest !== null && soonest > 0 && soonest < 60000 && !bar.dataset.warned) {
    bar.dataset.warned = "1";
    toast(inCheckout() ? "Less than a minute left to pay for your order." : "Less than a minute left on your hold — check out to keep it.", "", { key: "hold-soon", ms: 8000 });
  } else if (soonest === null || soonest >= 60000) delete bar.dataset.warned;
  renderDrop();
  renderDeadline();
  document.body.classList.toggle("sheet-open", SHEETS.some((id) => !$(id).hidden && !(id === "shop" && MODES.desktop.matches)));
}
setInterval(tickHolds, 1000);

// --- checkout ------------------------------------------------------------------------
$("checkout-open").addEventListener("click", openCheckout);
$("checkout-resume").addEventListener("click", () => resumePayment(state.order));

function renderSummary(items, amount, currency) {
  $("summary-items").replaceChildren(
    ...(items || []).map((i) => el("li", {}, el("span", {}, `${i.quantity} × ${i.name}`), el("span", {}, money(Number(i.unit_price || 0) * i.quantity, currency)))),
  );
  setText("summary-total", money(amount || 0, currency));
}

function renderDeadline() {
  const node = $("summary-deadline");
  const payBy = inCheckout() ? epochMs(state.order.pay_by) : null;
  node.hidden = !payBy;
  if (!payBy) return;
  const left = payBy - Date.now();
  node.classList.toggle("soon", left < 60000);
  node.textContent = left > 0 ? `Pay by ${timeOfDay(payBy)} · ${clock(left)} left to pay, then the items go back on sale.` : "The time to pay has run out.";
}

function openCheckout() {
  renderSummary(state.cart.items, state.cart.total, state.cart.currency);
  $("buyer-form").hidden = false;
  $("card-form").hidden = true;
  $("stripe-form").hidden = true;
  $("checkout-cancel").hidden = true;
  setText("checkout-back", "Back to cart");
  openSheet("checkout", $("buyer-name"));
  renderDeadline();
}

$("checkout-back").addEventListener("click", () => openSheet("cart"));
// Cancel asks once more on the button itself (no pop-up over the video).
let cancelArmed = null;
$("checkout-cancel").addEventListener("click", async () => {
  const button = $("checkout-cancel");
  if (!state.order) return;
  if (!cancelArmed) {
    button.textContent = "Tap again to cancel — the items go back on sale";
    cancelArmed = setTimeout(() => {
      cancelArmed = null;
      button.textContent = "Cancel this order";
    }, 5000);
    return;
  }
  clearTimeout(cancelArmed);
  cancelArmed = null;
  button.textContent = "Cancel this order";
  const resp = await call("POST", `/api/orders/${encodeURIComponent(state.order.order_id)}/cancel`);
  if (!resp.ok && resp.status !== 404) {
    if (resp.status !== 503) toast(errorText(resp, "We could not cancel the order."), "bad");
    return;
  }
  forgetOrder();
  closeSheet("checkout");
  toast("Order cancelled — nothing was charged.", "ok");
});

function forgetOrder() {
  localStorage.removeItem(ORDER_KEY);
  state.order = null;
  clearTimeout(orderPoll);
  $("order").hidden = true;
  renderCart();
}

function fieldError(input, message, out) {
  input.setAttribute("aria-invalid", message ? "true" : "false");
  if (message) {
    out.textContent = message;
    input.focus();
  }
  return Boolean(message);
}

$("buyer-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const out = $("buyer-error");
  out.textContent = "";
  const name = $("buyer-name").value.trim();
  const email = $("buyer-email").value.trim();
  if (fieldError($("buyer-name"), name ? "" : "Please enter your name.", out)) return;
  if (fieldError($("buyer-email"), /^[^\s@]+@[^\s@]+\.[^\s@]+$/.test(email) ? "" : "Please enter a valid email address.", out)) return;
  const button = ev.submitter || ev.target.querySelector("button");
  button.disabled = true;
  const resp = await call("POST", "/api/checkout", { name, email });
  button.disabled = false;
  if (!resp.ok) {
    out.textContent = errorText(resp, "We could not start the checkout. Please try again.");
    if (resp.data.error === "cart_empty") loadCart();
    return;
  }
  const checkout = resp.data;
  state.order = {
    order_id: checkout.order_id, amount: checkout.amount, currency: checkout.currency, status: "pending_payment",
    number: checkout.number, items: checkout.items, pay_by: checkout.pay_by || Date.now() + cfg.payment_timeout_s * 1000,
  };
  localStorage.setItem(ORDER_KEY, checkout.order_id);
  // The cart became the order: its holds now belong to the order until it is paid.
  loadCart();
  if (checkout.payment && checkout.payment.sandbox) {
    showCardForm(state.order);
  } else {
    await startStripe(checkout);
  }
});

function showCardForm(order) {
  renderSummary(order.items, order.amount, order.currency);
  $("buyer-form").hidden = true;
  $("card-form").hidden = false;
  $("checkout-cancel").hidden = false;
  setText("checkout-back", "Back");
  setText("card-pay", `Pay ${money(order.amount, order.currency)} (test)`);
  openSheet("checkout", $("card-number"));
  renderDeadline();
  renderCart();
}

function parseExpiry(text) {
  const m = /^\s*(\d{1,2})\s*\/\s*(\d{2}|\d{4})\s*$/.exec(text);
  if (!m) return null;
  const month = Number(m[1]);
  let year = Number(m[2]);
  if (year < 100) year += 2000;
  return month >= 1 && month <= 12 ? { month, year } : null;
}

$("card-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const out = $("card-error");
  out.textContent = "";
  const number = $("card-number").value.replace(/[\s-]/g, "");
  const exp = parseExpiry($("card-exp").value);
  const cvc = $("card-cvc").value.trim();
  if (fieldError($("card-number"), /^\d{12,19}$/.test(number) ? "" : "Enter the 16-digit test card number.", out)) return;
  if (fieldError($("card-exp"), exp ? "" : "Enter the expiry as MM/YY.", out)) return;
  if (fieldError($("card-cvc"), /^\d{3,4}$/.test(cvc) ? "" : "Enter the 3-digit CVC.", out)) return;
  const button = $("card-pay");
  button.disabled = true;
  const label = button.textContent;
  button.textContent = "Paying…";
  const resp = await call("POST", `/api/orders/${encodeURIComponent(state.order.order_id)}/sandbox-pay`, {
    card_number: number, exp_month: exp.month, exp_year: exp.year, cvc,
  });
  button.disabled = false;
  button.textContent = label;
  // Only the payment's own answer says "declined": the order's status may still show an
  // earlier decline until the provider's webhook has arrived.
  if (resp.status === 402 || resp.data.error === "card_declined") {
    const detail = (resp.data && resp.data.detail) || "Your card was declined.";
    out.textContent = `Payment declined: ${detail} Try another card.`;
    toast("Payment declined — nothing was charged. Your items are still held for you.", "bad");
    state.order.status = "payment_failed";
    renderCart();
    $("card-number").focus();
    return;
  }
  if (!resp.ok) {
    out.textContent = resp.data.detail || "The payment did not go through. Please try again.";
    return;
  }
  paymentDone();
});

async function startStripe(checkout) {
  const form = $("stripe-form");
  const out = $("stripe-error");
  renderSummary(checkout.items, checkout.amount, checkout.currency);
  $("buyer-form").hidden = true;
  form.hidden = false;
  $("checkout-cancel").hidden = false;
  try {
    await loadStripe(cfg.stripe_js_url);
  } catch (_) {
    out.textContent = "The payment form could not load. Check your connection and try again.";
    return;
  }
  const stripe = window.Stripe(checkout.payment.publishable_key);
  const elements = stripe.elements({ clientSecret: checkout.payment.client_secret });
  elements.create("payment").mount("#payment-element");
  setText("stripe-pay", `Pay ${money(checkout.amount, checkout.currency)}`);
  form.onsubmit = async (ev) => {
    ev.preventDefault();
    out.textContent = "";
    $("stripe-pay").disabled = true;
    const result = await stripe.confirmPayment({ elements, redirect: "if_required", confirmParams: { return_url: window.location.href } });
    $("stripe-pay").disabled = false;
    if (result.error) {
      out.textContent = `Payment declined: ${result.error.message}`;
      return;
    }
    paymentDone();
  };
}

function paymentDone() {
  $("checkout").hidden = true;
  $("card-error").textContent = "";
  toast("Payment received — thank you! Your order is being prepared.", "ok");
  state.order.status = "processing"; // until the provider confirms it (webhook)
  renderCart();
  showOrder(true);
  refreshOrder();
}

// --- order status -------------------------------------------------------------------
const STATUS_TEXT = {
  pending_payment: "Waiting for payment…",
  processing: "Payment received — confirming…",
  paid: "Paid — printing your label…",
  printed: "Label printed — we're packing your order",
  ready: "Ready for pickup",
  fulfilled: "Fulfilled — picked up. Enjoy!",
  payment_failed: "Payment declined — nothing was charged.",
  expired: "This order expired before it was paid.",
  refunded: "Refunded.",
};
// Before payment succeeds the checkout form speaks for the order.
const SHOWN_STATUSES = new Set(["processing", "paid", "printed", "ready", "fulfilled", "expired", "refunded"]);
const STEP_ORDER = ["paid", "printed", "ready", "fulfilled"];
// Each step only once it really happened (ready: staff packed it and said so).
const STEPS_DONE = { processing: 0, paid: 1, printed: 2, ready: 3, fulfilled: 4 };

function showOrder(open = false) {
  const o = state.order;
  if (!o) return;
  setText("order-number", o.number ? `#${o.number}` : "");
  const status = setText("order-status", STATUS_TEXT[o.status] || o.status);
  status.dataset.status = o.status;
  const done = STEPS_DONE[o.status] || 0;
  for (const li of $("order-steps").children) {
    const i = STEP_ORDER.indexOf(li.dataset.step);
    li.classList.toggle("done", i < done);
    li.classList.toggle("current", i === done && done < 4 && o.status !== "expired" && o.status !== "refunded");
  }
  setText("order-pickup", o.status === "ready" ? `${cfg.pickup_note}. Show order ${o.number ? "#" + o.number : ""} at the counter.` : o.status === "printed" ? "We'll tell you here the moment it is ready at the counter." : "");
  $("order-items").replaceChildren(...(o.items || []).map((i) => el("li", {}, `${i.quantity} × ${i.name}`)));
  if (open) openSheet("order");
}

let orderPoll = null;
function resumePayment(order) {
  if (cfg.sandbox) showCardForm(order);
}

async function refreshOrder(resume = false) {
  if (!state.order) return;
  const resp = await call("GET", `/api/orders/${encodeURIComponent(state.order.order_id)}`);
  if (resp.ok) {
    const o = resp.data;
    const payBy = state.order.pay_by || (o.created_at ? epochMs(o.created_at) + cfg.payment_timeout_s * 1000 : null);
    // The payment's own answer is newer than a status the webhook has not updated yet.
    const keep = state.order.status === "processing" && ["pending_payment", "payment_failed"].includes(o.status);
    state.order = { ...state.order, ...o, pay_by: payBy, status: keep ? "processing" : o.status };
    if (SHOWN_STATUSES.has(state.order.status)) showOrder();
    if (["expired", "refunded"].includes(o.status)) $("checkout").hidden = true;
    if (resume && ["pending_payment", "payment_failed"].includes(o.status)) resumePayment(state.order);
    renderCart();
  } else if (resp.status === 404 || resp.status === 401) {
    forgetOrder();
    return;
  }
  clearTimeout(orderPoll);
  // Events bring changes instantly; the poll covers a dropped event stream.
  if (state.order && !["fulfilled", "expired", "refunded"].includes(state.order.status)) orderPoll = setTimeout(() => refreshOrder(), state.order.status === "processing" ? 1500 : 5000);
}

// --- chat ----------------------------------------------------------------------------
const chatList = $("chat-list");
const ROLE_LABEL = { host: "Host", moderator: "Mod" };

// Everything from the chat is text: textContent only, never parsed as HTML.
function chatItem(m) {
  const role = ROLE_LABEL[m.role];
  return el(
    "li",
    { "data-id": m.id, "data-author": m.author || "", class: `chat-msg ${m.role || "viewer"}` },
    role ? el("span", { class: `chat-role ${m.role}` }, role) : null,
    el("span", { class: "chat-name" }, m.name || "Someone"),
    el("span", { class: "chat-text" }, m.text),
  );
}

function addMessage(m) {
  if (!m || !m.id || chatList.querySelector(`[data-id="${CSS.escape(String(m.id))}"]`)) return;
  const stick = chatList.scrollHeight - chatList.scrollTop - chatList.clientHeight < 40;
  chatList.append(chatItem(m));
  while (chatList.children.length > CHAT_KEEP) chatList.firstElementChild.remove();
  if (stick) chatList.scrollTop = chatList.scrollHeight;
}

function removeMessage(id) {
  chatList.querySelector(`[data-id="${CSS.escape(String(id))}"]`)?.remove();
  const pinned = $("pinned");
  if (pinned.dataset.id === String(id)) setPinned(null);
}

function setPinned(m) {
  const box = $("pinned");
  box.hidden = !m;
  box.dataset.id = m ? String(m.id) : "";
  setText("pinned-name", m ? m.name : "");
  setText("pinned-text", m ? m.text : "");
}

async function loadChat() {
  const resp = await api("GET", `${showPath}/chat`);
  if (!resp.ok || !Array.isArray(resp.data.messages)) return;
  chatList.replaceChildren();
  resp.data.messages.forEach(addMessage);
  setPinned(resp.data.pinned || null);
  chatList.scrollTop = chatList.scrollHeight;
}

function chatError(text) {
  const node = $("chat-error");
  node.hidden = !text;
  node.textContent = text || "";
  placeOverlays();
}

let slowTimer = null;
function slowMode(seconds) {
  state.slowUntil = Date.now() + seconds * 1000;
  const send = $("chat-send");
  clearInterval(slowTimer);
  const tick = () => {
    const left = Math.ceil((state.slowUntil - Date.now()) / 1000);
    if (left <= 0) {
      clearInterval(slowTimer);
      send.disabled = false;
      send.textContent = "Send";
      chatError("");
      return;
    }
    send.disabled = true;
    send.textContent = `${left}s`;
    chatError(`Slow mode is on: you can send your next message in ${left} s.`);
  };
  tick();
  slowTimer = setInterval(tick, 250);
}

async function sendChat(text) {
  const resp = await call("POST", `${showPath}/chat`, { text });
  if (resp.ok) {
    chatError("");
    $("chat-text").value = "";
    addMessage(resp.data);
    chatList.scrollTop = chatList.scrollHeight;
    return;
  }
  const code = resp.data.error;
  if (code === "name_required") {
    state.name = "";
    localStorage.removeItem(NAME_KEY);
    askName(text);
  } else if (resp.status === 429) {
    slowMode(Number(resp.headers?.get("Retry-After")) || 5);
  } else if (resp.status === 403) {
    chatError(`You can't chat right now: ${resp.data.detail || "the host has paused your messages."}`);
  } else if (resp.status === 400) {
    chatError(resp.data.detail || "That message can't be sent.");
  } else if (resp.status && resp.status !== 503) {
    chatError(resp.data.detail || "Your message was not sent. Try again.");
  }
}

function askName(text) {
  state.pendingChat = text;
  $("chat-name").value = state.name;
  setText("name-error", "");
  openSheet("name-sheet", $("chat-name"));
}

$("chat-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const text = $("chat-text").value.trim();
  if (!text) return;
  if (Date.now() < state.slowUntil) return;
  if (!state.name) askName(text);
  else sendChat(text);
});

$("name-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const name = $("chat-name").value.trim();
  const out = $("name-error");
  if (!name) {
    out.textContent = "Choose a name of 1 to 32 characters.";
    return;
  }
  const resp = await call("PUT", "/api/me", { name });
  if (!resp.ok) {
    out.textContent = resp.data.detail || "That name can't be used. Try another.";
    return;
  }
  state.name = resp.data.name || name;
  localStorage.setItem(NAME_KEY, state.name);
  closeSheet("name-sheet");
  $("chat-text").focus();
  if (state.pendingChat) sendChat(state.pendingChat);
  state.pendingChat = null;
});

// --- reactions -----------------------------------------------------------------------
const hearts = $("hearts");
function floatHearts(n) {
  for (let i = 0; i < Math.min(n, 8); i++) {
    setTimeout(() => {
      const h = el("span", { class: "float-heart" }, "♥");
      h.style.setProperty("--drift", `${Math.round((Math.random() - 0.5) * 40)}px`);
      h.addEventListener("animationend", () => h.remove());
      hearts.append(h);
      while (hearts.children.length > 24) hearts.firstElementChild.remove();
    }, i * 120);
  }
}
let heartFlush = null;
$("heart").addEventListener("click", () => {
  floatHearts(1);
  // Taps are sent at most four times a second; the server aggregates everyone's.
  if (!heartFlush) {
    heartFlush = setTimeout(() => {
      heartFlush = null;
      api("POST", `${showPath}/reactions`, { kind: "heart" });
    }, 250);
  }
});

// --- share ---------------------------------------------------------------------------
$("share").addEventListener("click", async () => {
  const url = `${window.location.origin}/shows/${encodeURIComponent(cfg.id)}`;
  if (navigator.share) {
    try {
      await navigator.share({ title: cfg.title, text: `Watch ${cfg.title} live`, url });
      return;
    } catch (err) {
      if (err && err.name === "AbortError") return;
    }
  }
  try {
    await navigator.clipboard.writeText(url);
    toast("Link copied — paste it anywhere to share the show.", "ok");
  } catch (_) {
    toast(`Share this link: ${url}`, "");
  }
});

// --- live events ----------------------------------------------------------------------
function applyState(s) {
  state.show = s;
  state.products = new Map(s.products.map((p) => [p.sku, { ...p }]));
  setLive(s.live);
  setText("viewers", viewersText(s.viewers));
  state.drop = s.drop;
  if ("ticker" in s) onEvent({ type: "ticker", text: s.ticker });
  applyFeatured(s.featured);
  if (cfg.highlight && !state.highlightScrolled) {
    state.highlightScrolled = true;
    const node = document.getElementById(`product-${cfg.highlight}`);
    if (node) {
      if (!MODES.desktop.matches) openSheet("shop");
      node.scrollIntoView({ block: "center" });
    }
  }
}

function viewersText(n) {
  return `${n} watching`;
}

function setLive(live) {
  state.live = Boolean(live);
  if (state.live) state.everLive = true;
  const badge = $("live-badge");
  badge.textContent = state.live ? "Live" : "Offline";
  badge.classList.toggle("live", state.live);
  renderStage();
}

function onEvent(ev) {
  if (ev.ts) offset.add(ev.ts);
  // Other parts of the page (the auction panel) follow the same stream.
  window.dispatchEvent(new CustomEvent("showroom-event", { detail: ev }));
  switch (ev.type) {
    case "featured":
      scheduleAtPicture(ev, () => applyFeatured(ev.sku));
      break;
    case "stock": {
      const p = state.products.get(ev.sku);
      if (p) {
        p.available = ev.available;
        renderFeatured();
        renderProducts();
      }
      break;
    }
    case "drop":
      scheduleAtPicture(ev, () => {
        state.drop = ev.drop;
        renderFeatured();
        renderProducts();
      });
      break;
    case "live":
      setLive(ev.live);
      break;
    case "viewers":
      setText("viewers", viewersText(ev.viewers));
      break;
    case "ticker": {
      const t = $("ticker");
      t.textContent = ev.text || "";
      t.hidden = !ev.text;
      break;
    }
    case "order":
      if (state.order && ev.order_id === state.order.order_id) {
        if (!(state.order.status === "processing" && ["pending_payment", "payment_failed"].includes(ev.status))) state.order.status = ev.status;
        if (ev.number) state.order.number = ev.number;
        if (SHOWN_STATUSES.has(state.order.status)) showOrder();
        refreshOrder();
      }
      break;
    case "chat":
      addMessage(ev.message);
      break;
    case "chat_deleted":
      removeMessage(ev.id);
      break;
    case "pinned":
      setPinned(ev.message || null);
      break;
    case "reactions":
      floatHearts(Number(ev.counts && ev.counts.heart) || 0);
      break;
    default:
      break;
  }
}

async function loadState() {
  const resp = await call("GET", showPath);
  if (resp.ok) applyState(resp.data);
}

async function main() {
  placeOverlays();
  renderStage();
  renderCart();
  liveEvents(cfg.id, onEvent, () => {
    loadState();
    loadChat();
  });
  await loadState();
  await loadCart();
  loadChat();
  const me = await api("GET", "/api/me");
  if (me.ok && me.data.name) {
    state.name = me.data.name;
    localStorage.setItem(NAME_KEY, state.name);
  }
  const saved = localStorage.getItem(ORDER_KEY);
  if (saved) {
    state.order = { order_id: saved, status: "pending_payment" };
    refreshOrder(true);
  }
  $("f-buy").addEventListener("click", () => state.featured && buy(state.featured));
  player.start();
  // Live and viewer count also come from presence; a slow refresh keeps them honest.
  setInterval(async () => {
    const resp = await call("GET", showPath);
    if (!resp.ok) return;
    if (resp.data.live !== state.live) setLive(resp.data.live);
    setText("viewers", viewersText(resp.data.viewers));
  }, 10000);
}

main();
