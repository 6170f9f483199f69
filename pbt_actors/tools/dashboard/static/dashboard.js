// pbt-actors dashboard: polls /api/updates every second with a cursor ("trials that ended
// after the N-th"), and refetches the bounded views only when something changed.
"use strict";
const POLL_MS = 1000;
const PALETTE = ["#1c7ed6", "#2b8a3e", "#ae3ec9", "#0c8599", "#e67700", "#5f3dc4", "#c2255c", "#5c940d",
                 "#1864ab", "#862e9c", "#087f5b", "#a61e4d"];
const BEST = "#d9480f";
const PLOT_CONFIG = {displaylogo: false, responsive: true, scrollZoom: true,
                     modeBarButtonsToRemove: ["select2d", "lasso2d", "autoScale2d"]};
const BASE_LAYOUT = {margin: {l: 64, r: 12, t: 28, b: 44}, font: {size: 12, family: "system-ui, sans-serif"},
                     paper_bgcolor: "#fff", plot_bgcolor: "#fff", hovermode: "closest",
                     legend: {orientation: "h", x: 0, y: 1.02, yanchor: "bottom", font: {size: 11}}};
const state = {cursor: 0, summary: null, tree: new Map(), treeY: new Map(), treeComplete: false, bestId: null, selected: null,
               failures: -1, polling: false};

const plotlyReady = new Promise((resolve) => { if (window.Plotly) resolve(); else window.plotlyLoaded = resolve; });
async function plot(id, traces, layout, config) {
  await plotlyReady;
  return Plotly.react(id, traces, layout, config);
}
const $ = (id) => document.getElementById(id);
const fmt = (v) => v === null || v === undefined ? "–" :
  (typeof v === "number" ? (Number.isInteger(v) ? String(v) : (Math.abs(v) >= 1e4 || Math.abs(v) < 1e-3 ?
    v.toExponential(3) : v.toPrecision(4))) : String(v));
const esc = (s) => String(s).replace(/[&<>"]/g, (c) => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", "\"": "&quot;"}[c]));
const hp = (h) => Object.entries(h || {}).map(([k, v]) => `${esc(k)}=${esc(fmt(v))}`).join("  ");
async function api(path) {
  const r = await fetch(path, {cache: "no-store"});
  if (!r.ok) throw new Error(`${path}: HTTP ${r.status}`);
  return r.json();
}
function logAxis(values) {
  const v = values.filter((x) => typeof x === "number");
  if (!v.length) return false;
  const lo = Math.min(...v), hi = Math.max(...v);
  return lo > 0 && hi / lo > 50;
}
function yTitle() {
  const s = state.summary;
  if (!s || !s.objective.length) return "fitness";
  if (s.objective.length === 1) return `${s.objective[0]} (${s.goal[0] === "max" ? "higher" : "lower"} is better)`;
  return "weighted objective (higher is better)";
}

// --- summary ------------------------------------------------------------------------------------
function showSummary(s) {
  state.summary = s;
  $("experiment").textContent = s.experiment || "(no experiment yet)";
  const pill = $("run-state");
  pill.textContent = s.finished ? "finished" : "running";
  pill.className = "pill " + (s.finished ? "finished" : "running");
  $("refreshed").textContent = `refreshed ${new Date(s.refreshed_at * 1000).toLocaleTimeString()} · ${s.refresh_ms} ms`;
  $("summary-trials").textContent = s.trials.toLocaleString();
  $("summary-status").textContent = Object.entries(s.by_status).filter(([, n]) => n).map(([k, n]) => `${k} ${n}`).join(" · ");
  $("summary-best").textContent = s.best ? fmt(s.best.value) : "–";
  $("summary-best-where").innerHTML = s.best ? `trial <a onclick="selectTrial(${s.best.trial_id})">#${s.best.trial_id}</a>` +
    ` · gen ${s.best.generation} · step ${s.best.end_step}` : "no completed trial yet";
  $("summary-generation").textContent = s.max_generation;
  $("summary-policy").textContent = `policy ${s.policy} · population ${s.population} · max steps ${s.max_steps}` +
    (s.compute ? ` · ${s.compute.steps_trained.toLocaleString()} steps trained / ${s.compute.nominal_steps.toLocaleString()} (population × max steps)` : "");
  $("summary-objective").textContent = yTitle();
  $("summary-store").textContent = s.store || "";
  const err = $("error");
  err.textContent = s.error ? `store: ${s.error}` : "";
  err.classList.toggle("hidden", !s.error);
  document.body.dataset.trials = String(s.trials);
}

// --- population ---------------------------------------------------------------------------------
async function loadPopulation() {
  const {population} = await api("/api/population");
  const best = state.summary && state.summary.best ? state.summary.best.trial_id : null;
  $("population").querySelector("tbody").innerHTML = population.map((t) =>
    `<tr class="clickable${t.trial_id === best ? " best" : ""}" data-trial="${t.trial_id}" onclick="selectTrial(${t.trial_id})">` +
    `<td>#${t.trial_id}</td><td>${t.generation}</td><td><span class="pill ${t.status}">${t.status}</span></td>` +
    `<td>${esc(t.worker || "–")}</td><td>${t.start_step}–${t.end_step}${t.at_step !== null && !t.final ? ` (at ${t.at_step})` : ""}</td>` +
    `<td>${fmt(t.value !== null ? t.value : (t.last ? Object.values(t.last)[0] : null))}</td><td class="hp">${hp(t.hparams)}</td></tr>`).join("");
  $("population-hint").textContent = `${population.length} trials`;
}

// --- fitness chart ------------------------------------------------------------------------------
async function loadCurves() {
  const c = await api("/api/curves");
  const traces = [];
  let ys = [];
  if (c.mode === "segments") {
    traces.push({x: c.segments.x, y: c.segments.y, mode: "lines", name: "every trial", hoverinfo: "skip",
                 line: {color: "rgba(134,142,150,0.35)", width: 1}});
    ys = ys.concat(c.segments.y);
  } else {
    const b = c.band;
    traces.push({x: b.x, y: b.max, mode: "lines", line: {width: 0}, hoverinfo: "skip", showlegend: false});
    traces.push({x: b.x, y: b.min, mode: "lines", line: {width: 0}, fill: "tonexty", fillcolor: "rgba(134,142,150,0.15)",
                 name: "all trials: min–max"});
    traces.push({x: b.x, y: b.p90, mode: "lines", line: {width: 0}, hoverinfo: "skip", showlegend: false});
    traces.push({x: b.x, y: b.p10, mode: "lines", line: {width: 0}, fill: "tonexty", fillcolor: "rgba(134,142,150,0.35)",
                 name: "10–90 %"});
    traces.push({x: b.x, y: b.p50, mode: "lines", line: {color: "#868e96", width: 1.2, dash: "dot"}, name: "median"});
    ys = ys.concat(b.min, b.max);
  }
  c.population.forEach((l, i) => {
    traces.push({x: l.x, y: l.y, mode: "lines+markers", marker: {size: 4}, name: `#${l.trial_id}`,
                 legendgroup: "pop", showlegend: i < 3, line: {color: PALETTE[i % PALETTE.length], width: 1.6},
                 hovertemplate: `ancestry of #${l.trial_id}<br>step %{x}<br>%{y:.4g}<extra></extra>`});
    ys = ys.concat(l.y);
  });
  if (c.best) {
    traces.push({x: c.best.x, y: c.best.y, mode: "lines", name: `best lineage → #${c.best.trial_id}`,
                 line: {color: BEST, width: 3.2}, hovertemplate: "best lineage<br>step %{x}<br>%{y:.4g}<extra></extra>"});
    ys = ys.concat(c.best.y);
  }
  const layout = Object.assign({}, BASE_LAYOUT, {
    xaxis: {title: {text: "step"}, gridcolor: "#f1f3f5", zeroline: false},
    yaxis: {title: {text: yTitle()}, gridcolor: "#f1f3f5", zeroline: false, type: logAxis(ys) ? "log" : "linear",
            exponentformat: "power"}, uirevision: "curve"});
  await plot("curve", traces, layout, PLOT_CONFIG);
  $("curve-hint").textContent = c.mode === "segments" ? `${c.completed} completed trials` :
    `${c.completed.toLocaleString()} completed trials, aggregated`;
}

// --- lineage tree -------------------------------------------------------------------------------
function addNodes(nodes) {
  for (const n of nodes) state.tree.set(n[0], {id: n[0], parent: n[1], gen: n[2], start: n[3], end: n[4],
                                              value: n[5], status: n[6], lineage: n[7]});
}
function layoutTree() {
  // Leaves get consecutive rows in depth-first order; a parent sits at the mean of its children.
  const kids = new Map();
  const roots = [];
  for (const n of [...state.tree.values()].sort((a, b) => a.id - b.id)) {
    if (n.parent !== null && state.tree.has(n.parent)) {
      if (!kids.has(n.parent)) kids.set(n.parent, []);
      kids.get(n.parent).push(n.id);
    } else roots.push(n.id);
  }
  const y = new Map();
  let row = 0;
  const stack = roots.slice().reverse().map((id) => [id, false]);
  while (stack.length) {
    const [id, done] = stack.pop();
    const ch = kids.get(id) || [];
    if (!ch.length) { y.set(id, row++); continue; }
    if (done) { y.set(id, ch.reduce((s, c) => s + y.get(c), 0) / ch.length); continue; }
    stack.push([id, true]);
    for (let i = ch.length - 1; i >= 0; i--) stack.push([ch[i], false]);
  }
  return y;
}
function bestAncestry() {
  const out = new Set();
  let id = state.bestId;
  while (id !== null && id !== undefined && state.tree.has(id) && !out.has(id)) { out.add(id); id = state.tree.get(id).parent; }
  return out;
}
async function drawTree() {
  const y = layoutTree();
  state.treeY = y;
  const best = bestAncestry();
  const ex = [], ey = [], bx = [], by = [];
  for (const n of state.tree.values()) {
    if (n.parent === null || !state.tree.has(n.parent)) continue;
    const p = state.tree.get(n.parent);
    const xs = [p.end, p.end, n.end, null], yy = [y.get(p.id), y.get(n.id), y.get(n.id), null];
    if (best.has(n.id) && best.has(p.id)) { bx.push(...xs); by.push(...yy); } else { ex.push(...xs); ey.push(...yy); }
  }
  const nodes = [...state.tree.values()];
  const values = nodes.map((n) => n.value);
  const finite = values.filter((v) => typeof v === "number");
  const useLog = logAxis(finite);
  const colour = values.map((v) => typeof v === "number" ? (useLog ? Math.log10(v) : v) : null);
  const traces = [
    {x: ex, y: ey, mode: "lines", line: {color: "#ced4da", width: 1}, hoverinfo: "skip", name: "warm start"},
    {x: bx, y: by, mode: "lines", line: {color: BEST, width: 3}, hoverinfo: "skip", name: "best lineage"},
    {x: nodes.map((n) => n.end), y: nodes.map((n) => y.get(n.id)), customdata: nodes.map((n) => n.id),
     mode: "markers", type: "scatter", name: "trial",
     text: nodes.map((n) => `#${n.id} · gen ${n.gen} · ${n.status}<br>steps ${n.start}–${n.end}<br>value ${fmt(n.value)}`),
     hovertemplate: "%{text}<extra></extra>",
     marker: {size: nodes.map((n) => best.has(n.id) ? 10 : (nodes.length > 800 ? 6 : 8)), color: colour,
              colorscale: state.summary && state.summary.goal[0] === "min" && state.summary.objective.length === 1 ?
                "Viridis" : "Viridis", reversescale: state.summary && state.summary.goal[0] === "min" && state.summary.objective.length === 1,
              showscale: finite.length > 0, colorbar: {thickness: 10, len: 0.8, title: {text: useLog ? "log10 value" : "value", side: "right"}},
              line: {color: nodes.map((n) => n.id === state.selected ? "#000" : (best.has(n.id) ? BEST : "rgba(0,0,0,0.25)")),
                     width: nodes.map((n) => n.id === state.selected ? 2.5 : (best.has(n.id) ? 2 : 0.5))}}},
  ];
  const layout = Object.assign({}, BASE_LAYOUT, {
    xaxis: {title: {text: "step (a trial's end)"}, gridcolor: "#f1f3f5", zeroline: false},
    yaxis: {visible: false, zeroline: false}, dragmode: "pan", uirevision: "tree", showlegend: true});
  await plot("tree", traces, layout, PLOT_CONFIG);
  const el = $("tree");
  el.dataset.nodes = String(state.tree.size);
  if (!el.dataset.bound) {
    el.dataset.bound = "1";
    el.on("plotly_click", (ev) => {
      const p = ev.points.find((q) => q.customdata !== undefined);
      if (p) selectTrial(p.customdata, false).catch(showError);
    });
  }
  const s = state.summary;
  $("tree-hint").textContent = state.treeComplete ? `${state.tree.size} trials · scroll to zoom, drag to pan` :
    `${state.tree.size} of ${s ? s.trials.toLocaleString() : "?"} trials shown (best and population ancestries; click to expand)`;
}
async function loadTree() {
  const t = await api("/api/tree");
  state.tree.clear();
  state.treeComplete = t.complete;
  state.bestId = t.best;
  addNodes(t.nodes);
  await drawTree();
}

// --- details --------------------------------------------------------------------------------------
const FOCUS_ABOVE = 300;  // trees with more nodes zoom to a trial chosen outside the tree
async function selectTrial(id, focus = true) {
  state.selected = id;
  const [d, around] = await Promise.all([api(`/api/trial/${id}`), state.treeComplete ? null : api(`/api/tree/${id}`)]);
  if (around) addNodes(around.nodes);
  const link = (t) => t === null || t === undefined ? "–" : `<a onclick="selectTrial(${t})">#${t}</a>`;
  const rows = [
    ["status", `<span class="pill ${d.status}">${d.status}</span>${d.is_best ? " <b>best</b>" : ""}`],
    ["value", esc(fmt(d.value))], ["generation", d.generation], ["steps", `${d.start_step}–${d.end_step}`],
    ["parent", link(d.parent_id)], ["crossover", link(d.crossover_id)],
    ["origin", esc(d.origin.kind) + (d.origin.opponent ? ` (initiator #${d.origin.initiator} vs #${d.origin.opponent})` : "")],
    ["worker", esc(d.worker || "–")], ["attempt", d.attempt], ["lineage", d.lineage !== null ? `lineage-${d.lineage}` : "–"],
    ["children", d.children.length ? d.children.map(link).join(" ") : "–"],
    ["checkpoint", d.checkpoint ? `${esc(d.checkpoint.path)} (${d.checkpoint.bytes.toLocaleString()} B, step ${d.checkpoint.step})` : "–"],
    ["final", esc(hp(d.final)) || "–"],
  ];
  const hps = Object.entries(d.hparams).map(([k, v]) => `<dt>${esc(k)}</dt><dd class="hparam" data-name="${esc(k)}">${esc(fmt(v))}</dd>`).join("");
  let html = `<h3 class="small muted">hyperparameters</h3><dl id="details-hparams">${hps}</dl>` +
    `<dl>${rows.map(([k, v]) => `<dt>${k}</dt><dd>${v}</dd>`).join("")}</dl>`;
  if (d.error) html += `<h3 class="small muted">error</h3><pre>${esc(d.error)}</pre>`;
  if (d.log) html += `<h3 class="small muted">log tail: ${esc(d.log.path)}</h3><pre>${esc(d.log.lines.join("\n")) || "(empty)"}</pre>`;
  $("details-title").textContent = `#${d.trial_id}`;
  const body = $("details-body");
  body.innerHTML = html;
  body.classList.remove("muted");
  await drawTree();
  if (focus && state.tree.size > FOCUS_ABOVE) await focusTree(id);
  $("details").dataset.trialId = String(d.trial_id);
}
async function focusTree(id) {
  // Zoom the tree to ~10 trials' steps either side and ~12 rows around the trial.
  const n = state.tree.get(id), y = state.treeY.get(id);
  if (!n || y === undefined) return;
  const span = 10 * Math.max(1, n.end - n.start);
  await plotlyReady;
  await Plotly.relayout("tree", {"xaxis.range": [n.end - span, n.end + span], "yaxis.range": [y - 12, y + 12]});
}
window.selectTrial = selectTrial;
$("goto").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const id = parseInt($("goto-id").value, 10);
  if (id > 0) selectTrial(id).catch(showError);
});

// --- schedule, workers, failures ------------------------------------------------------------------
async function loadSchedule() {
  const {schedule} = await api("/api/schedule");
  if (!schedule) { $("schedule-hint").textContent = "no completed trial yet"; return; }
  const names = Object.keys(schedule.segments[0].hparams).filter((k) => typeof schedule.segments[0].hparams[k] === "number");
  const traces = [];
  const layout = Object.assign({}, BASE_LAYOUT, {grid: {rows: Math.max(1, names.length), columns: 1, pattern: "independent"},
                                                 showlegend: false, margin: {l: 64, r: 12, t: 8, b: 44}});
  names.forEach((name, i) => {
    const x = [], y = [];
    for (const s of schedule.segments) { x.push(s.start, s.end); y.push(s.hparams[name], s.hparams[name]); }
    const ax = i === 0 ? "" : String(i + 1);
    traces.push({x, y, mode: "lines", line: {color: PALETTE[i % PALETTE.length], width: 2.2}, xaxis: "x" + ax, yaxis: "y" + ax,
                 name, hovertemplate: `${name} %{y:.4g}<br>step %{x}<extra></extra>`});
    layout["yaxis" + ax] = {title: {text: name}, gridcolor: "#f1f3f5", type: logAxis(y) ? "log" : "linear", exponentformat: "power"};
    layout["xaxis" + ax] = {gridcolor: "#f1f3f5", showticklabels: i === names.length - 1,
                            title: i === names.length - 1 ? {text: "step"} : undefined, matches: i ? "x" : undefined};
  });
  await plot("schedule", traces, layout, PLOT_CONFIG);
  $("schedule-hint").textContent = `trial #${schedule.trial_id}, ${schedule.segments.length} trials from its seed`;
}
const WORKER_BARS = 24;
async function loadWorkers() {
  const w = await api("/api/workers");
  const rows = w.workers;
  const el = $("workers");
  if (rows.length > WORKER_BARS) return drawWorkerHistogram(w);
  el.style.height = `${Math.max(160, 60 + rows.length * 22)}px`;
  const label = rows.map((r) => `${r.worker} · ${r.trials} trials${r.failed ? `, ${r.failed} failed` : ""}${r.running ? ` · running #${r.running}` : ""}`);
  await plot("workers", [{type: "bar", orientation: "h", y: rows.map((r) => r.worker),
    x: rows.map((r) => r.utilisation === null ? 0 : 100 * r.utilisation), text: label, textposition: "inside",
    insidetextanchor: "start", marker: {color: rows.map((r) => r.running ? "#1c7ed6" : "#74c0fc")},
    hovertemplate: "%{text}<br>busy %{x:.0f}%<extra></extra>"}],
    Object.assign({}, BASE_LAYOUT, {margin: {l: 110, r: 12, t: 4, b: 36}, showlegend: false,
      xaxis: {range: [0, 100], title: {text: "busy (% of time since its first trial)"}, gridcolor: "#f1f3f5"},
      yaxis: {autorange: "reversed"}}), PLOT_CONFIG);
  $("hosts").textContent = w.hosts.map((h) => `host ${h.host}${h.lost ? " (LOST)" : ""}: ` +
    h.children.map((c) => `${c.id} ${c.state}`).join(", ")).join(" · ");
}
async function drawWorkerHistogram(w) {
  // Too many workers for one bar each: how many workers are how busy, and the idlest named.
  const rows = w.workers.filter((r) => r.utilisation !== null);
  const bins = Array.from({length: 10}, (_, i) => ({lo: 10 * i, n: 0, names: []}));
  for (const r of rows) { const b = bins[Math.min(9, Math.floor(10 * r.utilisation))]; b.n++; if (b.names.length < 4) b.names.push(r.worker); }
  $("workers").style.height = "240px";
  const mean = rows.reduce((s, r) => s + r.utilisation, 0) / Math.max(1, rows.length);
  const running = w.workers.filter((r) => r.running).length;
  await plot("workers", [{type: "bar", x: bins.map((b) => `${b.lo}–${b.lo + 10}`), y: bins.map((b) => b.n),
    marker: {color: "#74c0fc"}, textposition: "none", text: bins.map((b) => b.names.join(", ") + (b.n > b.names.length ? ", …" : "")),
    hovertemplate: "%{y} workers %{x} busy<br>%{text}<extra></extra>"}],
    Object.assign({}, BASE_LAYOUT, {margin: {l: 56, r: 12, t: 8, b: 44}, showlegend: false,
      xaxis: {title: {text: "% busy since its first trial"}, tickangle: 0}, yaxis: {title: {text: "workers"}, gridcolor: "#f1f3f5"}}),
    PLOT_CONFIG);
  $("hosts").textContent = `${w.workers.length} workers · mean ${Math.round(100 * mean)}% busy · ${running} running now`;
}
async function loadFailures() {
  const {failures} = await api("/api/failures");
  $("failures-hint").textContent = failures.length ? `${failures.length} most recent` : "";
  $("failures").innerHTML = failures.length ? failures.map((f) =>
    `<div class="failure"><a onclick="selectTrial(${f.trial_id})">#${f.trial_id}</a> on ${esc(f.worker || "?")}` +
    ` (attempt ${f.attempt})<pre>${esc(f.error)}</pre></div>`).join("") : "none";
}

// --- the loop --------------------------------------------------------------------------------------
function showError(e) { const el = $("error"); el.textContent = String(e); el.classList.remove("hidden"); }
async function full() {
  const s = await api("/api/summary");
  showSummary(s);
  state.cursor = s.cursor;
  state.failures = s.by_status.failed;
  await Promise.all([loadPopulation(), loadCurves(), loadTree(), loadSchedule(), loadWorkers(), loadFailures()]);
  document.body.dataset.cursor = String(state.cursor);
  document.body.dataset.ready = "1";
}
async function poll() {
  if (state.polling) return;
  state.polling = true;
  try {
    const u = await api(`/api/updates?cursor=${state.cursor}`);
    const before = state.summary;
    showSummary(u.summary);
    state.cursor = u.cursor;
    const tasks = [loadPopulation(), loadWorkers()];
    if (u.ended.length) {
      const bestChanged = !before || !before.best || !u.summary.best || before.best.trial_id !== u.summary.best.trial_id;
      state.bestId = u.summary.best ? u.summary.best.trial_id : null;
      if (state.treeComplete) { addNodes(u.ended); if (u.summary.trials > 2000) state.treeComplete = false; }
      else addNodes(u.ended.filter((n) => n[1] !== null && state.tree.has(n[1])));
      tasks.push(loadCurves(), drawTree());
      if (bestChanged) tasks.push(loadSchedule());
    }
    if (u.summary.by_status.failed !== state.failures) { state.failures = u.summary.by_status.failed; tasks.push(loadFailures()); }
    await Promise.all(tasks);
    document.body.dataset.cursor = String(state.cursor);
  } catch (e) { showError(e); } finally { state.polling = false; }
}
full().catch(showError).finally(() => setInterval(poll, POLL_MS));
