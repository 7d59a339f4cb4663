// Host page: the show's restream destinations (API.md "Restreams (host)"): state,
// bitrate and last error of each, with Start / Stop. Polled: the state lives with
// whichever process composes the show.
import { api, el, pageData, setText, timeOfDay } from "./common.js";

const data = pageData();
const base = `/api/shows/${encodeURIComponent(data.id)}/restreams`;
const POLL_MS = 2000;
const STATE_TEXT = { off: "off", connecting: "connecting…", live: "live", error: "error, retrying" };

function row(r) {
  const running = r.state !== "off";
  const details = [STATE_TEXT[r.state] || r.state];
  if (r.state === "live") details.push(`${Math.round(r.kbps)} kbps`);
  if (r.since && running) details.push(`since ${timeOfDay(r.since)}`);
  if (r.dropped) details.push(`${r.dropped} frames dropped`);
  const button = el(
    "button",
    { type: "button", class: running ? "small danger" : "small primary", dataset: { name: r.name, action: running ? "stop" : "start" } },
    running ? `Stop ${r.name}` : `Start ${r.name}`,
  );
  const parts = [
    el("strong", {}, r.name),
    " ",
    el("span", { class: "muted" }, r.target),
    " ",
    el("span", { class: `badge restream-${r.state}`, role: "status" }, details.join(" · ")),
    " ",
    button,
  ];
  if (r.last_error && r.state !== "live") parts.push(el("p", { class: "error" }, `Last error: ${r.last_error}`));
  return el("li", { dataset: { name: r.name, state: r.state } }, ...parts);
}

async function load() {
  const resp = await api("GET", base);
  if (!resp.ok) return;
  const list = resp.data.restreams;
  document.getElementById("restreams-section").hidden = list.length === 0;
  document.getElementById("restreams").replaceChildren(...list.map(row));
}

document.getElementById("restreams").addEventListener("click", async (event) => {
  const button = event.target.closest("button[data-action]");
  if (!button) return;
  button.disabled = true;
  const { name, action } = button.dataset;
  const resp = await api("POST", `${base}/${encodeURIComponent(name)}/${action}`);
  setText("restream-error", resp.ok ? "" : resp.data.detail || `Could not ${action} ${name}.`);
  await load();
});

load();
setInterval(load, POLL_MS);
