// The fleet page: the machines' summaries from the page, then each change
// from the API's watch (Server-Sent Events; the browser resumes from the
// last event's id by itself). Text goes in with textContent only.
"use strict";
const machines = new Map();
for (const m of JSON.parse(document.getElementById("initial").textContent)) machines.set(m.name, m);
const working = new Set(["commissioning", "deploying", "releasing", "erasing"]);
const stuckAfter = 30 * 60 * 1000;

function rank(m) {
  if (m.phase && m.phase.startsWith("failed-")) return 0;
  if (stuck(m)) return 1;
  return 2;
}
function stuck(m) {
  return working.has(m.phase) && m.phaseStartedAt && Date.now() - Date.parse(m.phaseStartedAt) > stuckAfter;
}
function since(t) {
  if (!t) return "";
  const s = Math.max(0, Math.round((Date.now() - Date.parse(t)) / 1000));
  if (s < 120) return s + "s";
  if (s < 7200) return Math.round(s / 60) + "m";
  if (s < 172800) return Math.round(s / 3600) + "h";
  return Math.round(s / 86400) + "d";
}
function cell(tr, text) { const td = document.createElement("td"); td.textContent = text || ""; tr.appendChild(td); return td; }

function render() {
  const list = [...machines.values()].sort((a, b) => rank(a) - rank(b) || a.name.localeCompare(b.name));
  const body = document.createElement("tbody");
  for (const m of list) {
    const tr = document.createElement("tr");
    tr.dataset.name = m.name;
    if (rank(m) === 0) tr.className = "failed"; else if (rank(m) === 1) tr.className = "stuck";
    const a = document.createElement("a");
    a.href = "/machines/" + encodeURIComponent(m.name);
    a.textContent = m.name;
    cell(tr).appendChild(a);
    cell(tr, m.rack);
    cell(tr, m.phase).className = "phase-cell";
    cell(tr, since(m.phaseStartedAt));
    cell(tr, m.state);
    cell(tr, m.deployedImage || m.image);
    cell(tr, m.reason || m.message);
    cell(tr, (m.warnings || []).join(", "));
    body.appendChild(tr);
  }
  document.querySelector("#machines tbody").replaceWith(body);
  for (const td of document.querySelectorAll("#counts td")) td.textContent = "0";
  for (const m of machines.values()) {
    const row = document.querySelector('#counts tr[data-rack="' + CSS.escape(m.rack || "") + '"]');
    if (!row) continue;
    for (const p of [m.phase || "", ""]) {
      const td = row.querySelector('td[data-phase="' + CSS.escape(p) + '"]');
      if (td) td.textContent = String(Number(td.textContent) + 1);
      if (p === "") break;
    }
  }
}

render();
const live = document.getElementById("live");
const es = new EventSource("/api/v1/watch");
es.addEventListener("hello", () => { live.textContent = "live"; });
es.addEventListener("machine", (e) => {
  const c = JSON.parse(e.data);
  if (c.deleted) machines.delete(c.name); else machines.set(c.name, c.machine);
  render();
});
es.onerror = () => { live.textContent = "reconnecting…"; };
setInterval(render, 30000); // times in phase
