// The operator console's script: keeps the admin token (from #token=… in the address, or
// the sign-in form) in sessionStorage, polls /api/overview every second and the dead
// letters and audit log every five, and sends replays. Data is written with
// textContent only, never as markup.
"use strict";

const $ = (id) => document.getElementById(id);
let token = sessionStorage.getItem("pos-console-token") || "";
const fromHash = new URLSearchParams(location.hash.slice(1)).get("token");
if (fromHash) {
  token = fromHash;
  sessionStorage.setItem("pos-console-token", token);
  history.replaceState(null, "", location.pathname);
}

async function api(path, options = {}) {
  const headers = { Authorization: "Bearer " + token, ...(options.headers || {}) };
  const r = await fetch(path, { ...options, headers });
  const body = await r.json().catch(() => ({}));
  if (r.status === 401 || r.status === 403) showLogin(body);
  if (!r.ok) throw new Error((body.error && body.error.message) || r.statusText);
  return body;
}

function showLogin(body) {
  $("login").style.display = "flex";
  $("status").textContent = (body.error && body.error.message) || "sign in";
}

$("login").addEventListener("submit", (e) => {
  e.preventDefault();
  token = $("token").value.trim();
  sessionStorage.setItem("pos-console-token", token);
  $("login").style.display = "none";
  refresh();
  refreshSlow();
});

function rows(tbody, list, cells) {
  const t = $(tbody);
  t.replaceChildren(...list.map((item) => {
    const tr = document.createElement("tr");
    for (const c of cells(item)) {
      const td = document.createElement("td");
      if (c instanceof Node) td.append(c); else td.textContent = c == null ? "–" : String(c);
      tr.append(td);
    }
    return tr;
  }));
}

const fmt = (n, digits = 1) => (n == null ? "–" : Number(n).toFixed(digits));
const ago = (ms) => { const s = (Date.now() - ms) / 1000; return s < 1 ? "now" : s < 120 ? fmt(s, 0) + " s ago" : new Date(ms).toISOString(); };
const secs = (s) => (s == null ? "–" : s < 1 ? fmt(s * 1000, 0) + " ms" : fmt(s, 1) + " s");

function chart(id, series, key, max) {
  $(id).setAttribute("points", series.map((p, i) => `${i},${100 - (100 * p[key]) / max}`).join(" "));
}

async function refresh() {
  if (!token) { showLogin({}); return; }
  let o;
  try { o = await api("/api/overview"); } catch (e) { $("status").textContent = "error: " + e.message; return; }
  $("status").textContent = "live";
  $("updated").textContent = "updated " + o.at;
  const t = o.traffic;
  $("accepted-rate").textContent = fmt(t.acceptedPerSec);
  $("completed-rate").textContent = fmt(t.completedPerSec);
  $("failed-rate").textContent = fmt(t.failedPerSec);
  $("p50").textContent = t.latency.p50Ms ?? "–";
  $("p99").textContent = t.latency.p99Ms ?? "–";
  $("completed-total").textContent = t.totals.completed;
  $("failed-total").textContent = t.totals.failed;
  $("accepted-total").textContent = t.totals.accepted;
  const max = Math.max(1, ...t.series.map((p) => Math.max(p.completed, p.failed)));
  chart("chart-completed", t.series, "completed", max);
  chart("chart-failed", t.series, "failed", max);

  $("alerts").replaceChildren(...o.alerts.map((a) => {
    const d = document.createElement("div");
    d.className = "alert " + (a.firing ? "firing" : "ok");
    d.dataset.alert = a.name;
    d.textContent = (a.firing ? "FIRING " : "ok ") + a.name + ": " + a.message;
    return d;
  }));

  const states = o.states.value || {};
  rows("states", Object.entries(states), ([s, n]) => [s, n]);
  $("states-asof").textContent = o.states.error ? "(" + o.states.error + ")" : o.states.asOf ? "as of " + o.states.asOf : "";

  const p = o.pipeline;
  if (p) {
    rows("consumers", ["processor", "persister"], (c) => [c, p[c].pending, p[c].ackPending, p[c].redelivered, secs(p[c].oldestUnackedSecs)]);
    $("dead-letters").textContent = p.deadLetters;
    $("unstored").textContent = p.unstoredEvents;
    $("pipeline-age").textContent = "read " + fmt(p.ageSecs, 1) + " s ago";
  }
  rows("streams", o.streams.value || [], (s) => [
    s.name, s.replicas, s.storage, s.messages, s.maxMsgs ?? "unlimited",
    s.maxAgeSecs == null ? "none" : s.maxAgeSecs + " s", s.discard, s.duplicateWindowSecs + " s",
    s.leader ?? "(single server)",
    s.peers.map((x) => `${x.name}${x.offline ? " offline" : x.current ? "" : " behind " + (x.lag ?? "?")}`).join(", ") || "–",
  ]);
  $("terminal-count").textContent = o.terminalCount;
  rows("terminals", o.terminals, (x) => [x.tenantId, x.terminalId, ago(x.lastSeenMs), x.invoices]);
}

function replayButton(letter) {
  const b = document.createElement("button");
  b.textContent = "Replay";
  b.className = "replay";
  b.dataset.invoice = letter.invoiceId;
  b.addEventListener("click", () => replay({ invoiceId: letter.invoiceId }));
  return b;
}

async function replay(selector) {
  $("replay-result").textContent = "replaying…";
  try {
    const r = await api("/api/dlq/replay", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(selector),
    });
    $("replay-result").textContent = `replayed ${r.replayedCount}, skipped ${r.skippedCount}` +
      (r.skipped && r.skipped.length ? " (" + r.skipped.map((s) => s.reason).join("; ") + ")" : "");
  } catch (e) {
    $("replay-result").textContent = "replay failed: " + e.message;
  }
  refreshSlow();
}

let confirmAll = false;
$("replay-all").addEventListener("click", () => {
  if (!confirmAll) {
    confirmAll = true;
    $("replay-all").textContent = "Click again to replay every letter";
    setTimeout(() => { confirmAll = false; $("replay-all").textContent = "Replay all"; }, 5000);
    return;
  }
  confirmAll = false;
  $("replay-all").textContent = "Replay all";
  replay({ all: true });
});

async function refreshSlow() {
  if (!token) return;
  try {
    const d = await api("/api/dlq?limit=100");
    rows("dlq", d.deadLetters, (l) => l.undecodable
      ? [l.seq, "(undecodable)", "–", "–", "–", l.subject, "–", ""]
      : [l.seq, l.invoiceId, l.tenantId, l.attempts, l.lastError && l.lastError.code, l.lastError && l.lastError.message, l.deadAt, replayButton(l)]);
  } catch (e) {
    rows("dlq", [e.message], (m) => ["–", "unavailable: " + m, "", "", "", "", "", ""]);
  }
  try {
    const a = await api("/api/audit?limit=20");
    rows("audit", a.entries, (x) => [x.at, x.actor, x.action, JSON.stringify(x.target), x.outcome ? JSON.stringify(x.outcome) : "(no outcome)"]);
  } catch (e) { /* shown by the overview's status */ }
}

refresh();
refreshSlow();
setInterval(refresh, 1000);
setInterval(refreshSlow, 5000);
