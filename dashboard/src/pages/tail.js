const id = {{id_json}};
const ALL = ["date", "time", "c-ip", "cs-method", "cs-uri-stem", "cs-uri-query", "sc-status", "x-edge-result-type", "x-edge-location", "sc-bytes", "time-taken", "cs-user-agent", "cs-referer", "x-edge-request-id"];
let shown = ["time", "c-ip", "cs-method", "cs-uri-stem", "sc-status", "x-edge-result-type", "x-edge-location", "time-taken"];
const KEEP = 500;
let source = null, paused = false;
const el = (t, text) => { const e = document.createElement(t); if (text !== undefined) e.textContent = text; return e; };
function header() {
  const h = document.getElementById("head");
  h.replaceChildren(...shown.map(c => el("th", c)));
}
function columns() {
  const p = document.getElementById("columns");
  p.replaceChildren(...ALL.map(c => {
    const l = el("label"), box = el("input");
    box.type = "checkbox"; box.checked = shown.includes(c);
    box.onchange = () => { shown = ALL.filter(x => x === c ? box.checked : shown.includes(x)); header(); document.getElementById("rows").replaceChildren(); };
    l.append(box, " " + c); return l;
  }));
}
function connect() {
  if (source) source.close();
  const q = new URLSearchParams(new FormData(document.getElementById("filters")));
  for (const [k, v] of [...q]) if (!v) q.delete(k);
  source = new EventSource("/api/distributions/" + encodeURIComponent(id) + "/tail?" + q);
  const state = document.getElementById("state");
  source.onopen = () => { state.textContent = "live"; };
  source.onerror = () => {
    if (paused) { state.textContent = "paused"; return; }
    if (source.readyState !== EventSource.CLOSED) { state.textContent = "reconnecting"; return; }
    // Refused (a bad filter, too many pages): say why, and try again later if it may pass.
    fetch(source.url).then(r => r.json().then(v => [r.status, v]).catch(() => [r.status, {}])).then(([status, v]) => {
      state.textContent = "stopped: " + (v.error || ("HTTP " + status));
      if (status >= 500 || status === 0) setTimeout(() => { if (!paused) connect(); }, 10000);
    }).catch(() => { state.textContent = "stopped: the dashboard cannot be reached"; setTimeout(() => { if (!paused) connect(); }, 10000); });
  };
  source.addEventListener("record", e => {
    const r = JSON.parse(e.data), tr = el("tr");
    tr.className = "record s" + String(r["sc-status"] || "").charAt(0);
    // Without a time field (a topic's field selection), the message's timestamp.
    if (r.time === undefined && r["timestamp(ms)"] !== undefined) r.time = new Date(r["timestamp(ms)"]).toISOString().slice(11, 19);
    for (const c of shown) tr.append(el("td", r[c] === undefined || r[c] === null ? "-" : String(r[c])));
    const rows = document.getElementById("rows");
    rows.prepend(tr);
    while (rows.children.length > KEEP) rows.lastChild.remove();
  });
  source.addEventListener("stats", e => {
    const s = JSON.parse(e.data);
    document.getElementById("counts").textContent = "sent " + s.sent + " · matched " + s.matched + " · skipped " + s.skipped + (s.behind ? " · missed " + s.behind + " (page behind)" : "") + (s.lost ? " · lost " + s.lost + " (stream behind, any distribution)" : "");
  });
}
document.getElementById("filters").onsubmit = ev => { ev.preventDefault(); document.getElementById("rows").replaceChildren(); if (!paused) connect(); };
document.getElementById("pause").onclick = () => {
  paused = !paused;
  document.getElementById("pause").textContent = paused ? "Resume" : "Pause";
  if (paused) { source.close(); document.getElementById("state").textContent = "paused"; } else connect();
};
// Filters may come in the page's own query string (?status=5xx).
const given = new URLSearchParams(location.search);
for (const input of document.querySelectorAll("#filters input")) if (given.has(input.name)) input.value = given.get(input.name);
if (given.get("paused") === "1") { paused = true; document.getElementById("pause").textContent = "Resume"; document.getElementById("state").textContent = "paused"; }
columns(); header();
if (!paused) connect();
