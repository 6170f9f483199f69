"""``pbt-actors report``: PNG figures and an ``index.html`` for a finished or running store.

Layer 5 (a face): reads a ``TrialStore``, never writes one. matplotlib draws through the Agg
canvas directly (``matplotlib.figure.Figure``, no pyplot), so a report never touches a
notebook's backend or global figure state, and nothing is fetched from the network: the HTML
is one self-contained file next to its PNGs.

Figures (file names are ``FIGURES``):

``fitness.png``       every trial's objective against training step, each trial's curve joined
                      to its parent's end, coloured by the seed trial it descends from; the
                      best trial's warm-start chain drawn on top in black.
``schedule.png``      the best trial's hyperparameter schedule, one panel per hyperparameter,
                      against step (log axes for log-scale parameters, the search range as the
                      panel's limits).
``lineage_tree.png``  generations left to right; warm-start edges parent → child solid,
                      crossover edges dashed; the warm-start ancestry of the final population
                      solid, extinct branches faint; the best lineage thick.
``progress.png``      best-so-far and median population fitness against wall time.
``utilisation.png``   per worker, busy intervals (from ``Trial.history`` and running leases)
                      against wall time; the gaps are idle time, the share holding a trial is
                      in the label, also after each worker's first trial (hatched), which
                      includes the worker's start-up and the experiment's imports.

The figures' *final population* is the ``population`` most recent trials that did not fail or
stop (for a running store: the current one); ``index.html``'s is the latest completed trial of
each population slot (``control.final_population``, as in ``status``). The *population* at a
wall time, for the median, is the ``population`` most recently completed trials at that time.
"""

from __future__ import annotations

import html
import itertools
import math
import os
import statistics
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pbt_actors.control.final_population import final_population
from pbt_actors.control.progress import Counts, best_completed, finished
from pbt_actors.model.experiment import Experiment
from pbt_actors.model.fields import is_number
from pbt_actors.model.records import Trial, TrialStatus
from pbt_actors.storage.trial_store import META_EXPERIMENT, TrialStore
from pbt_actors.tools.lineage import schedule

FIGURES: tuple[str, ...] = ("fitness", "schedule", "lineage_tree", "progress", "utilisation")
DPI = 110

STATUS_COLOURS = {
    TrialStatus.COMPLETED: "#4c78a8",
    TrialStatus.RUNNING: "#f58518",
    TrialStatus.PENDING: "#ffffff",
    TrialStatus.FAILED: "#e45756",
    TrialStatus.STOPPED: "#b279a2",
}
BEST_COLOUR = "#111111"
CROSSOVER_COLOUR = "#e45756"


# --- the data every figure reads ----------------------------------------------------------------
@dataclass
class ReportData:
    """A snapshot of the store: trials by id, the experiment, the best trial, the clock."""

    trials: list[Trial]
    experiment: Experiment | None
    now: float
    finished: bool
    by_id: dict[int, Trial] = field(init=False)
    best: Trial | None = None
    root_memo: dict[int, int] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        self.by_id = {t.id: t for t in self.trials}

    # objective helpers: plot raw values of a single metric, the weighted scalar of several
    @property
    def metric_names(self) -> tuple[str, ...]:
        if self.experiment is not None:
            return self.experiment.objective_.names
        for t in self.trials:
            if t.final:
                return (sorted(t.final)[0],)
        return ("objective",)

    @property
    def maximise(self) -> bool:
        if self.experiment is None or len(self.metric_names) > 1:
            return True
        return self.experiment.objective_.metrics[0].goal == "max"

    @property
    def metric_label(self) -> str:
        direction = "higher is better" if self.maximise else "lower is better"
        if len(self.metric_names) == 1:
            return f"{self.metric_names[0]} ({direction})"
        return f"weighted objective ({direction})"

    def value(self, metrics: Mapping[str, float] | None) -> float | None:
        """The plotted fitness of a metrics map, or None (missing or non-finite)."""
        if not metrics:
            return None
        if len(self.metric_names) == 1 or self.experiment is None:
            raw = metrics.get(self.metric_names[0])
            if isinstance(raw, int | float) and math.isfinite(raw):
                return float(raw)
            return None
        scalar = self.experiment.objective_.scalar(metrics)
        return scalar if math.isfinite(scalar) else None

    def better(self, a: float, b: float) -> bool:
        return a > b if self.maximise else a < b

    @property
    def population(self) -> int:
        return self.experiment.population if self.experiment is not None else max(1, len(self.roots()))

    @property
    def t0(self) -> float:
        return min((t.created_at for t in self.trials), default=self.now)

    def root(self, trial: Trial) -> int:
        """The seed trial a trial descends from by warm starts (memoised: walking every trial's
        chain anew was quadratic, 30 s at 100k trials)."""
        roots = self.root_memo
        known = roots.get(trial.id)
        if known is not None:
            return known
        parent_root = roots.get(trial.parent_id) if trial.parent_id is not None else None
        roots[trial.id] = found = parent_root if parent_root is not None else self._walk_root(trial)
        return found

    def _walk_root(self, trial: Trial) -> int:
        seen: set[int] = set()
        while trial.parent_id is not None and trial.parent_id in self.by_id and trial.id not in seen:
            seen.add(trial.id)
            trial = self.by_id[trial.parent_id]
        return trial.id

    def roots(self) -> list[int]:
        return sorted({self.root(t) for t in sorted(self.trials, key=lambda t: t.id)})  # parents first

    def best_chain(self) -> list[Trial]:
        if self.best is None:
            return []
        chain: list[Trial] = []
        seen: set[int] = set()
        current: Trial | None = self.best
        while current is not None and current.id not in seen:
            seen.add(current.id)
            chain.append(current)
            current = self.by_id.get(current.parent_id) if current.parent_id is not None else None
        return chain[::-1]

    def final_population(self) -> list[Trial]:
        alive = [t for t in self.trials if t.status not in (TrialStatus.FAILED, TrialStatus.STOPPED)]
        return alive[-self.population:]


def collect(store: TrialStore, now: float | None = None) -> ReportData:
    """Read everything a report needs from ``store`` once."""
    raw = store.get_meta(META_EXPERIMENT)
    experiment = Experiment.from_dict(raw) if raw is not None else None
    trials = list(store.iter_trials())
    over = finished(Counts.of(store, trials))  # the run's finished rule, over the records read anyway
    if now is None:
        ends = [t.ended_at for t in trials if t.ended_at is not None]
        now = max(ends, default=time.time()) if over else time.time()
    data = ReportData(trials, experiment, now, over)
    data.best = best_completed(store, experiment) if experiment is not None else None
    return data


# --- formatting helpers ------------------------------------------------------------------------
def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _time_unit(span_s: float) -> tuple[float, str]:
    if span_s < 120:
        return 1.0, "s"
    if span_s < 2 * 3600:
        return 60.0, "min"
    return 3600.0, "h"


def _figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def _placeholder(title: str, message: str) -> Any:
    fig = _figure(8, 3)
    ax = fig.add_subplot()
    ax.set_axis_off()
    ax.set_title(title)
    ax.text(0.5, 0.5, message, ha="center", va="center", fontsize=12, color="#555555", transform=ax.transAxes)
    return fig


def _lineage_colours(n: int) -> list[Any]:
    from matplotlib import colormaps

    if n <= 9:  # tab10 without its grey, which the figures use for "neutral"
        cmap = colormaps["tab10"]
        return [cmap(i) for i in (0, 1, 2, 3, 4, 5, 6, 8, 9)[:n]]
    if n <= 20:
        cmap = colormaps["tab20"]
        return [cmap(i) for i in range(n)]
    cmap = colormaps["turbo"]
    return [cmap(0.05 + 0.9 * i / max(1, n - 1)) for i in range(n)]


def _robust_limits(values: Sequence[float]) -> tuple[float, float] | None:
    """Y limits that ignore a few wild outliers (a diverged trial) instead of squashing the rest."""
    if len(values) < 20:
        return None
    ordered = sorted(values)
    lo, hi = ordered[int(0.02 * len(ordered))], ordered[int(0.98 * len(ordered)) - 1]
    full = ordered[-1] - ordered[0]
    core = hi - lo
    if core <= 0 or full <= 5 * core:
        return None
    margin = 0.15 * core
    return lo - margin, hi + margin


# --- (a) fitness against step ------------------------------------------------------------------
def _trial_points(data: ReportData, trial: Trial) -> list[tuple[float, float]]:
    points: list[tuple[float, float]] = []
    for m in trial.measurements:
        v = data.value(m.metrics)
        if v is not None:
            points.append((m.step, v))
    final = data.value(trial.final)
    if final is not None:
        if points and points[-1][0] == trial.end_step:
            points[-1] = (trial.end_step, final)
        else:
            points.append((trial.end_step, final))
    parent = data.by_id.get(trial.parent_id) if trial.parent_id is not None else None
    if points and parent is not None:
        parent_value = data.value(parent.final)
        if parent_value is not None:
            points.insert(0, (parent.end_step, parent_value))
    return points


LINES_MAX = 2000
"""Above this many trials a figure stops drawing one line per trial (a wall of lines, and
minutes of matplotlib): ``fitness`` shades the density of every trial's points and draws lines
for the final population's warm-start ancestry only; ``lineage_tree`` draws that ancestry only."""


def warm_start_ancestry(data: ReportData, trials: Iterable[Trial]) -> set[int]:
    """Ids of ``trials`` and their warm-start ancestors (whose weights live on in them), read
    from the snapshot: O(size of the ancestry), each ancestor visited once."""
    out: set[int] = set()
    for trial in trials:
        current: Trial | None = trial
        while current is not None and current.id not in out:
            out.add(current.id)
            current = data.by_id.get(current.parent_id) if current.parent_id is not None else None
    return out


def figure_fitness(data: ReportData) -> Any:
    from matplotlib.collections import LineCollection
    from matplotlib.lines import Line2D

    title = "Fitness of every trial against training step"
    curves = [(t, _trial_points(data, t)) for t in data.trials]
    if not any(len(p) for _, p in curves):
        return _placeholder(title, "no trial has reported a value of the objective yet")
    fig = _figure(11, 6)
    ax = fig.add_subplot()
    at_scale = len(data.trials) > LINES_MAX
    if at_scale:  # every point as a density, lines only where the final population came from
        xs_all = [x for _, points in curves for x, _ in points]
        ys_all = [y for _, points in curves for _, y in points]
        limits = _robust_limits(ys_all)
        shown = [(x, y) for x, y in zip(xs_all, ys_all, strict=True)
                 if limits is None or limits[0] <= y <= limits[1]]
        if shown:
            sx, sy = zip(*shown, strict=True)
            ax.hexbin(sx, sy, gridsize=(120, 50), bins="log", mincnt=1, cmap="Greys", alpha=0.55, zorder=0,
                      linewidths=0.0)
        keep = warm_start_ancestry(data, data.final_population())
        curves = [(t, points) for t, points in curves if t.id in keep]
    roots = data.roots()
    survivors = sorted({data.root(t) for t in data.final_population()})
    extinct_grey = "#c4c4c4"
    if len(roots) <= 9:
        colours = dict(zip(roots, _lineage_colours(len(roots)), strict=True))
    else:  # too many to tell apart: colour the seed lineages that survive, grey the rest
        colours = {root: extinct_grey for root in roots}
        colours.update(zip(survivors, _lineage_colours(len(survivors)), strict=True))
    all_values: list[float] = []
    segments: dict[tuple[Any, str], list[Any]] = {}  # (colour, style) -> lines: one artist each
    for trial, points in curves:
        if not points:
            continue
        xs, ys = zip(*points, strict=True)
        all_values.extend(ys)
        style = "--" if trial.status is TrialStatus.RUNNING else "-"
        colour = colours[data.root(trial)]
        segments.setdefault((colour, style), []).append(points)
        if len(points) == 1:
            ax.plot(xs, ys, "o", color=colour, ms=3, alpha=0.6, zorder=2)
    for (colour, style), lines in segments.items():
        ax.add_collection(LineCollection(lines, colors=[colour], linestyles=style, linewidths=1.0, alpha=0.6,
                                         zorder=1 if colour == extinct_grey else 2))
    ax.autoscale_view()
    if at_scale:
        all_values = ys_all
    handles: list[Any] = []
    chain = data.best_chain()
    if chain:
        best_points = [p for t in chain for p in _trial_points(data, t)]
        bx, by = zip(*best_points, strict=True) if best_points else ((), ())
        ax.plot(bx, by, "-", color=BEST_COLOUR, lw=2.6, zorder=5)
        assert data.best is not None
        best_value = data.value(data.best.final)
        if best_value is not None:
            ax.plot([data.best.end_step], [best_value], "*", color=BEST_COLOUR, ms=14, zorder=6)
        handles.append(Line2D([], [], color=BEST_COLOUR, lw=2.6, marker="*", ms=10,
                              label=f"best lineage → trial {data.best.id}"
                                    + (f" ({_fmt(best_value)})" if best_value is not None else "")))
    if len(roots) <= 9:
        for root in roots:
            handles.append(Line2D([], [], color=colours[root], lw=1.5, label=f"descends from seed trial {root}"))
    else:
        for root in survivors[:12]:
            handles.append(Line2D([], [], color=colours[root], lw=1.5,
                                  label=f"descends from seed trial {root} (survives)"))
        if len(survivors) > 12:
            handles.append(Line2D([], [], color="#888888", lw=1.5,
                                  label=f"... {len(survivors) - 12} more surviving seed lineages"))
        handles.append(Line2D([], [], color=extinct_grey, lw=1.5,
                              label=f"{len(roots) - len(survivors)} extinct seed lineages"))
    if any(t.status is TrialStatus.RUNNING for t in data.trials):
        handles.append(Line2D([], [], color="#888888", lw=1.0, ls="--", label="running trial (so far)"))
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=9, frameon=False)
    limits = _robust_limits(all_values)
    if limits is not None:
        ax.set_ylim(*limits)
    ax.set_xlabel("training step")
    ax.set_ylabel(data.metric_label)
    if at_scale:
        handles.append(Line2D([], [], color="#777777", lw=6, alpha=0.5,
                              label="all trials' points (density, log shade)"))
        ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=9, frameon=False)
        ax.set_title(f"Fitness against training step ({len(data.trials):,} trials: density of all; lines for the "
                     f"final population's ancestry, {len(curves):,} trials)", fontsize=10)
    else:
        ax.set_title(f"{title} ({len(data.trials)} trials), coloured by lineage")
    ax.grid(True, alpha=0.3)
    return fig


# --- (b) the best trial's hyperparameter schedule ----------------------------------------------
def _param_info(data: ReportData, name: str) -> Any:
    if data.experiment is None:
        return None
    space = data.experiment.space_
    return space.get(name)


def figure_schedule(data: ReportData, store: TrialStore) -> Any:
    from pbt_actors.model.space import Categorical, Discrete, Fixed, Float, Int

    title = "Hyperparameter schedule of the best trial"
    if data.best is None:
        return _placeholder(title, "no completed trial yet")
    sched = schedule(store, data.best.id)
    names: list[str] = []
    order = list(data.experiment.space_) if data.experiment is not None else []
    seen = {k for seg in sched.segments for k in seg.hparams}
    for name in [*order, *sorted(seen - set(order))]:
        if name not in seen:
            continue
        values = [seg.hparams.get(name) for seg in sched.segments]
        if isinstance(_param_info(data, name), Fixed) and len(set(map(repr, values))) == 1:
            continue  # a constant adds a flat panel and nothing else
        names.append(name)
    if not names:
        return _placeholder(title, "the schedule has no varying hyperparameter")
    edges = [float(s.start_step) for s in sched.segments] + [float(sched.end_step)]
    fig = _figure(10, 0.9 + 1.7 * len(names))
    axes = fig.subplots(len(names), 1, sharex=True, squeeze=False)[:, 0]
    for ax, name in zip(axes, names, strict=True):
        values = [seg.hparams.get(name) for seg in sched.segments]
        param = _param_info(data, name)
        numbers = [float(v) for v in values if is_number(v)]
        if len(numbers) == len(values) and not isinstance(param, Categorical):
            ax.stairs(numbers, edges, baseline=None, lw=2.2, color="#4c78a8")
            if isinstance(param, Float | Int):
                if param.log:
                    ax.set_yscale("log")
                    ax.set_ylim(param.low / 1.15, param.high * 1.15)
                else:
                    pad = 0.05 * (param.high - param.low) or 1.0
                    ax.set_ylim(param.low - pad, param.high + pad)
            elif isinstance(param, Discrete):
                ax.set_yticks(list(param.values))
        else:
            if isinstance(param, Categorical):
                choices = [str(c) for c in param.choices]
            else:
                choices = sorted({str(v) for v in values})
            index = {c: i for i, c in enumerate(choices)}
            ax.stairs([index.get(str(v), -1) for v in values], edges, baseline=None, lw=2.2, color="#4c78a8")
            ax.set_yticks(range(len(choices)), choices)
            ax.set_ylim(-0.5, len(choices) - 0.5)
        if len(edges) <= 80:
            for x in edges[1:-1]:
                ax.axvline(x, color="#bbbbbb", lw=0.6, zorder=0)
        kind = type(param).__name__ if param is not None else "value"
        log = " (log scale)" if isinstance(param, Float | Int) and param.log else ""
        ax.set_ylabel(f"{name}\n[{kind}{log}]", fontsize=9)
        ax.grid(True, axis="y", alpha=0.3)
    axes[-1].set_xlabel("training step")
    best_value = data.value(data.best.final)
    value_text = f", {data.metric_names[0] if len(data.metric_names) == 1 else 'objective'} = {_fmt(best_value)}" \
        if best_value is not None else ""
    n = len(sched.segments)
    fig.suptitle(f"{title}: trial {data.best.id} ({n} segment{'s' if n != 1 else ''}{value_text})"
                 + ("; grey lines: warm starts" if n > 1 else ""), fontsize=11)
    return fig


# --- (c) the lineage tree ------------------------------------------------------------------------
def _tree_layout(trials: Iterable[Trial]) -> dict[int, tuple[float, float]]:
    """x = generation; within a generation, trials sorted by their parent's position (then id)
    so that most edges run nearly level, and each column centred on 0."""
    columns: dict[int, list[Trial]] = {}
    for t in trials:
        columns.setdefault(t.generation, []).append(t)
    pos: dict[int, tuple[float, float]] = {}
    for gen in sorted(columns):
        members = columns[gen]

        def key(t: Trial) -> tuple[float, int]:
            parent = pos.get(t.parent_id) if t.parent_id is not None else None
            return (-parent[1] if parent is not None else math.inf, t.id)  # top (high y) first

        members.sort(key=key)
        n = len(members)
        for i, t in enumerate(members):
            pos[t.id] = (float(gen), (n - 1) / 2 - i)
    return pos


def figure_lineage_tree(data: ReportData, store: TrialStore) -> Any:
    from matplotlib.collections import LineCollection
    from matplotlib.lines import Line2D

    title = "Lineage tree of the final population"
    if not data.trials:
        return _placeholder(title, "the store holds no trial yet")
    final = data.final_population()
    # whose weights survive in the final population (warm starts only), from the snapshot
    ancestry = warm_start_ancestry(data, final)
    chain_ids = [t.id for t in data.best_chain()]
    chain_edges = set(itertools.pairwise(chain_ids))
    at_scale = len(data.trials) > LINES_MAX
    # at scale: the ancestry and the best lineage only (extinct branches would be a solid mass)
    drawn = ancestry | set(chain_ids)
    trials = [t for t in data.trials if t.id in drawn] if at_scale else data.trials
    pos = _tree_layout(trials)
    columns: dict[int, int] = {}
    for t in trials:
        columns[t.generation] = columns.get(t.generation, 0) + 1
    generations = sorted(columns)
    max_col = max(columns.values())
    width = min(20.0, max(9.0, 4.0 + 0.42 * len(generations)))
    height = min(18.0, max(6.0 if at_scale else 3.6, 1.6 + 0.3 * max_col))
    fig = _figure(width, height)
    ax = fig.add_subplot()
    # edges grouped by look, one LineCollection each (one artist per edge took minutes at 10k)
    edge_styles = {"best": ("-", BEST_COLOUR, 2.8, 1.0, 4), "alive": ("-", "#555555", 1.1, 1.0, 2),
                   "extinct": ("-", "#cccccc", 0.7, 1.0, 1), "crossover alive": ("--", CROSSOVER_COLOUR, 0.8, 0.7, 1.5),
                   "crossover extinct": ("--", CROSSOVER_COLOUR, 0.6, 0.25, 1.5)}
    edges: dict[str, list[Any]] = {name: [] for name in edge_styles}
    for t in trials:
        for source, kind in ((t.parent_id, "parent"), (t.crossover_id, "crossover")):
            if source is None or source not in pos:
                continue
            alive = t.id in ancestry and (kind == "crossover" or source in ancestry)
            if kind == "parent":
                look = "best" if (source, t.id) in chain_edges else ("alive" if alive else "extinct")
            else:
                look = "crossover alive" if alive else "crossover extinct"
            edges[look].append([pos[source], pos[t.id]])
    for look, lines in edges.items():
        if lines:
            style, colour, width, alpha, zorder = edge_styles[look]
            ax.add_collection(LineCollection(lines, colors=[colour], linestyles=style, linewidths=width, alpha=alpha,
                                             zorder=zorder))
    final_ids = {t.id for t in final}
    node_size = 60 if not at_scale else 14
    for status, colour in STATUS_COLOURS.items():
        group = [t for t in trials if t.status is status]
        if not group:
            continue
        for members, alpha in (([t for t in group if t.id in ancestry], 1.0),
                               ([t for t in group if t.id not in ancestry], 0.35)):
            if not members:
                continue
            ax.scatter([pos[t.id][0] for t in members], [pos[t.id][1] for t in members], s=node_size, c=[colour],
                       edgecolors="#333333", linewidths=0.8 if not at_scale else 0.3, alpha=alpha, zorder=6)
    if final:
        ax.scatter([pos[i][0] for i in final_ids], [pos[i][1] for i in final_ids], s=190, facecolors="none",
                   edgecolors=BEST_COLOUR, linewidths=1.4, zorder=8)
    if data.best is not None:
        bx, by = pos[data.best.id]
        ax.scatter([bx], [by], s=150, marker="*", c=[BEST_COLOUR], zorder=7)
    # labels: every node while they fit (>= ~0.22 inch per row), else only final + best chain
    row_inch = (height - 1.6) / max(1, max_col)
    labelled = set(pos) if row_inch >= 0.22 and len(pos) <= 400 else final_ids | set(chain_ids)
    best_ids = {data.best.id} if data.best is not None else set()
    if len(labelled) > 120:  # a long best lineage: its labels would overprint each other
        labelled = final_ids | best_ids
    if at_scale and len(final_ids) > 20:  # rows are too close for 50 labels: the best one only
        labelled = best_ids
    fontsize = 7 if row_inch >= 0.28 else 6
    for trial_id in sorted(labelled):
        x, y = pos[trial_id]
        ax.annotate(str(trial_id), (x, y), xytext=(6, 5), textcoords="offset points", fontsize=fontsize,
                    color="#222222", zorder=9,
                    bbox={"boxstyle": "round,pad=0.08", "fc": "white", "ec": "none", "alpha": 0.75})
    handles = [Line2D([], [], color="#555555", lw=1.1, label="warm start (parent → child)")]
    if any(t.crossover_id is not None for t in data.trials):
        handles.append(Line2D([], [], color=CROSSOVER_COLOUR, lw=0.9, ls="--", label="crossover source → child"))
    if chain_edges:
        handles.append(Line2D([], [], color=BEST_COLOUR, lw=2.8, label="best lineage"))
    if len(ancestry) < len(data.trials) and not at_scale:
        handles.append(Line2D([], [], color="#cccccc", lw=0.7, label="extinct branch (faint)"))
    handles.append(Line2D([], [], ls="", marker="o", ms=11, mfc="none", mec=BEST_COLOUR, label="final population"))
    if data.best is not None:
        handles.append(Line2D([], [], ls="", marker="*", ms=13, color=BEST_COLOUR, label=f"best trial {data.best.id}"))
    for status, colour in STATUS_COLOURS.items():
        if any(t.status is status for t in data.trials):
            handles.append(Line2D([], [], ls="", marker="o", ms=7, mfc=colour, mec="#333333", label=status.value))
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.005, 1.0), fontsize=9, frameon=False)
    ax.set_xlabel("generation")
    step = max(1, math.ceil(len(generations) / 30))
    ax.set_xticks(generations[::step])
    ax.set_xlim(generations[0] - 0.5, generations[-1] + 0.8)
    ax.set_ylim(-(max_col - 1) / 2 - 0.6, (max_col - 1) / 2 + 0.6)
    ax.set_yticks([])
    for side in ("left", "right", "top"):
        ax.spines[side].set_visible(False)
    if at_scale:
        ax.set_title(f"{title} ({len(final)} trials, ringed; labelled: {len(labelled)}): its warm-start ancestry, "
                     f"{len(trials):,} of {len(data.trials):,} trials (extinct branches not drawn)", fontsize=10)
    else:
        ax.set_title(f"{title} ({len(final)} trials; labels are trial ids; {len(data.trials)} trials in all)")
    return fig


# --- (d) best and median fitness against wall time ----------------------------------------------
def figure_progress(data: ReportData) -> Any:
    title = "Best and median population fitness against wall time"
    done = sorted((t for t in data.trials if t.status is TrialStatus.COMPLETED and t.ended_at is not None
                   and data.value(t.final) is not None), key=lambda t: (t.ended_at or 0.0, t.id))
    if not done:
        return _placeholder(title, "no completed trial yet")
    t0 = data.t0
    end = max(data.now, done[-1].ended_at or t0)
    scale, unit = _time_unit(end - t0)
    times, best, median = [], [], []
    best_so_far: float | None = None
    window: list[float] = []
    for t in done:
        v = data.value(t.final)
        assert v is not None and t.ended_at is not None
        if best_so_far is None or data.better(v, best_so_far):
            best_so_far = v
        window = [*window, v][-data.population:]
        times.append((t.ended_at - t0) / scale)
        best.append(best_so_far)
        median.append(statistics.median(window))
    fig = _figure(10, 5)
    ax = fig.add_subplot()
    ax.scatter(times, [data.value(t.final) for t in done], s=10, color="#aaaaaa", zorder=2,
               label="a trial completes (its final fitness)")
    last = (end - t0) / scale
    ax.step([*times, last], [*best, best[-1]], where="post", color=BEST_COLOUR, lw=2.2, zorder=4,
            label="best so far")
    ax.step([*times, last], [*median, median[-1]], where="post", color="#4c78a8", lw=1.8, zorder=3,
            label=f"median of the population (last {data.population} completed)")
    if not data.finished:
        ax.axvline(last, color="#f58518", ls=":", lw=1.5, label="now (run in progress)")
    ax.set_xlim(left=0.0)
    limits = _robust_limits([*best, *median, *(data.value(t.final) or 0.0 for t in done)])
    if limits is not None:
        ax.set_ylim(*limits)
    ax.set_xlabel(f"wall time since the first trial was created ({unit})")
    ax.set_ylabel(data.metric_label)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=9, frameon=False)
    return fig


# --- (e) worker utilisation ------------------------------------------------------------------------
@dataclass(frozen=True)
class Interval:
    worker: str
    start: float
    end: float
    outcome: str  # completed | interrupted | running


def worker_intervals(data: ReportData) -> list[Interval]:
    """Busy intervals per worker: every past attempt (``Trial.history``) and running leases."""
    out: list[Interval] = []
    for t in data.trials:
        for past in t.history:
            completed = (t.status is TrialStatus.COMPLETED and past.attempt == t.completed_attempt
                         and past.worker == t.worker)
            out.append(Interval(past.worker, past.started_at, max(past.started_at, past.ended_at),
                                "completed" if completed else "interrupted"))
        if t.status is TrialStatus.RUNNING and t.lease is not None and t.started_at is not None:
            out.append(Interval(t.lease.worker, t.started_at, max(t.started_at, data.now), "running"))
    return out


def _union_length(spans: Iterable[tuple[float, float]]) -> float:
    total, current_start, current_end = 0.0, None, None
    for start, end in sorted(spans):
        if current_end is None or start > current_end:
            if current_end is not None and current_start is not None:
                total += current_end - current_start
            current_start, current_end = start, end
        else:
            current_end = max(current_end, end)
    if current_end is not None and current_start is not None:
        total += current_end - current_start
    return total


def _natural(name: str) -> list[Any]:
    import re

    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


def merge_spans(spans: Iterable[tuple[float, float]], gap: float) -> list[tuple[float, float]]:
    """``(start, end)`` spans joined where they overlap or are less than ``gap`` apart: back to
    back trials make one bar (drawn as many, their edges made stripes inside a full bar)."""
    merged: list[list[float]] = []
    for start, end in sorted(spans):
        if merged and start - merged[-1][1] < gap:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, max(start, end)])
    return [(a, b) for a, b in merged]


def _draw_spans(ax: Any, spans: list[tuple[float, float]], row: int, colour: str, *, merge_gap: float,
                hatch: str | None = None) -> None:
    """One row's bars of one kind, merged, with no edge lines (no white stripes)."""
    bars = [(a, b - a) for a, b in merge_spans(spans, merge_gap)]
    if bars:
        ax.broken_barh(bars, (row - 0.4, 0.8), facecolors=colour, linewidths=0.0, hatch=hatch, zorder=2,
                       edgecolors="none" if hatch is None else "white")  # (a hatch is drawn in the edge colour)


def utilisation_label(worker: str, mine: Sequence[Interval], window: float) -> str:
    """``w0  (97% holding a trial; after its first: 99%)``. Holding a trial is not computing: a
    worker's first trial includes its process start-up and the experiment's imports, which the
    store cannot tell apart from training, so the share after the first trial is shown too."""
    held = _union_length((i.start, i.end) for i in mine) / window
    first = min(mine, key=lambda i: i.start)
    rest = [i for i in mine if i is not first]
    text = f"{worker}  ({100 * held:.0f}% holding a trial"
    if rest:
        after = max(i.end for i in mine) - first.end
        if after > 0:
            text += f"; after its first: {100 * _union_length((i.start, i.end) for i in rest) / after:.0f}%"
    return text + ")"


def figure_utilisation(data: ReportData) -> Any:
    from matplotlib.patches import Patch

    title = "Worker utilisation over time"
    intervals = worker_intervals(data)
    if not intervals:
        return _placeholder(title, "no worker has run a trial yet")
    workers = sorted({i.worker for i in intervals}, key=_natural)
    t0 = data.t0
    first = min(i.start for i in intervals)
    end = max(data.now if not data.finished else 0.0, *(i.end for i in intervals))
    window = max(end - first, 1e-9)
    scale, unit = _time_unit(end - t0)
    colours = {"completed": "#4c78a8", "interrupted": "#e45756", "running": "#f58518"}
    fig = _figure(11, min(16.0, max(3.2, 1.4 + 0.42 * len(workers))))
    ax = fig.add_subplot()
    labels = []
    for row, worker in enumerate(workers):
        mine = [i for i in intervals if i.worker == worker]
        ax.broken_barh([((first - t0) / scale, window / scale)], (row - 0.4, 0.8), facecolors="#eeeeee", zorder=1)
        first_attempt = min(mine, key=lambda i: i.start)
        for outcome, colour in colours.items():
            spans = [((i.start - t0) / scale, (i.end - t0) / scale) for i in mine
                     if i.outcome == outcome and i is not first_attempt]
            _draw_spans(ax, spans, row, colour, merge_gap=window / scale / 2000)
        _draw_spans(ax, [((first_attempt.start - t0) / scale, (first_attempt.end - t0) / scale)], row,
                    colours[first_attempt.outcome], merge_gap=0.0, hatch="////")
        labels.append(utilisation_label(worker, mine, window))
    ax.set_yticks(range(len(workers)), labels, fontsize=9 if len(workers) <= 24 else 7)
    ax.set_ylim(-0.6, len(workers) - 0.4)
    ax.invert_yaxis()
    meaning = {"completed": "busy: attempt that completed its trial",
               "interrupted": "busy: attempt lost, failed or stopped", "running": "busy: running now"}
    present = {i.outcome for i in intervals}
    handles = [Patch(color=colours[k], label=v) for k, v in meaning.items() if k in present]
    handles.append(Patch(facecolor="#ffffff", edgecolor="#555555", hatch="////",
                         label="a worker's first trial (includes start-up and imports)"))
    handles.append(Patch(facecolor="#eeeeee", edgecolor="#cccccc", label="idle"))
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=9, frameon=False)
    ax.set_xlabel(f"wall time since the first trial was created ({unit})")
    ax.set_title(f"{title} ({len(workers)} workers; busy = holding a trial, not necessarily computing)")
    ax.grid(True, axis="x", alpha=0.3)
    return fig


# --- the report ----------------------------------------------------------------------------------
CAPTIONS = {
    "fitness": "Every trial's fitness against training step. Each curve starts where its parent ended; "
               "colour = the seed trial a trial descends from (with more than nine seeds: the seed lineages that "
               "survive into the final population in colour, extinct ones grey); black = the best trial's lineage; "
               "dashed = still running.",
    "schedule": "The best trial's hyperparameter schedule: the value in force at each training step. "
                "Each step of the staircase is one trial of its warm-start chain.",
    "lineage_tree": "Generations left to right. Solid edges: warm starts (parent → child); dashed: "
                    "crossover sources (they gave hyperparameters, not weights). Trials whose weights live on "
                    "in the final population (ringed) are drawn solid, extinct branches faint; the best "
                    "lineage is thick.",
    "progress": "Best-so-far and median population fitness (the last <i>population</i> completed trials) "
                "against wall time.",
    "utilisation": "Busy and idle time of each worker (from every attempt's lease interval).",
}


def write_report(store: TrialStore, out_dir: str | os.PathLike[str], *, now: float | None = None) -> dict[str, Path]:
    """Write the five PNGs, ``best_schedule.json`` (when there is a best trial) and
    ``index.html`` into ``out_dir``; returns ``{name: path}`` (``index`` for the HTML)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = collect(store, now)
    figures = {
        "fitness": lambda: figure_fitness(data),
        "schedule": lambda: figure_schedule(data, store),
        "lineage_tree": lambda: figure_lineage_tree(data, store),
        "progress": lambda: figure_progress(data),
        "utilisation": lambda: figure_utilisation(data),
    }
    paths: dict[str, Path] = {}
    for name in FIGURES:
        fig = figures[name]()
        path = out / f"{name}.png"
        fig.savefig(path, dpi=DPI, facecolor="white")
        paths[name] = path
    if data.best is not None:
        paths["best_schedule"] = schedule(store, data.best.id).save(out / "best_schedule.json")
    paths["index"] = out / "index.html"
    paths["index"].write_text(_html(data, paths), encoding="utf-8")
    return paths


def steps_text(data: ReportData) -> str:
    """``50 per trial, lineages end at step 500 (max_steps); 5,175 trained in all``: max_steps
    is how far each lineage goes, not the compute spent (the sum over completed trials)."""
    assert data.experiment is not None
    trained = sum(t.steps for t in data.trials if t.status is TrialStatus.COMPLETED)
    return (f"{data.experiment.steps_per_trial:,} per trial, lineages end at step {data.experiment.max_steps:,} "
            f"(max_steps); {trained:,} trained in all (completed trials)")


def _html(data: ReportData, paths: Mapping[str, Path]) -> str:
    e = html.escape
    name = data.experiment.name if data.experiment is not None else "(unknown experiment)"
    counts: dict[str, int] = {}
    for t in data.trials:
        counts[t.status.value] = counts.get(t.status.value, 0) + 1
    state = "finished" if data.finished else "in progress"
    rows = [("experiment", name), ("state", state), ("trials", f"{len(data.trials)}  (" + ", ".join(
        f"{k} {v}" for k, v in sorted(counts.items())) + ")")]
    if data.experiment is not None:
        rows += [("policy", data.experiment.policy), ("population", str(data.experiment.population)),
                 ("steps", steps_text(data))]
        population = final_population(data.trials, data.experiment)
        if population.best is not None:
            mean = ", ".join(f"{k} = {_fmt(v)}" for k, v in population.mean.items())
            best_metrics = ", ".join(f"{k} = {_fmt(v)}" for k, v in (population.best.final or {}).items())
            rows += [("final population", f"{len(population.trials)} trials ({population.at_max_steps} at max_steps "
                                          f"{population.max_steps:,}): best trial {population.best.id}: "
                                          f"{best_metrics}; mean {mean or '-'}")]
    if data.best is not None:
        metrics = ", ".join(f"{k} = {_fmt(v)}" for k, v in (data.best.final or {}).items())
        hparams = ", ".join(f"{k} = {_fmt(v)}" for k, v in data.best.hparams.items())
        rows += [("best trial (any step)", f"{data.best.id} (generation {data.best.generation}, "
                                           f"step {data.best.end_step}): {metrics}"),
                 ("its last hyperparameters", hparams)]
    with_checkpoint = [t for t in data.trials if t.checkpoint is not None]
    collected = sum(1 for t in with_checkpoint if t.collected_at is not None)
    if collected:  # retention: say so, the figures need no checkpoint
        best_note = ("; the best trial's checkpoint collected: replay it from scratch"
                     if data.best is not None and data.best.collected_at is not None else "")
        rows += [("checkpoints", f"{len(with_checkpoint) - collected} kept, {collected} collected by "
                                 f"retention{best_note}")]
    table = "\n".join(f"<tr><th>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in rows)
    generated = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime())
    sections = "\n".join(
        f'<figure id="{n}"><img src="{e(paths[n].name)}" alt="{e(n)}"><figcaption>{CAPTIONS[n]}</figcaption></figure>'
        for n in FIGURES)
    schedule_link = ('<p>The best trial\'s schedule as JSON (for <code>pbt-actors replay --schedule</code>): '
                     f'<a href="{e(paths["best_schedule"].name)}">best_schedule.json</a></p>'
                     if "best_schedule" in paths else "")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>pbt-actors report: {e(name)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1300px; color: #222; padding: 0 1em; }}
table {{ border-collapse: collapse; margin-bottom: 1.5em; }}
th, td {{ text-align: left; padding: 0.2em 1em 0.2em 0; vertical-align: top; }}
th {{ color: #555; font-weight: 600; }}
figure {{ margin: 0 0 2.5em 0; }}
img {{ max-width: 100%; height: auto; border: 1px solid #ddd; }}
figcaption {{ color: #444; margin-top: 0.4em; }}
</style></head>
<body>
<h1>pbt-actors report: {e(name)}</h1>
<table>
{table}
</table>
{schedule_link}
{sections}
<p style="color:#777">Generated {e(generated)} from the store ({e(state)}).</p>
</body></html>
"""
