// Staff page: the live order queue (problems, paid, ready to pick, fulfilled),
// printers, reprint and fulfil.
import { api, el, liveEvents, money, pageData, setText, showNotice, timeOfDay } from "./common.js";

const cfg = pageData();
const $ = (id) => document.getElementById(id);
const notice = $("notice");
const orders = new Map(); // order_id -> order
const printers = new Map(); // name -> printer
const parked = new Map(); // order_id -> parked print job
const FULFILLED_SHOWN = 20;

const LANES = ["problem", "paid", "printed", "ready", "fulfilled"];

function lane(o) {
  if (o.status === "paid" && o.print_error) return "problem";
  if (LANES.includes(o.status)) return o.status;
  return null; // unpaid, failed, expired, refunded: nothing to do on the floor
}

function orderCard(o) {
  const laneName = lane(o);
  const items = el("ul", {}, (o.items || []).map((i) => el("li", {}, `${i.quantity} × ${i.name}`)));
  const actions = el("div", { class: "actions" });
  if (["problem", "paid", "printed"].includes(laneName)) {
    actions.append(el("button", { type: "button", class: "primary small", "data-action": "ready", "aria-label": `Mark order ${o.number} ready for pickup`, onclick: () => move(o, "ready") }, "Ready"));
  }
  if (laneName !== "fulfilled") {
    actions.append(el("button", { type: "button", class: `${laneName === "ready" ? "primary " : ""}small`, "data-action": "fulfil", "aria-label": `Mark order ${o.number} fulfilled`, onclick: () => move(o, "fulfil") }, "Mark fulfilled"));
  }
  const job = parked.get(o.order_id);
  if (job) actions.append(el("button", { type: "button", class: "small", "data-action": "retry", "aria-label": `Retry printing order ${o.number}`, onclick: () => retryJob(job) }, "Retry print"));
  actions.append(el("button", { type: "button", class: "small", "data-action": "reprint", "aria-label": `Reprint the label of order ${o.number}`, onclick: () => reprint(o) }, "Reprint"));
  actions.append(el("a", { href: `/staff/orders/${encodeURIComponent(o.order_id)}`, class: "small" }, "Open"));
  return el(
    "li",
    { class: `order-card${laneName === "problem" ? " problem" : ""}`, "data-order": o.order_id, "data-status": o.status },
    el("div", { class: "num" }, `#${o.number}`),
    // A sandbox order was paid with a test card: nothing to hand over for real.
    o.sandbox ? el("span", { class: "badge test", title: "Paid in the Stripe sandbox with a test card" }, "TEST") : null,
    el("div", {}, el("strong", { class: "buyer" }, o.buyer_name || "—"), el("span", { class: "muted" }, ` · ${timeOfDay(o.paid_at || o.created_at)} · ${money(o.amount, o.currency)}`)),
    items,
    o.print_error ? el("p", { class: "error" }, `Printer: ${o.print_error}`) : null,
    actions,
  );
}

function matches(o, query) {
  if (!query) return true;
  const q = query.toLowerCase().replace(/^#/, "");
  return String(o.number) === q || (o.buyer_name || "").toLowerCase().includes(q);
}

function render() {
  const query = $("find").value.trim();
  const lanes = Object.fromEntries(LANES.map((name) => [name, []]));
  for (const o of orders.values()) {
    const name = lane(o);
    if (name && matches(o, query)) lanes[name].push(o);
  }
  // Oldest first where work waits; most recent first for the done lane.
  for (const name of ["problem", "paid", "printed", "ready"]) lanes[name].sort((a, b) => (a.paid_at || a.created_at) - (b.paid_at || b.created_at));
  lanes.fulfilled.sort((a, b) => (b.fulfilled_at || 0) - (a.fulfilled_at || 0));
  for (const [name, list] of Object.entries(lanes)) {
    const shown = name === "fulfilled" ? list.slice(0, FULFILLED_SHOWN) : list;
    $(`q-${name}`).replaceChildren(...shown.map(orderCard));
    setText(`c-${name}`, `(${list.length})`);
  }
}

function upsert(o) {
  if (o && o.order_id) orders.set(o.order_id, o);
}

async function loadOrders() {
  for (const show of cfg.shows) {
    const resp = await api("GET", `/api/orders?show=${encodeURIComponent(show.id)}`);
    if (resp.ok && Array.isArray(resp.data.orders)) resp.data.orders.forEach(upsert);
    else if (resp.status === 401) window.location.href = `/login?next=${encodeURIComponent("/staff")}`;
  }
  render();
}

async function refreshOrder(orderId) {
  const resp = await api("GET", `/api/orders/${encodeURIComponent(orderId)}`);
  if (resp.ok) {
    const prev = orders.get(orderId);
    upsert({ ...(prev || {}), ...resp.data });
    render();
  }
}

// action: "ready" (packed, at the counter) or "fulfil" (handed over).
async function move(o, action) {
  const done = action === "ready" ? "is ready for pickup" : "fulfilled";
  const resp = await api("POST", `/api/orders/${encodeURIComponent(o.order_id)}/${action}`);
  if (resp.ok) {
    upsert({ ...o, ...resp.data });
    render();
    showNotice(notice, `Order #${o.number} ${done}.`, "ok");
  } else {
    showNotice(notice, `Order #${o.number}: ${resp.data.detail || "could not change it."}`, "bad");
  }
}

async function reprint(o) {
  const resp = await api("POST", `/api/orders/${encodeURIComponent(o.order_id)}/reprint`);
  if (resp.ok) showNotice(notice, `Reprinting the label of order #${o.number}.`, "ok");
  else showNotice(notice, `Order #${o.number}: ${resp.data.detail || "could not reprint."}`, "bad");
}

async function retryJob(job) {
  const resp = await api("POST", `/api/print-jobs/${encodeURIComponent(job.id)}/retry`);
  if (resp.ok) showNotice(notice, `Retrying printer ${job.printer} for order #${job.number}.`, "ok");
  else showNotice(notice, resp.data.detail || "Could not retry.", "bad");
  loadParked();
}

async function retryPrinter(name) {
  const resp = await api("POST", `/api/printers/${encodeURIComponent(name)}/retry`);
  showNotice(notice, resp.ok ? `Retrying printer ${name}.` : resp.data.detail || "Could not retry.", resp.ok ? "ok" : "bad");
}

async function loadParked() {
  const resp = await api("GET", "/api/print-jobs?state=parked");
  if (resp.ok && Array.isArray(resp.data.jobs)) {
    parked.clear();
    resp.data.jobs.forEach((j) => parked.set(j.order_id, j));
    render();
  }
}

function renderPrinters() {
  const box = $("printers");
  if (printers.size === 0) {
    box.replaceChildren(el("p", { class: "muted" }, "No printers configured."));
    return;
  }
  box.replaceChildren(
    ...[...printers.values()].map((p) =>
      el(
        "div",
        { class: "printer", "data-printer": p.name },
        el("strong", {}, p.name),
        el("span", { class: `badge ${p.online ? "ok" : "bad"}` }, p.online ? "Online" : "Offline"),
        el("span", { class: "muted" }, p.queued !== undefined ? `${p.queued} queued · ${p.printed || 0} printed` : ""),
        p.last_error ? el("span", { class: "error" }, p.last_error) : null,
        p.online ? null : el("button", { type: "button", class: "small", "aria-label": `Retry printer ${p.name} now`, onclick: () => retryPrinter(p.name) }, "Retry now"),
      ),
    ),
  );
}

async function loadPrinters() {
  const resp = await api("GET", "/api/printers");
  if (resp.ok && Array.isArray(resp.data.printers)) {
    printers.clear();
    resp.data.printers.forEach((p) => printers.set(p.name, p));
  }
  renderPrinters();
}

function onEvent(ev) {
  if (ev.type === "order" && ev.order_id) refreshOrder(ev.order_id);
  else if (ev.type === "printer" && ev.name) {
    printers.set(ev.name, { ...(printers.get(ev.name) || {}), ...ev });
    renderPrinters();
    loadParked();
  }
}

// The badge says what is true: "Live" only while every show's event stream is open
// and the browser is online; otherwise the queue may be stale and staff should know.
const conn = $("conn");
const streamUp = new Map();
function renderConn() {
  const up = navigator.onLine && cfg.shows.length > 0 && cfg.shows.every((s) => streamUp.get(s.id));
  const wasUp = conn.classList.contains("ok");
  conn.textContent = up ? "Live" : navigator.onLine ? "Reconnecting…" : "Offline";
  conn.classList.toggle("ok", up);
  conn.classList.toggle("bad", !up);
  conn.title = up ? "New orders appear here by themselves." : "Not connected: orders shown may be out of date.";
  if (!wasUp && up && conn.dataset.seen) {
    loadOrders();
    loadPrinters();
  }
  if (up) conn.dataset.seen = "1";
}
window.addEventListener("online", renderConn);
window.addEventListener("offline", renderConn);

$("find").addEventListener("input", render);
$("find-form").addEventListener("submit", (ev) => ev.preventDefault());
for (const show of cfg.shows) {
  liveEvents(
    show.id,
    onEvent,
    () => {
      loadOrders();
      loadPrinters();
    },
    (up) => {
      streamUp.set(show.id, up);
      renderConn();
    },
  );
}
loadOrders();
loadPrinters();
loadParked();
// Events carry changes at once; this slow refresh only covers a lost event.
setInterval(loadOrders, 15000);
setInterval(() => {
  loadPrinters();
  loadParked();
}, 10000);
