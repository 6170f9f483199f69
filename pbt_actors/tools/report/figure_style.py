"""How the report's figures look: resolution, colours, the canvas, time units and axis limits,
shared so that the five figures read as one set."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pbt_actors.model.records import TrialStatus

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


# --- formatting helpers ------------------------------------------------------------------------
def fmt_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def time_unit(span_s: float) -> tuple[float, str]:
    if span_s < 120:
        return 1.0, "s"
    if span_s < 2 * 3600:
        return 60.0, "min"
    return 3600.0, "h"


def new_figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def placeholder(title: str, message: str) -> Any:
    fig = new_figure(8, 3)
    ax = fig.add_subplot()
    ax.set_axis_off()
    ax.set_title(title)
    ax.text(0.5, 0.5, message, ha="center", va="center", fontsize=12, color="#555555", transform=ax.transAxes)
    return fig


def lineage_colours(n: int) -> list[Any]:
    from matplotlib import colormaps

    if n <= 9:  # tab10 without its grey, which the figures use for "neutral"
        cmap = colormaps["tab10"]
        return [cmap(i) for i in (0, 1, 2, 3, 4, 5, 6, 8, 9)[:n]]
    if n <= 20:
        cmap = colormaps["tab20"]
        return [cmap(i) for i in range(n)]
    cmap = colormaps["turbo"]
    return [cmap(0.05 + 0.9 * i / max(1, n - 1)) for i in range(n)]


def robust_limits(values: Sequence[float]) -> tuple[float, float] | None:
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
