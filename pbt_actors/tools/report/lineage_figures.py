"""The report's figures over training steps and generations: every trial's fitness, the best
trial's hyperparameter schedule, the lineage tree."""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable
from typing import Any

from pbt_actors.model.fields import is_number
from pbt_actors.model.records import Trial, TrialStatus
from pbt_actors.storage.trial_store import TrialStore
from pbt_actors.tools.lineage import schedule
from pbt_actors.tools.report.figure_style import (
    BEST_COLOUR,
    CROSSOVER_COLOUR,
    STATUS_COLOURS,
    fmt_value,
    lineage_colours,
    new_figure,
    placeholder,
    robust_limits,
)
from pbt_actors.tools.report.report_data import LINES_MAX, ReportData, warm_start_ancestry


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


def figure_fitness(data: ReportData) -> Any:
    from matplotlib.collections import LineCollection
    from matplotlib.lines import Line2D

    title = "Fitness of every trial against training step"
    curves = [(t, _trial_points(data, t)) for t in data.trials]
    if not any(len(p) for _, p in curves):
        return placeholder(title, "no trial has reported a value of the objective yet")
    fig = new_figure(11, 6)
    ax = fig.add_subplot()
    at_scale = len(data.trials) > LINES_MAX
    if at_scale:  # every point as a density, lines only where the final population came from
        xs_all = [x for _, points in curves for x, _ in points]
        ys_all = [y for _, points in curves for _, y in points]
        limits = robust_limits(ys_all)
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
        colours = dict(zip(roots, lineage_colours(len(roots)), strict=True))
    else:  # too many to tell apart: colour the seed lineages that survive, grey the rest
        colours = {root: extinct_grey for root in roots}
        colours.update(zip(survivors, lineage_colours(len(survivors)), strict=True))
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
                                    + (f" ({fmt_value(best_value)})" if best_value is not None else "")))
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
    limits = robust_limits(all_values)
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
        return placeholder(title, "no completed trial yet")
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
        return placeholder(title, "the schedule has no varying hyperparameter")
    edges = [float(s.start_step) for s in sched.segments] + [float(sched.end_step)]
    fig = new_figure(10, 0.9 + 1.7 * len(names))
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
    value_text = f", {data.metric_names[0] if len(data.metric_names) == 1 else 'objective'} = {fmt_value(best_value)}" \
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
        return placeholder(title, "the store holds no trial yet")
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
    fig = new_figure(width, height)
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
