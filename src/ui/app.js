// The airlock dashboard. Plain JavaScript, no build step, nothing from elsewhere.
//
// The token is asked for once, kept in sessionStorage (this tab only) and sent in the
// Authorization header; it never goes into a URL. The state arrives over Server-Sent Events
// from GET /events/stream, read with fetch() and a stream reader because EventSource cannot
// send headers. Countdowns tick locally between two snapshots; nothing polls the daemon.
"use strict";

const TOKEN_KEY = "airlock-token";
const MAX_BACKOFF_MS = 10000;

let controller = null; // aborts the open stream
let backoffMs = 1000;
let reconnectTimer = null;

const $ = (id) => document.getElementById(id);

function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

function setConnection(text, cls) {
  const c = $("connection");
  c.textContent = text;
  c.className = "badge " + cls;
}

function showLogin(message) {
  if (controller) controller.abort();
  controller = null;
  clearTimeout(reconnectTimer);
  $("dashboard").hidden = true;
  $("signout").hidden = true;
  $("login").hidden = false;
  $("login-error").textContent = message || "";
  setConnection("signed out", "off");
  for (const id of ["locks", "agents", "queues", "tasks", "events", "notes", "history"]) {
    $(id).tBodies[0].replaceChildren();
  }
}

function showDashboard() {
  $("login").hidden = true;
  $("dashboard").hidden = false;
  $("signout").hidden = false;
}

async function signIn(event) {
  event.preventDefault();
  const candidate = $("token").value.trim();
  if (!candidate) return;
  let res;
  try {
    res = await fetch("/status", { headers: { Authorization: "Bearer " + candidate }, cache: "no-store" });
  } catch (e) {
    $("login-error").textContent = "The daemon does not answer: " + e.message;
    return;
  }
  if (res.status === 401) {
    $("login-error").textContent = "Wrong token.";
    return;
  }
  if (!res.ok) {
    $("login-error").textContent = "The daemon refused: HTTP " + res.status;
    return;
  }
  sessionStorage.setItem(TOKEN_KEY, candidate);
  $("token").value = "";
  showDashboard();
  render(await res.json());
  connect();
}

function signOut() {
  sessionStorage.removeItem(TOKEN_KEY);
  showLogin("");
}

function scheduleReconnect() {
  clearTimeout(reconnectTimer);
  setConnection("reconnecting", "wait");
  reconnectTimer = setTimeout(connect, backoffMs);
  backoffMs = Math.min(backoffMs * 2, MAX_BACKOFF_MS);
}

async function connect() {
  const t = token();
  if (!t) return showLogin("");
  if (controller) controller.abort();
  controller = new AbortController();
  const mine = controller;
  let res;
  try {
    res = await fetch("/events/stream", {
      headers: { Authorization: "Bearer " + t, Accept: "text/event-stream" },
      cache: "no-store",
      signal: mine.signal,
    });
  } catch (e) {
    if (mine === controller) scheduleReconnect();
    return;
  }
  if (res.status === 401) {
    sessionStorage.removeItem(TOKEN_KEY);
    return showLogin("The token was refused; sign in again.");
  }
  if (!res.ok || !res.body) {
    if (mine === controller) scheduleReconnect();
    return;
  }
  setConnection("live", "live");
  const reader = res.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buffer.search(/\r?\n\r?\n/)) >= 0) {
        const block = buffer.slice(0, cut);
        buffer = buffer.slice(cut).replace(/^\r?\n\r?\n/, "");
        handleEvent(block);
      }
    }
  } catch (e) {
    // aborted or cut: reconnect below unless signed out
  }
  if (mine === controller) scheduleReconnect();
}

// One SSE block: "event: x" and "data: ..." lines; lines starting with ":" are heartbeats.
function handleEvent(block) {
  let name = "message";
  const data = [];
  for (const line of block.split(/\r?\n/)) {
    if (line.startsWith(":")) continue;
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "event") name = value;
    else if (field === "data") data.push(value);
  }
  if (name === "status" && data.length) {
    backoffMs = 1000;
    render(JSON.parse(data.join("\n")));
  } else if (name === "failure") {
    setConnection("daemon error: " + data.join(" "), "wait");
  }
}

// ---------------------------------------------------------------- rendering

function cell(text, cls) {
  const td = document.createElement("td");
  if (text instanceof Node) td.appendChild(text);
  else td.textContent = text === undefined || text === null ? "" : String(text);
  if (cls) td.className = cls;
  return td;
}

// A countdown cell: seconds left now, ticking locally until the next snapshot.
function countdown(seconds, receivedAt) {
  const span = document.createElement("span");
  span.className = "countdown";
  span.dataset.deadline = String(receivedAt + seconds * 1000);
  span.textContent = formatSeconds(seconds);
  return span;
}

function formatSeconds(s) {
  s = Math.max(0, Math.round(s));
  if (s < 120) return s + "s";
  if (s < 7200) return Math.floor(s / 60) + "m " + (s % 60) + "s";
  return Math.floor(s / 3600) + "h " + Math.floor((s % 3600) / 60) + "m";
}

function tick() {
  const now = Date.now();
  for (const el of document.querySelectorAll(".countdown")) {
    el.textContent = formatSeconds((Number(el.dataset.deadline) - now) / 1000);
  }
}

function fill(id, rows, colspan, emptyText) {
  const body = $(id).tBodies[0];
  if (!rows.length) {
    const tr = document.createElement("tr");
    const td = cell(emptyText, "empty");
    td.colSpan = colspan;
    tr.appendChild(td);
    rows = [tr];
  }
  body.replaceChildren(...rows);
  const count = $(id + "-count");
  if (count) count.textContent = "(" + (rows[0].firstChild.className === "empty" ? 0 : rows.length) + ")";
}

function row(cells, attrs) {
  const tr = document.createElement("tr");
  for (const c of cells) tr.appendChild(c);
  for (const [k, v] of Object.entries(attrs || {})) tr.dataset[k] = v;
  return tr;
}

function lineList(line, at) {
  const ol = document.createElement("ol");
  ol.className = "line";
  for (const w of line) {
    const li = document.createElement("li");
    li.className = w.state;
    li.dataset.agent = w.agent_id;
    li.append(
      w.agent_id + " — " + (w.state === "grace" ? "in grace, place kept " : "parked, ") ,
      countdown(w.seconds_left, at),
      " left (waiting " + formatSeconds(w.waiting_seconds) + ")"
    );
    ol.appendChild(li);
  }
  return ol;
}

// What a history entry says besides its kind, name and agent.
function details(h) {
  const parts = [];
  if (h.fence !== undefined) parts.push("fence " + h.fence);
  if (h.task_id !== undefined) parts.push("task " + h.task_id);
  if (h.generation !== undefined) parts.push("generation " + h.generation);
  if (h.reason) parts.push("reason: " + h.reason);
  if (h.error) parts.push("error: " + h.error);
  return parts.join(", ");
}

function render(v) {
  const at = Date.now();
  const locks = (v.locks || []).map((l) => {
    const mode = l.limit ? " (shared, limit " + l.limit + ")" : l.mode === "shared" ? " (shared)" : "";
    const holder = l.agent_id
      ? cell(l.agent_id + mode)
      : cell("free — reserved for " + l.reserved_for + " (" + formatSeconds(l.reserved_for_seconds || 0) + ")", "reserved");
    return row(
      [
        cell(l.name, "mono"),
        holder,
        cell(l.fence === undefined ? "" : l.fence),
        cell(l.agent_id ? countdown(l.expires_in_seconds, at) : ""),
        cell(l.line && l.line.length ? lineList(l.line, at) : "—"),
      ],
      { lock: l.name, holder: l.agent_id || "", reservedFor: l.reserved_for || "" }
    );
  });
  fill("locks", locks, 5, "no locks held");

  fill(
    "agents",
    (v.agents || []).map((a) =>
      row([cell(a.agent_id, "mono"), cell(countdown(a.expires_in_seconds, at)), cell(a.locks_held), cell(a.leases_held)], { agent: a.agent_id })
    ),
    4,
    "no agents present"
  );

  fill(
    "queues",
    (v.queues || []).map((q) =>
      row([cell(q.queue, "mono"), cell(q.pending), cell(q.claimed), cell(q.completed), cell(q.failed), cell(q.waiting_claimers)], { queue: q.queue })
    ),
    6,
    "no queues"
  );

  fill(
    "tasks",
    (v.tasks || []).map((t) =>
      row(
        [
          cell(t.id),
          cell(t.queue, "mono"),
          cell(t.state),
          cell(t.priority),
          cell(t.payload, "mono"),
          cell(t.lease_agent || ""),
          cell(t.lease_expires_in_seconds === undefined ? "" : countdown(t.lease_expires_in_seconds, at)),
        ],
        { task: String(t.id) }
      )
    ),
    7,
    "no open tasks"
  );

  fill(
    "events",
    (v.events || []).map((e) =>
      row([cell(e.name, "mono"), cell(e.generation), cell(e.cleared_at_generation), cell(e.waiters)], { event: e.name })
    ),
    4,
    "no events"
  );

  fill(
    "notes",
    (v.notes || []).map((n) =>
      row(
        [
          cell(n.key, "mono"),
          cell(n.value.length > 200 ? n.value.slice(0, 199) + "…" : n.value, "mono"),
          cell(n.author || ""),
          cell(n.expires_in_seconds === undefined ? "never" : countdown(n.expires_in_seconds, at)),
        ],
        { note: n.key }
      )
    ),
    4,
    "no notes"
  );

  // The timeline comes with the live stream's snapshots (not with the sign-in's /status).
  if (v.history) {
    fill(
      "history",
      v.history.map((h) =>
        row(
          [
            cell(new Date(h.at).toLocaleTimeString(), "mono"),
            cell(h.kind),
            cell(h.name, "mono"),
            cell(h.agent_id || ""),
            cell(details(h)),
          ],
          { kind: h.kind, name: h.name, agent: h.agent_id || "" }
        )
      ),
      5,
      "nothing has happened yet"
    );
  }

  $("updated").textContent = "updated " + new Date(at).toLocaleTimeString();
}

document.addEventListener("DOMContentLoaded", () => {
  $("login-form").addEventListener("submit", signIn);
  $("signout").addEventListener("click", signOut);
  setInterval(tick, 1000);
  if (token()) {
    showDashboard();
    connect();
  } else {
    showLogin("");
  }
});
