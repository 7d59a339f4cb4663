// Staff page, the floor's tools: the pick list (grouped by product, printable as one
// ticket), "customer is here" by order number, and a new-order badge with an optional
// sound (off until a person switches it on: browsers only play sound after a tap).
import { api, el, liveEvents, pageData, setText, showNotice } from "./common.js";

const data = pageData();
const shows = data.shows || [];
let newOrders = 0;
let audio = null;

async function loadPicklists() {
  const blocks = [];
  let total = 0;
  for (const show of shows) {
    const resp = await api("GET", `/api/shows/${encodeURIComponent(show.id)}/picklist`);
    if (!resp.ok) continue;
    const rows = resp.data.products;
    total += rows.reduce((n, r) => n + r.quantity, 0);
    blocks.push(
      el(
        "div",
        { class: "picklist", dataset: { show: show.id } },
        shows.length > 1 ? el("h3", {}, show.title) : null,
        rows.length
          ? el("ul", { class: "pick-rows" }, ...rows.map((r) => el("li", { dataset: { sku: r.sku } }, el("strong", {}, `${r.quantity} × ${r.name}`), el("span", { class: "muted" }, ` for ${r.orders.map((n) => `#${n}`).join(" ")}`))))
          : el("p", { class: "muted" }, "Nothing waiting to be packed."),
        el("button", { type: "button", class: "small", onclick: () => printPicklist(show.id) }, "Print pick ticket"),
      ),
    );
  }
  document.getElementById("picklists").replaceChildren(...blocks);
  setText("pick-count", total ? `(${total} items)` : "");
}

async function printPicklist(showId) {
  const resp = await api("POST", `/api/shows/${encodeURIComponent(showId)}/picklist/print`);
  const notice = document.getElementById("checkin-result");
  notice.textContent = resp.ok ? `Pick ticket sent to ${resp.data.printer}.` : resp.data.detail || "The pick ticket did not print.";
}

document.getElementById("checkin-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const select = document.getElementById("checkin-show");
  const showId = select ? select.value : shows[0] && shows[0].id;
  const number = Number(document.getElementById("checkin-number").value.replace(/\D/g, ""));
  const out = document.getElementById("checkin-result");
  if (!number) {
    out.textContent = "Type the number on the customer's receipt.";
    return;
  }
  const resp = await api("POST", `/api/shows/${encodeURIComponent(showId)}/checkin`, { number });
  if (!resp.ok) {
    out.textContent = resp.data.detail || "No such order.";
    return;
  }
  const o = resp.data;
  const where = { ready: "ready at the counter", fulfilled: "already handed over", refunded: "refunded: do not hand over" }[o.status] || "still being packed";
  out.replaceChildren(el("a", { href: `/staff/orders/${encodeURIComponent(o.order_id)}` }, `#${o.number} ${o.buyer_name || ""}`), ` — ${where}.`);
});

function beep() {
  if (!document.getElementById("sound-on").checked) return;
  audio = audio || new AudioContext();
  const osc = audio.createOscillator();
  const gain = audio.createGain();
  osc.frequency.value = 880;
  gain.gain.setValueAtTime(0.2, audio.currentTime);
  gain.gain.exponentialRampToValueAtTime(0.001, audio.currentTime + 0.4);
  osc.connect(gain).connect(audio.destination);
  osc.start();
  osc.stop(audio.currentTime + 0.4);
}

const sound = document.getElementById("sound-on");
sound.checked = localStorage.getItem("showroom.sound") === "on";
sound.addEventListener("change", () => {
  localStorage.setItem("showroom.sound", sound.checked ? "on" : "off");
  if (sound.checked) audio = audio || new AudioContext();
});

function bump() {
  newOrders += 1;
  setText("new-orders", String(newOrders));
  document.title = `(${newOrders}) Orders · Showroom staff`;
  beep();
}
window.addEventListener("focus", () => {
  newOrders = 0;
  setText("new-orders", "0");
  document.title = "Orders · Showroom staff";
});

for (const show of shows) {
  liveEvents(show.id, (event) => {
    if (event.type !== "order") return;
    if (event.status === "paid") bump();
    loadPicklists();
  }, loadPicklists);
}
loadPicklists();
