// The order page the label's QR opens: a big Fulfil button for floor staff.
import { api, liveEvents, pageData, showNotice } from "./common.js";

const cfg = pageData();
const $ = (id) => document.getElementById(id);
const notice = $("notice");

function setStatus(status) {
  const node = $("status");
  node.dataset.status = status;
  node.textContent = status.replace("_", " ");
  const button = $("fulfil");
  button.disabled = !["paid", "printed", "ready"].includes(status);
  if (status === "fulfilled") button.textContent = "Already fulfilled";
  const ready = $("ready");
  ready.disabled = !["paid", "printed"].includes(status);
  if (status === "ready") ready.textContent = "Ready at the counter";
  else if (["paid", "printed"].includes(status)) ready.textContent = "Packed — mark ready for pickup";
  if (["paid", "printed", "ready"].includes(status)) button.textContent = "Fulfil — handed to the buyer";
  $("refund").disabled = !["paid", "printed", "ready", "fulfilled"].includes(status);
}

// A slip of the thumb: the last Ready or Fulfil can be taken back for a minute.
let undoTimer = null;
function offerUndo() {
  const undo = $("undo");
  undo.hidden = false;
  clearTimeout(undoTimer);
  undoTimer = setTimeout(() => (undo.hidden = true), 60_000);
}

$("undo").addEventListener("click", async () => {
  const resp = await api("POST", `/api/orders/${encodeURIComponent(cfg.order_id)}/undo`);
  $("undo").hidden = true;
  if (resp.ok) {
    setStatus(resp.data.status);
    showNotice(notice, `Undone: the order is ${resp.data.status} again.`, "ok");
  } else {
    showNotice(notice, resp.data.detail || "Could not undo.", "bad");
  }
});

$("refund").addEventListener("click", async () => {
  if (!window.confirm("Refund this order? Online payments go back to the buyer's card.")) return;
  const resp = await api("POST", `/api/orders/${encodeURIComponent(cfg.order_id)}/refund`);
  if (resp.ok) {
    setStatus(resp.data.status);
    showNotice(notice, "Refunded; the items are back in stock.", "ok");
  } else {
    showNotice(notice, resp.data.detail || "Could not refund.", "bad");
  }
});

$("ready").addEventListener("click", async () => {
  const resp = await api("POST", `/api/orders/${encodeURIComponent(cfg.order_id)}/ready`);
  if (resp.ok) {
    setStatus(resp.data.status || "ready");
    offerUndo();
    showNotice(notice, "Marked ready: the buyer sees it is waiting at the counter.", "ok");
  } else {
    showNotice(notice, resp.data.detail || "Could not mark it ready.", "bad");
  }
});

$("fulfil").addEventListener("click", async () => {
  const button = $("fulfil");
  button.disabled = true;
  const resp = await api("POST", `/api/orders/${encodeURIComponent(cfg.order_id)}/fulfil`);
  if (resp.ok) {
    setStatus(resp.data.status || "fulfilled");
    offerUndo();
    showNotice(notice, "Fulfilled. Thank you!", "ok");
  } else {
    button.disabled = false;
    showNotice(notice, resp.data.detail || "Could not mark it fulfilled.", "bad");
  }
});

$("reprint").addEventListener("click", async () => {
  const resp = await api("POST", `/api/orders/${encodeURIComponent(cfg.order_id)}/reprint`);
  showNotice(notice, resp.ok ? "Reprinting the label." : resp.data.detail || "Could not reprint.", resp.ok ? "ok" : "bad");
});

liveEvents(cfg.show, (ev) => {
  if (ev.type === "order" && ev.order_id === cfg.order_id && ev.status) setStatus(ev.status);
});
