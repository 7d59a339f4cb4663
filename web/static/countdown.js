// Countdowns for <time class="countdown" datetime="..."> elements: "in 2 h 05 min",
// "in 4:59", then "now". Updated once a second; the text is the only thing that changes.
export function until(ms) {
  if (ms <= 0) return "now";
  const s = Math.floor(ms / 1000);
  const d = Math.floor(s / 86400), h = Math.floor((s % 86400) / 3600), m = Math.floor((s % 3600) / 60);
  if (d >= 1) return `in ${d} day${d > 1 ? "s" : ""} ${h} h`;
  if (h >= 1) return `in ${h} h ${String(m).padStart(2, "0")} min`;
  return `in ${m}:${String(s % 60).padStart(2, "0")}`;
}

export function startCountdowns(root = document) {
  const nodes = [...root.querySelectorAll("time.countdown")];
  const tick = () => {
    for (const node of nodes) {
      const at = Date.parse(node.getAttribute("datetime"));
      if (!Number.isNaN(at)) {
        node.textContent = until(at - Date.now());
        node.title = new Date(at).toLocaleString();
      }
    }
  };
  tick();
  return setInterval(tick, 1000);
}

startCountdowns();
