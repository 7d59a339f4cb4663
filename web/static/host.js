// Host page: go live (WHIP) or preview the output (WHEP), feature products, drops,
// ticker, and live sales numbers with conversion per featured product.
import { api, clock, el, epochMs, liveEvents, money, pageData, setText, showNotice } from "./common.js";
import { WhepPlayer, WhipPublisher } from "./webrtc.js";

const cfg = pageData();
const $ = (id) => document.getElementById(id);
const notice = $("notice");
const showPath = `/api/shows/${encodeURIComponent(cfg.id)}`;

const state = {
  products: new Map(cfg.products.map((p) => [p.sku, { ...p, available: p.stock }])),
  featured: null,
  drop: null,
  viewers: 0,
  adds: 0,
  orders: [],
  segments: [], // featured segments, kept by the server: { sku, start_ms, end_ms, peak_viewers }
};
let statsTimer = null;

// --- video ---------------------------------------------------------------------------
const preview = $("preview");
let publisher = null;
let outputPlayer = null;

function videoStatus(text) {
  setText("video-status", text);
}

$("go-live").addEventListener("click", async () => {
  stopOutputPreview();
  const button = $("go-live");
  button.disabled = true;
  videoStatus("Asking for the camera…");
  let stream;
  try {
    stream = await navigator.mediaDevices.getUserMedia({
      video: { width: { ideal: 1280 }, height: { ideal: 720 }, frameRate: { ideal: 30 } },
      audio: true,
    });
  } catch (err) {
    button.disabled = false;
    videoStatus("No camera: allow camera access in the browser, or publish with PocketCam/OBS.");
    showNotice(notice, `Camera not available (${err.name}).`, "bad");
    return;
  }
  preview.srcObject = stream;
  publisher = new WhipPublisher(`/whip/${encodeURIComponent(cfg.id)}`, cfg.stream_key, {
    onState: (s) => videoStatus(s === "connected" ? "You are live from this camera." : s === "stopped" ? "Not broadcasting from this browser." : `Connection: ${s}`),
  });
  try {
    videoStatus("Connecting…");
    await publisher.start(stream);
    $("stop-live").hidden = false;
    button.hidden = true;
  } catch (err) {
    stream.getTracks().forEach((t) => t.stop());
    preview.srcObject = null;
    publisher = null;
    videoStatus("Could not go live.");
    showNotice(notice, `Could not go live: ${err.detail || err.message}`, "bad");
  } finally {
    button.disabled = false;
  }
});

$("stop-live").addEventListener("click", () => {
  if (publisher) publisher.stop();
  publisher = null;
  preview.srcObject = null;
  $("stop-live").hidden = true;
  $("go-live").hidden = false;
});

function stopOutputPreview() {
  if (outputPlayer) outputPlayer.stop();
  outputPlayer = null;
  $("watch-output").setAttribute("aria-pressed", "false");
  $("watch-output").textContent = "Preview the show output";
}

$("watch-output").addEventListener("click", () => {
  if (outputPlayer) {
    stopOutputPreview();
    preview.srcObject = null;
    return;
  }
  if (publisher) {
    showNotice(notice, "Stop broadcasting from this camera to preview the output here.", "");
    return;
  }
  outputPlayer = new WhepPlayer(`/whep/${encodeURIComponent(cfg.id)}?preview=1`, preview, {
    onState: (s) => videoStatus(s === "playing" ? "Previewing what viewers see." : s === "stopped" ? "Not broadcasting from this browser." : `Preview: ${s}…`),
  });
  outputPlayer.start();
  $("watch-output").setAttribute("aria-pressed", "true");
  $("watch-output").textContent = "Stop the preview";
});

// --- products, feature ---------------------------------------------------------------
function renderProducts() {
  const box = $("host-products");
  box.replaceChildren();
  const select = $("drop-sku");
  const selected = select.value;
  select.replaceChildren();
  for (const p of state.products.values()) {
    const on = state.featured === p.sku;
    box.append(
      el(
        "div",
        { class: "host-product", "data-sku": p.sku },
        el("img", { src: `/media/products/${encodeURIComponent(cfg.id)}/${encodeURIComponent(p.sku)}.png`, alt: "", width: 48, height: 48 }),
        el("div", {}, el("strong", {}, p.name), el("div", { class: "muted" }, `${money(p.price, cfg.currency)} · ${p.available} available`)),
        el("button", { type: "button", "aria-pressed": String(on), "aria-label": `${on ? "Unfeature" : "Feature"} ${p.name}`, onclick: () => feature(on ? null : p.sku) }, on ? "Featured" : "Feature"),
      ),
    );
    select.append(el("option", { value: p.sku }, p.name));
  }
  if (selected) select.value = selected;
}

async function feature(sku) {
  const resp = await api("POST", `${showPath}/feature`, { sku });
  if (!resp.ok) {
    showNotice(notice, resp.data.detail || "Could not change the featured product.", "bad");
    return;
  }
  setFeatured(resp.data.featured);
}
$("unfeature").addEventListener("click", () => feature(null));

function setFeatured(sku) {
  sku = sku || null;
  if (sku !== state.featured) refreshStatsSoon(); // the server closed and opened segments
  state.featured = sku;
  renderProducts();
  renderNumbers();
}

// --- drops ---------------------------------------------------------------------------
$("drop-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const out = $("drop-error");
  out.textContent = "";
  const body = {
    sku: $("drop-sku").value,
    quantity: Number($("drop-qty").value),
    duration_s: Number($("drop-duration").value),
    per_buyer_limit: Number($("drop-limit").value),
  };
  for (const [key, id] of [["quantity", "drop-qty"], ["duration_s", "drop-duration"], ["per_buyer_limit", "drop-limit"]]) {
    if (!Number.isInteger(body[key]) || body[key] < 1) {
      out.textContent = "Quantity, duration and per-buyer limit must be whole numbers of at least 1.";
      $(id).focus();
      return;
    }
  }
  const price = $("drop-price").value.trim();
  if (price) {
    if (!/^\d+(\.\d{1,2})?$/.test(price) || Number(price) <= 0) {
      out.textContent = "The drop price must be an amount like 25 or 25.00.";
      $("drop-price").focus();
      return;
    }
    body.price = Number(price).toFixed(2);
  }
  const resp = await api("POST", `${showPath}/drops`, body);
  if (!resp.ok) {
    out.textContent = resp.data.detail || "Could not start the drop.";
    return;
  }
  showNotice(notice, "Drop started.", "ok");
  if (resp.data && resp.data.drop) onEvent({ type: "drop", drop: resp.data.drop });
});

function setDrop(drop) {
  state.drop = drop || null;
  renderDrop();
}

function renderDrop() {
  const box = $("drop-status");
  const d = state.drop;
  const endsAt = d ? epochMs(d.ends_at) : null;
  const active = d && endsAt && endsAt > Date.now();
  box.hidden = !active;
  if (!active) return;
  const p = state.products.get(d.sku);
  const price = d.price ? ` at ${money(d.price, cfg.currency)}` : "";
  box.textContent = `Drop on ${p ? p.name : d.sku}${price}: ${d.remaining} left · ends in ${clock(endsAt - Date.now())}`;
}
setInterval(renderDrop, 1000);

// --- ticker --------------------------------------------------------------------------
async function setTicker(text) {
  const out = $("ticker-error");
  out.textContent = "";
  const resp = await api("POST", `${showPath}/ticker`, { text });
  if (!resp.ok) {
    out.textContent = resp.data.detail || "Could not change the ticker.";
    return;
  }
  setText("ticker-current", text || "nothing");
}
$("ticker-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const text = $("ticker-text").value.trim();
  setTicker(text || null);
});
$("ticker-clear").addEventListener("click", () => {
  $("ticker-text").value = "";
  setTicker(null);
});

// --- numbers -------------------------------------------------------------------------
const COUNTED = new Set(["paid", "printed", "fulfilled"]);

function renderNumbers() {
  const paid = state.orders.filter((o) => COUNTED.has(o.status));
  setText("n-viewers", state.viewers);
  setText("n-adds", state.adds);
  setText("n-orders", paid.length);
  setText("n-revenue", money(paid.reduce((sum, o) => sum + Number(o.amount), 0), cfg.currency));
  const body = $("segments");
  body.replaceChildren();
  const now = Date.now();
  for (const seg of [...state.segments].reverse().slice(0, 12)) {
    const open = seg.end_ms === null;
    const end = open ? now : seg.end_ms;
    // The server counts the orders for this segment's product by when it went into
    // the cart; conversion is the buyers among the segment's peak audience.
    const count = seg.orders || 0;
    const p = state.products.get(seg.sku);
    // The server raises the peak about once a second; show the live count meanwhile.
    const peak = open ? Math.max(seg.peak_viewers, state.viewers) : seg.peak_viewers;
    const rate = peak > 0 ? `${((100 * Math.min(seg.buyers || 0, peak)) / peak).toFixed(1)}%` : "–";
    body.append(
      el(
        "tr",
        { class: open ? "current" : "" },
        el("td", {}, p ? p.name : seg.sku, open ? " (now)" : ""),
        el("td", { class: "num" }, clock(end - seg.start_ms)),
        el("td", { class: "num" }, peak),
        el("td", { class: "num" }, count),
        el("td", { class: "num" }, rate),
      ),
    );
  }
}

async function loadOrders() {
  const resp = await api("GET", `/api/orders?show=${encodeURIComponent(cfg.id)}`);
  if (resp.ok && Array.isArray(resp.data.orders)) {
    state.orders = resp.data.orders;
    renderNumbers();
  }
}

// Viewer latency and the add-to-cart tally (kept by the server, so a reload keeps it).
async function loadStats() {
  const resp = await api("GET", `${showPath}/stats`);
  if (!resp.ok) return;
  if (resp.data.cart_adds) state.adds = resp.data.cart_adds.total;
  if (Array.isArray(resp.data.segments)) state.segments = resp.data.segments;
  renderNumbers();
  const g2g = resp.data.glass_to_glass_ms || {};
  const join = resp.data.join_ms || {};
  if (g2g.p50 !== null && g2g.p50 !== undefined) setText("n-latency", `${Math.round(g2g.p50)} ms`);
  else if (join.p50 !== null && join.p50 !== undefined) setText("n-latency", `join ${Math.round(join.p50)} ms`);
  if (resp.data.reactions && typeof resp.data.reactions.per_s === "number") {
    hearts.server = resp.data.reactions.per_s * 60;
    renderHearts();
  }
}

// --- reactions: hearts per minute, live from the aggregated events -------------------
const hearts = { events: [], server: 0 };
function renderHearts() {
  const since = Date.now() - 60000;
  hearts.events = hearts.events.filter(([t]) => t >= since);
  const live = hearts.events.reduce((n, [, c]) => n + c, 0);
  setText("n-hearts", Math.round(hearts.events.length ? live : hearts.server));
}
setInterval(renderHearts, 1000);

// --- chat moderation -------------------------------------------------------------------
const chatList = $("host-chat-list");
const muted = new Map(); // author -> {name, what}
const ROLE = { host: "Host", moderator: "Mod" };

async function moderate(author, action, minutes) {
  const body = { action, author };
  if (minutes) body.minutes = minutes;
  const resp = await api("POST", `${showPath}/chat/moderation`, body);
  if (!resp.ok) {
    showNotice(notice, resp.data.detail || "Could not change that.", "bad");
    return false;
  }
  return true;
}

function messageItem(m) {
  const name = m.name || "Someone";
  const actions = el("div", { class: "mod-actions" });
  actions.append(el("button", { type: "button", class: "small", "aria-label": `Pin the message of ${name}`, onclick: () => pin(m.id) }, "Pin"));
  actions.append(el("button", { type: "button", class: "small danger", "aria-label": `Delete the message of ${name}`, onclick: () => deleteMessage(m.id) }, "Delete"));
  if (m.role !== "host" && m.author) {
    actions.append(el("button", { type: "button", class: "small", "aria-label": `Time out ${name} for 5 minutes`, onclick: () => mute(m, "timeout", 5) }, "Time out 5 min"));
    actions.append(el("button", { type: "button", class: "small danger", "aria-label": `Ban ${name}`, onclick: () => mute(m, "ban") }, "Ban"));
  }
  return el(
    "li",
    { "data-id": m.id, "data-author": m.author || "" },
    el("div", {}, ROLE[m.role] ? el("span", { class: `chat-role ${m.role}` }, ROLE[m.role]) : null, el("strong", {}, name), " ", el("span", { class: "chat-text" }, m.text)),
    actions,
  );
}

function addMessage(m) {
  if (!m || !m.id || chatList.querySelector(`[data-id="${CSS.escape(String(m.id))}"]`)) return;
  chatList.append(messageItem(m));
  while (chatList.children.length > 100) chatList.firstElementChild.remove();
  chatList.scrollTop = chatList.scrollHeight;
}

function setPinned(m) {
  $("host-pinned").hidden = !m;
  setText("host-pinned-name", m ? m.name : "");
  setText("host-pinned-text", m ? m.text : "");
}

async function deleteMessage(id) {
  const resp = await api("DELETE", `${showPath}/chat/${encodeURIComponent(id)}`);
  if (resp.ok || resp.status === 404) chatList.querySelector(`[data-id="${CSS.escape(String(id))}"]`)?.remove();
  else showNotice(notice, resp.data.detail || "Could not delete the message.", "bad");
}

async function pin(id) {
  const resp = await api("POST", `${showPath}/chat/pin`, { id });
  if (resp.ok) setPinned(resp.data.pinned);
  else showNotice(notice, resp.data.detail || "Could not pin the message.", "bad");
}
$("unpin").addEventListener("click", () => pin(null));

async function mute(m, action, minutes) {
  if (!(await moderate(m.author, action, minutes))) return;
  muted.set(m.author, { name: m.name || "Someone", what: action === "ban" ? "banned" : `timed out for ${minutes} min` });
  renderMuted();
  showNotice(notice, `${m.name || "Someone"} is ${action === "ban" ? "banned from the chat" : `timed out for ${minutes} minutes`}.`, "ok");
}

function renderMuted() {
  const list = $("host-muted-list");
  list.replaceChildren(
    ...[...muted.entries()].map(([author, who]) =>
      el(
        "li",
        {},
        el("span", {}, `${who.name} · ${who.what}`),
        el("button", { type: "button", class: "small", "aria-label": `Unban ${who.name}`, onclick: async () => {
          if (await moderate(author, "unban")) {
            muted.delete(author);
            renderMuted();
            showNotice(notice, `${who.name} may chat again.`, "ok");
          }
        } }, "Unban"),
      ),
    ),
  );
  $("host-muted").hidden = muted.size === 0;
}

$("host-chat-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const input = $("host-chat-text");
  const text = input.value.trim();
  if (!text) return;
  const resp = await api("POST", `${showPath}/chat`, { text });
  if (resp.ok) {
    input.value = "";
    addMessage(resp.data);
  } else showNotice(notice, resp.data.detail || "Could not send.", "bad");
});

async function loadChat() {
  const resp = await api("GET", `${showPath}/chat`);
  if (!resp.ok || !Array.isArray(resp.data.messages)) return;
  chatList.replaceChildren();
  resp.data.messages.forEach(addMessage);
  setPinned(resp.data.pinned || null);
}

async function loadChatSettings() {
  const resp = await api("GET", `${showPath}/chat/settings`);
  if (!resp.ok) return;
  $("slow-mode").value = resp.data.slow_mode_s || 0;
  $("blocked-words").value = (resp.data.blocked_words || []).join("\n");
}

$("chat-settings").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const out = $("settings-error");
  out.textContent = "";
  const slow = Number($("slow-mode").value);
  if (!Number.isInteger(slow) || slow < 0 || slow > 300) {
    out.textContent = "Slow mode is a whole number of seconds from 0 to 300.";
    $("slow-mode").focus();
    return;
  }
  const words = $("blocked-words").value.split(/[\n,]/).map((w) => w.trim()).filter(Boolean);
  const resp = await api("PUT", `${showPath}/chat/settings`, { slow_mode_s: slow, blocked_words: words });
  if (!resp.ok) {
    out.textContent = resp.data.detail || "Could not save the chat settings.";
    return;
  }
  showNotice(notice, slow ? `Chat settings saved: slow mode ${slow} s.` : "Chat settings saved: slow mode off.", "ok");
});

// --- state and events ----------------------------------------------------------------
function setLive(live) {
  const badge = $("live-badge");
  badge.textContent = live ? "Live" : "Offline";
  badge.classList.toggle("live", Boolean(live));
}

function setViewers(n) {
  state.viewers = n;
  renderNumbers();
}

async function loadState() {
  const resp = await api("GET", showPath);
  if (!resp.ok) return;
  const s = resp.data;
  for (const p of s.products) {
    const mine = state.products.get(p.sku);
    if (mine) mine.available = p.available;
  }
  setLive(s.live);
  setViewers(s.viewers);
  setFeatured(s.featured);
  setDrop(s.drop);
  if ("ticker" in s) setText("ticker-current", s.ticker || "nothing");
}

function refreshStatsSoon() {
  clearTimeout(statsTimer); // once for a burst of changes
  statsTimer = setTimeout(loadStats, 500);
}

function observeLevel(p, level) {
  p.available = level;
  renderProducts();
  refreshStatsSoon(); // stock moves when buyers add to carts: the tally changed
}

let ordersTimer = null;
function onEvent(ev) {
  switch (ev.type) {
    case "featured":
      setFeatured(ev.sku);
      break;
    case "stock": {
      const p = state.products.get(ev.sku);
      if (p) {
        observeLevel(p, ev.available);
      }
      break;
    }
    case "drop": {
      const next = ev.drop;
      const p = next ? state.products.get(next.sku) : null;
      if (p) observeLevel(p, next.remaining);
      setDrop(next);
      break;
    }
    case "live":
      setLive(ev.live);
      break;
    case "viewers":
      setViewers(ev.viewers);
      break;
    case "ticker":
      setText("ticker-current", ev.text || "nothing");
      break;
    case "chat":
      addMessage(ev.message);
      break;
    case "chat_deleted":
      chatList.querySelector(`[data-id="${CSS.escape(String(ev.id))}"]`)?.remove();
      break;
    case "pinned":
      setPinned(ev.message || null);
      break;
    case "reactions":
      hearts.events.push([Date.now(), Number(ev.counts && ev.counts.heart) || 0]);
      renderHearts();
      break;
    case "order":
      // Coalesce bursts (a flash drop) into one refresh.
      clearTimeout(ordersTimer);
      ordersTimer = setTimeout(loadOrders, 300);
      refreshStatsSoon(); // a paid order changes the segments' sales
      break;
    default:
      break;
  }
}

renderProducts();
liveEvents(cfg.id, onEvent, () => {
  loadState();
  loadOrders();
  loadChat();
});
loadChat();
loadChatSettings();
loadState();
loadOrders();
loadStats();
setInterval(loadStats, 5000);
// Viewers on each rung of the show's quality ladder (this server's viewers).
async function loadRungs() {
  const resp = await api("GET", `${showPath}/media`);
  if (!resp.ok || !Array.isArray(resp.data.rungs)) return;
  setText("n-rungs", resp.data.rungs.map((r) => `${r.name} ${r.viewers}`).join(" · "));
}
loadRungs();
setInterval(loadRungs, 5000);
setInterval(loadOrders, 15000);
setInterval(loadState, 5000); // viewers and live come from presence, refreshed each second
setInterval(renderNumbers, 1000);
