// relive console: the timeline of an ION, its captures, replay, export, relaunch and verify.
// Vanilla JS and one canvas; the server aggregates, so a window of any size draws at once.
"use strict";

const KIND_COLORS = {
  lifecycle: "#4f7cc9", stat: "#2aa198", model: "#d98a00", dataset: "#8c6d3f",
  human_action: "#8a3fd1", error: "#d93838", config: "#6c71c4", span: "#9aa5b8",
  log: "#7a8599", custom: "#b05f8a", unspecified: "#999",
};
const RUN_COLORS = {
  SUCCEEDED: "#1f9d55", FAILED: "#d93838", RUNNING: "#d98a00", PENDING: "#d98a00",
  WAITING: "#c77dff", CANCELLED: "#8a8f9b", "": "#4f7cc9",
};
// Individual events are fetched when the window holds at most this many.
const ZOOM_EVENTS = 3000;
const GUTTER = 150, AXIS = 26, RUN_ROW = 12, LANE = 96;

const S = {
  ions: [], ion: null, view: null, hist: null, events: null, selection: null,
  live: null, liveTimer: null, captures: [], hits: [], loading: 0, seq: 0,
  replay: null, relaunch: null, hover: null, drag: null, tab: "events",
};

const $ = (sel) => document.querySelector(sel);
const el = (tag, attrs = {}, ...kids) => {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v;
    else if (k === "text") e.textContent = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else if (k.startsWith("data-")) e.setAttribute(k, v);
    else e[k] = v;
  }
  for (const kid of kids) if (kid != null) e.append(kid);
  return e;
};

async function api(path, opts = {}) {
  const init = { method: opts.method || "GET", headers: {} };
  if (opts.body !== undefined) {
    init.body = JSON.stringify(opts.body);
    init.headers["Content-Type"] = "application/json";
  }
  const r = await fetch(path, init);
  const data = await r.json().catch(() => ({}));
  if (!r.ok) {
    const err = (data && data.error) || {};
    throw new Error(`${err.code || r.status}: ${err.message || r.statusText}`);
  }
  return data;
}

// ---- time formatting

const pad = (n, w = 2) => String(n).padStart(w, "0");
function fmtTime(ms, withMs = false) {
  const d = new Date(ms);
  const s = `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  return withMs ? `${s}.${pad(d.getMilliseconds(), 3)}` : s;
}
function fmtClock(ms) {
  const d = new Date(ms);
  return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)}`;
}
function fmtSpan(ms) {
  ms = Math.abs(ms);
  if (ms < 1000) return `${Math.round(ms)} ms`;
  if (ms < 60000) return `${(ms / 1000).toFixed(ms < 10000 ? 2 : 1)} s`;
  if (ms < 3600000) return `${(ms / 60000).toFixed(1)} min`;
  if (ms < 86400000) return `${(ms / 3600000).toFixed(1)} h`;
  return `${(ms / 86400000).toFixed(1)} d`;
}
function toLocalInput(ms) {
  const d = new Date(ms);
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}
const shortRun = (run) => (run || "").split("/").pop();

// ---- IONs

async function loadIons() {
  const { ions } = await api("/api/ions");
  S.ions = ions;
  const ul = $("#ion-list");
  ul.replaceChildren();
  if (!ions.length) ul.append(el("li", { class: "muted", text: "no IONs registered yet" }));
  for (const ion of ions) {
    ul.append(el("li", {
      "data-ion": ion.name, class: S.ion && S.ion.name === ion.name ? "active" : "",
      onclick: () => openIon(ion.name),
    }, el("b", { text: ion.id }), " ", el("span", { class: "muted", text: `rev ${ion.latest_revision}` })));
  }
}

async function openIon(name, view) {
  stopLive();
  const ion = await api(`/api/ions/${encodeURIComponent(name.replace(/^ions\//, ""))}`);
  S.ion = ion;
  S.selection = null;
  S.events = null;
  document.querySelectorAll("#ion-list li").forEach((li) => li.classList.toggle("active", li.dataset.ion === name));
  $("#ion-title").textContent = ion.id;
  $("#ion-sub").textContent = `revision ${ion.latest_revision} · ${ion.nodes.length} nodes · retention ${ion.retention_days || 7} d`;
  $("#empty").hidden = true;
  history.replaceState(null, "", `/ions/${ion.id}`);
  S.view = view || null;
  await loadView();
  renderCaptures();
}

// ---- the window

function setView(start, end) {
  start = Math.round(start); end = Math.round(end);
  if (end - start < 10) end = start + 10;
  S.view = { start, end };
  $("#from").value = toLocalInput(start);
  $("#to").value = toLocalInput(end);
  $("#window-label").textContent = `${fmtTime(start)} → ${fmtTime(end)} (${fmtSpan(end - start)})`;
}

function buckets() {
  const c = $("#timeline");
  return Math.max(20, Math.floor((c.clientWidth - GUTTER) / 3));
}

async function loadView() {
  if (!S.ion) return;
  const seq = ++S.seq;
  const ion = S.ion.id;
  const q = new URLSearchParams({ buckets: buckets() });
  if (S.view) { q.set("start", S.view.start); q.set("end", S.view.end); }
  S.loading++;
  try {
    const hist = await api(`/api/ions/${encodeURIComponent(ion)}/histogram?${q}`);
    if (seq !== S.seq) return;
    S.hist = hist;
    setView(hist.start, hist.end);
    let events = null;
    if (hist.total <= ZOOM_EVENTS) {
      const eq = new URLSearchParams({ start: hist.start, end: hist.end, limit: ZOOM_EVENTS });
      const got = await api(`/api/ions/${encodeURIComponent(ion)}/events?${eq}`);
      if (seq !== S.seq) return;
      events = got.events;
    }
    S.events = events;
    $("#counts").textContent = `${hist.total.toLocaleString()} events` +
      (events ? "" : ` · histogram of ${hist.buckets} buckets`) +
      (hist.caught_up ? "" : " · indexing…");
    draw();
    renderEvents();
    $("#timeline").dataset.ready = "1";
    $("#timeline").dataset.total = String(hist.total);
    $("#timeline").dataset.mode = events ? "events" : "histogram";
  } catch (e) {
    $("#counts").textContent = e.message;
  } finally {
    S.loading--;
  }
}

// ---- lanes and drawing

function lanes() {
  const names = S.ion ? S.ion.nodes.map((n) => n.node) : [];
  const seen = new Set(names);
  const extra = [];
  for (const l of (S.hist ? S.hist.lanes : [])) if (!seen.has(l.node)) { extra.push(l.node); seen.add(l.node); }
  const out = [];
  if (extra.includes("")) out.push("");
  for (const n of names) out.push(n);
  for (const n of extra.sort()) if (n !== "") out.push(n);
  return out;
}
const laneLabel = (n) => (n === "" ? "(run)" : n);

function runRows(runs) {
  // Greedy rows so overlapping runs do not hide each other.
  const rows = [];
  const placed = [];
  for (const r of [...runs].sort((a, b) => a.start - b.start)) {
    let row = rows.findIndex((end) => end < r.start);
    if (row < 0) { row = rows.length; rows.push(0); }
    rows[row] = r.end;
    placed.push({ ...r, row });
  }
  return { placed, rows: Math.max(1, rows.length) };
}

function layout() {
  const c = $("#timeline");
  const ls = lanes();
  const runs = runRows(S.hist ? S.hist.runs : []);
  const runsH = Math.min(4, runs.rows) * (RUN_ROW + 3) + 8;
  return { c, ls, runs, runsH, top: AXIS + runsH, w: c.clientWidth, h: c.clientHeight };
}

function xOf(ms, L) {
  return GUTTER + ((ms - S.view.start) / (S.view.end - S.view.start)) * (L.w - GUTTER - 8);
}
function msOf(x, L) {
  return S.view.start + ((x - GUTTER) / (L.w - GUTTER - 8)) * (S.view.end - S.view.start);
}

function niceStep(span, target) {
  const raw = span / target;
  const steps = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 15000, 30000, 60000, 120000,
    300000, 600000, 900000, 1800000, 3600000, 7200000, 10800000, 21600000, 43200000, 86400000, 172800000, 604800000];
  return steps.find((s) => s >= raw) || steps[steps.length - 1];
}

function draw() {
  const L = layout();
  const { c, ls } = L;
  const dpr = window.devicePixelRatio || 1;
  const laneH = Math.max(22, Math.min(LANE, (L.h - L.top - 16) / Math.max(1, ls.length)));
  // Fill the height when there are few lanes; lanes never shrink below 22 px.
  L.laneH = laneH;
  if (c.width !== Math.round(L.w * dpr) || c.height !== Math.round(L.h * dpr)) {
    c.width = Math.round(L.w * dpr); c.height = Math.round(L.h * dpr);
  }
  const g = c.getContext("2d");
  g.setTransform(dpr, 0, 0, dpr, 0, 0);
  g.clearRect(0, 0, L.w, L.h);
  S.hits = [];
  S.layout = L;
  if (!S.view || !S.hist) return;
  g.font = "12px system-ui, sans-serif";
  g.textBaseline = "middle";

  // time axis
  const span = S.view.end - S.view.start;
  const step = niceStep(span, Math.max(2, (L.w - GUTTER) / 110));
  g.strokeStyle = "#eef0f4"; g.fillStyle = "#6b7385"; g.lineWidth = 1;
  const first = Math.ceil(S.view.start / step) * step;
  for (let t = first; t <= S.view.end; t += step) {
    const x = Math.round(xOf(t, L)) + 0.5;
    g.beginPath(); g.moveTo(x, AXIS - 6); g.lineTo(x, L.h); g.stroke();
    const label = step < 1000 ? fmtClock(t) : step < 86400000 ? fmtClock(t).slice(0, 8) : fmtTime(t).slice(0, 10);
    g.fillText(label, x + 3, 10);
  }

  // runs row
  g.fillStyle = "#1d2330"; g.font = "600 12px system-ui, sans-serif";
  g.fillText("runs", 8, AXIS + L.runsH / 2);
  g.font = "12px system-ui, sans-serif";
  const states = S.hist.run_states || {};
  for (const r of L.runs.placed) {
    if (r.row >= 4) continue;
    const x0 = Math.max(GUTTER, xOf(r.start, L)), x1 = Math.min(L.w - 8, xOf(r.end, L));
    const y = AXIS + 4 + r.row * (RUN_ROW + 3);
    const state = states[r.run] || "";
    g.fillStyle = RUN_COLORS[state] || RUN_COLORS[""];
    g.globalAlpha = 0.85;
    g.fillRect(x0, y, Math.max(3, x1 - x0), RUN_ROW);
    g.globalAlpha = 1;
    if (x1 - x0 > 60) {
      g.fillStyle = "#fff"; g.font = "10px system-ui, sans-serif";
      g.fillText(shortRun(r.run) + (state ? ` · ${state.toLowerCase()}` : ""), x0 + 4, y + RUN_ROW / 2);
      g.font = "12px system-ui, sans-serif";
    }
    S.hits.push({ x0, x1: Math.max(x0 + 3, x1), y0: y, y1: y + RUN_ROW, run: r, state, type: "run" });
  }

  // lanes
  const byLane = Object.fromEntries(S.hist.lanes.map((l) => [l.node, l]));
  let max = 1;
  for (const l of S.hist.lanes) for (const v of l.counts) if (v > max) max = v;
  ls.forEach((name, i) => {
    const y = L.top + i * laneH;
    g.fillStyle = i % 2 ? "#fafbfc" : "#fff";
    g.fillRect(GUTTER, y, L.w - GUTTER, laneH);
    g.strokeStyle = "#e6e9ef"; g.beginPath(); g.moveTo(0, y + 0.5); g.lineTo(L.w, y + 0.5); g.stroke();
    const nodeInfo = S.ion.nodes.find((n) => n.node === name);
    g.fillStyle = "#1d2330"; g.font = "600 12px system-ui, sans-serif";
    g.fillText(laneLabel(name), 8, y + laneH / 2 - (nodeInfo ? 6 : 0));
    if (nodeInfo) {
      g.fillStyle = "#6b7385"; g.font = "10px system-ui, sans-serif";
      g.fillText(nodeInfo.kind === "policy" ? `policy · ${nodeInfo.policy}` : (nodeInfo.streaming ? "pipeline · streaming" : "pipeline"), 8, y + laneH / 2 + 7);
    }
    g.font = "12px system-ui, sans-serif";
    // the extent of each run in this lane, as a thin bar
    for (const r of L.runs.placed) {
      const ext = r.lanes[name];
      if (!ext) continue;
      const x0 = Math.max(GUTTER, xOf(ext[0], L)), x1 = Math.min(L.w - 8, xOf(ext[1], L));
      g.fillStyle = RUN_COLORS[states[r.run] || ""] || RUN_COLORS[""];
      g.globalAlpha = 0.35;
      g.fillRect(x0, y + laneH - 5, Math.max(2, x1 - x0), 3);
      g.globalAlpha = 1;
    }
    const lane = byLane[name];
    if (!lane) return;
    if (!S.events) {
      const bw = (L.w - GUTTER - 8) / S.hist.buckets;
      g.fillStyle = "#4f7cc9";
      lane.counts.forEach((v, b) => {
        if (!v) return;
        const hgt = Math.max(2, (Math.log1p(v) / Math.log1p(max)) * (laneH - 10));
        const x = GUTTER + b * bw;
        g.fillRect(x, y + laneH - 6 - hgt, Math.max(1, bw - 0.5), hgt);
        S.hits.push({ x0: x, x1: x + bw, y0: y, y1: y + laneH, type: "bucket", count: v, lane: name,
          t0: S.hist.start + b * S.hist.bucket_ms, t1: S.hist.start + (b + 1) * S.hist.bucket_ms });
      });
    }
  });

  // captures of this ION: a band over the lanes, and a bracket under the axis
  const lanesBottom = L.top + ls.length * laneH;
  for (const cap of S.captures.filter((x) => x.ion === S.ion.name)) {
    if (cap.end < S.view.start || cap.start > S.view.end) continue;
    const x0 = Math.max(GUTTER, xOf(cap.start, L)), x1 = Math.min(L.w - 8, xOf(cap.end, L));
    g.fillStyle = "rgba(217,138,0,0.07)";
    g.fillRect(x0, AXIS, x1 - x0, lanesBottom - AXIS);
    g.fillStyle = "rgba(217,138,0,0.85)";
    g.fillRect(x0, AXIS - 4, Math.max(2, x1 - x0), 3);
    if (x1 - x0 > 80) {
      g.font = "10px system-ui, sans-serif";
      g.fillText(cap.id, x0 + 3, lanesBottom + 9);
      g.font = "12px system-ui, sans-serif";
    }
  }

  // individual events when zoomed in
  if (S.events) {
    for (const e of S.events) {
      const i = ls.indexOf(e.node);
      if (i < 0) continue;
      const x = xOf(e.ms, L);
      const y = L.top + i * laneH;
      if (e.kind === "error" || e.kind === "human_action") continue;
      g.fillStyle = KIND_COLORS[e.kind] || "#999";
      g.fillRect(x - 1, y + 8, 3, laneH - 16);
      S.hits.push({ x0: x - 3, x1: x + 3, y0: y + 4, y1: y + laneH - 4, type: "event", event: e });
    }
  }

  // errors and human actions, always one by one, on top
  // Zoomed in, the listed events are the freshest truth; otherwise the histogram's marks.
  const marks = S.events ? S.events.filter((e) => e.kind === "error" || e.kind === "human_action") : S.hist.marks;
  for (const m of marks) {
    const i = ls.indexOf(m.node);
    if (i < 0) continue;
    const x = xOf(m.ms, L), y = L.top + i * laneH + 9;
    if (m.kind === "error") {
      g.fillStyle = "rgba(217,56,56,0.35)";
      g.fillRect(x - 0.5, L.top + i * laneH + 2, 1.5, laneH - 4);
      g.fillStyle = KIND_COLORS.error;
      g.beginPath(); g.moveTo(x, y - 6); g.lineTo(x + 6, y + 5); g.lineTo(x - 6, y + 5); g.closePath(); g.fill();
      g.fillStyle = "#fff"; g.font = "bold 9px system-ui"; g.fillText("!", x - 1.5, y + 1.5);
    } else {
      g.fillStyle = KIND_COLORS.human_action;
      g.beginPath(); g.moveTo(x, y - 6); g.lineTo(x + 6, y); g.lineTo(x, y + 6); g.lineTo(x - 6, y); g.closePath(); g.fill();
    }
    g.font = "12px system-ui, sans-serif";
    S.hits.push({ x0: x - 7, x1: x + 7, y0: y - 7, y1: y + 7, type: "event", event: m, mark: true });
  }

  // the selection
  if (S.selection) {
    const x0 = xOf(S.selection.start, L), x1 = xOf(S.selection.end, L);
    g.fillStyle = "rgba(47,111,223,0.13)";
    g.fillRect(x0, AXIS, x1 - x0, L.h - AXIS);
    g.strokeStyle = "#2f6fdf"; g.lineWidth = 1.5;
    g.strokeRect(x0 + 0.5, AXIS + 0.5, x1 - x0 - 1, L.h - AXIS - 1);
    g.lineWidth = 1;
  }

  // replay: the playback clock, with what has not been replayed yet dimmed
  if (S.replay && S.replay.capture.ion === S.ion.name && S.tab === "replay") {
    const t = replayClock();
    const x = xOf(t, L), xe = xOf(S.replay.capture.end, L);
    g.fillStyle = "rgba(255,255,255,0.6)";
    g.fillRect(Math.max(GUTTER, x), AXIS, Math.max(0, Math.min(L.w - 8, xe) - Math.max(GUTTER, x)), L.h - AXIS);
    g.strokeStyle = "#d93838"; g.lineWidth = 2;
    g.beginPath(); g.moveTo(x, AXIS - 6); g.lineTo(x, L.h); g.stroke();
    g.lineWidth = 1;
    g.fillStyle = "#d93838"; g.fillText(fmtClock(t), Math.min(x + 4, L.w - 90), AXIS + 2);
  }

  // live: a "now" line
  if (S.live) {
    const x = xOf(Date.now(), L);
    g.strokeStyle = "#1f9d55"; g.setLineDash([4, 3]);
    g.beginPath(); g.moveTo(x, AXIS); g.lineTo(x, L.h); g.stroke();
    g.setLineDash([]);
  }

  $("#timeline").dataset.lanes = ls.map(laneLabel).join(",");
  $("#timeline").dataset.marks = String(marks.length);
}

function legend() {
  const items = [["error", "error"], ["human_action", "human action"], ["lifecycle", "lifecycle"],
    ["stat", "stat"], ["model", "model"], ["span", "span"]];
  $("#legend").replaceChildren(...items.map(([k, label]) => {
    const swatch = el("i");
    swatch.style.background = KIND_COLORS[k];
    return el("span", {}, swatch, label);
  }));
}

// ---- interaction

function hitAt(x, y) {
  let best = null;
  for (const h of S.hits) {
    if (x >= h.x0 && x <= h.x1 && y >= h.y0 && y <= h.y1) {
      if (!best || (h.type === "event" && best.type !== "event") || (h.mark && !best.mark)) best = h;
    }
  }
  return best;
}

function canvasPoint(ev) {
  const r = $("#timeline").getBoundingClientRect();
  return [ev.clientX - r.left, ev.clientY - r.top];
}

function installCanvas() {
  const c = $("#timeline");
  c.addEventListener("mousedown", (ev) => {
    if (!S.view || !S.layout) return;
    const [x] = canvasPoint(ev);
    if (x < GUTTER) return;
    S.drag = { x0: x, x1: x, moved: false };
  });
  window.addEventListener("mousemove", (ev) => {
    if (!S.layout || !S.view) return;
    const [x, y] = canvasPoint(ev);
    if (S.drag) {
      S.drag.x1 = Math.max(GUTTER, Math.min(S.layout.w - 8, x));
      if (Math.abs(S.drag.x1 - S.drag.x0) > 3) {
        S.drag.moved = true;
        const a = msOf(Math.min(S.drag.x0, S.drag.x1), S.layout), b = msOf(Math.max(S.drag.x0, S.drag.x1), S.layout);
        S.selection = { start: Math.round(a), end: Math.round(b) };
        draw();
      }
      return;
    }
    const tip = $("#tooltip");
    const inside = x >= 0 && y >= 0 && x <= S.layout.w && y <= S.layout.h;
    const h = inside ? hitAt(x, y) : null;
    if (!h) { tip.hidden = true; return; }
    let text;
    if (h.type === "bucket") text = `${laneLabel(h.lane)}: ${h.count.toLocaleString()} events\n${fmtTime(h.t0, true)}\n→ ${fmtTime(h.t1, true)}`;
    else if (h.type === "run") text = `${h.run.run}\n${h.state || "run"} · ${fmtSpan(h.run.end - h.run.start)}` + (h.run.errors ? ` · ${h.run.errors} errors` : "");
    else text = `${h.event.type} (${h.event.kind.replace("_", " ")})\n${laneLabel(h.event.node)} · ${fmtTime(h.event.ms, true)}\n${h.event.summary || ""}`;
    tip.textContent = text;
    tip.hidden = false;
    tip.style.left = `${Math.min(x + 14, S.layout.w - 300)}px`;
    tip.style.top = `${y + 14}px`;
  });
  window.addEventListener("mouseup", (ev) => {
    if (!S.drag) return;
    const d = S.drag;
    S.drag = null;
    if (d.moved) { showSelection(); return; }
    const [x, y] = canvasPoint(ev);
    const h = hitAt(x, y);
    if (h && h.type === "event") showDetails(h.event);
    else if (h && h.type === "bucket") zoomTo(h.t0 - (h.t1 - h.t0) * 2, h.t1 + (h.t1 - h.t0) * 2);
    else if (h && h.type === "run") showRun(h.run.run);
    if (h && h.type === "run") zoomTo(h.run.start - (h.run.end - h.run.start) * 0.1 - 500, h.run.end + (h.run.end - h.run.start) * 0.1 + 500);
  });
  c.addEventListener("mouseleave", () => { $("#tooltip").hidden = true; });
  c.addEventListener("wheel", (ev) => {
    if (!S.view || !S.layout) return;
    ev.preventDefault();
    const [x] = canvasPoint(ev);
    const at = x > GUTTER ? msOf(x, S.layout) : (S.view.start + S.view.end) / 2;
    const f = ev.deltaY > 0 ? 1.4 : 1 / 1.4;
    zoomTo(at - (at - S.view.start) * f, at + (S.view.end - at) * f);
  }, { passive: false });
  c.addEventListener("dblclick", () => { if (S.view) zoomBy(2.5); });
  window.addEventListener("resize", () => { if (S.hist) { draw(); scheduleReload(); } });
}

function zoomTo(start, end) {
  if (S.live) stopLive();
  setView(start, end);
  loadView();
}
function zoomBy(f) {
  const mid = (S.view.start + S.view.end) / 2, half = ((S.view.end - S.view.start) / 2) * f;
  zoomTo(mid - half, mid + half);
}

let reloadTimer = null;
function scheduleReload(delay = 300) {
  clearTimeout(reloadTimer);
  reloadTimer = setTimeout(loadView, delay);
}

function showSelection() {
  const sel = S.selection;
  if (!sel) { $("#selection-bar").hidden = true; return; }
  $("#selection-bar").hidden = false;
  $("#selection-label").textContent = `${fmtTime(sel.start, true)} → ${fmtTime(sel.end, true)} (${fmtSpan(sel.end - sel.start)})`;
  let n = 0;
  if (S.hist) {
    for (const l of S.hist.lanes) l.counts.forEach((v, b) => {
      const t = S.hist.start + (b + 0.5) * S.hist.bucket_ms;
      if (t >= sel.start && t < sel.end) n += v;
    });
  }
  $("#selection-count").textContent = `≈ ${n.toLocaleString()} events`;
  if (!$("#capture-id").value) {
    const d = new Date(sel.start);
    $("#capture-id").value = `${S.ion.id}-${pad(d.getMonth() + 1)}${pad(d.getDate())}-${pad(d.getHours())}${pad(d.getMinutes())}${pad(d.getSeconds())}`.toLowerCase().replace(/[^a-z0-9-]/g, "-");
  }
  $("#capture-status").textContent = "";
}

async function createCapture() {
  const sel = S.selection;
  if (!sel || !S.ion) return;
  const id = $("#capture-id").value.trim();
  $("#capture-status").textContent = "creating…";
  try {
    const cap = await api("/api/captures", {
      method: "POST",
      body: { ion: S.ion.name, id, start: sel.start, end: sel.end, description: $("#capture-description").value },
    });
    $("#capture-id").value = "";
    $("#capture-description").value = "";
    S.selection = null;
    showSelection();
    await loadCaptures();
    selectCapture(cap.name);
  } catch (e) {
    $("#capture-status").textContent = e.message;
  }
}

// ---- events table

function renderEvents() {
  const tb = $("#events-table tbody");
  tb.replaceChildren();
  const list = S.events || (S.hist ? S.hist.marks : []);
  $("#events-note").textContent = S.events
    ? `${S.events.length.toLocaleString()} events in the window, in timeline order${S.live ? ", newest first (live)" : ""}.`
    : `${S.hist.total.toLocaleString()} events in the window: showing the ${S.hist.marks.length} errors and human actions. Zoom in (drag, wheel, or click a bar) to list every event.`;
  const rows = S.live ? list.slice(-1500).reverse() : list.slice(0, 1500);
  for (const e of rows) tb.append(eventRow(e));
}

function eventRow(e, withRun = true) {
  const tr = el("tr", { class: `k-${e.kind}`, onclick: () => showDetails(e), "data-sequence": String(e.sequence) },
    el("td", { text: fmtClock(e.ms) }),
    el("td", { text: laneLabel(e.node) }),
    el("td", {}, el("span", { class: "kind", text: e.kind.replace("_", " ") })),
    el("td", { text: e.type }),
    withRun ? el("td", { class: "mono", text: shortRun(e.run) }) : null,
    el("td", { text: e.summary || "" }));
  tr.querySelector(".kind").style.background = KIND_COLORS[e.kind] || "#999";
  return tr;
}

// ---- details

function tab(name) {
  S.tab = name;
  if (S.hist) requestAnimationFrame(draw);
  document.querySelectorAll("#tabs button").forEach((b) => b.classList.toggle("active", b.dataset.tab === name));
  document.querySelectorAll(".panel").forEach((p) => p.classList.toggle("active", p.id === `panel-${name}`));
}

async function showDetails(e) {
  tab("details");
  $("#details-empty").hidden = true;
  $("#details").hidden = false;
  $("#details-title").textContent = `${e.type} · ${laneLabel(e.node)} · ${fmtTime(e.ms, true)} · #${e.sequence}`;
  $("#details-attributes").textContent = "loading…";
  $("#details-spec").textContent = "";
  $("#span-tree").replaceChildren();
  const ion = S.ion.id;
  try {
    const d = await api(`/api/ions/${encodeURIComponent(ion)}/event?sequence=${e.sequence}&ms=${e.ms}`);
    $("#details-attributes").textContent = JSON.stringify(d.event, null, 2);
    $("#details-run").textContent = d.run ? `${shortRun(d.run.name)} ${d.run.state ? "· " + d.run.state : ""}` : "";
    $("#details-spec").textContent = d.run ? JSON.stringify(d.run.spec, null, 2) : "(the event belongs to no run)";
    $("#details-trace-id").textContent = d.trace ? d.trace.trace_id : "";
    renderTrace(d.trace, e);
    $("#details").dataset.loaded = String(e.sequence);
  } catch (err) {
    $("#details-attributes").textContent = err.message;
  }
}

async function showRun(name) {
  tab("details");
  $("#details-empty").hidden = true;
  $("#details").hidden = false;
  $("#details-title").textContent = `run ${shortRun(name)}`;
  $("#details-attributes").textContent = "loading…";
  $("#details-spec").textContent = "";
  $("#span-tree").replaceChildren();
  const ion = encodeURIComponent(S.ion.id);
  try {
    const r = await api(`/api/ions/${ion}/run?name=${encodeURIComponent(name)}`);
    $("#details-title").textContent = `run ${shortRun(name)}${r.state ? " · " + r.state : ""}`;
    const summary = r.run ? { ...r.run } : { name, note: "the executor does not know this run; its spec comes from run.launched" };
    delete summary.spec;
    $("#details-attributes").textContent = JSON.stringify(summary, null, 2);
    $("#details-run").textContent = `${shortRun(name)} · from ${r.source || "nowhere"}`;
    $("#details-spec").textContent = JSON.stringify(r.spec, null, 2);
    const traceId = r.run && r.run.trace_id;
    $("#details-trace-id").textContent = traceId || "";
    if (traceId) renderTrace(await api(`/api/ions/${ion}/trace?trace_id=${traceId}`), null);
    else renderTrace(null, null);
    $("#details").dataset.loaded = name;
  } catch (err) {
    $("#details-attributes").textContent = err.message;
  }
}

function renderTrace(trace, current) {
  const box = $("#span-tree");
  box.replaceChildren();
  if (!trace || !trace.roots.length) {
    box.append(el("div", { class: "span-event", text: trace ? "no spans recorded for this trace" : "(the event carries no trace)" }));
    return;
  }
  let lo = Infinity, hi = -Infinity;
  const walk = (s) => { lo = Math.min(lo, s.start); hi = Math.max(hi, s.end); s.children.forEach(walk); };
  trace.roots.forEach(walk);
  const total = Math.max(1, hi - lo);
  const add = (s, depth) => {
    const bar = el("div", { class: "bar" }, el("i"));
    const i = bar.querySelector("i");
    i.style.left = `${((s.start - lo) / total) * 100}%`;
    i.style.width = `${Math.max(0.5, ((s.end - s.start) / total) * 100)}%`;
    const isCurrent = current && s.span_id && s.span_id === current.span_id;
    const row = el("div", { class: `span${s.status_code === 2 ? " err" : ""}${isCurrent ? " current" : ""}`, "data-span": s.span_id },
      el("div", { class: "label", title: `${s.name}\n${s.service} ${s.node}` },
        el("span", { text: "\u00a0\u00a0".repeat(depth) + (s.children.length ? "▾ " : "· ") }),
        el("b", { text: s.name }), " ", el("span", { class: "muted", text: s.service || s.node || "" })),
      bar, el("div", { class: "dur", text: fmtSpan(s.end - s.start) }));
    box.append(row);
    const evs = s.events || [];
    for (const ev of evs.slice(0, 12)) {
      const line = el("div", { class: `span-event${ev.kind === "error" ? " error" : ""}`, text: `${"\u00a0\u00a0".repeat(depth + 2)}↳ ${ev.type} ${ev.summary || ""}` });
      line.addEventListener("click", () => showDetails(ev));
      box.append(line);
    }
    if (evs.length > 12) box.append(el("div", { class: "span-event", text: `${"\u00a0\u00a0".repeat(depth + 2)}… ${evs.length - 12} more events` }));
    s.children.forEach((c) => add(c, depth + 1));
  };
  trace.roots.forEach((r) => add(r, 0));
  if (trace.truncated) box.append(el("div", { class: "span-event", text: `… first ${trace.events} events of the trace` }));
}

// ---- captures

let toastTimer = null;
function toast(text, isError = false) {
  const t = $("#toast");
  t.textContent = text;
  t.className = isError ? "error" : "";
  t.hidden = false;
  clearTimeout(toastTimer);
  // Errors stay until clicked away; news goes by itself.
  if (!isError) toastTimer = setTimeout(() => { t.hidden = true; }, 4000);
}

// Export links ask the server first, so a failure reads as a message instead of a broken
// download; then the browser downloads the .tar.gz as it streams through.
async function exportCapture(ev) {
  const a = ev.currentTarget;
  if (a.dataset.checked === "1") { a.dataset.checked = ""; return; }
  ev.preventDefault();
  toast(`exporting ${a.getAttribute("download")}…`);
  try {
    await api(`${a.getAttribute("href")}&probe=1`);
    a.dataset.checked = "1";
    a.click();
    $("#toast").hidden = true;  // the browser shows the download itself
  } catch (e) {
    toast(`export failed: ${e.message}`, true);
  }
}

async function loadCaptures() {
  try {
    const { captures } = await api("/api/captures");
    S.captures = captures;
  } catch (e) {
    S.captures = [];
  }
  renderCaptures();
  if (S.hist) draw();
}

function renderCaptures() {
  const ul = $("#capture-list");
  ul.replaceChildren();
  if (!S.captures.length) ul.append(el("li", { class: "muted", text: "none yet: select a window on a timeline" }));
  for (const c of S.captures) {
    const exportHref = `/api/export?capture=${encodeURIComponent(c.name)}`;
    ul.append(el("li", { "data-capture": c.name, class: S.replay && S.replay.capture.name === c.name ? "active" : "" },
      el("div", { class: "name", text: c.id }),
      el("div", { class: "meta" }, el("span", { class: "owner", text: `by ${c.owner || "?"}` }), ` · ${c.ion.replace("ions/", "")}`),
      el("div", { class: "meta mono", text: `${fmtTime(c.start)} → ${fmtSpan(c.end - c.start)}` }),
      c.description ? el("div", { class: "meta", text: c.description }) : null,
      el("div", { class: "actions" },
        el("button", { text: "Show", "data-action": "show", onclick: () => showCapture(c) }),
        el("button", { text: "Replay", "data-action": "replay", onclick: () => openReplay(c) }),
        el("a", { class: "button", text: "Export", href: exportHref, download: `${c.id}.tar.gz`, "data-action": "export", onclick: exportCapture }),
        el("button", { text: "Relaunch", "data-action": "relaunch", onclick: () => openRelaunch(c) }))));
  }
}

function selectCapture(name) {
  document.querySelectorAll("#capture-list li").forEach((li) => li.classList.toggle("active", li.dataset.capture === name));
}

async function showCapture(c) {
  const pad = Math.max(500, (c.end - c.start) * 0.05);
  if (!S.ion || S.ion.name !== c.ion) await openIon(c.ion, { start: c.start - pad, end: c.end + pad });
  else zoomTo(c.start - pad, c.end + pad);
  selectCapture(c.name);
}

// ---- replay

function replayClock() {
  const r = S.replay;
  if (!r) return 0;
  let t = r.cursor;
  if (r.state === "playing" && r.speed > 0) t = r.anchorMs + (performance.now() - r.anchorWall) * r.speed;
  t = Math.max(t, r.lastMs || 0);
  return Math.min(t, r.capture.end);
}

async function openReplay(c) {
  stopReplay();
  tab("replay");
  S.replay = { capture: c, cursor: c.start, state: "stopped", speed: Number($("#replay-speed").value), count: 0, source: null, lastMs: 0 };
  $("#replay-empty").hidden = true;
  $("#replay").hidden = false;
  $("#replay-name").textContent = c.name;
  $("#replay-window").textContent = `${fmtTime(c.start, true)} → ${fmtTime(c.end, true)} · by ${c.owner}`;
  $("#replay-export").href = `/api/export?capture=${encodeURIComponent(c.name)}`;
  $("#replay-export").setAttribute("download", `${c.id}.tar.gz`);
  $("#replay-feed tbody").replaceChildren();
  selectCapture(c.name);
  await showCapture(c);
  replayUi();
}

function playReplay() {
  const r = S.replay;
  if (!r) return;
  if (r.source) r.source.close();
  if (r.cursor >= r.capture.end - 1) { r.cursor = r.capture.start; $("#replay-feed tbody").replaceChildren(); r.count = 0; r.lastMs = 0; }
  r.speed = Number($("#replay-speed").value);
  const q = new URLSearchParams({ capture: r.capture.name, speed: r.speed, start: Math.round(r.cursor) });
  const src = new EventSource(`/api/replay?${q}`);
  r.source = src;
  r.state = "playing";
  r.anchorMs = r.cursor;
  r.anchorWall = performance.now();
  r.lastMs = 0;
  src.addEventListener("capture", () => { r.anchorWall = performance.now(); });
  src.addEventListener("events", (m) => {
    if (r.source !== src) return;
    const { events } = JSON.parse(m.data);
    const tb = $("#replay-feed tbody");
    for (const e of events) r.lastMs = Math.max(r.lastMs, e.playback_ms || e.ms);
    // Only the newest rows are kept: a fast replay of a big capture stays cheap to show.
    for (const e of events.slice(-300)) tb.prepend(eventRow(e, false));
    while (tb.children.length > 300) tb.lastChild.remove();
    r.count += events.length;
    replayUi();
  });
  src.addEventListener("end", () => {
    if (r.source !== src) return;
    src.close(); r.source = null; r.state = "ended"; r.cursor = r.capture.end; replayUi();
  });
  src.addEventListener("error", (m) => {
    if (r.source !== src) return;
    let msg = "";
    try { msg = JSON.parse(m.data).message; } catch (_) { msg = ""; }
    src.close(); r.source = null;
    if (r.state === "playing") { r.cursor = replayClock(); r.state = msg ? "error" : "paused"; }
    $("#replay-state").title = msg;
    replayUi();
  });
  replayUi();
  tick();
}

function pauseReplay() {
  const r = S.replay;
  if (!r || r.state !== "playing") return;
  r.cursor = replayClock();
  r.state = "paused";
  if (r.source) { r.source.close(); r.source = null; }
  replayUi();
}

function stopReplay() {
  if (S.replay && S.replay.source) S.replay.source.close();
  S.replay = null;
}

function seekReplay(fraction) {
  const r = S.replay;
  if (!r) return;
  const wasPlaying = r.state === "playing";
  if (r.source) { r.source.close(); r.source = null; }
  r.cursor = Math.min(r.capture.end - 1, r.capture.start + fraction * (r.capture.end - r.capture.start));
  r.lastMs = 0;
  r.state = wasPlaying ? "playing" : "paused";
  $("#replay-feed tbody").replaceChildren();
  r.count = 0;
  if (wasPlaying) playReplay(); else replayUi();
}

function replayUi() {
  const r = S.replay;
  if (!r) return;
  const t = replayClock();
  $("#replay-clock").textContent = `${fmtClock(t)}  (+${fmtSpan(t - r.capture.start)} of ${fmtSpan(r.capture.end - r.capture.start)})`;
  $("#replay-state").textContent = r.state;
  $("#replay-state").className = `badge ${r.state}`;
  $("#replay-count").textContent = `${r.count.toLocaleString()} events replayed`;
  $("#replay").dataset.state = r.state;
  $("#replay").dataset.count = String(r.count);
  if (!S.seeking) $("#replay-seek").value = String(Math.round(((t - r.capture.start) / Math.max(1, r.capture.end - r.capture.start)) * 1000));
  if (S.hist) draw();
}

let ticking = false;
function tick() {
  if (ticking) return;
  ticking = true;
  const step = () => {
    if (!S.replay || S.replay.state !== "playing") { ticking = false; return; }
    replayUi();
    requestAnimationFrame(step);
  };
  requestAnimationFrame(step);
}

// ---- relaunch and verify

function openRelaunch(c) {
  tab("relaunch");
  S.relaunch = { capture: c, run: null };
  $("#relaunch-empty").hidden = true;
  $("#relaunch").hidden = false;
  $("#relaunch-capture").textContent = c.name;
  $("#relaunch-state").textContent = "";
  $("#relaunch-state").className = "badge";
  $("#relaunch-run").textContent = "";
  $("#relaunch-error").hidden = true;
  $("#relaunch-nodes tbody").replaceChildren();
  $("#verify-summary").replaceChildren();
  $("#relaunch").dataset.verification = "";
  selectCapture(c.name);
  renderPipelineChoice(c);
}

async function renderPipelineChoice(c) {
  const box = $("#relaunch-pipelines");
  box.replaceChildren();
  let ion = S.ion && S.ion.name === c.ion ? S.ion : null;
  if (!ion) {
    try { ion = await api(`/api/ions/${encodeURIComponent(c.ion.replace(/^ions\//, ""))}`); } catch (e) { return; }
  }
  const pipelines = ion.nodes.filter((n) => n.kind === "pipeline");
  if (!pipelines.length) return;
  box.append(el("span", { text: "re-execute only:" }));
  for (const n of pipelines) {
    box.append(el("label", {}, el("input", { type: "checkbox", value: n.node, class: "pipeline-choice" }), ` ${n.node}`));
  }
  box.append(el("span", { text: "(none checked: the whole ION; the others reuse their recorded models)" }));
}

async function relaunchAndVerify() {
  const R = S.relaunch;
  if (!R) return;
  $("#relaunch-go").disabled = true;
  $("#relaunch-error").hidden = true;
  $("#verify-summary").replaceChildren();
  try {
    const pipelines = [...document.querySelectorAll(".pipeline-choice:checked")].map((i) => i.value);
    let run = await api("/api/relaunch", { method: "POST", body: { capture: R.capture.name, pipelines } });
    R.run = run;
    $("#relaunch-run").textContent = run.name + (run.relaunch_of ? `  (relaunch of ${shortRun(run.relaunch_of)})` : "");
    while (!run.is_terminal) {
      renderRelaunch(run, null);
      await new Promise((ok) => setTimeout(ok, 1000));
      run = await api(`/api/run?name=${encodeURIComponent(run.name)}`);
    }
    renderRelaunch(run, null);
    if (run.state !== "SUCCEEDED") throw new Error(`the relaunch ${run.state.toLowerCase()}: ${run.error_message || ""}`);
    $("#verify-summary").replaceChildren(el("span", { class: "muted", text: "verifying…" }));
    const v = await api("/api/verify", { method: "POST", body: { original: run.relaunch_of, relaunch: run.name } });
    renderRelaunch(run, v);
  } catch (e) {
    $("#relaunch-error").hidden = false;
    $("#relaunch-error").textContent = e.message;
  } finally {
    $("#relaunch-go").disabled = false;
  }
}

function renderRelaunch(run, v) {
  $("#relaunch-state").textContent = run.state;
  $("#relaunch-state").className = `badge ${run.state}`;
  const byNode = Object.fromEntries(((v && v.nodes) || []).map((n) => [n.node, n]));
  const names = [...new Set([...(run.nodes || []).map((n) => n.node), ...Object.keys(byNode)])];
  const runNodes = Object.fromEntries((run.nodes || []).map((n) => [n.node, n]));
  const tb = $("#relaunch-nodes tbody");
  tb.replaceChildren();
  for (const name of names) {
    const n = runNodes[name] || {};
    const ver = byNode[name];
    tb.append(el("tr", { "data-node": name, "data-status": ver ? ver.status : "" },
      el("td", { text: name }),
      el("td", {}, el("span", { class: `badge ${n.state || ""}`, text: n.state || "" })),
      el("td", {}, ver ? el("span", { class: `badge ${ver.status}`, text: ver.status }) : el("span", { class: "muted", text: "…" })),
      el("td", { text: ver ? String(ver.compared) : "" }),
      el("td", { text: ver ? (ver.reused ? "reused" : "re-executed") : "" }),
      el("td", { class: "mono", text: ver ? [ver.first_divergent_event, ver.reason].filter(Boolean).join(" · ") : "" })));
  }
  if (v) {
    $("#verify-summary").replaceChildren(el("span", { text: "verification:" }),
      el("span", { id: "verify-status", class: `badge ${v.status}`, text: v.status }),
      el("span", { class: "muted mono", text: `${shortRun(v.original)} vs ${shortRun(v.relaunch)} · tolerance ${v.tolerance}` }));
    $("#relaunch").dataset.verification = v.status;
  }
}

// ---- live mode

function startLive() {
  if (!S.ion) return;
  stopLive();
  // The window's width is kept (between 5 minutes and an hour); it slides to end at now.
  const span = S.view ? Math.max(300000, Math.min(S.view.end - S.view.start, 3600000)) : 900000;
  const src = new EventSource(`/api/ions/${encodeURIComponent(S.ion.id)}/live`);
  S.live = { source: src, span, fresh: 0 };
  $("#live-toggle").classList.add("on");
  src.addEventListener("events", (m) => {
    const { events } = JSON.parse(m.data);
    S.live.fresh += events.length;
    if (!S.selection) scheduleReload(250);
  });
  const follow = () => {
    if (!S.live) return;
    const now = Date.now();
    if (!S.selection && !S.loading) {
      setView(now - S.live.span + S.live.span * 0.05, now + S.live.span * 0.05);
      loadView();
    }
  };
  follow();
  S.liveTimer = setInterval(follow, 1500);
}

function stopLive() {
  if (S.live) S.live.source.close();
  S.live = null;
  clearInterval(S.liveTimer);
  $("#live-toggle").classList.remove("on");
}

// ---- wiring

function installControls() {
  document.querySelectorAll("[data-preset]").forEach((b) => b.addEventListener("click", () => {
    if (!S.ion) return;
    const p = b.dataset.preset;
    document.querySelectorAll("[data-preset]").forEach((x) => x.classList.toggle("active", x === b));
    if (S.live) S.live.span = p === "all" ? S.live.span : Number(p);
    if (p === "all") { stopLive(); S.view = null; loadView(); return; }
    const now = Date.now();
    if (S.live) return;
    zoomTo(now - Number(p), now);
  }));
  $("#apply-window").addEventListener("click", () => {
    const a = new Date($("#from").value).getTime(), b = new Date($("#to").value).getTime();
    if (Number.isFinite(a) && Number.isFinite(b) && b > a) zoomTo(a, b);
  });
  $("#live-toggle").addEventListener("click", () => (S.live ? stopLive() : startLive()));
  $("#zoom-in").addEventListener("click", () => S.view && zoomBy(0.5));
  $("#zoom-out").addEventListener("click", () => S.view && zoomBy(2));
  $("#capture-create").addEventListener("click", createCapture);
  $("#selection-zoom").addEventListener("click", () => {
    const s = S.selection;
    if (!s) return;
    S.selection = null; showSelection(); zoomTo(s.start, s.end);
  });
  $("#selection-clear").addEventListener("click", () => { S.selection = null; showSelection(); draw(); });
  document.querySelectorAll("#tabs button").forEach((b) => b.addEventListener("click", () => tab(b.dataset.tab)));
  $("#replay-play").addEventListener("click", playReplay);
  $("#replay-pause").addEventListener("click", pauseReplay);
  $("#replay-speed").addEventListener("change", () => {
    const r = S.replay;
    if (r && r.state === "playing") { r.cursor = replayClock(); playReplay(); }
  });
  const seek = $("#replay-seek");
  seek.addEventListener("input", () => { S.seeking = true; });
  seek.addEventListener("change", () => { S.seeking = false; seekReplay(Number(seek.value) / 1000); });
  $("#relaunch-go").addEventListener("click", relaunchAndVerify);
  $("#replay-export").addEventListener("click", exportCapture);
  $("#toast").addEventListener("click", () => { $("#toast").hidden = true; });
  window.addEventListener("keydown", (ev) => {
    if (ev.key === "Escape" && S.selection) { S.selection = null; showSelection(); draw(); }
  });
}

async function main() {
  legend();
  installCanvas();
  installControls();
  await Promise.all([loadIons().catch((e) => { $("#ion-list").replaceChildren(el("li", { class: "error", text: e.message })); }), loadCaptures()]);
  const m = location.pathname.match(/^\/ions\/([^/]+)/);
  if (m) await openIon(`ions/${decodeURIComponent(m[1])}`);
  else $("#empty").hidden = false;
  setInterval(loadCaptures, 15000);
}

main();
