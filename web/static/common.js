// Shared helpers for the Showroom pages. Data from the API is only ever put into the
// page as text (textContent / attributes), never parsed as HTML.

export function pageData() {
  const node = document.getElementById("page-data");
  return node ? JSON.parse(node.textContent) : {};
}

// Build an element: el("li", {class: "x", "aria-label": "y"}, "text", childNode, ...).
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "dataset") Object.assign(node.dataset, value);
    else if (key.startsWith("on") && typeof value === "function") node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

export function setText(idOrNode, text) {
  const node = typeof idOrNode === "string" ? document.getElementById(idOrNode) : idOrNode;
  if (node) node.textContent = text === null || text === undefined ? "" : String(text);
  return node;
}

// fetch JSON: resolves to {ok, status, data, headers}; network failures become status 0.
export async function api(method, url, body, extraHeaders = {}) {
  const init = { method, headers: { Accept: "application/json", ...extraHeaders }, credentials: "same-origin" };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let resp;
  try {
    resp = await fetch(url, init);
  } catch (err) {
    return { ok: false, status: 0, data: { error: "network", detail: "We could not reach the server. Check your connection and try again." } };
  }
  let data = null;
  try {
    data = await resp.json();
  } catch (_) {
    data = null;
  }
  return { ok: resp.ok, status: resp.status, data: data || {}, headers: resp.headers };
}

export function money(amount, currency) {
  const value = Number(amount);
  try {
    return new Intl.NumberFormat(undefined, { style: "currency", currency: (currency || "usd").toUpperCase() }).format(value);
  } catch (_) {
    return `${value.toFixed(2)} ${(currency || "").toUpperCase()}`;
  }
}

// "m:ss" (or "h:mm:ss") for a countdown; never negative.
export function clock(ms) {
  const total = Math.max(0, Math.ceil(ms / 1000));
  const h = Math.floor(total / 3600), m = Math.floor((total % 3600) / 60), s = total % 60;
  const ss = String(s).padStart(2, "0");
  return h ? `${h}:${String(m).padStart(2, "0")}:${ss}` : `${m}:${ss}`;
}

// Timestamps from the API may be epoch seconds or milliseconds.
export function epochMs(value) {
  if (value === null || value === undefined || value === "") return null;
  const n = Number(value);
  if (!Number.isFinite(n)) return null;
  return n < 1e12 ? n * 1000 : n;
}

export function timeOfDay(value) {
  const ms = epochMs(value);
  return ms ? new Date(ms).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" }) : "";
}

// Live events for a show. EventSource reconnects by itself; `onreconnect` lets a page
// reload its state after a gap so nothing missed stays stale; `onStatus(connected)`
// tells the page whether the stream is really up (for an honest connection badge).
export function liveEvents(showId, onEvent, onReconnect, onStatus = () => {}) {
  let opened = false;
  let source = null;
  const open = () => {
    source = new EventSource(`/api/shows/${encodeURIComponent(showId)}/events`);
    source.onopen = () => {
      if (opened && onReconnect) onReconnect();
      opened = true;
      onStatus(true);
    };
    source.onerror = () => onStatus(false);
    source.onmessage = (msg) => {
      let event;
      try {
        event = JSON.parse(msg.data);
      } catch (_) {
        return;
      }
      if (event && typeof event.type === "string") onEvent(event);
    };
  };
  open();
  return { close: () => source && source.close() };
}

// Estimates (local clock - server clock + delivery delay) from event timestamps; the
// smallest recent sample is the least delayed one.
export class ClockOffset {
  constructor() {
    this.samples = [];
  }
  add(serverMs) {
    if (!serverMs) return;
    this.samples.push(Date.now() - Number(serverMs));
    if (this.samples.length > 20) this.samples.shift();
  }
  get value() {
    return this.samples.length ? Math.min(...this.samples) : 0;
  }
}

export function showNotice(node, text, kind = "") {
  node.className = `notice ${kind}`.trim();
  node.textContent = text;
  node.hidden = !text;
  clearTimeout(node._timer);
  if (text && kind !== "bad") node._timer = setTimeout(() => (node.hidden = true), 8000);
}

// Stripe.js (live mode), once per page, from the URL the server's page data names
// (stripe_js_url: js.stripe.com unless configured otherwise). Resolves to window.Stripe.
let stripeJs = null;
export function loadStripe(src) {
  if (window.Stripe) return Promise.resolve(window.Stripe);
  stripeJs ||= new Promise((resolve, reject) => {
    const s = document.createElement("script");
    s.src = src;
    s.onload = () => (window.Stripe ? resolve(window.Stripe) : reject(new Error(`no Stripe in ${src}`)));
    s.onerror = () => {
      stripeJs = null; // a later try loads it again
      s.remove();
      reject(new Error(`could not load ${src}`));
    };
    document.head.append(s);
  });
  return stripeJs;
}
