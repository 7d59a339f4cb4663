// The viewer's auction panel: the current bid, the leader and the clock, one-tap bids
// (the next step, or five steps up, or an amount), "you're winning" / "outbid" at once,
// and the result. A first bid asks for a display name and a saved card, as the server
// requires (400 name_required, 402 payment_required): in sandbox mode a test card posted
// to the server; in live mode Stripe's card field confirming a SetupIntent in the browser.
import { api, clock, loadStripe, money, pageData, setText } from "./common.js";

const cfg = pageData();
const $ = (id) => document.getElementById(id);
let auction = null;
let me = { handle: null, name: null, has_payment_method: false };
let pending = null; // the amount to bid once the name / card is saved
let lastLead = null;

const cents = (s) => Math.round(Number(s) * 100);
const amount = (c) => (c / 100).toFixed(2);

const names = new Map();
function productName(sku) {
  return names.get(sku) || sku;
}

function render() {
  const panel = $("auction");
  if (!auction || (auction.status !== "running" && Date.now() - (auction.shownEnded || 0) > 15000)) {
    panel.hidden = true;
    return;
  }
  panel.hidden = false;
  setText("a-name", auction.name || productName(auction.sku));
  const running = auction.status === "running";
  setText("a-current", auction.current_bid ? money(auction.current_bid, cfg.currency) : `Starts at ${money(auction.start_price, cfg.currency)}`);
  setText("a-leader", auction.leader ? `· ${auction.leader} leads` : "· no bids yet");
  const next = cents(auction.next_min_bid);
  const step = cents(auction.increment);
  $("a-bid-next").textContent = `Bid ${money(amount(next), cfg.currency)}`;
  $("a-bid-more").textContent = `Bid ${money(amount(next + 4 * step), cfg.currency)}`;
  for (const id of ["a-bid-next", "a-bid-more"]) $(id).disabled = !running;
  $("a-custom").hidden = !running;
  const leads = me.handle && auction.leader_handle === me.handle;
  let you = "";
  if (!running) {
    you = auction.status === "sold" ? `SOLD to ${auction.winner} for ${money(auction.sold_for, cfg.currency)}` : auction.status === "cancelled" ? "The host cancelled this auction." : "Ended unsold.";
    if (auction.status === "sold" && leads) you = `You won! ${money(auction.sold_for, cfg.currency)} will be charged to your saved card.`;
  } else if (leads) {
    you = "You're winning";
  } else if (lastLead) {
    you = "You've been outbid";
  }
  if (running) lastLead = leads || lastLead ? leads : lastLead;
  setText("a-you", you);
  $("a-you").className = `a-you ${leads && running ? "winning" : you.startsWith("You've") ? "outbid" : ""}`;
  tick();
}

function tick() {
  if (!auction || auction.status !== "running") return;
  setText("a-clock", clock(auction.ends_at - Date.now()));
}
setInterval(tick, 250);

async function bid(value) {
  setText("a-error", "");
  const resp = await api("POST", `/api/auctions/${encodeURIComponent(auction.id)}/bids`, { amount: value });
  if (resp.ok) {
    auction = resp.data;
    lastLead = true;
    render();
    return;
  }
  const code = resp.data.error;
  if (code === "name_required") {
    pending = value;
    $("a-name-form").hidden = false;
    $("a-display-name").focus();
  } else if (code === "payment_required") {
    pending = value;
    $("a-card-form").hidden = false;
    if (cfg.sandbox) {
      $("a-card-test").hidden = false;
      $("a-card").focus();
    } else {
      await mountStripeCard();
    }
  } else {
    if (resp.data.auction) {
      auction = resp.data.auction;
      render();
    }
    setText("a-error", resp.data.detail || "That bid did not go through.");
  }
}

$("a-bid-next").addEventListener("click", () => bid(auction.next_min_bid));
$("a-bid-more").addEventListener("click", () => bid(amount(cents(auction.next_min_bid) + 4 * cents(auction.increment))));
$("a-custom").addEventListener("submit", (event) => {
  event.preventDefault();
  const value = $("a-amount").value.trim().replace(",", ".");
  if (value) bid(value);
});

$("a-name-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const resp = await api("PUT", "/api/me", { name: $("a-display-name").value.trim() });
  if (!resp.ok) return setText("a-error", resp.data.detail || "That name cannot be used.");
  $("a-name-form").hidden = true;
  await loadMe();
  if (pending) bid(pending);
});

// Live mode: Stripe.js's card field, and a SetupIntent (from the server) it confirms.
// A declined card cancels that SetupIntent, so the next try asks for a fresh one.
const live = { stripe: null, card: null, secret: null };

async function newSetup() {
  const resp = await api("POST", "/api/me/payment-method", {});
  if (!resp.ok || !resp.data.setup) throw new Error(resp.data.detail || "The card form is not available right now.");
  return resp.data.setup;
}

async function mountStripeCard() {
  if (live.card) return;
  $("a-card-save").disabled = true;
  try {
    const setup = await newSetup();
    const Stripe = await loadStripe(cfg.stripe_js_url);
    live.stripe = Stripe(setup.publishable_key);
    live.secret = setup.client_secret;
    live.card = live.stripe.elements().create("card");
    $("a-card-element").hidden = false;
    live.card.mount("#a-card-element");
  } catch (err) {
    setText("a-error", err.message.startsWith("could not load") ? "The card form could not load. Check your connection and try again." : err.message);
  } finally {
    $("a-card-save").disabled = false;
  }
}

// Each resolves true once the card is saved.
async function saveLiveCard() {
  if (!live.card) {
    await mountStripeCard(); // it had not loaded: the buyer fills it in first
    return false;
  }
  if (!live.secret) live.secret = (await newSetup()).client_secret;
  const result = await live.stripe.confirmCardSetup(live.secret, { payment_method: { card: live.card } });
  live.secret = null; // used: confirmed, or cancelled by the decline
  if (result.error) throw new Error(result.error.message || "That card could not be saved.");
  return true;
}

async function saveTestCard() {
  const [mm, yy] = $("a-exp").value.split("/").map((x) => Number(x.trim()));
  const card = { number: $("a-card").value.replace(/\s/g, ""), exp_month: mm, exp_year: yy, cvc: $("a-cvc").value.trim() };
  const resp = await api("POST", "/api/me/payment-method", { card });
  if (!resp.ok) throw new Error(resp.data.detail || "That card could not be saved.");
  return true;
}

$("a-card-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  setText("a-error", "");
  $("a-card-save").disabled = true;
  let saved = false;
  try {
    saved = await (cfg.sandbox ? saveTestCard() : saveLiveCard());
  } catch (err) {
    return setText("a-error", err.message);
  } finally {
    $("a-card-save").disabled = false;
  }
  if (!saved) return;
  $("a-card-form").hidden = true;
  await loadMe();
  if (pending) bid(pending);
});

async function loadMe() {
  const resp = await api("GET", "/api/me");
  if (resp.ok) me = { ...me, ...resp.data };
}

async function loadCurrent() {
  // The show state carries the current (or last) auction: no extra request, no 404.
  const show = await api("GET", `/api/shows/${encodeURIComponent(cfg.id)}`);
  if (!show.ok) return;
  for (const p of show.data.products || []) names.set(p.sku, p.name);
  if (show.data.auction) {
    auction = show.data.auction;
    if (auction.status !== "running") auction.shownEnded = 0;
    render();
  }
}

window.addEventListener("showroom-event", (e) => {
  const ev = e.detail;
  if (ev.type !== "auction" || !ev.auction) return;
  auction = ev.auction;
  if (auction.status !== "running") auction.shownEnded = Date.now();
  render();
});

loadMe().then(loadCurrent);
