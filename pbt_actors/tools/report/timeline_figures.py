"""The report's figures over wall time: best and median fitness, and each worker's busy and
idle time."""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from pbt_actors.model.records import TrialStatus
from pbt_actors.tools.report.figure_style import BEST_COLOUR, new_figure, placeholder, robust_limits, time_unit
from pbt_actors.tools.report.report_data import ReportData


# --- (d) best and median fitness against wall time ----------------------------------------------
def figure_progress(data: ReportData) -> Any:
    title = "Best and median population fitness against wall time"
    done = sorted((t for t in data.trials if t.status is TrialStatus.COMPLETED and t.ended_at is not None
                   and data.value(t.final) is not None), key=lambda t: (t.ended_at or 0.0, t.id))
    if not done:
        return placeholder(title, "no completed trial yet")
    t0 = data.t0
    end = max(data.now, done[-1].ended_at or t0)
    scale, unit = time_unit(end - t0)
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
    fig = new_figure(10, 5)
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
    limits = robust_limits([*best, *median, *(data.value(t.final) or 0.0 for t in done)])
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
        return placeholder(title, "no worker has run a trial yet")
    workers = sorted({i.worker for i in intervals}, key=_natural)
    t0 = data.t0
    first = min(i.start for i in intervals)
    end = max(data.now if not data.finished else 0.0, *(i.end for i in intervals))
    window = max(end - first, 1e-9)
    scale, unit = time_unit(end - t0)
    colours = {"completed": "#4c78a8", "interrupted": "#e45756", "running": "#f58518"}
    fig = new_figure(11, min(16.0, max(3.2, 1.4 + 0.42 * len(workers))))
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
