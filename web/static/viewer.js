// Viewer page: watch, one-tap Buy, cart with hold timers, in-page checkout, order status.
import { api, clock, ClockOffset, el, epochMs, liveEvents, money, pageData, setText, showNotice } from "./common.js";
import { WhepPlayer } from "./webrtc.js";

const cfg = pageData();
const $ = (id) => document.getElementById(id);
const notice = $("notice");
const ORDER_KEY = `showroom:order:${cfg.id}`;

const state = {
  show: null, // GET /api/shows/{show}
  products: new Map(), // sku -> product (with live `available`)
  featured: null, // sku shown on the card (follows the picture)
  drop: null,
  live: false,
  everLive: false,
  cart: { items: [], total: "0.00", currency: cfg.currency },
  order: null, // {order_id, amount, currency, number, status}
  pendingSwitch: null,
};
const offset = new ClockOffset();

// --- video ---------------------------------------------------------------------------
const video = $("video");
const player = new WhepPlayer(`/whep/${encodeURIComponent(cfg.id)}`, video, { onState: renderStage });
let joinReported = false;

function renderStage(playerState) {
  const box = $("stage-state");
  if (playerState === "playing" && !joinReported && player.firstFrameMs !== null) {
    joinReported = true;
    api("POST", `/api/shows/${encodeURIComponent(cfg.id)}/stats`, { join_ms: Math.round(player.firstFrameMs) });
  }
  let title = "", sub = "";
  if (!state.live) {
    title = state.everLive ? "We'll be right back" : "Starting soon";
    sub = state.everLive ? "The host stepped away for a moment. Stay tuned." : "The show will start here. Stay on this page.";
  } else if (!player.playing) {
    title = "Connecting…";
    sub = "Getting the live picture.";
  }
  box.hidden = !title;
  // A playing picture while offline is the server's own slate: keep it visible.
  box.classList.toggle("compact", Boolean(title) && player.playing);
  setText("stage-title", title);
  setText("stage-sub", sub);
}

const unmute = $("unmute");
unmute.addEventListener("click", () => {
  video.muted = !video.muted;
  if (!video.muted) video.play().catch(() => {});
  unmute.setAttribute("aria-pressed", String(!video.muted));
  unmute.textContent = video.muted ? "Sound off · tap to unmute" : "Sound on · tap to mute";
});

// --- products and the featured card -------------------------------------------------------
function stockText(p) {
  if (p.available <= 0) return { text: "Sold out", cls: "stock-out" };
  if (p.available <= 5) return { text: `Only ${p.available} left`, cls: "stock-low" };
  return { text: `${p.available} in stock`, cls: "" };
}

function renderProducts() {
  const list = $("products");
  list.replaceChildren();
  for (const p of state.products.values()) {
    const stock = stockText(p);
    const highlighted = cfg.highlight === p.sku;
    // A drop shows on its product here too: the host may run it on a product that is
    // not the one on screen.
    const drop = activeDrop(p.sku);
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
      el("button", { type: "button", class: "small", "data-sku": p.sku, disabled: p.available <= 0, "aria-label": `Add ${p.name} to cart`, onclick: () => buy(p.sku) }, p.available <= 0 ? "Sold out" : "Add"),
    );
    list.append(item);
  }
}

function renderFeatured() {
  const card = $("featured");
  const p = state.featured ? state.products.get(state.featured) : null;
  card.hidden = !p;
  card.dataset.sku = p ? p.sku : "";
  if (!p) return;
  const img = $("f-img");
  if (img.getAttribute("src") !== p.image_url) img.src = p.image_url;
  setText("f-name", p.name);
  const stock = stockText(p);
  const stockNode = setText("f-stock", stock.text);
  stockNode.className = stock.cls;
  // During a drop its price (if it has one) is what the buyer pays.
  const price = activeDrop(p.sku)?.price || p.price;
  setText("f-price", money(price, p.currency));
  const buyBtn = $("f-buy");
  buyBtn.disabled = p.available <= 0;
  buyBtn.textContent = p.available <= 0 ? "Sold out" : `Buy · ${money(price, p.currency)}`;
  buyBtn.setAttribute("aria-label", p.available <= 0 ? `${p.name} is sold out` : `Buy ${p.name}`);
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
  const resp = await api("POST", "/api/cart/items", { show: cfg.id, sku, quantity: 1 });
  buttons.forEach((b) => (b.disabled = false));
  if (resp.ok) {
    setCart(resp.data);
    showNotice(notice, `Added ${p ? p.name : sku} — held for you for ${clock(cfg.hold_seconds * 1000)}.`, "ok");
  } else {
    showNotice(notice, errorText(resp, "We could not add that to your cart."), "bad");
    if (resp.data.error === "sold_out" && p) {
      p.available = 0;
      renderFeatured();
      renderProducts();
    }
  }
  renderFeatured();
}

async function removeItem(sku) {
  const resp = await api("DELETE", `/api/cart/items/${encodeURIComponent(sku)}`);
  if (resp.ok) setCart(resp.data);
  else showNotice(notice, errorText(resp, "We could not change your cart."), "bad");
}

function setCart(cart) {
  state.cart = cart && Array.isArray(cart.items) ? cart : { items: [], total: "0.00", currency: cfg.currency };
  renderCart();
}

function renderCart() {
  const { items, total, currency } = state.cart;
  const list = $("cart-items");
  list.replaceChildren();
  for (const item of items) {
    list.append(
      el(
        "li",
        { class: "cart-item", "data-sku": item.sku },
        el("span", { class: "name" }, `${item.quantity} × ${item.name}`),
        el(
          "span",
          { class: "actions" },
          el("button", { type: "button", class: "small", "aria-label": `Add one more ${item.name}`, onclick: () => buy(item.sku) }, "+1"),
          el("button", { type: "button", class: "small", "aria-label": `Remove ${item.name} from cart`, onclick: () => removeItem(item.sku) }, "Remove"),
        ),
        el("span", { class: "hold", "data-expires": epochMs(item.hold_expires_at) || "" }, ""),
      ),
    );
  }
  const empty = items.length === 0;
  $("cart-empty").hidden = !empty;
  $("cart-total-row").hidden = empty;
  $("checkout-open").hidden = empty;
  setText("cart-total", money(total, currency));
  const count = items.reduce((n, i) => n + i.quantity, 0);
  $("cart-bar").hidden = empty;
  setText("cart-bar-text", `${count} item${count === 1 ? "" : "s"} · ${money(total, currency)}`);
  if (empty && !$("checkout").hidden && !state.order) $("checkout").hidden = true;
  tickHolds();
}

let expiryRefresh = null;
function tickHolds() {
  for (const node of document.querySelectorAll(".cart-item .hold")) {
    const expires = Number(node.dataset.expires);
    if (!expires) continue;
    const left = expires - Date.now();
    node.classList.toggle("soon", left < 60000);
    node.textContent = left > 0 ? `Held for you · ${clock(left)}` : "Hold expired";
    if (left <= 0 && !expiryRefresh) {
      const name = node.parentElement.querySelector(".name").textContent;
      showNotice(notice, `Your hold expired: ${name} went back on sale. Add it again if it is still available.`, "bad");
      expiryRefresh = setTimeout(async () => {
        expiryRefresh = null;
        const resp = await api("GET", "/api/cart");
        if (resp.ok) setCart(resp.data);
      }, 1500);
    }
  }
  renderDrop();
}
setInterval(tickHolds, 1000);

// --- checkout ------------------------------------------------------------------------
$("checkout-open").addEventListener("click", openCheckout);
$("cart-bar-go").addEventListener("click", () => {
  const target = state.cart.items.length ? $("cart") : $("order");
  target.scrollIntoView({ behavior: "smooth", block: "start" });
  target.focus({ preventScroll: true });
});

function openCheckout() {
  const box = $("checkout");
  box.hidden = false;
  $("buyer-form").hidden = false;
  $("card-form").hidden = true;
  $("stripe-form").hidden = true;
  box.scrollIntoView({ behavior: "smooth", block: "start" });
  $("buyer-name").focus({ preventScroll: true });
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
  const resp = await api("POST", "/api/checkout", { name, email });
  button.disabled = false;
  if (!resp.ok) {
    out.textContent = errorText(resp, "We could not start the checkout. Please try again.");
    if (resp.data.error === "cart_empty") {
      const cart = await api("GET", "/api/cart");
      if (cart.ok) setCart(cart.data);
    }
    return;
  }
  const checkout = resp.data;
  // The cart became the order: its holds now belong to the order until it is paid.
  api("GET", "/api/cart").then((cart) => cart.ok && setCart(cart.data));
  state.order = { order_id: checkout.order_id, amount: checkout.amount, currency: checkout.currency, status: "pending_payment", number: checkout.number };
  localStorage.setItem(ORDER_KEY, checkout.order_id);
  $("buyer-form").hidden = true;
  if (checkout.payment && checkout.payment.sandbox) {
    $("card-form").hidden = false;
    setText("card-pay", `Pay ${money(checkout.amount, checkout.currency)} (test)`);
    $("card-number").focus();
  } else {
    await startStripe(checkout);
  }
});

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
  const resp = await api("POST", `/api/orders/${encodeURIComponent(state.order.order_id)}/sandbox-pay`, {
    card_number: number, exp_month: exp.month, exp_year: exp.year, cvc,
  });
  button.disabled = false;
  button.textContent = label;
  // Only the payment's own answer says "declined": the order's status may still show an
  // earlier decline until the provider's webhook has arrived.
  if (resp.status === 402 || resp.data.error === "card_declined") {
    const detail = (resp.data && resp.data.detail) || "Your card was declined.";
    out.textContent = `Payment declined: ${detail} Try another card.`;
    showNotice(notice, "Payment declined — nothing was charged. Your items are still held for you.", "bad");
    $("card-number").focus();
    return;
  }
  if (!resp.ok) {
    out.textContent = resp.data.detail || "The payment did not go through. Please try again.";
    return;
  }
  paymentDone();
});

function loadScript(src) {
  return new Promise((resolve, reject) => {
    const s = document.createElement("script");
    s.src = src;
    s.onload = resolve;
    s.onerror = () => reject(new Error(`could not load ${src}`));
    document.head.append(s);
  });
}

async function startStripe(checkout) {
  const form = $("stripe-form");
  const out = $("stripe-error");
  form.hidden = false;
  try {
    if (!window.Stripe) await loadScript("https://js.stripe.com/v3");
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
  showNotice(notice, "Payment received — thank you! Your order is being prepared.", "ok");
  state.order.status = "processing"; // until the provider confirms it (webhook)
  showOrder();
  refreshOrder();
}

// --- order status -------------------------------------------------------------------
const STATUS_TEXT = {
  pending_payment: "Waiting for payment…",
  processing: "Payment received — confirming…",
  paid: "Paid — printing your label…",
  printed: "Ready for pickup",
  fulfilled: "Fulfilled — picked up. Enjoy!",
  payment_failed: "Payment declined — nothing was charged.",
  expired: "This order expired before it was paid.",
  refunded: "Refunded.",
};
// Before payment succeeds the checkout form speaks for the order.
const SHOWN_STATUSES = new Set(["paid", "printed", "fulfilled", "expired", "refunded"]);
const STEP_ORDER = ["paid", "printed", "ready", "fulfilled"];
const STEPS_DONE = { paid: 1, printed: 3, fulfilled: 4 };

function showOrder() {
  const box = $("order");
  const o = state.order;
  if (!o) return;
  box.hidden = false;
  setText("order-number", o.number ? `#${o.number}` : "");
  const status = setText("order-status", STATUS_TEXT[o.status] || o.status);
  status.dataset.status = o.status;
  const done = STEPS_DONE[o.status] || 0;
  for (const li of $("order-steps").children) {
    const i = STEP_ORDER.indexOf(li.dataset.step);
    li.classList.toggle("done", i < done);
    li.classList.toggle("current", i === done && done > 0 && done < 4);
  }
  setText("order-pickup", o.status === "printed" ? `${cfg.pickup_note}. Show order ${o.number ? "#" + o.number : ""} at the counter.` : "");
  const items = $("order-items");
  items.replaceChildren(...(o.items || []).map((i) => el("li", {}, `${i.quantity} × ${i.name}`)));
}

let orderPoll = null;
function resumePayment(order) {
  $("checkout").hidden = false;
  $("buyer-form").hidden = true;
  $("card-form").hidden = false;
  setText("card-pay", `Pay ${money(order.amount, order.currency)} (test)`);
}

async function refreshOrder(resume = false) {
  if (!state.order) return;
  const resp = await api("GET", `/api/orders/${encodeURIComponent(state.order.order_id)}`);
  if (resp.ok) {
    state.order = { ...state.order, ...resp.data };
    if (SHOWN_STATUSES.has(resp.data.status)) showOrder();
    if (["expired", "refunded"].includes(resp.data.status)) $("checkout").hidden = true;
    if (resume && ["pending_payment", "payment_failed"].includes(resp.data.status) && cfg.sandbox) {
      resumePayment(state.order); // reloaded mid-checkout: its items are still held for it
    }
  } else if (resp.status === 404 || resp.status === 401) {
    localStorage.removeItem(ORDER_KEY);
    state.order = null;
    return;
  }
  clearTimeout(orderPoll);
  // Events bring changes instantly; the slow poll covers a dropped event stream.
  if (state.order && !["fulfilled", "expired", "refunded"].includes(state.order.status)) orderPoll = setTimeout(() => refreshOrder(), 5000);
}

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
    if (node) node.scrollIntoView({ block: "center" });
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
        state.order.status = ev.status;
        if (ev.number) state.order.number = ev.number;
        if (SHOWN_STATUSES.has(ev.status)) showOrder();
        refreshOrder();
      }
      break;
    default:
      break;
  }
}

async function loadState() {
  const resp = await api("GET", `/api/shows/${encodeURIComponent(cfg.id)}`);
  if (resp.ok) applyState(resp.data);
}

async function main() {
  renderStage();
  liveEvents(cfg.id, onEvent, loadState);
  await loadState();
  const cart = await api("GET", "/api/cart");
  if (cart.ok) setCart(cart.data);
  const saved = localStorage.getItem(ORDER_KEY);
  if (saved) {
    state.order = { order_id: saved, status: "pending_payment" };
    refreshOrder(true);
  }
  $("f-buy").addEventListener("click", () => state.featured && buy(state.featured));
  player.start();
  // Live and viewer count also come from presence; a slow refresh keeps them honest.
  setInterval(async () => {
    const resp = await api("GET", `/api/shows/${encodeURIComponent(cfg.id)}`);
    if (!resp.ok) return;
    if (resp.data.live !== state.live) setLive(resp.data.live);
    setText("viewers", viewersText(resp.data.viewers));
  }, 10000);
}

main();
