// JARVIS live dashboard: folds the feed (/events, server-sent events) into the page.
// Messages are node events of the run-directory schema (plus `host`), faults (rows of faults.csv with
// ev=fault), and topology / phase / end.  window.jarvis holds the folded state (tests read it).
"use strict";

const jarvis = window.jarvis = {
  tokens: 0, layerCount: 0, faults: [], out: new Set(), lags: [], live: false, replay: false, phase: "", hops: new Map(),
  nodes: new Map(),  // index -> nodes.csv row
  firstSeen: {},  // event kind -> when the page first drew one (ms, this machine's clock)
};
const byName = new Map();  // host name -> index
const $ = (id) => document.getElementById(id);
const ms = (ns) => (ns / 1e6).toFixed(1);
const nowMs = () => performance.timeOrigin + performance.now();

function layerSpan(layers) {
  const list = String(layers || "").split(" ").filter((x) => x !== "");
  return list.length ? `layers ${list[0]}–${list[list.length - 1]}` : "tokenizer · embeddings · head";
}

function drawTopology(msg) {
  $("run-label").textContent = `${msg.label} · ${msg.model} · on failure: ${msg.policy}` +
    (msg.replay ? " · replay" : "");
  jarvis.replay = Boolean(msg.replay);
  const box = $("topology");
  box.replaceChildren();
  const rows = [...msg.nodes].sort((a, b) => a.index - b.index);
  jarvis.layerCount = rows.reduce((n, row) => n + String(row.layers || "").split(" ").filter((x) => x).length, 0);
  rows.forEach((row, i) => {
    jarvis.nodes.set(row.index, row);
    byName.set(row.name, row.index);
    const card = document.createElement("div");
    card.className = "node" + (row.index === 0 ? " user" : "");
    card.dataset.index = row.index;
    card.innerHTML = `<div class="name"></div><div class="meta layers"></div><div class="meta profile"></div>` +
      `<span class="badge"></span>`;
    card.querySelector(".name").textContent = row.name + (row.index === 0 ? " (user)" : "");
    card.querySelector(".layers").textContent = layerSpan(row.layers) +
      (row.replicas ? ` · replicas ${row.replicas}` : "");
    card.querySelector(".profile").textContent = row.profile || "";
    box.append(card);
    const next = rows[(i + 1) % rows.length];
    const hop = document.createElement("div");
    hop.className = "hop";
    hop.dataset.hop = `${row.index}-${next.index}`;
    hop.textContent = "–";
    box.append(hop);
  });
  $("chain-note").textContent = `${rows.length - 1} layer nodes; arrows: last round trip of each hop`;
}

function card(index) { return document.querySelector(`.node[data-index="${index}"]`); }

// The arrows into and out of a node that is out carry figures from before it failed: greyed until it rejoins.
function markHops(index, stale) {
  for (const arrow of document.querySelectorAll(`.hop[data-hop^="${index}-"], .hop[data-hop$="-${index}"]`)) {
    if (stale && arrow.classList.contains("reroute")) continue;  // the reroute's ack came first (another host)
    arrow.classList.toggle("stale", stale);
    if (!stale) arrow.classList.remove("reroute");
  }
}

function logLine(text) {
  const li = document.createElement("li");
  li.textContent = text;
  $("log").prepend(li);
}

// -- latency chart ------------------------------------------------------------------------------------
const chart = $("latency");
const layout = {
  margin: { t: 10, r: 10, b: 40, l: 50 }, xaxis: { title: { text: "token" } },
  yaxis: { title: { text: "ms" }, rangemode: "tozero" }, shapes: [], annotations: [], showlegend: false,
};
Plotly.newPlot(chart, [{ x: [], y: [], mode: "lines+markers", marker: { color: [], size: 6 },
  line: { color: "#0969da", width: 1 }, hovertemplate: "token %{x}: %{y:.1f} ms<extra></extra>" }],
  layout, { displaylogo: false, responsive: true, staticPlot: false });

function addToken(msg) {
  jarvis.tokens += 1;
  $("token-count").textContent = jarvis.tokens;
  const out = String(msg.nodes_out || "").trim();
  const tokens = $("tokens");
  if (!tokens.querySelector(`.session[data-session="${msg.session}"]`)) {
    const head = document.createElement("span");
    head.className = "session";
    head.dataset.session = msg.session;
    head.textContent = `prompt ${msg.prompt_index}, repeat ${msg.repeat} (session ${msg.session})`;
    tokens.append(head);
  }
  const span = document.createElement("span");
  const layers = String(msg.layers || "").split(" ").filter((x) => x !== "").length;
  span.className = "tok" + (out ? " degraded" : "");
  span.textContent = msg.text;
  span.title = `step ${msg.step} · ${layers} layers · route ${msg.route}` + (out ? ` · out: ${out}` : "");
  tokens.append(span);
  const row = document.createElement("tr");
  const applied = `${layers}/${jarvis.layerCount}`;
  for (const value of [String(msg.session).slice(0, 8), msg.step, JSON.stringify(msg.text), applied,
    ms(msg.latency_ns), out || "–"]) {
    const td = document.createElement("td");
    td.textContent = value;
    row.append(td);
  }
  const body = $("recent").tBodies[0];
  body.prepend(row);
  while (body.rows.length > 12) body.deleteRow(-1);
  pending.x.push(jarvis.tokens);
  pending.y.push(msg.latency_ns / 1e6);
  pending.color.push(out ? "#cf222e" : "#0969da");
  redraw();
}

// The chart is redrawn at most once per frame, with every point and marker that came since: a redraw per
// token would make a busy page fall behind the feed.
const pending = { x: [], y: [], color: [], layout: false };
let redrawing = false;
function redraw() {
  if (redrawing) return;
  redrawing = true;
  requestAnimationFrame(() => {
    redrawing = false;
    if (pending.x.length) {
      Plotly.extendTraces(chart, { x: [pending.x], y: [pending.y], "marker.color": [pending.color] }, [0]);
      pending.x = []; pending.y = []; pending.color = [];
    }
    if (pending.layout) {
      pending.layout = false;
      Plotly.relayout(chart, { shapes: layout.shapes, annotations: layout.annotations });
    }
  });
}

function addFault(msg) {
  const targets = String(msg.target).split(" ");
  const fault = { ...msg, targets, atToken: jarvis.tokens, detected: null };
  jarvis.faults.push(fault);
  const li = document.createElement("li");
  li.className = "fault";
  li.dataset.target = msg.target;
  li.dataset.action = msg.action;
  li.dataset.state = "effective";
  fault.li = li;
  li.textContent = `${msg.action} ${msg.target} (${msg.trigger}) in effect after token ${jarvis.tokens}` +
    (msg.detail ? ` — ${msg.detail}` : "");
  $("fault-list").append(li);
  const undo = msg.action === "resume" || msg.action === "link_up";
  for (const name of targets) {
    const c = card(byName.get(name));
    if (!c) continue;
    c.classList.toggle("fault", !undo);
    c.querySelector(".badge").textContent = undo ? "" : msg.action;
  }
  const x = jarvis.tokens + 0.5;
  layout.shapes.push({ type: "line", x0: x, x1: x, yref: "paper", y0: 0, y1: 1,
    line: { color: "#cf222e", dash: "dash", width: 1.5 } });
  layout.annotations.push({ x, yref: "paper", y: 1, text: `${msg.action} ${msg.target}`, showarrow: false,
    xanchor: "left", font: { color: "#cf222e", size: 11 } });
  pending.layout = true;
  redraw();
}

function nodeOut(msg) {
  const index = Number(msg.peer);
  jarvis.out.add(index);
  const c = card(index);
  if (c) {
    c.classList.add("out");
    c.querySelector(".badge").textContent = `out: ${msg.kind}`;
  }
  markHops(index, true);
  const name = jarvis.nodes.get(index)?.name ?? `node ${index}`;
  const fault = [...jarvis.faults].reverse().find((f) => f.detected === null && f.targets.includes(name) &&
    f.action !== "resume" && f.action !== "link_up");
  if (fault) {
    fault.detected = msg.wall_ns - fault.effective_wall_ns;
    fault.li.dataset.state = "detected";
    fault.li.textContent += `; detected after ${ms(fault.detected)} ms (reported by node ${msg.reporter})`;
  }
  logLine(`${name} out (${msg.kind}): ${msg.reason}; layers ${msg.layers.join(" ")}` +
    (msg.critical ? " CRITICAL" : "") + " skipped or served by a replica");
}

function rejoin(msg) {
  const index = Number(msg.peer);
  jarvis.out.delete(index);
  const c = card(index);
  if (c) { c.classList.remove("out", "fault"); c.querySelector(".badge").textContent = ""; }
  markHops(index, false);
  logLine(`${jarvis.nodes.get(index)?.name ?? index} rejoined`);
}

function addAck(msg) {
  const key = `${msg.src}-${msg.dst}`;
  const hop = jarvis.hops.get(key) || { src: msg.src, dst: msg.dst, rtts: [], row: null };
  jarvis.hops.set(key, hop);
  hop.rtts.push(msg.rtt_ns);
  const last = ms(msg.rtt_ns);
  const sorted = [...hop.rtts].sort((a, b) => a - b);
  const median = ms(sorted[Math.floor(sorted.length / 2)]);
  const arrow = document.querySelector(`.hop[data-hop="${key}"]`);
  if (arrow) {
    arrow.textContent = `${last} ms`;
    arrow.classList.remove("reroute", "stale");
  } else {
    // A reroute around a node that is out: drawn on the arrow into the receiver, whose own sender is out.
    const into = document.querySelector(`.hop[data-hop$="-${msg.dst}"]`);
    if (into && jarvis.out.has(Number(into.dataset.hop.split("-")[0]))) {
      into.textContent = `from ${jarvis.nodes.get(msg.src)?.name ?? msg.src}: ${last} ms`;
      into.classList.add("reroute");
      into.classList.remove("stale");
    }
  }
  if (!hop.row) {
    hop.row = $("hops").tBodies[0].insertRow();
    for (let i = 0; i < 5; i++) hop.row.insertCell();
    const names = (i) => jarvis.nodes.get(i)?.name ?? i;
    hop.row.cells[0].textContent = `${names(msg.src)} → ${names(msg.dst)}`;
    if (!arrow) { hop.row.className = "reroute"; hop.row.cells[4].textContent = "reroute"; }
  }
  hop.row.cells[1].textContent = hop.rtts.length;
  hop.row.cells[2].textContent = last;
  hop.row.cells[3].textContent = median;
}

function setPhase(phase, detail) {
  jarvis.phase = phase;
  const status = $("status");
  status.dataset.phase = phase;
  status.textContent = detail ? `${phase}: ${detail}` : phase;
}

// Update lag: from when a node logged the event (a fault: took effect) to when the page drew it.  Meaningful
// where the nodes share this machine's clock (local, emu testbeds); not measured in a replay.
function noteLag(msg) {
  const at = msg.ev === "fault" ? msg.effective_wall_ns : msg.wall_ns;
  if (!jarvis.live || jarvis.replay || !at) return;
  jarvis.lags.push(nowMs() - at / 1e6);
  showLag();
}
let lagShown = false;
function showLag() {
  if (lagShown) return;
  lagShown = true;
  setTimeout(() => { lagShown = false; writeLag(); }, 250);
}
function writeLag() {
  const sorted = [...jarvis.lags].sort((a, b) => a - b);
  $("lag").textContent = `update lag (event logged → drawn): median ${sorted[Math.floor(sorted.length / 2)]
    .toFixed(0)} ms, max ${sorted[sorted.length - 1].toFixed(0)} ms over ${sorted.length} events`;
}

const handlers = {
  topology: drawTopology,
  phase: (m) => setPhase(m.phase, m.detail),
  live: () => { jarvis.live = true; },
  token: addToken,
  fault: addFault,
  node_out: nodeOut,
  rejoin,
  ack: addAck,
  retry: (m) => logLine(`session ${m.session} step ${m.step}: re-sent (${m.kind} of node ${m.peer}: ${m.reason})`),
  peer_failed: (m) => logLine(`${m.host} reports node ${m.peer} failed (${m.kind}: ${m.reason})`),
  session_end: (m) => { if (m.host === jarvis.nodes.get(0)?.name) logLine(`session ${m.session} ended`); },
  session_error: (m) => logLine(`session ${m.session} failed: ${m.error}`),
  end: (m) => {
    setPhase("done", m.complete ? "run complete" : "run INCOMPLETE");
    if (m.report) $("report-link").hidden = false;
  },
};

const source = new EventSource("/events");
source.onopen = () => { if (!jarvis.phase) setPhase("connected", "waiting for the run"); };
source.onmessage = (event) => {
  const msg = JSON.parse(event.data);
  jarvis.firstSeen[msg.ev] ??= nowMs();
  const handle = handlers[msg.ev];
  if (handle) handle(msg);
  if (msg.ev !== "live") noteLag(msg);
};
source.onerror = () => { if (jarvis.phase !== "done") setPhase("disconnected", "the dashboard server is gone"); };
