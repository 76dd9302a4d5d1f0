// kdserve dashboard: a small single-page app on the /v1 API, with no build step and no third-party
// code (nothing can be fetched at run time). Pages are URL fragments:
//   #/jobs            jobs table, refreshed every 2 s
//   #/new             form to start a job (pickers filled from the API)
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

// fetch + the API's error shape; a 401 brings the key prompt back.
async function api(path, { method = "GET", json, signal, raw = false } = {}) {
  const headers = authHeaders(json !== undefined ? { "Content-Type": "application/json" } : {});
  const r = await fetch(path, { method, headers, signal, body: json !== undefined ? JSON.stringify(json) : undefined });
  if (!r.ok) {
    let body = null;
    try { body = await r.json(); } catch (_) { /* not JSON: keep the status */ }
    const e = new ApiError(r.status, body);
    if (r.status === 401) showKeyPrompt(e.message);
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
  localStorage.setItem(KEY_STORAGE, document.getElementById("api-key").value.trim());
  try {
    await api("/v1/jobs?limit=1");  // is the key good?
  } catch (e) {
    if (e.status !== 401) showKeyPrompt(e.message);
    return;
  }
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

// ---- views ---------------------------------------------------------------------------------

const views = {};

views.jobs = (el) => {
  const tbody = h("tbody");
  el.append(
    h("div", { class: "toolbar" }, h("h1", {}, "Jobs"), h("a", { href: "#/new", class: "button", id: "new-job" }, "New job")),
    h("table", { id: "jobs-table" },
      h("thead", {}, h("tr", {}, ["job", "status", "stage", "progress", "epoch", "method", "student", "accuracy", "created"]
        .map((c) => h("th", {}, c)))),
      tbody));
  async function refresh() {
    const page = await api("/v1/jobs?limit=50");
    tbody.replaceChildren(...page.data.map((j) => h("tr", { "data-job": j.id },
      h("td", {}, h("a", { href: `#/jobs/${j.id}` }, j.id)),
      h("td", {}, statusBadge(j.status)),
      h("td", {}, j.stage || ""),
      h("td", {}, progressBar(j.progress)),
      h("td", {}, `${j.epoch}/${j.epochs}`),
      h("td", {}, j.method.name),
      h("td", {}, j.student.architecture),
      h("td", {}, pct(j.metrics.student_accuracy)),
      h("td", {}, when(j.created_at)))));
    if (!page.data.length) tbody.append(h("tr", {}, h("td", { colspan: 9, class: "muted" }, "No jobs yet: start one.")));
  }
  refresh().catch(showError(el));
  const timer = setInterval(() => refresh().catch(() => {}), 2000);
  return () => clearInterval(timer);
};

views.models = (el) => {
  const tbody = h("tbody");
  el.append(h("h1", {}, "Models"), h("table", { id: "models-table" },
    h("thead", {}, h("tr", {}, ["model", "name", "method", "student", "parameters", "compression", "accuracy",
                                "agreement", "created"].map((c) => h("th", {}, c)))),
    tbody));
  api("/v1/models?limit=100").then((page) => {
    tbody.replaceChildren(...page.data.map((m) => h("tr", {},
      h("td", {}, h("a", { href: `#/models/${m.id}` }, m.id)), h("td", {}, m.name), h("td", {}, m.method.name),
      h("td", {}, m.student.architecture), h("td", {}, m.num_parameters.toLocaleString()),
      h("td", {}, m.compression_ratio ? m.compression_ratio.toFixed(1) + "×" : "–"),
      h("td", {}, pct(m.metrics.student_accuracy)), h("td", {}, pct(m.metrics.agreement)),
      h("td", {}, when(m.created_at)))));
    if (!page.data.length) tbody.append(h("tr", {}, h("td", { colspan: 9, class: "muted" }, "No models yet.")));
  }).catch(showError(el));
};

// Inputs for a JSON schema's properties, named "<prefix>.<param>"; values left at their default
// are not sent (the server fills defaults in, one source of truth).
function paramFields(prefix, schema) {
  const props = (schema && schema.properties) || {};
  const fields = Object.entries(props).map(([name, p]) => {
    const attrs = { name: `${prefix}.${name}`, id: `${prefix}-${name}`, "data-default": JSON.stringify(p.default) };
    let input;
    if (p.enum) {
      input = h("select", attrs, p.enum.map((v) => h("option", { value: JSON.stringify(v), selected: v === p.default }, String(v))));
    } else if (p.type === "boolean") {
      input = h("input", { ...attrs, type: "checkbox", checked: !!p.default, "data-kind": "boolean" });
    } else if (p.type === "number" || p.type === "integer") {
      input = h("input", { ...attrs, type: "number", step: p.type === "integer" ? "1" : "any", value: p.default ?? "",
                          "data-kind": "number" });
    } else {
      input = h("input", { ...attrs, type: "text", value: p.default === undefined ? "" : JSON.stringify(p.default),
                          "data-kind": "json", spellcheck: "false" });
    }
    return h("label", { class: "field", title: p.description || "" }, h("span", {}, p.title || name), input,
             p.description ? h("small", {}, p.description) : null);
  });
  return fields.length ? fields : [h("p", { class: "muted" }, "no parameters")];
}

function readParams(form, prefix) {
  const out = {};
  for (const input of form.querySelectorAll(`[name^="${prefix}."]`)) {
    const name = input.name.slice(prefix.length + 1);
    let value;
    if (input.dataset.kind === "boolean") value = input.checked;
    else if (input.dataset.kind === "number") { if (input.value === "") continue; value = Number(input.value); }
    else if (input.tagName === "SELECT") value = JSON.parse(input.value);
    else {
      if (input.value.trim() === "") continue;
      try { value = JSON.parse(input.value); } catch (_) { throw new ApiError(422, { error: {
        code: "invalid_request", message: `${name}: not JSON (e.g. [32, 16])`, param: `${prefix}.params.${name}` } }); }
    }
    if (JSON.stringify(value) !== input.dataset.default) out[name] = value;
  }
  return out;
}

views.new = (el) => {
  const form = h("form", { id: "job-form", class: "card" });
  const error = h("p", { class: "error", id: "form-error", hidden: true });
  el.append(h("h1", {}, "New job"), form);
  Promise.all([api("/v1/teachers?limit=100"), api("/v1/datasets?limit=100"), api("/v1/architectures"),
               api("/v1/methods")]).then(([teachers, datasets, archs, methods]) => {
    const teacherSelect = h("select", { id: "teacher", name: "teacher_id" },
      h("option", { value: "" }, "— none (self-distillation / supervised) —"),
      teachers.data.map((t) => h("option", { value: t.id }, `${t.name} · ${t.format} · ${t.input_shape} → ${t.num_classes} (${t.id})`)));
    if (teachers.data.length) teacherSelect.value = teachers.data[0].id;
    const datasetSelect = h("select", { id: "dataset", name: "dataset_id", required: true },
      datasets.data.map((d) => h("option", { value: d.id }, `${d.name} · ${d.num_rows} rows · ${d.feature_shape} (${d.id})`)));
    const archSelect = h("select", { id: "architecture" }, archs.data.map((a) => h("option", { value: a.name }, a.name)));
    const methodSelect = h("select", { id: "method" }, methods.data.map((m) => h("option", { value: m.name }, m.name)));
    methodSelect.value = methods.data.some((m) => m.name === "kd") ? "kd" : methods.data[0].name;
    const archParams = h("div", { class: "params", id: "student-params" });
    const methodParams = h("div", { class: "params", id: "method-params" });
    const archInfo = h("p", { class: "muted" }), methodInfo = h("p", { class: "muted" });
    const showArch = () => {
      const a = archs.data.find((x) => x.name === archSelect.value);
      archInfo.textContent = a.description || "";
      archParams.replaceChildren(...paramFields("student", a.params));
    };
    const showMethod = () => {
      const m = methods.data.find((x) => x.name === methodSelect.value);
      const needs = [m.needs_teacher ? "a teacher" : null, m.needs_labels ? "labels" : null].filter(Boolean);
      methodInfo.textContent = (m.description || "") + (needs.length ? ` Needs ${needs.join(" and ")}.` : "");
      methodParams.replaceChildren(...paramFields("method", m.params));
    };
    archSelect.addEventListener("change", showArch);
    methodSelect.addEventListener("change", showMethod);
    showArch();
    showMethod();
    const number = (id, value, attrs) => h("input", { id, type: "number", value, ...attrs });
    form.append(
      h("fieldset", {}, h("legend", {}, "Data"),
        h("label", { class: "field" }, h("span", {}, "Teacher"), teacherSelect),
        h("label", { class: "field" }, h("span", {}, "Dataset"), datasetSelect),
        datasets.data.length ? null : h("p", { class: "error" }, "Upload a dataset first (kdserve datasets upload FILE).")),
      h("fieldset", {}, h("legend", {}, "Student"), h("label", { class: "field" }, h("span", {}, "Architecture"), archSelect),
        archInfo, archParams),
      h("fieldset", {}, h("legend", {}, "Method"), h("label", { class: "field" }, h("span", {}, "Method"), methodSelect),
        methodInfo, methodParams),
      h("fieldset", {}, h("legend", {}, "Training"),
        h("label", { class: "field" }, h("span", {}, "Epochs"), number("epochs", 20, { min: 1, step: 1 })),
        h("label", { class: "field" }, h("span", {}, "Batch size"), number("batch_size", 64, { min: 1, step: 1 })),
        h("label", { class: "field" }, h("span", {}, "Learning rate"), number("learning_rate", 0.001, { min: 0, step: "any" })),
        h("label", { class: "field" }, h("span", {}, "Seed"), number("seed", 0, { min: 0, step: 1 })),
        h("label", { class: "field" }, h("span", {}, "Also publish"),
          h("span", { class: "checks" },
            ["int8", "fp16"].map((p) => h("label", {}, h("input", { type: "checkbox", name: "quantize", value: p }), ` ${p}`))))),
      error,
      h("button", { id: "start-job", type: "submit" }, "Start job"));
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      error.hidden = true;
      form.querySelectorAll(".invalid").forEach((x) => x.classList.remove("invalid"));
      try {
        const body = {
          teacher_id: teacherSelect.value || null,
          dataset_id: datasetSelect.value,
          student: { architecture: archSelect.value, params: readParams(form, "student") },
          method: { name: methodSelect.value, params: readParams(form, "method") },
          training: { epochs: Number(form.querySelector("#epochs").value),
                      batch_size: Number(form.querySelector("#batch_size").value),
                      learning_rate: Number(form.querySelector("#learning_rate").value),
                      seed: Number(form.querySelector("#seed").value) },
          export: { quantize: [...form.querySelectorAll('[name="quantize"]:checked')].map((c) => c.value) },
        };
        const job = await api("/v1/jobs", { method: "POST", json: body });
        location.hash = `#/jobs/${job.id}`;
      } catch (e) {
        error.hidden = false;
        error.textContent = `${e.code}: ${e.message}`;
        const field = e.param && (form.querySelector(`[name="${e.param.replace(".params", "")}"]`) ||
                                  form.querySelector(`#${e.param.split(".").pop()}`));
        if (field) field.classList.add("invalid");
      }
    });
  }).catch(showError(el));
};

views.job = (el, id) => {
  const controller = new AbortController();
  const epochs = new Map();  // epoch → metrics event data
  let job = null;
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
        job.model_id ? h("a", { href: `#/models/${job.model_id}`, class: "button", id: "model-link" }, "Model card →") : null),
      job.error ? h("p", { class: "error", id: "job-error" }, `${job.error.code}: ${job.error.message}`) : null,
      (job.warnings || []).length ? h("ul", { class: "warnings", id: "job-warnings" },
        job.warnings.map((w) => h("li", { "data-code": w.code }, w.message))) : null);
    const m = job.metrics;
    facts.replaceChildren(h("dl", {},
      ...[["teacher", job.teacher_id || "–"], ["dataset", job.dataset_id],
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
      h("div", { class: "toolbar" }, h("h1", {}, "Model card ", h("code", {}, card.id)),
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
      h("table", { id: "artifacts-table" },
        h("thead", {}, h("tr", {}, ["format", "precision", "size", "accuracy", "max |Δ| vs PyTorch", "argmax agreement",
                                    "latency b=1", "sha256", ""].map((c) => h("th", {}, c)))),
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
  el.append(h("h1", {}, "Searches"),
    h("p", { class: "muted" }, "Start one with ", h("code", {}, "kdserve search create"), " or POST /v1/searches."),
    h("table", { id: "searches-table" },
      h("thead", {}, h("tr", {}, ["search", "status", "trials", "succeeded", "pruned", "recommended", "created"]
        .map((c) => h("th", {}, c)))),
      tbody));
  async function refresh() {
    const page = await api("/v1/searches?limit=50");
    tbody.replaceChildren(...page.data.map((x) => {
      const r = x.result.recommended;
      return h("tr", { "data-search": x.id },
        h("td", {}, h("a", { href: `#/searches/${x.id}` }, x.id)), h("td", {}, statusBadge(x.status)),
        h("td", {}, `${x.trials.started}/${x.budget.trials}`), h("td", {}, x.trials.succeeded), h("td", {}, x.trials.pruned),
        h("td", {}, r ? `trial ${r.trial} ${r.precision}: ${pct(r.accuracy)}, ${num(r.latency_ms)} ms` : "–"),
        h("td", {}, when(x.created_at)));
    }));
    if (!page.data.length) tbody.append(h("tr", {}, h("td", { colspan: 7, class: "muted" }, "No searches yet.")));
  }
  refresh().catch(showError(el));
  const timer = setInterval(() => refresh().catch(() => {}), 2000);
  return () => clearInterval(timer);
};

const fileText = (c) => (c ? `trial ${c.trial} ${c.precision}: score ${pct(c.score)}, accuracy ${pct(c.accuracy)}, ` +
  `${num(c.latency_ms)} ms, ${size(c.size_bytes)}, ${c.num_parameters.toLocaleString()} parameters` : "–");

views.search = (el, id) => {
  const head = h("div", { class: "job-head" });
  const facts = h("div", { class: "facts" });
  const chart = h("div", { class: "charts", id: "search-chart" });
  const tbody = h("tbody");
  el.append(head, facts, h("h2", {}, "Files: score against latency"), chart, h("h2", {}, "Trials"),
    h("table", { id: "trials-table" }, h("thead", {}, h("tr", {}, ["trial", "status", "method", "student", "lr",
      "temperature", "epochs", "val score", "files", "job"].map((c) => h("th", {}, c)))), tbody));
  let search = null;
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
      ...[["teacher", search.teacher_id], ["dataset", search.dataset_id], ["targets", targets || "none"],
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
  return (e) => el.append(h("p", { class: "error" }, `${e.code || "error"}: ${e.message}`));
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
  else if (["jobs", "new", "models", "searches"].includes(parts[0])) page = parts[0];
  const section = { job: "jobs", model: "models", search: "searches" }[page] || page;
  document.querySelectorAll("[data-nav]").forEach((a) => a.classList.toggle("active", a.dataset.nav === section));
  leave = views[page](view, ...args) || null;
}

window.addEventListener("hashchange", () => {
  if (document.getElementById("key-prompt").hidden) route();
});

(async function start() {
  try {
    await api("/v1/jobs?limit=1");
  } catch (e) {
    if (e.status !== 401) showError(document.getElementById("view"))(e);
    return;  // a 401 has shown the key prompt
  }
  document.getElementById("change-key").hidden = false;
  route();
})();
