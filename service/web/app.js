// kdserve dashboard: a small single-page app on the /v1 API, with no build step and no third-party
// code (nothing can be fetched at run time). Pages are URL fragments:
//   #/jobs            jobs table, refreshed every 2 s
//   #/new             form to start a job: pickers filled from the API and offering only the
//                     teacher/dataset pairs, students and methods that go together
//   #/new/<job id>    the same form, filled in from that job ("Clone job")
//   #/data            teachers and datasets: upload forms (the API's multipart forms) and lists
//   #/jobs/<id>       one job: progress, loss and accuracy curves per epoch (live, from its
//                     Server-Sent Events), events, cancel, link to the model card
//   #/models          models table
//   #/models/<id>     model card: accuracy / size / latency of each artifact as charts, downloads
//   #/searches        searches table, refreshed every 2 s
//   #/searches/<id>   one search: its files as a scatter of score against latency (the Pareto front
//                     and the recommendation marked, the targets drawn), the trials, cancel; re-read
//                     every 2 s until it ends, so dots appear as trials finish
// Every view is a function (element, ...args) that fills the element and returns a cleanup
// function (stop timers, abort streams) that runs when the user leaves the page.
"use strict";

const KEY_STORAGE = "kdserve.apiKey";
const TERMINAL = ["succeeded", "failed", "cancelled"];
const COLORS = { train_loss: "#2563eb", val_loss: "#f97316", val_accuracy: "#16a34a", val_agreement: "#9333ea",
                 teacher: "#6b7280", fp32: "#2563eb", int8: "#f97316", fp16: "#16a34a" };

// ---- small helpers -------------------------------------------------------------------------

// h("a", {href: "#/x", class: "y"}, "text", child, ...): build elements without innerHTML, so
// names that users chose are always text, never markup.
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

// Replace an element's children, skipping null/false ones (the DOM's own replaceChildren would
// show them as the text "null").
function fill(el, ...children) {
  el.replaceChildren(...children.flat().filter((c) => c !== null && c !== undefined && c !== false));
}

const SVG_NS = "http://www.w3.org/2000/svg";
function s(tag, attrs, ...children) {
  const el = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) if (v !== null && v !== undefined) el.setAttribute(k, v);
  for (const c of children.flat()) if (c !== null && c !== undefined) el.append(c instanceof Node ? c : String(c));
  return el;
}

const lossFormat = (v) => (Math.abs(v) >= 10 ? v.toFixed(0) : Math.abs(v) >= 1 ? v.toFixed(2) : v.toFixed(3));
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const pct = (x) => (x === null || x === undefined ? "–" : (100 * x).toFixed(1) + "%");
const num = (x, d = 4) => (x === null || x === undefined ? "–" : Number(x).toFixed(d));
const when = (t) => (t ? new Date(t * 1000).toLocaleString() : "–");
function size(n) {
  if (n === null || n === undefined) return "–";
  if (n < 1024) return n + " B";
  if (n < 1024 * 1024) return (n / 1024).toFixed(1) + " KB";
  return (n / 1024 / 1024).toFixed(1) + " MB";
}
function eta(ts) {
  if (!ts) return "–";
  const left = Math.max(0, Math.round(ts - Date.now() / 1000));
  return left >= 60 ? `${Math.floor(left / 60)} min ${left % 60} s` : `${left} s`;
}
const statusBadge = (status, id) => h("span", { class: "badge " + status, id }, status);
function progressBar(p) {
  return h("div", { class: "progress", title: pct(p) }, h("div", { class: "fill", style: `width:${(100 * (p || 0)).toFixed(1)}%` }));
}

// ---- the API -------------------------------------------------------------------------------

const getKey = () => localStorage.getItem(KEY_STORAGE) || "";

function authHeaders(extra) {
  const headers = Object.assign({}, extra || {});
  const key = getKey();
  if (key) headers.Authorization = "Bearer " + key;
  return headers;
}

class ApiError extends Error {
  constructor(status, body) {
    const err = (body && body.error) || {};
    super(typeof err === "string" ? err : err.message || `HTTP ${status}`);
    this.status = status;
    this.code = err.code || "http_" + status;
    this.param = err.param || null;
  }
}

// fetch + the API's error shape; a 401 brings the key prompt back (with the API's message only
// when a key was sent: no error before the user has typed one). `form` is a FormData (uploads).
async function api(path, { method = "GET", json, form, signal, raw = false } = {}) {
  const headers = authHeaders(json !== undefined ? { "Content-Type": "application/json" } : {});
  const body = json !== undefined ? JSON.stringify(json) : form;
  const r = await fetch(path, { method, headers, signal, body });
  if (!r.ok) {
    let answer = null;
    try { answer = await r.json(); } catch (_) { /* not JSON: keep the status */ }
    const e = new ApiError(r.status, answer);
    if (r.status === 401) showKeyPrompt(getKey() ? e.message : "");
    throw e;
  }
  if (raw) return r;
  return r.status === 204 ? null : r.json();
}

// A job's events as Server-Sent Events, read with fetch (EventSource cannot send the API key).
// A dropped stream is resumed with Last-Event-ID; the server ends the stream when the job ends,
// which `isOver()` (async: it re-reads the job) confirms.
async function followEvents(jobId, onEvent, signal, isOver) {
  let lastId = 0;
  while (!signal.aborted) {
    try {
      const headers = authHeaders({ Accept: "text/event-stream" });
      if (lastId) headers["Last-Event-ID"] = String(lastId);
      const r = await fetch(`/v1/jobs/${encodeURIComponent(jobId)}/events`, { headers, signal });
      if (!r.ok) throw new ApiError(r.status, await r.json().catch(() => null));
      const reader = r.body.getReader();
      const decoder = new TextDecoder();
      let buffer = "", data = [];
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, { stream: true });
        let nl;
        while ((nl = buffer.indexOf("\n")) >= 0) {
          let line = buffer.slice(0, nl);
          buffer = buffer.slice(nl + 1);
          if (line.endsWith("\r")) line = line.slice(0, -1);
          if (line === "") {  // end of one event
            if (data.length) {
              const event = JSON.parse(data.join("\n"));
              if (event.id > lastId) { lastId = event.id; onEvent(event); }
            }
            data = [];
          } else if (line.startsWith("data:")) {
            data.push(line.slice(5).replace(/^ /, ""));
          }  // `id:` repeats event.id; `event:` repeats event.type; `:` lines are keep-alives
        }
      }
      if (await isOver()) {
        // an event written just as the job ended can miss the stream's last read: fetch the rest
        const rest = await api(`/v1/jobs/${encodeURIComponent(jobId)}/events?after=${lastId}&limit=1000`, { signal });
        for (const event of rest.data) if (event.id > lastId) { lastId = event.id; onEvent(event); }
        return;
      }
    } catch (e) {
      if (signal.aborted) return;
      if (e instanceof ApiError && e.status < 500) throw e;
    }
    await sleep(1000);
  }
}

// ---- the key prompt ------------------------------------------------------------------------

function showKeyPrompt(message) {
  document.getElementById("key-prompt").hidden = false;
  document.getElementById("view").hidden = true;
  const error = document.getElementById("key-error");
  error.hidden = !message;
  error.textContent = message || "";
  document.getElementById("api-key").focus();
}

document.getElementById("key-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const key = document.getElementById("api-key").value.trim();
  if (!key) { showKeyPrompt("Paste a key first."); return; }
  localStorage.setItem(KEY_STORAGE, key);
  try {
    await api("/v1/jobs?limit=1");  // is the key good?
  } catch (e) {
    if (e.status !== 401) showKeyPrompt(e.message);
    return;
  }
  showKeyPrompt("");  // clears a stale error
  library = null;  // another key may be another tenant's
  document.getElementById("key-prompt").hidden = true;
  document.getElementById("view").hidden = false;
  document.getElementById("change-key").hidden = false;
  route();
});

document.getElementById("change-key").addEventListener("click", () => {
  document.getElementById("api-key").value = "";
  showKeyPrompt("");
});

// ---- charts (inline SVG) -------------------------------------------------------------------

function niceTicks(lo, hi, n = 5) {
  const step0 = (hi - lo) / n || 1;
  const mag = Math.pow(10, Math.floor(Math.log10(step0)));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((st) => st >= step0);
  const ticks = [];
  for (let t = Math.ceil(lo / step) * step; t <= hi + 1e-12; t += step) ticks.push(+t.toFixed(10));
  return ticks;
}

// A line chart of per-epoch series plus horizontal reference lines (e.g. the teacher's accuracy).
// series: [{key, label, points: [[epoch, value], ...]}]; refs: [{key, label, value}]
function lineChart({ id, title, series, refs = [], yMin, yMax, format = (v) => v.toFixed(2), tickFormat, xMax }) {
  const W = 560, H = 280, L = 52, R = 14, T = 50, B = 36;
  const values = series.flatMap((se) => se.points.map((p) => p[1])).concat(refs.map((r) => r.value));
  let lo = yMin !== undefined ? yMin : Math.min(...values);
  let hi = yMax !== undefined ? yMax : Math.max(...values);
  if (!isFinite(lo) || !isFinite(hi)) { lo = 0; hi = 1; }
  if (hi - lo < 1e-9) { hi += 0.5; lo -= 0.5; }
  const pad = yMin === undefined ? (hi - lo) * 0.08 : 0;
  lo -= pad; hi += yMax === undefined ? pad : 0;
  const maxEpoch = Math.max(xMax || 1, ...series.flatMap((se) => se.points.map((p) => p[0])));
  const x = (e) => L + ((e - 1) / Math.max(1, maxEpoch - 1)) * (W - L - R);
  const y = (v) => T + (1 - (v - lo) / (hi - lo)) * (H - T - B);

  const svg = s("svg", { id, class: "chart", viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": title });
  svg.append(s("text", { x: L, y: 18, class: "chart-title" }, title));
  const yTicks = niceTicks(lo, hi);
  const decimals = yTicks.length > 1 ? Math.max(0, -Math.floor(Math.log10(yTicks[1] - yTicks[0] + 1e-12))) : 2;
  const tick = tickFormat || ((v) => v.toFixed(decimals));  // one precision per axis, from the tick step
  for (const t of yTicks) {
    svg.append(s("line", { x1: L, x2: W - R, y1: y(t), y2: y(t), class: "grid" }));
    svg.append(s("text", { x: L - 6, y: y(t) + 4, class: "tick", "text-anchor": "end" }, tick(t)));
  }
  for (const e of niceTicks(1, maxEpoch, 6).filter((e) => Number.isInteger(e) && e >= 1)) {
    svg.append(s("text", { x: x(e), y: H - B + 16, class: "tick", "text-anchor": "middle" }, e));
  }
  svg.append(s("text", { x: (L + W - R) / 2, y: H - 4, class: "axis-label", "text-anchor": "middle" }, "epoch"));
  svg.append(s("line", { x1: L, x2: W - R, y1: H - B, y2: H - B, class: "axis" }));
  for (const r of refs) {
    svg.append(s("line", { x1: L, x2: W - R, y1: y(r.value), y2: y(r.value), class: "ref", stroke: COLORS[r.key],
                           "data-ref": r.key }));
  }
  for (const se of series) {
    if (!se.points.length) continue;
    const d = se.points.map((p, i) => `${i ? "L" : "M"}${x(p[0]).toFixed(1)},${y(p[1]).toFixed(1)}`).join(" ");
    svg.append(s("path", { d, class: "series" + (se.dashed ? " dashed" : ""), stroke: COLORS[se.key], "data-series": se.key,
                           "data-points": se.points.length }));
    const last = se.points[se.points.length - 1];
    svg.append(s("circle", { cx: x(last[0]), cy: y(last[1]), r: 3, fill: COLORS[se.key] }));
  }
  // the legend: one row under the title, each item with its latest value
  let lx = L;
  for (const item of [...series.filter((se) => se.points.length), ...refs]) {
    const last = item.points ? item.points[item.points.length - 1][1] : item.value;
    const label = `${item.label} ${format(last)}`;
    svg.append(s("line", { x1: lx, x2: lx + 18, y1: 33, y2: 33, stroke: COLORS[item.key],
                           class: item.value !== undefined ? "ref" : "legend-line" + (item.dashed ? " dashed" : "") }));
    svg.append(s("text", { x: lx + 23, y: 37, class: "legend" }, label));
    lx += 23 + label.length * 6 + 16;
  }
  return svg;
}

// Horizontal bars, one per artifact: bars = [{label, value}] (null values are shown as "–").
function barChart({ id, title, bars, format }) {
  const W = 360, rowH = 30, T = 30, L = 70, R = 80;
  const H = T + bars.length * rowH + 8;
  const max = Math.max(...bars.map((b) => b.value || 0), 1e-12);
  const svg = s("svg", { id, class: "chart bars", viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": title });
  svg.append(s("text", { x: 8, y: 18, class: "chart-title" }, title));
  bars.forEach((b, i) => {
    const y0 = T + i * rowH;
    svg.append(s("text", { x: L - 8, y: y0 + 17, class: "tick", "text-anchor": "end" }, b.label));
    const w = b.value ? ((W - L - R) * b.value) / max : 0;
    svg.append(s("rect", { x: L, y: y0 + 4, width: Math.max(w, 1).toFixed(1), height: rowH - 10, class: "bar",
                           "data-label": b.label }));
    svg.append(s("text", { x: L + w + 6, y: y0 + 17, class: "tick" }, b.value === null || b.value === undefined ? "–" : format(b.value)));
  });
  return svg;
}

// Every file of a search as a dot: x = latency (ms, log scale), y = score; the Pareto front joined
// by a line, the recommendation ringed, the latency target and the accuracy floor dashed.
// points: [{trial, precision, latency_ms, score, front, recommended, meets}]
function scatterChart({ id, title, points, xTarget, yTarget }) {
  const W = 560, H = 320, L = 52, R = 14, T = 50, B = 40;
  const pts = points.filter((p) => p.latency_ms > 0 && p.score !== null && p.score !== undefined);
  const xs = pts.map((p) => Math.log10(p.latency_ms)).concat(xTarget ? [Math.log10(xTarget)] : []);
  const ys = pts.map((p) => p.score).concat(yTarget ? [yTarget] : []);
  let x0 = xs.length ? Math.min(...xs) : -2, x1 = xs.length ? Math.max(...xs) : 0;
  if (x1 - x0 < 0.2) { x0 -= 0.1; x1 += 0.1; }
  let y0 = ys.length ? Math.min(...ys) : 0, y1 = ys.length ? Math.max(...ys) : 1;
  if (y1 - y0 < 0.01) { y0 -= 0.01; y1 += 0.01; }
  const padX = (x1 - x0) * 0.06, padY = (y1 - y0) * 0.08;
  x0 -= padX; x1 += padX; y0 -= padY; y1 = Math.min(1.0001, y1 + padY);
  const x = (v) => L + ((Math.log10(v) - x0) / (x1 - x0)) * (W - L - R);
  const y = (v) => T + (1 - (v - y0) / (y1 - y0)) * (H - T - B);
  const svg = s("svg", { id, class: "chart", viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": title });
  svg.append(s("text", { x: L, y: 18, class: "chart-title" }, title));
  for (const t of niceTicks(y0, y1)) {
    svg.append(s("line", { x1: L, x2: W - R, y1: y(t), y2: y(t), class: "grid" }));
    svg.append(s("text", { x: L - 6, y: y(t) + 4, class: "tick", "text-anchor": "end" }, (100 * t).toFixed(1) + "%"));
  }
  for (let e = Math.ceil(x0 * 2) / 2; e <= x1; e += 0.5) {
    const v = Math.pow(10, e);
    svg.append(s("text", { x: x(v), y: H - B + 16, class: "tick", "text-anchor": "middle" }, v < 0.1 ? v.toPrecision(1) : v.toPrecision(2)));
  }
  svg.append(s("text", { x: (L + W - R) / 2, y: H - 4, class: "axis-label", "text-anchor": "middle" }, "latency, ms (log scale)"));
  svg.append(s("line", { x1: L, x2: W - R, y1: H - B, y2: H - B, class: "axis" }));
  if (xTarget) svg.append(s("line", { x1: x(xTarget), x2: x(xTarget), y1: T, y2: H - B, class: "ref", stroke: "#dc2626", "data-target": "latency_ms" }));
  if (yTarget) svg.append(s("line", { x1: L, x2: W - R, y1: y(yTarget), y2: y(yTarget), class: "ref", stroke: "#dc2626", "data-target": "min_accuracy" }));
  const front = pts.filter((p) => p.front).sort((a, b) => a.latency_ms - b.latency_ms);
  if (front.length > 1) {
    svg.append(s("path", { d: front.map((p, i) => `${i ? "L" : "M"}${x(p.latency_ms).toFixed(1)},${y(p.score).toFixed(1)}`).join(" "),
                           class: "series dashed", stroke: "#6b7280", id: "pareto-line" }));
  }
  for (const p of pts) {
    const dot = s("circle", { cx: x(p.latency_ms), cy: y(p.score), r: p.front ? 5 : 3.5, fill: COLORS[p.precision] || "#6b7280",
                              "fill-opacity": p.meets ? 0.95 : 0.35, "data-trial": p.trial, "data-precision": p.precision,
                              "data-front": p.front ? "1" : null });
    dot.append(s("title", {}, `trial ${p.trial} ${p.precision}: ${(100 * p.score).toFixed(2)}%, ${p.latency_ms.toFixed(4)} ms`));
    svg.append(dot);
    if (p.recommended) svg.append(s("circle", { cx: x(p.latency_ms), cy: y(p.score), r: 9, fill: "none", stroke: "#111827",
                                                 "stroke-width": 2, id: "recommended-dot" }));
  }
  let lx = L;
  for (const [key, label] of [["fp32", "fp32"], ["int8", "int8"], ["fp16", "fp16"]]) {
    svg.append(s("circle", { cx: lx + 5, cy: 33, r: 4, fill: COLORS[key] }));
    svg.append(s("text", { x: lx + 13, y: 37, class: "legend" }, label));
    lx += 58;
  }
  svg.append(s("text", { x: lx, y: 37, class: "legend" }, "faded: misses a target · ringed: recommended"));
  return svg;
}

// ---- teachers and datasets: names for ids, and which pairs go together ----------------------

const TEXT_DATASET_FORMATS = ["jsonl"];  // service/vocab.py: tokenised with a text (hf) teacher
let library = null;  // {teachers, datasets, at}: both lists, re-read when older than 10 s or after an upload

async function getLibrary(fresh = false) {
  if (fresh || !library || Date.now() - library.at > 10000) {
    const [teachers, datasets] = await Promise.all([api("/v1/teachers?limit=100"), api("/v1/datasets?limit=100")]);
    library = { teachers: teachers.data, datasets: datasets.data, at: Date.now() };
  }
  return library;
}

const byId = (items, id) => items.find((x) => x.id === id) || null;
const shapeText = (shape) => (shape || []).join("×");
const isTextDataset = (d) => TEXT_DATASET_FORMATS.includes(d.format);
const isEmbeddingTeacher = (t) => !!t && (t.details || {}).task === "embedding";

// A name with its id after it in small type (ids are secondary); a deleted item shows its id.
function named(item, id) {
  if (!id) return "–";
  return h("span", { class: "named" }, item ? item.name : "(deleted)", " ", h("code", { class: "id" }, id));
}

// Why teacher `t` (null: none) cannot train on dataset `d`, or null when they go together: the
// API's own pre-flight rules (service/api/job_checks.py), so the pickers offer only pairs it takes.
function pairProblem(t, d) {
  const text = isTextDataset(d);
  if (!t) {
    if (text) return "a text dataset needs a text teacher (hf) for its tokenizer";
    return d.labeled ? null : "without a teacher the dataset needs labels";
  }
  if (t.format === "hf") return text ? null : "a text teacher (hf) trains on a text dataset (jsonl)";
  if (text) return "a text dataset needs a text teacher (hf)";
  if (JSON.stringify(t.input_shape) !== JSON.stringify(d.feature_shape)) {
    return `rows of shape [${d.feature_shape}], the teacher takes [${t.input_shape}]`;
  }
  if (d.num_classes !== null && d.num_classes > t.num_classes) return `${d.num_classes} classes, the teacher has ${t.num_classes}`;
  return null;
}

// Whether a student architecture fits the data (text students for text) and the teacher.
function archFits(a, t, d) {
  if (!d) return a.inputs !== "text";
  if ((a.inputs === "text") !== isTextDataset(d)) return false;
  return !a.needs_teacher_weights || (!!t && t.format === "hf");
}

function methodFits(m, t, d) {
  if (m.needs_teacher && !t) return false;
  if (m.needs_labels && (!d || !d.labeled)) return false;
  if (isEmbeddingTeacher(t) && (m.compares === "logits" || m.needs_labels)) return false;
  // fitnet, lelp: they read a teacher output besides the logits
  if (m.requires.includes("teacher_features") && !(t && (t.outputs || []).some((o) => !o.logits))) return false;
  return true;
}

// The method the service picks when none is named: kd for a classifier, embedding_cosine for an
// embedding model, ce without a teacher.
const defaultMethod = (t) => (!t ? "ce" : isEmbeddingTeacher(t) ? "embedding_cosine" : "kd");

const teacherLabel = (t) => `${t.name} · ${t.format} · ${t.format === "hf" ? (t.details || {}).task || "text"
  : shapeText(t.input_shape)} → ${t.num_classes}`;
const datasetLabel = (d) => `${d.name} · ${d.num_rows} rows · ${isTextDataset(d) ? "text" : shapeText(d.feature_shape)}` +
  (d.labeled ? ` · ${d.num_classes} classes` : " · unlabelled");

// Fill a <select> with [{value, label, disabled}] and select `want` when it is offered, else the
// first enabled option. Returns the value selected.
function setOptions(select, options, want) {
  select.replaceChildren(...options.map((o) => h("option", { value: o.value, disabled: o.disabled }, o.label)));
  const offered = options.filter((o) => !o.disabled).map((o) => o.value);
  select.value = offered.includes(want) ? want : offered.length ? offered[0] : "";
  return select.value;
}

// ---- views ---------------------------------------------------------------------------------

const views = {};

// A table inside a box that scrolls sideways on a narrow screen instead of widening the page.
function table(id, columns, tbody) {
  return h("div", { class: "table-wrap" },
    h("table", { id }, h("thead", {}, h("tr", {}, columns.map((c) => h("th", {}, c)))), tbody));
}

// Run `refresh` now and every `ms`; an error is shown in `slot` until a later refresh succeeds.
function poll(slot, refresh, ms) {
  const run = () => refresh().then(() => fill(slot), (e) => fill(slot, errorText(e)));
  run();
  const timer = setInterval(run, ms);
  return () => clearInterval(timer);
}

const errorText = (e) => h("p", { class: "error" }, `${e.code || "error"}: ${e.message}`);

views.jobs = (el) => {
  const tbody = h("tbody");
  const slot = h("div");
  el.append(
    h("div", { class: "toolbar" }, h("h1", {}, "Jobs"), h("a", { href: "#/new", class: "button", id: "new-job" }, "New job")),
    slot,
    table("jobs-table", ["job", "status", "teacher → dataset", "stage", "progress", "epoch", "method", "student",
                         "accuracy", "created"], tbody));
  const row = (j, lib) => h("tr", { "data-job": j.id },
    h("td", {}, h("a", { href: `#/jobs/${j.id}` }, j.metadata.name ? named({ name: j.metadata.name }, j.id) : j.id)),
    h("td", { class: "status-cell" }, statusBadge(j.status),
      j.error ? h("div", { class: "row-error", title: j.error.code }, j.error.message) : null),
    h("td", {}, j.teacher_id ? byId(lib.teachers, j.teacher_id)?.name || j.teacher_id : "no teacher", " → ",
      byId(lib.datasets, j.dataset_id)?.name || j.dataset_id),
    h("td", {}, j.stage || ""),
    h("td", {}, progressBar(j.progress)),
    h("td", {}, `${j.epoch}/${j.epochs}`),
    h("td", {}, j.method.name),
    h("td", {}, j.student.architecture),
    h("td", {}, pct(j.metrics.student_accuracy)),
    h("td", {}, when(j.created_at)));
  return poll(slot, async () => {
    const [page, lib] = await Promise.all([api("/v1/jobs?limit=50"), getLibrary()]);
    tbody.replaceChildren(...page.data.map((j) => row(j, lib)));
    if (!page.data.length) tbody.append(h("tr", {}, h("td", { colspan: 10, class: "muted" }, "No jobs yet: start one.")));
  }, 2000);
};

views.models = (el) => {
  const tbody = h("tbody");
  el.append(h("h1", {}, "Models"), table("models-table", ["model", "method", "student", "parameters", "compression",
                                                            "accuracy", "agreement", "created"], tbody));
  api("/v1/models?limit=100").then((page) => {
    tbody.replaceChildren(...page.data.map((m) => h("tr", {},
      h("td", {}, h("a", { href: `#/models/${m.id}` }, named(m, m.id))), h("td", {}, m.method.name),
      h("td", {}, m.student.architecture), h("td", {}, m.num_parameters.toLocaleString()),
      h("td", {}, m.compression_ratio ? m.compression_ratio.toFixed(1) + "×" : "–"),
      h("td", {}, pct(m.metrics.student_accuracy)), h("td", {}, pct(m.metrics.agreement)),
      h("td", {}, when(m.created_at)))));
    if (!page.data.length) tbody.append(h("tr", {}, h("td", { colspan: 8, class: "muted" }, "No models yet.")));
  }).catch(showError(el));
};

// ---- teachers and datasets page: upload forms and what is there ----------------------------

// A labelled control: <label class="field"><span>text</span>control<small>hint</small></label>;
// the hint is a text or a <small> of its own.
function field(text, control, hint) {
  return h("label", { class: "field" }, h("span", {}, text), control,
           hint instanceof Node ? hint : hint ? h("small", {}, hint) : null);
}

const choice = (id, name, values, blank) => h("select", { name, id },
  h("option", { value: "" }, blank), values.map((v) => h("option", { value: v }, v)));

// "1, 28, 28" or "[1, 28, 28]" → [1, 28, 28]; "" → null; anything else → NaN in the list.
function parseInts(text) {
  const parts = text.replace(/[[\]]/g, " ").split(/[\s,]+/).filter(Boolean);
  return parts.length ? parts.map((p) => (/^-?\d+$/.test(p) ? Number(p) : NaN)) : null;
}

// The multipart body an upload form sends: its filled fields only (an empty file part or field
// would be a value); input_shape as the JSON list the API reads.
function uploadBody(form) {
  const body = new FormData();
  for (const input of form.querySelectorAll("[name]")) {
    if (input.type === "file") {
      if (input.files.length) body.append(input.name, input.files[0]);
    } else if (input.value.trim() !== "") {
      const ints = input.name === "input_shape" ? parseInts(input.value) : null;
      body.append(input.name, ints ? JSON.stringify(ints) : input.value.trim());
    }
  }
  return body;
}

// An upload form: POST it, then show what was stored (and call `done`), or the API's error with
// the field it names marked. A new attempt clears the last one's message.
function uploadForm({ id, title, route, kind, fields, done }) {
  const status = h("p", { class: "form-status", id: `${id}-status`, hidden: true });
  const button = h("button", { type: "submit", id: `${id}-submit` }, `Upload ${kind}`);
  const form = h("form", { id, class: "card upload" }, h("h2", {}, title), fields, button, status);
  const say = (cls, ...text) => { status.className = "form-status " + cls; status.hidden = false; fill(status, ...text); };
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    status.hidden = true;
    form.querySelectorAll(".invalid").forEach((x) => x.classList.remove("invalid"));
    button.disabled = true;
    button.textContent = kind === "teacher" ? "Uploading and checking…" : "Uploading…";
    try {
      const item = await api(route, { method: "POST", form: uploadBody(form) });
      say("ok", `Uploaded ${item.name} `, h("code", { class: "id" }, item.id), " · ", h("a", { href: "#/new" }, "use it in a new job →"));
      form.querySelectorAll('input[type="file"]').forEach((x) => { x.value = ""; });
      done(item);
    } catch (e) {
      say("error", `${e.code}: ${e.message}`);
      const marked = e.param && form.querySelector(`[name="${e.param}"]`);
      if (marked) marked.classList.add("invalid");
    } finally {
      button.disabled = false;
      button.textContent = `Upload ${kind}`;
    }
  });
  return form;
}

function teacherUploadForm(done) {
  return uploadForm({ id: "teacher-upload", title: "Upload a teacher", route: "/v1/teachers", kind: "teacher", done, fields: [
    field("File", h("input", { type: "file", name: "file", id: "teacher-file", required: true }),
          "TorchScript (.pt), ONNX (.onnx, or a zip of it and its data file), or a zip of a Hugging Face model folder"),
    field("ONNX data", h("input", { type: "file", name: "data", id: "teacher-data" }),
          "optional: the ONNX model's external data file, under the name the model refers to it by"),
    field("Name", h("input", { type: "text", name: "name", id: "teacher-name", placeholder: "the file's name" })),
    field("Format", choice("teacher-format", "format", ["torchscript", "onnx", "hf"], "detect from the file")),
    field("Input shape", h("input", { type: "text", name: "input_shape", id: "input_shape", placeholder: "e.g. 1, 28, 28",
                                      spellcheck: "false" }), "per sample; needed when the file does not say"),
    field("Task", choice("task", "task", ["classification", "embedding"], "from config.json"), "hf only"),
  ] });
}

function datasetUploadForm(done) {
  return uploadForm({ id: "dataset-upload", title: "Upload a dataset", route: "/v1/datasets", kind: "dataset", done, fields: [
    field("File", h("input", { type: "file", name: "file", id: "dataset-file", required: true }),
          "npz (x, optional y), CSV with a header row, or JSONL texts"),
    field("Name", h("input", { type: "text", name: "name", id: "dataset-name", placeholder: "the file's name" })),
    field("Format", choice("dataset-format", "format", ["npz", "csv", "jsonl"], "detect from the file")),
    field("Label column", h("input", { type: "text", name: "label_column", id: "label_column", spellcheck: "false",
                                       placeholder: "label, target, class or y" }), "CSV and JSONL"),
    field("Text field", h("input", { type: "text", name: "text_column", id: "text_column", placeholder: "text",
                                     spellcheck: "false" }), "JSONL"),
    field("Text pair field", h("input", { type: "text", name: "text_pair_column", id: "text_pair_column",
                                          placeholder: "text_pair", spellcheck: "false" }), "JSONL, for pairs of texts"),
  ] });
}

views.data = (el) => {
  const teachers = h("tbody"), datasets = h("tbody");
  const slot = h("div");
  const show = async (fresh) => {
    const lib = await getLibrary(fresh);
    teachers.replaceChildren(...lib.teachers.map((t) => h("tr", { "data-teacher": t.id },
      h("td", {}, named(t, t.id)), h("td", {}, t.format), h("td", {}, t.format === "hf" ? "text" : `[${t.input_shape}]`),
      h("td", {}, t.num_classes), h("td", {}, t.num_parameters.toLocaleString()), h("td", {}, size(t.size_bytes)),
      h("td", {}, when(t.created_at)))));
    datasets.replaceChildren(...lib.datasets.map((d) => h("tr", { "data-dataset": d.id },
      h("td", {}, named(d, d.id)), h("td", {}, d.format), h("td", {}, d.num_rows),
      h("td", {}, isTextDataset(d) ? "text" : `[${d.feature_shape}]`), h("td", {}, d.labeled ? d.num_classes : "unlabelled"),
      h("td", {}, size(d.size_bytes)), h("td", {}, when(d.created_at)))));
    if (!lib.teachers.length) teachers.append(h("tr", {}, h("td", { colspan: 7, class: "muted" }, "No teachers yet.")));
    if (!lib.datasets.length) datasets.append(h("tr", {}, h("td", { colspan: 7, class: "muted" }, "No datasets yet.")));
  };
  const refresh = () => show(true).then(() => fill(slot), (e) => fill(slot, errorText(e)));
  el.append(h("h1", {}, "Teachers and datasets"),
    h("div", { class: "uploads" }, teacherUploadForm(refresh), datasetUploadForm(refresh)),
    slot,
    h("h2", {}, "Teachers"),
    table("teachers-table", ["teacher", "format", "input", "classes", "parameters", "size", "created"], teachers),
    h("h2", {}, "Datasets"),
    table("datasets-table", ["dataset", "format", "rows", "features", "classes", "stored", "created"], datasets));
  refresh();
};

// ---- the new-job form ----------------------------------------------------------------------

// How a parameter of a JSON schema is edited: a select for an enum, a checkbox for a boolean, a
// number, a comma-separated list of integers, or (anything else) JSON. For anyOf [x, null] it is
// x's control; any control left empty is not sent, so the server's default applies.
function paramKind(p) {
  const options = p.anyOf ? p.anyOf.filter((x) => x.type !== "null") : [p];
  const inner = options.length === 1 ? options[0] : p;
  if (inner.enum) return { kind: "enum", inner };
  if (inner.type === "boolean") return { kind: "boolean", inner };
  if (inner.type === "number" || inner.type === "integer") return { kind: "number", inner };
  if (inner.type === "array" && inner.items && inner.items.type === "integer") return { kind: "ints", inner };
  return { kind: "json", inner };
}

function paramInput(prefix, name, p) {
  const { kind, inner } = paramKind(p);
  const attrs = { name: `${prefix}.${name}`, id: `${prefix}-${name}`, "data-kind": kind,
                  "data-default": JSON.stringify(p.default === undefined ? null : p.default) };
  const blank = p.default === null || p.default === undefined ? "default" : "";
  if (kind === "enum") {
    return h("select", attrs, blank ? h("option", { value: "" }, blank) : null,
      inner.enum.map((v) => h("option", { value: JSON.stringify(v), selected: v === p.default }, String(v))));
  }
  if (kind === "boolean") return h("input", { ...attrs, type: "checkbox", checked: !!p.default });
  if (kind === "number") {
    return h("input", { ...attrs, type: "number", step: inner.type === "integer" ? "1" : "any", min: inner.minimum,
                        max: inner.maximum, value: p.default ?? "", placeholder: blank });
  }
  const shown = p.default === null || p.default === undefined ? "" : kind === "ints" ? p.default.join(", ") : JSON.stringify(p.default);
  return h("input", { ...attrs, type: "text", value: shown, spellcheck: "false",
                      placeholder: kind === "ints" ? "e.g. 64, 32" : blank || "JSON" });
}

// Inputs for a JSON schema's properties, named "<prefix>.<param>"; values left at their default
// are not sent (the server fills defaults in, one source of truth).
function paramFields(prefix, schema) {
  const props = (schema && schema.properties) || {};
  const fields = Object.entries(props).map(([name, p]) => {
    const input = paramInput(prefix, name, p);
    return h("label", { class: "field" + (input.type === "checkbox" ? " check" : ""), title: p.description || "" },
      h("span", {}, p.title || name), input, p.description ? h("small", {}, p.description) : null);
  });
  return fields.length ? fields : [h("p", { class: "muted" }, "no parameters")];
}

function paramError(prefix, name, message) {
  return new ApiError(422, { error: { code: "invalid_request", message: `${name}: ${message}`, param: `${prefix}.${name}` } });
}

// One input's value (undefined: left empty, so not sent).
function paramValue(input, prefix, name) {
  const kind = input.dataset.kind, text = input.value.trim();
  if (kind === "boolean") return input.checked;
  if (text === "") return undefined;
  if (kind === "enum") return JSON.parse(text);
  if (kind === "number") return Number(text);
  if (kind === "ints") {
    const ints = parseInts(text);
    if (ints.some(Number.isNaN)) throw paramError(prefix, name, "whole numbers separated by commas (e.g. 64, 32)");
    return ints;
  }
  try { return JSON.parse(text); } catch (_) { throw paramError(prefix, name, "not JSON"); }
}

function readParams(box, prefix) {
  const out = {};
  for (const input of box.querySelectorAll(`[name^="${prefix}."]`)) {
    const name = input.name.slice(prefix.length + 1);
    const value = paramValue(input, prefix, name);
    if (value !== undefined && JSON.stringify(value) !== input.dataset.default) out[name] = value;
  }
  return out;
}

// Show `params` (a job's) in the inputs paramFields made.
function setParams(box, prefix, params) {
  for (const [name, value] of Object.entries(params || {})) {
    const input = box.querySelector(`[name="${prefix}.${name}"]`);
    if (!input) continue;
    const kind = input.dataset.kind;
    if (kind === "boolean") input.checked = !!value;
    else if (value === null) input.value = "";
    else if (kind === "enum") input.value = JSON.stringify(value);
    else if (kind === "number") input.value = value;
    else if (kind === "ints") input.value = value.join(", ");
    else input.value = JSON.stringify(value);
  }
}

// Deep-merge plain objects (the advanced JSON into the body the controls make).
function merge(into, extra) {
  for (const [k, v] of Object.entries(extra)) {
    const both = v && typeof v === "object" && !Array.isArray(v) && into[k] && typeof into[k] === "object" && !Array.isArray(into[k]);
    into[k] = both ? merge({ ...into[k] }, v) : v;
  }
  return into;
}

// What a cloned job brings that the form has no control for: the rest of its training and
// export settings, as the advanced box's JSON.
function cloneExtras(job) {
  const shown = ["epochs", "batch_size", "learning_rate", "seed"];
  const training = Object.fromEntries(Object.entries(job.training).filter(([k]) => !shown.includes(k)));
  const exp = Object.fromEntries(Object.entries(job.export).filter(([k]) => !["quantize", "onnx"].includes(k)));
  return { training, export: exp };
}

views.new = (el, cloneId) => {
  el.append(h("div", { class: "toolbar" }, h("h1", {}, cloneId ? "New job, cloned from " : "New job",
                                             cloneId ? h("code", {}, cloneId) : null),
                h("a", { href: "#/data", class: "button secondary", id: "upload-link" }, "Upload a teacher or dataset")));
  Promise.all([getLibrary(true), api("/v1/architectures"), api("/v1/methods"),
               cloneId ? api(`/v1/jobs/${encodeURIComponent(cloneId)}`) : null])
    .then(([lib, archs, methods, source]) => el.append(jobForm(lib, archs.data, methods.data, source)))
    .catch(showError(el));
};

// The form's controls, which depend on each other: the teacher decides which datasets are offered,
// the dataset (and teacher) which students and methods.
function jobControls(lib) {
  const select = (id, name) => h("select", { id, name });
  const number = (id, value, attrs) => h("input", { id, name: id, type: "number", value, ...attrs });
  return {
    lib,
    teacher: select("teacher", "teacher_id"),
    dataset: select("dataset", "dataset_id"),
    validation: select("validation_dataset", "validation_dataset_id"),
    split: number("validation_split", 0.1, { min: 0.01, max: 0.89, step: "any" }),
    teacherHint: h("small", { id: "teacher-hint" }),
    datasetHint: h("small", { id: "dataset-hint" }),
    pairNote: h("p", { class: "muted note", id: "pair-note" }),
    arch: select("architecture", "student.architecture"),
    methodPicked: false,  // set once the user chooses a method
    archInfo: h("p", { class: "muted" }),
    archParams: h("div", { class: "params", id: "student-params" }),
    method: select("method", "method.name"),
    methodInfo: h("p", { class: "muted" }),
    methodParams: h("div", { class: "params", id: "method-params" }),
    features: select("teacher_features", "teacher_features"),
    epochs: number("epochs", 20, { min: 1, step: 1, placeholder: "auto" }),
    batch: number("batch_size", 64, { min: 1, step: 1 }),
    lr: number("learning_rate", 0.001, { min: 0, step: "any", placeholder: "auto" }),
    seed: number("seed", 0, { min: 0, step: 1 }),
    quantize: ["int8", "fp16"].map((p) => h("input", { type: "checkbox", name: "quantize", value: p, id: `quantize-${p}` })),
    advanced: h("textarea", { id: "advanced-json", name: "advanced", rows: 5, spellcheck: "false",
                              placeholder: '{"training": {"optimizer": "sgd"}, "baseline": true}' }),
    error: h("p", { class: "error", id: "form-error", hidden: true }),
  };
}

const chosenTeacher = (c) => byId(c.lib.teachers, c.teacher.value);
const chosenDataset = (c) => byId(c.lib.datasets, c.dataset.value);

function fillTeachers(c, want) {
  const fits = (t) => c.lib.datasets.some((d) => !pairProblem(t, d));
  const first = c.lib.teachers.find(fits);
  setOptions(c.teacher, [
    { value: "", label: "— none (supervised / self-distillation) —", disabled: !fits(null) },
    ...c.lib.teachers.map((t) => ({ value: t.id, disabled: !fits(t),
                                    label: `${teacherLabel(t)}${fits(t) ? "" : " · no matching dataset"} · ${t.id}` }))],
  want !== undefined ? want : first ? first.id : "");
}

function fillDatasets(c, want) {
  const t = chosenTeacher(c);
  const fitting = c.lib.datasets.filter((d) => !pairProblem(t, d));
  setOptions(c.dataset, fitting.map((d) => ({ value: d.id, label: `${datasetLabel(d)} · ${d.id}` })), want);
  describePair(c);
}

// Under each picker its choice's id and facts; under both, how many datasets were left out (and
// why, on hover) and a link to upload more.
function describePair(c) {
  const t = chosenTeacher(c), d = chosenDataset(c);
  const out = c.lib.datasets.filter((x) => pairProblem(t, x));
  const left = out.length;
  fill(c.teacherHint, t ? [h("code", { class: "id" }, t.id), ` · input ${t.format === "hf" ? "text" : `[${t.input_shape}]`} · `,
                           `${t.num_classes} outputs · ${t.num_parameters.toLocaleString()} parameters`]
                        : "no teacher: the student learns from the labels");
  fill(c.datasetHint, d ? [h("code", { class: "id" }, d.id), ` · ${d.num_rows} rows of `,
                           isTextDataset(d) ? "text" : `[${d.feature_shape}]`, d.labeled ? ` · ${d.num_classes} classes` : " · unlabelled"]
                        : h("span", { class: "error" }, c.lib.datasets.length ? "No dataset fits this teacher." : "No datasets yet."));
  fill(c.pairNote,
    left ? h("span", { title: out.map((x) => `${x.name}: ${pairProblem(t, x)}`).join("\n") },
             `${left} dataset${left > 1 ? "s" : ""} not fitting ${t ? "this teacher" : "training without a teacher"} ` +
             `${left > 1 ? "are" : "is"} left out. `) : null,
    h("a", { href: "#/data" }, "Upload a teacher or dataset →"));
}

function fillValidation(c, want) {
  const d = chosenDataset(c);
  const same = (v) => d && v.id !== d.id && isTextDataset(v) === isTextDataset(d) &&
    JSON.stringify(v.feature_shape) === JSON.stringify(d.feature_shape);
  setOptions(c.validation, [{ value: "", label: "— split off the training data —" },
    ...c.lib.datasets.filter(same).map((v) => ({ value: v.id, label: `${datasetLabel(v)} · ${v.id}` }))], want || "");
  c.split.disabled = !!c.validation.value;
}

function fillArchs(c, archs, want) {
  const t = chosenTeacher(c), d = chosenDataset(c);
  const before = c.arch.value;
  const now = setOptions(c.arch, archs.filter((a) => archFits(a, t, d)).map((a) => ({ value: a.name, label: a.name })),
                         want || before);
  if (now !== before || !c.archParams.childElementCount) showArch(c, archs);
}

function showArch(c, archs) {
  const a = archs.find((x) => x.name === c.arch.value);
  c.archInfo.textContent = a ? a.description || "" : "No student architecture fits this data.";
  c.archParams.replaceChildren(...(a ? paramFields("student", a.params) : []));
}

function fillMethods(c, methods, want) {
  const t = chosenTeacher(c), d = chosenDataset(c);
  const before = c.method.value;
  const fitting = methods.filter((m) => methodFits(m, t, d));
  // a method the user picked stays while it fits; otherwise the one the service would pick
  const preferred = want || (c.methodPicked && fitting.some((m) => m.name === before) ? before : defaultMethod(t));
  const now = setOptions(c.method, fitting.map((m) => ({ value: m.name, label: m.name })), preferred);
  if (now !== before || !c.methodParams.childElementCount) showMethod(c, methods);
  fillFeatures(c, methods);
}

function showMethod(c, methods) {
  const m = methods.find((x) => x.name === c.method.value);
  if (!m) { c.methodInfo.textContent = "No method fits this teacher and data."; c.methodParams.replaceChildren(); return; }
  const needs = [m.needs_teacher ? "a teacher" : null, m.needs_labels ? "labels" : null].filter(Boolean);
  c.methodInfo.textContent = (m.description || "") + (needs.length ? ` Needs ${needs.join(" and ")}.` : "");
  c.methodParams.replaceChildren(...paramFields("method", m.params));
}

// fitnet and lelp read one of the teacher's outputs: pick it from the outputs the probe found.
function fillFeatures(c, methods, want) {
  const m = methods.find((x) => x.name === c.method.value);
  const t = chosenTeacher(c);
  const needed = !!m && m.requires.includes("teacher_features");
  c.features.closest(".field").hidden = !needed;
  const outputs = needed && t ? (t.outputs || []).filter((o) => !o.logits) : [];
  setOptions(c.features, outputs.map((o) => ({ value: o.name, label: `${o.name} [${o.shape}]` })), want || c.features.value);
}

function jobFieldsets(c) {
  return [
    h("fieldset", { id: "data-fields" }, h("legend", {}, "Data"),
      field("Teacher", c.teacher, c.teacherHint), field("Dataset", c.dataset, c.datasetHint), c.pairNote,
      field("Validation", c.validation), field("Validation split", c.split, "share of the rows held out when no validation dataset is chosen")),
    h("fieldset", { id: "student-fields" }, h("legend", {}, "Student"), field("Architecture", c.arch), c.archInfo, c.archParams),
    h("fieldset", { id: "method-fields" }, h("legend", {}, "Method"), field("Method", c.method), c.methodInfo, c.methodParams,
      field("Teacher features", c.features, "the teacher output this method reads")),
    h("fieldset", { id: "training-fields" }, h("legend", {}, "Training"),
      field("Epochs", c.epochs, "empty: auto"), field("Batch size", c.batch), field("Learning rate", c.lr, "empty: auto"),
      field("Seed", c.seed),
      h("div", { class: "field" }, h("span", {}, "Also publish"),
        h("span", { class: "checks" }, c.quantize.map((q) => h("label", {}, q, ` ${q.value}`))))),
    h("details", { class: "advanced", id: "advanced" },
      h("summary", {}, "Advanced: more of the request as JSON (optional)"),
      h("p", { class: "muted" }, "Merged into the request body the fields above make, e.g. other ", h("code", {}, "training"),
        " settings, ", h("code", {}, "text.max_length"), ", ", h("code", {}, "baseline"), ", ", h("code", {}, "metadata"), "."),
      c.advanced),
  ];
}

function jobBody(c) {
  const optionalNumber = (input) => (input.value.trim() === "" ? undefined : Number(input.value));
  const body = {
    teacher_id: c.teacher.value || null,
    dataset_id: c.dataset.value,
    student: { architecture: c.arch.value, params: readParams(c.archParams, "student") },
    method: { name: c.method.value, params: readParams(c.methodParams, "method") },
    training: { epochs: optionalNumber(c.epochs), batch_size: Number(c.batch.value),
                learning_rate: optionalNumber(c.lr), seed: Number(c.seed.value) },
    export: { quantize: c.quantize.filter((q) => q.checked).map((q) => q.value) },
  };
  if (c.validation.value) body.validation_dataset_id = c.validation.value;
  else body.validation_split = Number(c.split.value);
  if (!c.features.closest(".field").hidden && c.features.value) body.teacher_features = c.features.value;
  if (c.advanced.value.trim()) {
    let extra;
    try { extra = JSON.parse(c.advanced.value); } catch (e) { extra = null; }
    if (!extra || typeof extra !== "object" || Array.isArray(extra)) {
      throw new ApiError(422, { error: { code: "invalid_request", message: "advanced: a JSON object, e.g. {\"baseline\": true}",
                                         param: "advanced" } });
    }
    merge(body, extra);
  }
  return body;
}

// The field an API error names: "method.params.alpha" → [name="method.alpha"], "dataset_id" → #dataset.
function errorField(form, param) {
  if (!param) return null;
  const name = param.replace(".params.", ".");
  return form.querySelector(`[name="${name}"]`) || form.querySelector(`#${CSS.escape(param.split(".").pop())}`);
}

function showFormError(form, c, e) {
  c.error.hidden = false;
  c.error.textContent = `${e.code}: ${e.message}`;
  const marked = errorField(form, e.param);
  if (marked) marked.classList.add("invalid");
}

// Editing the field an error marked clears the mark, and the error once no mark is left.
function clearFixed(form, c, ev) {
  if (!ev.target.classList || !ev.target.classList.contains("invalid")) return;
  ev.target.classList.remove("invalid");
  if (!form.querySelector(".invalid")) c.error.hidden = true;
}

function prefill(c, job) {
  const { training } = job;
  c.epochs.value = training.epochs === "auto" ? "" : training.epochs;
  c.batch.value = training.batch_size;
  c.lr.value = training.learning_rate === "auto" ? "" : training.learning_rate;
  c.seed.value = training.seed;
  c.quantize.forEach((q) => { q.checked = (job.export.quantize || []).includes(q.value); });
  c.advanced.value = JSON.stringify(cloneExtras(job), null, 2);
  c.advanced.closest("details").open = true;  // show what else was copied
}

function jobForm(lib, archs, methods, source) {
  const c = jobControls(lib);
  // novalidate: the API checks the values (one source of truth) and its message is shown
  const form = h("form", { id: "job-form", class: "card", novalidate: true }, jobFieldsets(c), c.error,
                 h("button", { id: "start-job", type: "submit" }, "Start job"));
  const afterDataset = () => { fillValidation(c); fillArchs(c, archs); fillMethods(c, methods); };
  fillTeachers(c, source ? source.teacher_id || "" : undefined);
  fillDatasets(c, source && source.dataset_id);
  fillValidation(c, source && source.validation_dataset_id);
  fillArchs(c, archs, source && source.student.architecture);
  fillMethods(c, methods, source && source.method.name);
  if (source) {
    setParams(c.archParams, "student", source.student.params);
    setParams(c.methodParams, "method", source.method.params);
    prefill(c, source);
  }
  c.teacher.addEventListener("change", () => { fillDatasets(c); afterDataset(); });
  c.dataset.addEventListener("change", () => { describePair(c); afterDataset(); });
  c.validation.addEventListener("change", () => { c.split.disabled = !!c.validation.value; });
  c.arch.addEventListener("change", () => showArch(c, archs));
  c.method.addEventListener("change", () => { c.methodPicked = true; showMethod(c, methods); fillFeatures(c, methods); });
  form.addEventListener("input", (ev) => clearFixed(form, c, ev));
  form.addEventListener("change", (ev) => clearFixed(form, c, ev));
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    c.error.hidden = true;
    form.querySelectorAll(".invalid").forEach((x) => x.classList.remove("invalid"));
    try {
      const job = await api("/v1/jobs", { method: "POST", json: jobBody(c) });
      location.hash = `#/jobs/${job.id}`;
    } catch (e) {
      showFormError(form, c, e);
    }
  });
  return form;
}

views.job = (el, id) => {
  const controller = new AbortController();
  const epochs = new Map();  // epoch → metrics event data
  let job = null;
  let lib = { teachers: [], datasets: [] };  // for names; the page works without them
  getLibrary().then((l) => { lib = l; if (job) drawHead(); }).catch(() => {});
  const head = h("div", { class: "job-head" });
  const facts = h("div", { class: "facts" });
  const charts = h("div", { class: "charts", id: "charts" });
  const log = h("ol", { class: "events", id: "events" });
  el.append(head, facts, h("h2", {}, "Training curves"), charts, h("h2", {}, "Events"), log);

  const drawCharts = () => {
    const rows = [...epochs.values()].sort((a, b) => a.epoch - b.epoch);
    const seriesOf = (key, label) => ({ key, label, points: rows.filter((r) => r[key] !== null && r[key] !== undefined)
                                                               .map((r) => [r.epoch, r[key]]) });
    const teacher = job && job.metrics.teacher_accuracy;
    const xMax = job ? job.epochs : undefined;
    // agreement is dashed: with a near-perfect teacher it lies on top of the accuracy curve
    const accuracy = [seriesOf("val_accuracy", "student accuracy"),
                      { ...seriesOf("val_agreement", "agreement"), dashed: true }];
    const accValues = accuracy.flatMap((se) => se.points.map((p) => p[1])).concat(teacher ? [teacher] : []);
    const accLow = accValues.length ? Math.max(0, Math.floor(Math.min(...accValues) * 10) / 10) : 0;
    fill(charts,
      rows.length ? lineChart({ id: "loss-chart", title: "Loss per epoch", xMax, format: lossFormat,
                                series: [seriesOf("train_loss", "train loss"), seriesOf("val_loss", "validation loss")] })
                  : h("p", { class: "muted", id: "no-curves" }, "The curves appear with the first epoch."),
      rows.length ? lineChart({ id: "accuracy-chart", title: "Validation accuracy per epoch", xMax, yMin: accLow, yMax: 1,
                                format: (v) => (100 * v).toFixed(1) + "%", tickFormat: (v) => (100 * v).toFixed(0) + "%", series: accuracy,
                                refs: teacher ? [{ key: "teacher", label: "teacher accuracy", value: teacher }] : [] })
                  : null,
      rows.length && !teacher ? h("p", { class: "muted" }, "The teacher's accuracy (reference line) is measured after training.") : null);
  };
  let pending = false;
  const scheduleDraw = () => {
    if (pending) return;
    pending = true;
    requestAnimationFrame(() => { pending = false; drawCharts(); });
  };

  const drawHead = () => {
    const canCancel = !TERMINAL.includes(job.status);
    fill(head,
      h("h1", {}, "Job ", h("code", {}, job.id)),
      h("div", { class: "status-line" },
        statusBadge(job.status, "job-status"), h("span", { id: "job-stage" }, job.stage || ""),
        progressBar(job.progress), h("span", {}, pct(job.progress)),
        h("span", {}, `epoch ${job.epoch}/${job.epochs}`),
        job.status === "running" ? h("span", { class: "muted" }, `ETA ${eta(job.estimated_finish)}`) : null,
        canCancel ? h("button", { id: "cancel-job", class: "secondary", type: "button", onclick: async (ev) => {
          ev.target.disabled = true;
          job = await api(`/v1/jobs/${id}/cancel`, { method: "POST" }).catch((e) => { alert(e.message); return job; });
          drawHead();
        } }, "Cancel") : null,
        h("a", { href: `#/new/${job.id}`, class: "button secondary", id: "clone-job",
                 title: "a new job with this one's teacher, data, student, method and training" }, "Clone job"),
        job.model_id ? h("a", { href: `#/models/${job.model_id}`, class: "button", id: "model-link" }, "Model card →") : null),
      job.error ? h("p", { class: "error", id: "job-error" }, `${job.error.code}: ${job.error.message}`) : null,
      (job.warnings || []).length ? h("ul", { class: "warnings", id: "job-warnings" },
        job.warnings.map((w) => h("li", { "data-code": w.code }, w.message))) : null);
    const m = job.metrics;
    facts.replaceChildren(h("dl", {},
      ...[["teacher", job.teacher_id ? named(byId(lib.teachers, job.teacher_id), job.teacher_id) : "none"],
          ["dataset", named(byId(lib.datasets, job.dataset_id), job.dataset_id)],
          ["student", `${job.student.architecture} ${JSON.stringify(job.student.params)}`],
          ["method", `${job.method.name} ${JSON.stringify(job.method.params)}`],
          ["training", `${job.training.epochs} epochs · batch ${job.training.batch_size} · lr ${job.training.learning_rate}`],
          ["student accuracy", pct(m.student_accuracy)], ["teacher accuracy", pct(m.teacher_accuracy)],
          ["agreement", pct(m.agreement)], ["created", when(job.created_at)], ["finished", when(job.finished_at)]]
        .map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)])));
  };

  const onEvent = (e) => {
    if (e.type === "metrics" && e.data && e.data.epoch !== undefined && e.data.train_loss !== undefined) {
      epochs.set(e.data.epoch, e.data);
      scheduleDraw();
    }
    log.prepend(h("li", { class: e.level }, h("time", {}, when(e.created_at)), h("span", { class: "type" }, e.type), e.message));
  };

  const refresh = async () => {
    job = await api(`/v1/jobs/${encodeURIComponent(id)}`, { signal: controller.signal });
    drawHead();
    scheduleDraw();
  };
  refresh().then(() => {
    const over = async () => { await refresh(); return TERMINAL.includes(job.status); };
    followEvents(id, onEvent, controller.signal, over).catch(showError(el));
  }).catch(showError(el));
  const timer = setInterval(() => {
    if (job && TERMINAL.includes(job.status)) return;
    refresh().catch(() => {});
  }, 1500);
  return () => { clearInterval(timer); controller.abort(); };
};

async function sha256Hex(blob) {
  if (!(window.crypto && crypto.subtle)) return null;  // only in secure contexts (https, localhost)
  const digest = await crypto.subtle.digest("SHA-256", await blob.arrayBuffer());
  return [...new Uint8Array(digest)].map((b) => b.toString(16).padStart(2, "0")).join("");
}

// Downloads need the API key, so a plain link cannot do: fetch the file, check its sha256
// against the card, and hand it to the browser as a blob.
async function downloadArtifact(card, art, button) {
  button.disabled = true;
  button.textContent = "Downloading…";
  try {
    const r = await api(`/v1/models/${card.id}/download?format=${art.format}&precision=${art.precision}`, { raw: true });
    const blob = await r.blob();
    const digest = await sha256Hex(blob);
    if (digest && digest !== art.sha256) throw new Error(`sha256 ${digest} is not the card's ${art.sha256}`);
    const match = /filename="([^"]+)"/.exec(r.headers.get("content-disposition") || "");
    const url = URL.createObjectURL(blob);
    const a = h("a", { href: url, download: match ? match[1] : `${card.name}.${art.precision}.onnx` });
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 60000);
    button.textContent = digest ? "Downloaded ✓ sha256" : "Downloaded";
  } catch (e) {
    button.textContent = "Download failed: " + e.message;
  } finally {
    button.disabled = false;
  }
}

views.model = (el, id) => {
  api(`/v1/models/${encodeURIComponent(id)}`).then((card) => {
    const m = card.metrics;
    const arts = card.artifacts;
    el.append(
      h("div", { class: "toolbar" }, h("h1", {}, "Model card: ", named(card, card.id)),
        h("a", { href: `#/jobs/${card.job_id}`, class: "button secondary" }, "← job")),
      h("div", { class: "facts", id: "model-card" }, h("dl", {},
        ...[["name", card.name], ["method", `${card.method.name} ${JSON.stringify(card.method.params || {})}`],
            ["student", `${card.student.architecture} ${JSON.stringify(card.student.params || {})}`],
            ["parameters", card.num_parameters.toLocaleString()],
            ["teacher parameters", card.teacher_num_parameters ? card.teacher_num_parameters.toLocaleString() : "–"],
            ["compression", card.compression_ratio ? card.compression_ratio.toFixed(1) + "× fewer parameters" : "–"],
            ["student accuracy", pct(m.student_accuracy)], ["teacher accuracy", pct(m.teacher_accuracy)],
            ["agreement with teacher", pct(m.agreement)],
            ["input", `${card.input.name} ${JSON.stringify(card.input.shape)} ${card.input.datatype}`],
            ["output", `${card.output.name} ${JSON.stringify(card.output.shape)} ${card.output.datatype}`],
            ["created", when(card.created_at)]]
          .map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]))),
      h("h2", {}, "Artifacts"),
      h("div", { class: "charts", id: "artifact-charts" },
        barChart({ id: "accuracy-bars", title: "Accuracy (validation)", format: pct,
                   bars: arts.map((a) => ({ label: a.precision, value: a.accuracy })) }),
        barChart({ id: "size-bars", title: "Size", format: size,
                   bars: arts.map((a) => ({ label: a.precision, value: a.size_bytes })) }),
        barChart({ id: "latency-bars", title: "CPU latency, batch 1", format: (v) => v.toFixed(3) + " ms",
                   bars: arts.map((a) => ({ label: a.precision, value: a.latency_ms_batch1 })) })),
      table("artifacts-table", ["format", "precision", "size", "accuracy", "max |Δ| vs PyTorch", "argmax agreement",
                                "latency b=1", "sha256", ""],
        h("tbody", {}, arts.map((a) => h("tr", {},
          h("td", {}, a.format), h("td", {}, a.precision), h("td", {}, size(a.size_bytes)), h("td", {}, pct(a.accuracy)),
          h("td", {}, a.max_abs_diff === null ? "–" : a.max_abs_diff.toExponential(2)), h("td", {}, pct(a.argmax_agreement)),
          h("td", {}, a.latency_ms_batch1 === null ? "–" : a.latency_ms_batch1.toFixed(3) + " ms"),
          h("td", {}, h("code", { title: a.sha256 }, a.sha256.slice(0, 12) + "…")),
          h("td", {}, h("button", { type: "button", class: "download", "data-precision": a.precision,
                                   onclick: (ev) => downloadArtifact(card, a, ev.currentTarget) }, `Download ${a.precision}`)))))));
  }).catch(showError(el));
};

views.searches = (el) => {
  const tbody = h("tbody");
  const slot = h("div");
  el.append(h("h1", {}, "Searches"),
    h("p", { class: "muted" }, "Start one with ", h("code", {}, "kdserve search create"), " or POST /v1/searches."),
    slot,
    table("searches-table", ["search", "status", "teacher → dataset", "trials", "succeeded", "pruned", "recommended",
                             "created"], tbody));
  return poll(slot, async () => {
    const [page, lib] = await Promise.all([api("/v1/searches?limit=50"), getLibrary()]);
    tbody.replaceChildren(...page.data.map((x) => {
      const r = x.result.recommended;
      return h("tr", { "data-search": x.id },
        h("td", {}, h("a", { href: `#/searches/${x.id}` }, x.id)),
        h("td", { class: "status-cell" }, statusBadge(x.status),
          x.error ? h("div", { class: "row-error", title: x.error.code }, x.error.message) : null),
        h("td", {}, byId(lib.teachers, x.teacher_id)?.name || x.teacher_id || "no teacher", " → ",
          byId(lib.datasets, x.dataset_id)?.name || x.dataset_id),
        h("td", {}, `${x.trials.started}/${x.budget.trials}`), h("td", {}, x.trials.succeeded), h("td", {}, x.trials.pruned),
        h("td", {}, r ? `trial ${r.trial} ${r.precision}: ${pct(r.accuracy)}, ${num(r.latency_ms)} ms` : "–"),
        h("td", {}, when(x.created_at)));
    }));
    if (!page.data.length) tbody.append(h("tr", {}, h("td", { colspan: 8, class: "muted" }, "No searches yet.")));
  }, 2000);
};

const fileText = (c) => (c ? `trial ${c.trial} ${c.precision}: score ${pct(c.score)}, accuracy ${pct(c.accuracy)}, ` +
  `${num(c.latency_ms)} ms, ${size(c.size_bytes)}, ${c.num_parameters.toLocaleString()} parameters` : "–");

views.search = (el, id) => {
  const head = h("div", { class: "job-head" });
  const facts = h("div", { class: "facts" });
  const chart = h("div", { class: "charts", id: "search-chart" });
  const tbody = h("tbody");
  el.append(head, facts, h("h2", {}, "Files: score against latency"), chart, h("h2", {}, "Trials"),
    table("trials-table", ["trial", "status", "method", "student", "lr", "temperature", "epochs", "val score", "files",
                           "job"], tbody));
  let search = null;
  let lib = { teachers: [], datasets: [] };
  getLibrary().then((l) => { lib = l; }).catch(() => {});
  const draw = (trials) => {
    const r = search.result;
    const onFront = new Set(r.pareto.map((c) => `${c.trial}/${c.precision}`));
    const rec = r.recommended ? `${r.recommended.trial}/${r.recommended.precision}` : null;
    const points = trials.flatMap((t) => t.candidates.map((c) => ({ ...c, front: onFront.has(`${c.trial}/${c.precision}`),
                                                                    recommended: rec === `${c.trial}/${c.precision}`,
                                                                    meets: c.meets_targets })));
    const canCancel = !TERMINAL.includes(search.status);
    fill(head, h("h1", {}, "Search ", h("code", {}, search.id)),
      h("div", { class: "status-line" }, statusBadge(search.status, "search-status"),
        h("span", { id: "trial-counts" }, `${search.trials.started}/${search.budget.trials} trials started · ` +
          `${search.trials.succeeded} succeeded · ${search.trials.pruned} pruned · ${search.trials.running} running`),
        canCancel ? h("button", { id: "cancel-search", class: "secondary", type: "button", onclick: async (ev) => {
          ev.target.disabled = true;
          await api(`/v1/searches/${encodeURIComponent(id)}/cancel`, { method: "POST" }).catch((e) => alert(e.message));
          refresh().catch(() => {});
        } }, "Cancel") : null,
        r.recommended ? h("a", { href: `#/models/${r.recommended.model_id}`, class: "button", id: "recommended-link" },
                          "Recommended model →") : null),
      search.error ? h("p", { class: "error" }, `${search.error.code}: ${search.error.message}`) : null);
    const t = search.targets;
    const targets = Object.entries(t).filter(([k, v]) => v !== null && k !== "batch_size").map(([k, v]) => `${k} ${v}`).join(" · ");
    facts.replaceChildren(h("dl", {},
      ...[["teacher", search.teacher_id ? named(byId(lib.teachers, search.teacher_id), search.teacher_id) : "none"],
          ["dataset", named(byId(lib.datasets, search.dataset_id), search.dataset_id)], ["targets", targets || "none"],
          ["methods", search.space.methods.join(", ")],
          ["students", search.space.students.map((x) => `${x.architecture} ${JSON.stringify(x.params.hidden_sizes || x.params.channels || x.params)}`).join(" · ")],
          ["recommended", h("span", { id: "recommended" }, fileText(r.recommended))],
          ["closest", r.closest ? `${fileText(r.closest)} (misses ${Object.entries(r.closest.violations).map(([k, v]) => `${k} by ${(100 * v).toFixed(1)}%`).join(", ")})` : "–"],
          ["created", when(search.created_at)]]
        .map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)])));
    fill(chart, points.length
      ? scatterChart({ id: "pareto-chart", title: `Files of ${trials.length} trials: the Pareto front joined, targets in red`, points,
                       xTarget: t.batch_size === 1 ? t.latency_ms : null, yTarget: t.min_accuracy })
      : h("p", { class: "muted", id: "no-files" }, "The files appear as trials finish."));
    tbody.replaceChildren(...trials.map((tr) => {
      const st = tr.params.student || {};
      return h("tr", { "data-trial": tr.number }, h("td", {}, tr.number), h("td", {}, statusBadge(tr.status)),
        h("td", {}, tr.params.method), h("td", {}, `${st.architecture} ${JSON.stringify((st.params || {}).hidden_sizes || (st.params || {}).channels || "")}`),
        h("td", {}, tr.params.learning_rate ? tr.params.learning_rate.toExponential(1) : "–"),
        h("td", {}, tr.params.temperature ? tr.params.temperature.toFixed(1) : "–"), h("td", {}, tr.epochs_run ?? "–"),
        h("td", {}, num(tr.value)), h("td", {}, tr.candidates.map((c) => c.precision).join(" ")),
        h("td", {}, h("a", { href: `#/jobs/${tr.job_id}` }, tr.job_id)));
    }));
  };
  const refresh = async () => {
    search = await api(`/v1/searches/${encodeURIComponent(id)}`);
    const trials = (await api(`/v1/searches/${encodeURIComponent(id)}/trials`)).data;
    draw(trials);
  };
  refresh().catch(showError(el));
  const timer = setInterval(() => {
    if (search && TERMINAL.includes(search.status)) return;
    refresh().catch(() => {});
  }, 2000);
  return () => clearInterval(timer);
};

function showError(el) {
  return (e) => el.append(errorText(e));
}

// ---- routing -------------------------------------------------------------------------------

let leave = null;

function route() {
  if (leave) { leave(); leave = null; }
  const view = document.getElementById("view");
  view.replaceChildren();
  const parts = (location.hash.replace(/^#\/?/, "") || "jobs").split("/").map(decodeURIComponent);
  let page = "jobs", args = [];
  if (parts[0] === "jobs" && parts[1]) { page = "job"; args = [parts[1]]; }
  else if (parts[0] === "models" && parts[1]) { page = "model"; args = [parts[1]]; }
  else if (parts[0] === "searches" && parts[1]) { page = "search"; args = [parts[1]]; }
  else if (parts[0] === "new" && parts[1]) { page = "new"; args = [parts[1]]; }  // clone that job
  else if (["jobs", "new", "models", "searches", "data"].includes(parts[0])) page = parts[0];
  const section = { job: "jobs", model: "models", search: "searches" }[page] || page;
  document.querySelectorAll("[data-nav]").forEach((a) => a.classList.toggle("active", a.dataset.nav === section));
  leave = views[page](view, ...args) || null;
}

window.addEventListener("hashchange", () => {
  if (document.getElementById("key-prompt").hidden) route();
});

(async function start() {
  if (!getKey()) { showKeyPrompt(""); return; }  // nothing to check yet, so no error to show
  try {
    await api("/v1/jobs?limit=1");
  } catch (e) {
    if (e.status !== 401) showError(document.getElementById("view"))(e);
    return;  // a 401 has shown the key prompt
  }
  document.getElementById("change-key").hidden = false;
  route();
})();
