import { api, pageData, setText } from "./common.js";

const data = pageData();
const form = document.getElementById("remind");
const input = document.getElementById("remind-email");

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  const email = input.value.trim();
  const resp = await api("POST", `/api/shows/${encodeURIComponent(data.id)}/reminders`, { email });
  if (resp.ok) {
    input.removeAttribute("aria-invalid");
    setText("remind-note", resp.data.live ? "It's live now: the email is on its way." : `Thanks: we'll email ${email} when it starts.`);
    form.querySelector("button").disabled = true;
  } else {
    input.setAttribute("aria-invalid", "true");
    setText("remind-note", resp.data.detail || "That did not work. Please try again.");
  }
});

// When the show goes live, offer the viewer page (and go there if the visitor is waiting).
async function checkLive() {
  const resp = await api("GET", `/api/shows/${encodeURIComponent(data.id)}`);
  if (resp.ok && resp.data.live) document.getElementById("live-now").hidden = false;
}
checkLive();
setInterval(checkLive, 5000);
