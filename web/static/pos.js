// The counter: tap tiles (or scan) to build a sale, take cash or record a card paid on
// the terminal. Stock on the tiles is live: the stream sells from the same units.
import { api, el, liveEvents, money, pageData, setText, showNotice } from "./common.js";

const data = pageData();
const products = new Map(data.products.map((p) => [p.sku, { ...p, available: null }]));
const byCode = new Map();
for (const p of data.products) {
  byCode.set(p.sku.toLowerCase(), p.sku);
  if (p.barcode) byCode.set(p.barcode.toLowerCase(), p.sku);
}
const sale = new Map(); // sku -> quantity
const notice = document.getElementById("notice");
let busy = false;

function tile(p) {
  const left = p.available;
  const out = left !== null && left <= 0;
  return el(
    "li",
    {},
    el(
      "button",
      {
        class: `tile${out ? " out" : ""}`,
        dataset: { sku: p.sku },
        "aria-label": `Add ${p.name}`,
        disabled: out,
        onclick: () => change(p.sku, 1),
      },
      el("img", { src: `/media/products/${encodeURIComponent(data.id)}/${encodeURIComponent(p.sku)}.png`, alt: "" }),
      el("span", { class: "name" }, p.name),
      el("span", { class: "price" }, money(p.price, data.currency)),
      el("span", { class: "stock" }, left === null ? "" : out ? "Sold out" : `${left} left`),
    ),
  );
}

function render() {
  document.getElementById("tiles").replaceChildren(...[...products.values()].map(tile));
  let total = 0;
  const lines = [];
  for (const [sku, qty] of sale) {
    const p = products.get(sku);
    total += Number(p.price) * qty;
    lines.push(
      el(
        "li",
        { class: "cart-item", dataset: { sku } },
        el("span", {}, `${qty} × ${p.name}`),
        el(
          "span",
          { class: "actions" },
          el("button", { class: "small", "aria-label": `One less ${p.name}`, onclick: () => change(sku, -1) }, "−"),
          el("button", { class: "small", "aria-label": `One more ${p.name}`, onclick: () => change(sku, 1) }, "+"),
        ),
      ),
    );
  }
  document.getElementById("lines").replaceChildren(...lines);
  setText("total", money(total, data.currency));
  for (const id of ["pay-cash", "pay-card", "clear"]) document.getElementById(id).disabled = busy || sale.size === 0;
}

function change(sku, delta) {
  const qty = (sale.get(sku) || 0) + delta;
  if (qty <= 0) sale.delete(sku);
  else sale.set(sku, Math.min(qty, 99));
  render();
}

async function pay(payment) {
  busy = true;
  render();
  const items = [...sale].map(([sku, quantity]) => ({ sku, quantity }));
  const name = document.getElementById("buyer").value.trim();
  const resp = await api("POST", `/api/shows/${encodeURIComponent(data.id)}/pos/sales`, { items, payment, name: name || undefined });
  busy = false;
  if (resp.ok) {
    sale.clear();
    document.getElementById("buyer").value = "";
    showNotice(notice, `Sold: order #${resp.data.number}, ${money(resp.data.amount, data.currency)} (${payment === "cash" ? "cash" : "card"}). The receipt is printing.`, "ok");
  } else {
    showNotice(notice, resp.data.detail || "The sale did not go through. Nothing was sold.", "bad");
  }
  await refreshStock();
  render();
}

async function refreshStock() {
  const resp = await api("GET", `/api/shows/${encodeURIComponent(data.id)}`);
  if (!resp.ok) return;
  for (const p of resp.data.products || []) {
    const mine = products.get(p.sku);
    if (mine) mine.available = p.available;
  }
  render();
}

function addByCode(code) {
  const sku = byCode.get(String(code).trim().toLowerCase());
  if (sku) {
    change(sku, 1);
    showNotice(notice, `Added ${products.get(sku).name}.`, "ok");
  } else {
    showNotice(notice, `No product with code ${code}.`, "bad");
  }
}

// A USB/Bluetooth scanner types the code and presses Enter into the focused field.
document.getElementById("scan-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const input = document.getElementById("scan");
  if (input.value.trim()) addByCode(input.value);
  input.value = "";
});

// The camera, where the browser can read barcodes itself.
if ("BarcodeDetector" in window) {
  const button = document.getElementById("camera");
  button.hidden = false;
  button.addEventListener("click", async () => {
    const video = document.getElementById("camera-view");
    const detector = new window.BarcodeDetector();
    const stream = await navigator.mediaDevices.getUserMedia({ video: { facingMode: "environment" } });
    video.srcObject = stream;
    video.hidden = false;
    await video.play();
    let last = "";
    const look = async () => {
      if (video.hidden) return;
      const codes = await detector.detect(video).catch(() => []);
      if (codes.length && codes[0].rawValue !== last) {
        last = codes[0].rawValue;
        addByCode(last);
        setTimeout(() => (last = ""), 1500);
      }
      requestAnimationFrame(look);
    };
    look();
  });
}

document.getElementById("pay-cash").addEventListener("click", () => pay("cash"));
document.getElementById("pay-card").addEventListener("click", () => pay("card_present"));
document.getElementById("clear").addEventListener("click", () => {
  sale.clear();
  render();
});

liveEvents(
  data.id,
  (event) => {
    if (event.type === "stock" && products.has(event.sku)) {
      products.get(event.sku).available = event.available;
      render();
    }
  },
  refreshStock,
  (up) => {
    const conn = document.getElementById("conn");
    conn.className = `badge ${up ? "ok" : "bad"}`;
    conn.textContent = up ? "Live" : "Offline: reconnecting…";
  },
);
refreshStock();
render();
