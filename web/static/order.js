import { api, el, pageData, setText } from "./common.js";

const data = pageData();
const STEPS = [
  ["paid", "Paid"],
  ["printed", "Being packed"],
  ["ready", "Ready for pickup"],
  ["fulfilled", "Picked up"],
];
const LABELS = {
  pending_payment: "Waiting for payment",
  payment_failed: "Payment failed",
  expired: "Expired: the items were released",
  refunded: "Refunded",
  paid: "Paid: we're packing it",
  printed: "Being packed",
  ready: "Ready for pickup",
  fulfilled: "Picked up. Enjoy!",
};

function render(status) {
  setText("order-status", LABELS[status] || status);
  document.getElementById("order-status").dataset.status = status;
  const reached = STEPS.findIndex(([s]) => s === status);
  const list = document.getElementById("order-steps");
  list.replaceChildren(
    ...STEPS.map(([s, label], i) =>
      el("li", { class: reached >= 0 && i < reached ? "done" : i === reached ? "current done" : "" }, label),
    ),
  );
}

async function refresh() {
  const url = `/api/orders/${encodeURIComponent(data.order_id)}?t=${encodeURIComponent(data.token)}`;
  const resp = await api("GET", url);
  if (resp.ok) render(resp.data.status);
}

render(document.getElementById("order-status").dataset.status);
refresh();
setInterval(refresh, 5000);
