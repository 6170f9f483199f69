"""Writes a report: the figures as PNGs, the best schedule as JSON, the index page."""

from __future__ import annotations

import os
from pathlib import Path

from pbt_actors.storage.trial_store import TrialStore
from pbt_actors.tools.lineage import schedule
from pbt_actors.tools.report.figure_style import DPI
from pbt_actors.tools.report.index_page import FIGURES, index_html
from pbt_actors.tools.report.lineage_figures import figure_fitness, figure_lineage_tree, figure_schedule
from pbt_actors.tools.report.report_data import collect
from pbt_actors.tools.report.timeline_figures import figure_progress, figure_utilisation


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
    paths["index"].write_text(index_html(data, paths), encoding="utf-8")
    return paths


