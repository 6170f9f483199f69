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
               failures: -1, failedAttempts: -1, polling: false, view: "overview", compare: [], population: [], treeScope: null,
               tableQuery: {sort: "id", desc: false, q: "", offset: 0}, tableMatched: 0, parallel: null};

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
  const what = s.objective.map((n, i) => `${n} (${s.goal[i]})`).join(", ");
  return s.comparison === "pareto" ? `Pareto over ${what}` : `weighted ${what} (higher is better)`;
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
  // several objectives compared by Pareto rank: no single number is "the best"; the card shows
  // one front trial's metrics (the Pareto front tab shows them all)
  const front = s.best && s.comparison === "pareto" && s.objective.length > 1 && s.best.final;
  $("summary-best").textContent = !s.best ? "–" : front ? s.objective.map((n) => `${n} ${fmt(s.best.final[n])}`).join(" · ") : fmt(s.best.value);
  $("summary-best").classList.toggle("small", !!front);
  $("summary-best-where").innerHTML = s.best ? `${front ? "on the Pareto front: " : ""}trial <a onclick="openTrial(${s.best.trial_id})">#${s.best.trial_id}</a>` +
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
    `<tr class="clickable${t.trial_id === best ? " best" : ""}" data-trial="${t.trial_id}" onclick="openTrial(${t.trial_id})">` +
    `<td>#${t.trial_id}</td><td>${t.generation}</td><td><span class="pill ${t.status}">${t.status}</span></td>` +
    `<td class="worker">${esc(t.worker || "–")}</td><td class="steps">${t.start_step}–<wbr>${t.end_step}${t.at_step !== null && !t.final ? ` (at ${t.at_step})` : ""}</td>` +
    `<td>${fmt(t.value !== null ? t.value : (t.last ? Object.values(t.last)[0] : null))}</td><td class="hp">${hp(t.hparams)}</td></tr>`).join("");
  $("population-hint").textContent = `${population.length} trials`;
  state.population = population.map((t) => t.trial_id);
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
function layoutTree(tree = state.tree) {
  // One row per lineage (a path of the warm-start tree; a trial keeps its lineage forever), rows in
  // lineage order: a trial never moves when others arrive (new lineages take new rows below), so a
  // live tree does not re-lay out under the mouse.
  const lineages = [...new Set([...tree.values()].map((n) => n.lineage))].sort((a, b) => a - b);
  const row = new Map(lineages.map((l, i) => [l, i]));
  const y = new Map();
  for (const n of tree.values()) y.set(n.id, row.get(n.lineage));
  return y;
}
const ANCESTRIES_ABOVE = 150;  // bigger trees first show the ancestries that matter
function treeScope() {
  // a partial tree (a big store) is already what matters, and grows where the user clicks
  return state.treeScope || (state.treeComplete && state.tree.size > ANCESTRIES_ABOVE ? "ancestries" : "all");
}
function shownTree() {
  // "ancestries": the best trial's and the population's ancestries (and the selected trial's):
  // a readable first view at any size, whose lanes are the lineages that lead somewhere.
  if (treeScope() === "all") return state.tree;
  const out = new Map();
  for (const tip of [state.bestId, state.selected, ...(state.population || [])]) {
    let id = tip;
    while (id !== null && id !== undefined && state.tree.has(id) && !out.has(id)) { out.set(id, state.tree.get(id)); id = state.tree.get(id).parent; }
  }
  return out.size ? out : state.tree;
}
function nodeAt(clientX, clientY) {
  // Exact hit testing: the marker whose centre is nearest the pointer, within its radius (plotly's
  // own "closest" ties overlapping markers and may answer a neighbour).
  const gd = $("tree"), fl = gd._fullLayout;
  if (!fl || !fl.xaxis) return null;
  const box = gd.getBoundingClientRect();
  const px = clientX - box.left - fl._size.l, py = clientY - box.top - fl._size.t;
  let best = null, bestD = 9;
  for (const [id, y] of state.treeY) {
    const n = state.tree.get(id);
    const dx = fl.xaxis.d2p(n.end) - px, dy = fl.yaxis.d2p(y) - py;
    const d = Math.hypot(dx, dy);
    if (d < bestD) { bestD = d; best = n.id; }
  }
  return best;
}
function bestAncestry() {
  const out = new Set();
  let id = state.bestId;
  while (id !== null && id !== undefined && state.tree.has(id) && !out.has(id)) { out.add(id); id = state.tree.get(id).parent; }
  return out;
}
function stableLanes(shown) {
  // The lanes of what is shown, kept across redraws: a lineage keeps its lane while others come
  // and go (a new one takes the next lane below); compacted only once half the lanes are gaps.
  const present = [...new Set([...shown.values()].map((n) => n.lineage))].sort((a, b) => a - b);
  if (!state.lanes || state.lanes.size > 2 * present.length + 10) state.lanes = new Map();
  let next = state.lanes.size ? Math.max(...state.lanes.values()) + 1 : 0;
  for (const l of present) if (!state.lanes.has(l)) state.lanes.set(l, next++);
  const y = new Map();
  for (const n of shown.values()) y.set(n.id, state.lanes.get(n.lineage));
  return y;
}
async function drawTree() {
  const shown = shownTree();
  const y = stableLanes(shown);
  state.treeY = y;
  const best = bestAncestry();
  const ex = [], ey = [], bx = [], by = [];
  for (const n of shown.values()) {
    if (n.parent === null || !shown.has(n.parent)) continue;
    const p = shown.get(n.parent);
    const xs = [p.end, p.end, n.end, null], yy = [y.get(p.id), y.get(n.id), y.get(n.id), null];
    if (best.has(n.id) && best.has(p.id)) { bx.push(...xs); by.push(...yy); } else { ex.push(...xs); ey.push(...yy); }
  }
  const nodes = [...shown.values()];
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
    yaxis: {visible: false, zeroline: false}, dragmode: "pan", uirevision: "tree", showlegend: true,
    hoverdistance: 8});
  layout.uirevision = "tree-" + treeScope();
  await plot("tree", traces, layout, PLOT_CONFIG);
  const el = $("tree");
  el.dataset.nodes = String(state.tree.size);
  el.dataset.shown = String(shown.size);
  $("tree-scope").textContent = treeScope() === "all" ? "show ancestries only" : "show all trials";
  if (!el.dataset.bound) {
    el.dataset.bound = "1";
    let down = null;
    el.addEventListener("mousedown", (ev) => { down = ev.target.closest(".modebar") ? null : [ev.clientX, ev.clientY]; }, true);
    // on the document: plotly covers the page while a button is down, so the mouseup (and the
    // click) land outside the plot
    document.addEventListener("mouseup", (ev) => {
      const start = down;
      down = null;
      if (!start || Math.hypot(ev.clientX - start[0], ev.clientY - start[1]) > 4) return;  // a pan, not a click
      const id = nodeAt(ev.clientX, ev.clientY);
      if (id !== null) openTrial(id);
    }, true);
  }
  const s = state.summary;
  const what = treeScope() === "all" ? "" : `${shown.size} on the best's and the population's ancestries, of `;
  $("tree-hint").textContent = state.treeComplete ? `${what}${state.tree.size} trials · scroll to zoom, drag to pan` :
    `${what}${state.tree.size} of ${s ? s.trials.toLocaleString() : "?"} trials loaded (click to expand)`;
}
async function loadTree() {
  const t = await api("/api/tree");
  state.tree.clear();
  state.lanes = null;
  state.treeComplete = t.complete;
  state.bestId = t.best;
  addNodes(t.nodes);
  await drawTree();
}

// --- details ---------------------------------------------------------------------------------------
const FOCUS_ABOVE = 300;  // trees with more nodes zoom to a selected trial
function openTrial(id) { setHash({view: "overview", trial: id}); }
async function selectTrial(id, focus = true) {
  state.selected = id;
  const [d, around] = await Promise.all([api(`/api/trial/${id}`), state.treeComplete ? null : api(`/api/tree/${id}`)]);
  if (around) addNodes(around.nodes);
  const link = (t) => t === null || t === undefined ? "–" : `<a onclick="openTrial(${t})">#${t}</a>`;
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
  const e = d.explanation;
  const changes = e.changes.filter((c) => c.how !== "kept").map((c) =>
    `<span class="change" data-name="${esc(c.name)}" data-how="${c.how}">${esc(c.name)} ${esc(fmt(c.before))} → ${esc(fmt(c.after))} (${c.how})</span>`);
  let html = `<p class="why" id="details-why" data-kind="${esc(e.kind)}">${esc(e.text)}</p>` +
    `<div class="goto"><button type="button" id="details-compare" onclick="toggleCompare(${d.trial_id})">` +
    `${state.compare.includes(d.trial_id) ? "remove from compare" : "compare"}</button></div>` +
    `<h3 class="small muted">hyperparameters</h3><dl id="details-hparams">${hps}</dl>` +
    (changes.length ? `<div class="small" id="details-changes">explore: ${changes.join(", ")}</div>` : "") +
    `<h3 class="small muted">this trial's reports (${d.measurements.length ? d.measurements.length : "none: its result at its last step"})</h3><div id="details-curve" class="plot mini"></div>` +
    `<h3 class="small muted">this trial's schedule (its ancestry, ${d.schedule ? d.schedule.segments.length : 0} trials)</h3>` +
    `<div id="details-schedule" class="plot mini"></div>` +
    `<dl>${rows.map(([k, v]) => `<dt>${k}</dt><dd>${v}</dd>`).join("")}</dl>`;
  if (d.attempts.length > 1 || d.failed_attempts) {
    html += `<h3 class="small muted">attempts (${d.failed_attempts} failed)</h3><ul id="details-attempts" class="small">` +
      d.attempts.map((a) => `<li class="attempt ${a.outcome}" data-outcome="${a.outcome}">attempt ${a.attempt} on ${esc(a.worker)}: ${a.outcome}</li>`).join("") + "</ul>";
  }
  if (d.error) html += `<h3 class="small muted">error (last failed attempt)</h3><pre id="details-error">${esc(d.error)}</pre>`;
  for (const o of d.output || []) {  // a command trial: each attempt's kept stdout/stderr (its tail)
    html += `<h3 class="small muted">command output, attempt ${o.attempt}</h3><pre class="details-output" data-attempt="${o.attempt}">${esc(o.output)}</pre>`;
  }
  if (d.log) html += `<h3 class="small muted">this trial's log lines: ${esc(d.log.path)}</h3><pre id="details-log" data-trial="${d.trial_id}">${esc(d.log.lines.join("\n")) || "(none)"}</pre>`;
  $("details-title").textContent = `#${d.trial_id}`;
  const body = $("details-body");
  body.innerHTML = html;
  body.classList.remove("muted");
  await Promise.all([drawTrialCurve("details-curve", [d]), d.schedule ? drawSchedule("details-schedule", d.schedule, true) : null]);
  await drawTree();
  if (focus && state.tree.size > FOCUS_ABOVE) await focusTree(id);
  $("details").dataset.trialId = String(d.trial_id);
}
function objectiveName() { return state.summary && state.summary.objective.length ? state.summary.objective[0] : null; }
async function drawTrialCurve(el, trials, withAncestry = false) {
  const name = objectiveName();
  // Compare: each trial's warm-start chain (its ancestors' results by step), dotted, behind its own reports
  const history = !withAncestry ? [] : trials.map((d, i) => ({x: d.ancestry_curve.map((p) => p[0]), y: d.ancestry_curve.map((p) => p[1]),
    mode: "lines", name: `#${d.trial_id}'s ancestry`, legendgroup: `t${d.trial_id}`, hoverinfo: "x+y+name",
    line: {color: PALETTE[i % PALETTE.length], width: 1.5, dash: "dot"}}));
  const traces = trials.map((d, i) => {
    let pts = d.measurements.filter((m) => m[1] && typeof m[1][name] === "number");
    if (!pts.length && d.final && typeof d.final[name] === "number") pts = [[d.end_step, d.final]];  // no reports: its result
    return {x: pts.map((m) => m[0]), y: pts.map((m) => m[1][name]), mode: "lines+markers", marker: {size: 4},
            name: `#${d.trial_id}`, legendgroup: `t${d.trial_id}`, line: {color: trials.length === 1 ? BEST : PALETTE[i % PALETTE.length], width: 2}};
  });
  const ys = traces.concat(history).flatMap((t) => t.y);
  const yaxis = {title: {text: name || "value"}, gridcolor: "#f1f3f5", type: logAxis(ys) ? "log" : "linear", exponentformat: "power"};
  const only = ys.filter((v) => typeof v === "number");
  if (only.length && only.every((v) => v === only[0])) {
    // one value (a trial that reported nothing, its result only): an axis around it, not plotly's -1..1
    const v = only[0], pad = Math.abs(v) * 0.5 || 1;
    yaxis.range = [v - pad, v + pad];
  }
  await plot(el, history.concat(traces), Object.assign({}, BASE_LAYOUT, {margin: {l: 56, r: 8, t: 8, b: 32}, showlegend: trials.length > 1,
    xaxis: {title: {text: "step"}, gridcolor: "#f1f3f5"}, yaxis}), PLOT_CONFIG);
  $(el).dataset.points = String(traces.reduce((n, t) => n + t.y.length, 0));
  $(el).dataset.history = String(history.reduce((n, t) => n + t.y.length, 0));
}
async function focusTree(id) {
  // Zoom the tree to ~10 trials' steps either side and ~12 rows around the trial.
  const n = state.tree.get(id), y = state.treeY.get(id);
  if (!n || y === undefined) return;
  const span = 10 * Math.max(1, n.end - n.start);
  const lanes = [...state.treeY.values()], ends = [...state.tree.values()].map((m) => m.end);
  const x0 = Math.max(n.end - span, Math.min(...ends) - (n.end - n.start)), x1 = Math.min(n.end + span, Math.max(...ends) + (n.end - n.start));
  const y0 = Math.max(y - 12, Math.min(...lanes) - 1), y1 = Math.min(y + 12, Math.max(...lanes) + 1);
  await plotlyReady;
  await Plotly.relayout("tree", {"xaxis.range": [x0, x1], "yaxis.range": [y0, Math.max(y1, y0 + 4)]});
}
window.selectTrial = selectTrial;
$("tree-scope").addEventListener("click", () => {
  state.treeScope = treeScope() === "all" ? "ancestries" : "all";
  state.lanes = null;  // another set of lineages: lanes laid out afresh
  drawTree().catch(showError);
});
window.openTrial = openTrial;
$("goto").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const id = parseInt($("goto-id").value, 10);
  if (id > 0) openTrial(id);
});

// --- views and deep links ---------------------------------------------------------------------------
function hashParams() { return new URLSearchParams(location.hash.replace(/^#/, "")); }
function setHash(changes) {
  const p = hashParams();
  for (const [k, v] of Object.entries(changes)) { if (v === null || v === undefined || v === "") p.delete(k); else p.set(k, String(v)); }
  const next = "#" + p.toString();
  if (next !== location.hash) location.hash = next; else applyHash().catch(showError);
}
async function applyHash() {
  const p = hashParams();
  const view = p.get("view") || (p.get("trial") ? "overview" : "overview");
  state.view = view;
  for (const el of document.querySelectorAll(".view")) el.classList.toggle("hidden", el.dataset.view !== view);
  for (const a of document.querySelectorAll("#tabs a")) a.classList.toggle("active", a.dataset.view === view);
  document.body.dataset.view = view;
  state.compare = (p.get("compare") || "").split(",").map((x) => parseInt(x, 10)).filter((x) => x > 0);
  $("compare-count").textContent = state.compare.length ? `(${state.compare.length})` : "";
  state.tableQuery = {sort: p.get("sort") || "id", desc: p.get("desc") === "1", q: p.get("q") || "", offset: parseInt(p.get("offset") || "0", 10)};
  const tasks = [];
  const trial = parseInt(p.get("trial") || "", 10);
  if (view === "overview" && trial > 0 && trial !== state.selected) tasks.push(selectTrial(trial));
  if (view === "trials") tasks.push(loadTrials());
  if (view === "analysis") tasks.push(loadParallel(), loadImportance());
  if (view === "compare") tasks.push(loadCompare());
  if (view === "pareto") tasks.push(loadPareto());
  await Promise.all(tasks);
  document.body.dataset.shown = view + (view === "overview" && trial > 0 ? `:${trial}` : "");
}
window.addEventListener("hashchange", () => applyHash().catch(showError));
$("tabs").addEventListener("click", (ev) => {
  // a tab keeps the rest of the URL (the selected trial, the compare set, the table's order)
  const a = ev.target.closest("a[data-view]");
  if (a) { ev.preventDefault(); setHash({view: a.dataset.view}); }
});

// --- the trials table -------------------------------------------------------------------------------
async function loadTrials() {
  const q = state.tableQuery;
  const t = await api(`/api/trials?sort=${encodeURIComponent(q.sort)}&desc=${q.desc ? 1 : 0}&q=${encodeURIComponent(q.q)}&offset=${q.offset}`);
  $("trials-filter").value = q.q;
  const cols = [["", null], ["trial", "id"], ["status", "status"], ["gen", "generation"], ["worker", "worker"], ["steps", "end"],
    ["value", "value"], ["failed attempts", "failed_attempts"], ...t.hparams.map((h) => [h, "hp:" + h]), ...t.metrics.map((m) => [m, "m:" + m])];
  $("trials-table").querySelector("thead").innerHTML = "<tr>" + cols.map(([label, key]) => key === null ? "<th></th>" :
    `<th class="sortable${q.sort === key ? (q.desc ? " sorted-desc" : " sorted-asc") : ""}" data-sort="${esc(key)}">${esc(label)}</th>`).join("") + "</tr>";
  $("trials-table").querySelector("tbody").innerHTML = t.rows.map((r) =>
    `<tr data-trial="${r.trial_id}"><td><input type="checkbox" class="compare-box" data-trial="${r.trial_id}"${state.compare.includes(r.trial_id) ? " checked" : ""}></td>` +
    `<td><a class="trial-link" href="#view=overview&trial=${r.trial_id}">#${r.trial_id}</a></td>` +
    `<td><span class="pill ${r.status}">${r.status}</span></td><td>${r.generation}</td><td>${esc(r.worker || "–")}</td>` +
    `<td>${r.start}–${r.end}</td><td class="num" data-col="value">${fmt(r.value)}</td><td>${r.failed_attempts || ""}</td>` +
    t.hparams.map((h) => `<td class="num" data-col="hp:${esc(h)}">${esc(fmt(r.hparams[h]))}</td>`).join("") +
    t.metrics.map((m) => `<td class="num" data-col="m:${esc(m)}">${esc(fmt(r.final ? r.final[m] : null))}</td>`).join("") + "</tr>").join("");
  $("trials-hint").textContent = `${t.matched.toLocaleString()} of ${t.total.toLocaleString()} trials` +
    (t.matched > t.rows.length ? ` · ${t.offset + 1}–${t.offset + t.rows.length}` : "");
  $("trials-table").dataset.matched = String(t.matched);
  state.tableMatched = t.matched;
}
$("trials-table").addEventListener("click", (ev) => {
  const th = ev.target.closest("th.sortable");
  if (th) {
    const q = state.tableQuery, key = th.dataset.sort;
    setHash({view: "trials", sort: key, desc: q.sort === key && !q.desc ? 1 : null, offset: null});
  }
});
$("trials-table").addEventListener("change", (ev) => {
  const box = ev.target.closest(".compare-box");
  if (box) toggleCompare(parseInt(box.dataset.trial, 10), true);
});
$("trials-form").addEventListener("submit", (ev) => { ev.preventDefault(); setHash({view: "trials", q: $("trials-filter").value, offset: null}); });
$("trials-prev").addEventListener("click", () => setHash({offset: Math.max(0, state.tableQuery.offset - 200) || null}));
$("trials-next").addEventListener("click", () => { if (state.tableQuery.offset + 200 < state.tableMatched) setHash({offset: state.tableQuery.offset + 200}); });

// --- compare ------------------------------------------------------------------------------------------
function toggleCompare(id, stay = false) {
  const set = state.compare.includes(id) ? state.compare.filter((x) => x !== id) : state.compare.concat([id]);
  const changes = {compare: set.join(",") || null};
  if (!stay && hashParams().get("view") !== "overview") changes.view = "compare";
  setHash(changes);
  const b = $("details-compare");
  if (b) b.textContent = set.includes(id) ? "remove from compare" : "compare";
}
window.toggleCompare = toggleCompare;
$("compare-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const ids = $("compare-ids").value.split(/[ ,;]+/).map((x) => parseInt(x.replace("#", ""), 10)).filter((x) => x > 0);
  setHash({view: "compare", compare: ids.join(",") || null});
});
async function loadCompare() {
  $("compare-ids").value = state.compare.join(", ");
  const trials = await Promise.all(state.compare.map((id) => api(`/api/trial/${id}`).catch(() => null)));
  const ok = trials.filter((t) => t);
  $("compare-hint").textContent = ok.length ? `${ok.length} trials` : "tick trials in the table or press \"compare\" in a trial's panel";
  await drawTrialCurve("compare-curves", ok, true);
  const names = [...new Set(ok.flatMap((d) => Object.keys(d.hparams)))];
  const rows = [["status", (d) => d.status], ["value", (d) => fmt(d.value)], ["generation", (d) => d.generation],
    ["steps", (d) => `${d.start_step}–${d.end_step}`], ["worker", (d) => d.worker || "–"], ["parent", (d) => d.parent_id ? `#${d.parent_id}` : "–"],
    ...names.map((n) => [n, (d) => fmt(d.hparams[n])]), ["why", (d) => d.explanation.text]];
  $("compare-table").querySelector("thead").innerHTML = "<tr><th></th>" + ok.map((d) => `<th data-trial="${d.trial_id}"><a href="#view=overview&trial=${d.trial_id}">#${d.trial_id}</a></th>`).join("") + "</tr>";
  $("compare-table").querySelector("tbody").innerHTML = rows.map(([label, f]) =>
    `<tr data-row="${esc(label)}"><th>${esc(label)}</th>${ok.map((d) => `<td>${esc(f(d))}</td>`).join("")}</tr>`).join("");
  // lineage: each trial's ancestry and the latest ancestor they share
  let common = null;
  if (ok.length > 1) {
    const sets = ok.map((d) => new Set(d.ancestry));
    common = ok[0].ancestry.filter((a) => sets.every((s) => s.has(a))).pop() || null;
  }
  $("compare-lineage").innerHTML = ok.map((d) => `<div data-trial="${d.trial_id}">#${d.trial_id}: ` +
    d.ancestry.slice(-12).map((a) => a === common ? `<b>#${a}</b>` : `#${a}`).join(" → ") + "</div>").join("") +
    (ok.length > 1 ? `<div id="compare-common">${common ? `latest common ancestor: #${common}` :
      new Set(ok.map((d) => d.ancestry_root)).size > 1 ? "no common ancestor (different seeds)" :
      `a common ancestor older than the last ${Math.min(...ok.map((d) => d.ancestry.length))} shown (same seed #${ok[0].ancestry_root})`}</div>` : "");
  $("compare-table").dataset.trials = ok.map((d) => d.trial_id).join(",");
}

// --- hyperparameters: parallel coordinates and importance ---------------------------------------------
async function loadParallel() {
  const p = await api("/api/parallel");
  state.parallel = p;
  if (!p.ids.length) { $("parallel-hint").textContent = "no completed trial yet"; return; }
  const dims = p.hparams.map((h) => {
    const vals = h.values.map((v) => v === null ? NaN : v);
    const d = {label: h.log ? `${h.name} (log10)` : h.name, values: vals};
    if (h.categories) { d.tickvals = h.categories.map((_, i) => i); d.ticktext = h.categories; }
    return d;
  });
  dims.push({label: "step", values: p.step});
  dims.push({label: yTitle(), values: p.value});
  const values = p.value.filter((v) => typeof v === "number");
  const rev = state.summary && state.summary.goal[0] === "min" && state.summary.objective.length === 1;
  await plot("parallel", [{type: "parcoords", dimensions: dims,
    line: {color: p.value, colorscale: "Viridis", reversescale: rev, showscale: true, cmin: Math.min(...values), cmax: Math.max(...values)}}],
    Object.assign({}, BASE_LAYOUT, {margin: {l: 70, r: 70, t: 56, b: 24}}), PLOT_CONFIG);
  $("parallel-hint").textContent = `${p.shown.toLocaleString()} of ${p.completed.toLocaleString()} completed trials; ` +
    "drag along an axis to brush";
  const el = $("parallel");
  el.dataset.dimensions = String(dims.length);
  if (!el.dataset.bound) {
    el.dataset.bound = "1";
    el.on("plotly_restyle", () => showBrushed());
  }
  showBrushed();
}
function showBrushed() {
  const p = state.parallel, gd = $("parallel");
  const dims = gd.data[0].dimensions;
  const inside = (v, r) => { if (!r) return true; const rs = Array.isArray(r[0]) ? r : [r]; return rs.some(([a, b]) => v >= a && v <= b); };
  const chosen = p.ids.filter((_, i) => dims.every((d) => inside(d.values[i], d.constraintrange)));
  gd.dataset.selected = String(chosen.length);
  const best = chosen.map((id, k) => [id, p.value[p.ids.indexOf(id)]]).sort((a, b) => (b[1] ?? -Infinity) - (a[1] ?? -Infinity)).slice(0, 12);
  $("parallel-selection").innerHTML = `${chosen.length} trials in the brushed ranges` + (chosen.length < p.ids.length ?
    ": " + best.map(([id]) => `<a href="#view=overview&trial=${id}">#${id}</a>`).join(" ") : "");
}
async function loadImportance() {
  const r = await api("/api/importance");
  const items = r.importance;
  $("importance-hint").textContent = items.length ? `${r.method}, fitted on ${r.fitted_on.toLocaleString()} completed trials` : (r.reason || "");
  $("importance-list").innerHTML = items.map((i) => `<li data-name="${esc(i.name)}" data-importance="${i.importance}">${esc(i.name)}: ${(100 * i.importance).toFixed(1)} %</li>`).join("");
  if (!items.length) return;
  await plot("importance", [{type: "bar", orientation: "h", y: items.map((i) => i.name), x: items.map((i) => 100 * i.importance),
    marker: {color: items.map((i) => i.name === "(step)" ? "#adb5bd" : "#1c7ed6")}, hovertemplate: "%{y}: %{x:.1f} %<extra></extra>"}],
    Object.assign({}, BASE_LAYOUT, {margin: {l: 110, r: 12, t: 8, b: 40}, showlegend: false,
      xaxis: {title: {text: "importance (% of the forest's impurity decrease)"}, gridcolor: "#f1f3f5"}, yaxis: {autorange: "reversed"}}), PLOT_CONFIG);
}

// --- several objectives: the Pareto front ------------------------------------------------------------
async function loadPareto() {
  const r = await api("/api/pareto");
  if (r.metrics.length < 2) { $("pareto-hint").textContent = "one objective: no front"; return; }
  const front = new Set(r.front);
  const [a, b] = r.metrics;
  const rest = r.points.filter((p) => !front.has(p.trial_id)), on = r.points.filter((p) => front.has(p.trial_id))
    .sort((p, q) => p.values[0] - q.values[0]);
  await plot("pareto", [
    {x: rest.map((p) => p.values[0]), y: rest.map((p) => p.values[1]), customdata: rest.map((p) => p.trial_id), mode: "markers",
     name: "dominated", marker: {size: 5, color: "rgba(134,142,150,0.5)"}, hovertemplate: "#%{customdata}<br>%{x:.4g}, %{y:.4g}<extra></extra>"},
    {x: on.map((p) => p.values[0]), y: on.map((p) => p.values[1]), customdata: on.map((p) => p.trial_id), mode: "lines+markers",
     name: "Pareto front", line: {color: BEST, width: 2, shape: "hv"}, marker: {size: 9, color: BEST},
     hovertemplate: "front #%{customdata}<br>%{x:.4g}, %{y:.4g}<extra></extra>"}],
    Object.assign({}, BASE_LAYOUT, {xaxis: {title: {text: `${a} (${r.goals[0]})`}, gridcolor: "#f1f3f5",
                                            type: logAxis(r.points.map((p) => p.values[0])) ? "log" : "linear", exponentformat: "power"},
      yaxis: {title: {text: `${b} (${r.goals[1]})`}, gridcolor: "#f1f3f5",
              type: logAxis(r.points.map((p) => p.values[1])) ? "log" : "linear", exponentformat: "power"}}), PLOT_CONFIG);
  const sampled = rest.length < r.completed - on.length ? ` · ${rest.length.toLocaleString()} dominated ones drawn, a sample` : "";
  $("pareto-hint").textContent = `${r.front.length} non-dominated of ${r.completed.toLocaleString()} completed trials (${r.comparison})${sampled}`;
  $("pareto-list").innerHTML = "front: " + r.front.slice(0, 60).map((id) => `<a class="front-link" href="#view=overview&trial=${id}">#${id}</a>`).join(" ");
  const el = $("pareto");
  el.dataset.front = String(r.front.length);
  if (!el.dataset.bound) {
    el.dataset.bound = "1";
    el.on("plotly_click", (ev) => { const p = ev.points[0]; if (p && p.customdata) openTrial(p.customdata); });
  }
}

// --- schedule, workers, failures ------------------------------------------------------------------
async function loadSchedule() {
  const {schedule} = await api("/api/schedule");
  if (!schedule) { $("schedule-hint").textContent = "no completed trial yet"; return; }
  await drawSchedule("schedule", schedule, false);
  $("schedule-hint").textContent = `trial #${schedule.trial_id}, ${schedule.segments.length} trials from its seed`;
}
async function drawSchedule(el, schedule, compact) {
  // One small panel per numeric hyperparameter, a log axis for the log-scale ones (as report's
  // schedule.png); each panel named by a label above its plot area, not an axis title that would
  // sit over the tick labels.
  const first = schedule.segments[0].hparams;
  const names = Object.keys(first).filter((k) => typeof first[k] === "number");
  const logs = new Set(schedule.log || []);
  const traces = [], annotations = [];
  const n = Math.max(1, names.length);
  const layout = Object.assign({}, BASE_LAYOUT, {grid: {rows: n, columns: 1, pattern: "independent", ygap: 0.35},
                                                 showlegend: false, margin: {l: 64, r: 12, t: 18, b: 40}});
  names.forEach((name, i) => {
    const x = [], y = [];
    for (const s of schedule.segments) { x.push(s.start, s.end); y.push(s.hparams[name], s.hparams[name]); }
    const ax = i === 0 ? "" : String(i + 1);
    traces.push({x, y, mode: "lines", line: {color: PALETTE[i % PALETTE.length], width: 2.2}, xaxis: "x" + ax, yaxis: "y" + ax,
                 name, hovertemplate: `${name} %{y:.4g}<br>step %{x}<extra></extra>`});
    const pos = y.filter((v) => typeof v === "number" && v > 0);
    const decades = pos.length ? Math.log10(Math.max(...pos) / Math.min(...pos)) : 0;
    layout["yaxis" + ax] = {gridcolor: "#f1f3f5", type: logs.has(name) ? "log" : "linear", exponentformat: "power", nticks: compact ? 3 : 4};
    if (logs.has(name) && decades >= 1) layout["yaxis" + ax].dtick = Math.ceil(decades / 3);  // whole decades only
    else if (logs.has(name) && pos.length) {
      // less than a decade: plotly would label the minor ticks (2, 5, ...) on top of each other;
      // the ends (and their geometric middle) instead
      const lo = Math.min(...pos), hi = Math.max(...pos);
      const ticks = lo === hi ? [lo] : compact ? [lo, hi] : [lo, Math.sqrt(lo * hi), hi];
      Object.assign(layout["yaxis" + ax], {tickmode: "array", tickvals: ticks, ticktext: ticks.map((v) => fmt(v))});
    }
    layout["xaxis" + ax] = {gridcolor: "#f1f3f5", showticklabels: i === names.length - 1,
                            title: i === names.length - 1 ? {text: "step"} : undefined, matches: i ? "x" : undefined};
    annotations.push({text: `<b>${esc(name)}</b>${logs.has(name) ? " (log)" : ""}`, xref: `x${ax} domain`, yref: `y${ax} domain`,
                      x: 0, y: 1, xanchor: "left", yanchor: "bottom", showarrow: false, font: {size: 11}});
  });
  layout.annotations = annotations;
  await plot(el, traces, layout, PLOT_CONFIG);
  $(el).dataset.log = [...logs].filter((n) => names.includes(n)).join(",");
  $(el).dataset.trialId = String(schedule.trial_id);
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
const lastLine = (text) => (String(text).trim().split("\n").pop() || "").slice(0, 200);
async function loadFailures() {
  const [{failures}, fa] = await Promise.all([api("/api/failures"), api("/api/failed-attempts")]);
  $("failed-attempts-summary").innerHTML = `<b id="failed-attempts-total">${fa.total}</b> failed attempt(s) in ${fa.trials} trial(s)` +
    ` · ${failures.length ? failures.length : "no"} trial(s) failed for good`;
  $("failed-attempts").innerHTML = fa.attempts.length ? fa.attempts.map((f) =>
    `<div class="failure failed-attempt" data-trial="${f.trial_id}"><a onclick="openTrial(${f.trial_id})">#${f.trial_id}</a> ` +
    `${f.status}: ${f.failed_attempts} of ${f.attempts} attempt(s) failed (on ${esc(f.workers.join(", "))})` +
    `<details><summary>${esc(lastLine(f.error))}</summary><pre>${esc(f.error)}</pre></details></div>`).join("") : "none";
  $("failures-hint").textContent = failures.length ? `${failures.length} most recent` : "";
  $("failures").innerHTML = failures.length ? failures.map((f) =>
    `<div class="failure"><a onclick="openTrial(${f.trial_id})">#${f.trial_id}</a> on ${esc(f.worker || "?")}` +
    ` (attempt ${f.attempt})<pre>${esc(f.error)}</pre></div>`).join("") : "";  // the summary line says "no trial(s)"
}

// --- the loop --------------------------------------------------------------------------------------
function showError(e) { const el = $("error"); el.textContent = String(e); el.classList.remove("hidden"); }
async function full() {
  const s = await api("/api/summary");
  showSummary(s);
  state.cursor = s.cursor;
  state.failures = s.by_status.failed;
  state.failedAttempts = s.failed_attempts;
  $("tab-pareto").classList.toggle("hidden", s.objective.length < 2);
  await Promise.all([loadPopulation(), loadCurves(), loadTree(), loadSchedule(), loadWorkers(), loadFailures()]);
  if (treeScope() === "ancestries") { state.lanes = null; await drawTree(); }  // now with the population's ancestries
  await applyHash();
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
    if (u.summary.by_status.failed !== state.failures || u.summary.failed_attempts !== state.failedAttempts) {
      state.failures = u.summary.by_status.failed;
      state.failedAttempts = u.summary.failed_attempts;
      tasks.push(loadFailures());
    }
    await Promise.all(tasks);
    document.body.dataset.cursor = String(state.cursor);
  } catch (e) {
    if (state.summary && state.summary.finished) {
      // the run finished and its dashboard has stopped: the page keeps what it shows
      const pill = $("run-state");
      pill.textContent = "finished (dashboard stopped)";
      pill.className = "pill finished";
    } else showError(e);
  } finally { state.polling = false; }
}
full().catch(showError).finally(() => setInterval(poll, POLL_MS));
