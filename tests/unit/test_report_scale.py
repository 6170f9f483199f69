"""``report`` on a store past ``LINES_MAX`` trials: aggregated figures, drawn fast and readable.

A real simulated run (the controller core and policy over an in-memory store) of a few thousand
trials; the figures must take the at-scale path (density plus the final population's ancestry,
no one-artist-per-trial drawing) and the whole report must stay quick.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from pbt_actors.storage.memory import InMemoryTrialStore
from pbt_actors.tools import report
from pbt_actors.tools.report.lineage_figures import figure_fitness, figure_lineage_tree
from pbt_actors.tools.report.report_data import LINES_MAX, collect, warm_start_ancestry
from pbt_actors.tools.sim.engine import simulate
from pbt_actors.tools.sim.objectives import make_objective

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def big_store() -> InMemoryTrialStore:
    store = InMemoryTrialStore()
    simulate(make_objective("curve"), population=30, seed=3, store=store, max_trials=LINES_MAX + 500,
             max_steps=10**9, steps_per_trial=10)
    assert store.count() == LINES_MAX + 500
    return store


def test_the_figures_aggregate_past_lines_max(big_store: InMemoryTrialStore, tmp_path: Path) -> None:
    data = collect(big_store)
    ancestry = warm_start_ancestry(data, data.final_population())
    assert data.best is not None and len(ancestry) < len(data.trials)
    fitness = figure_fitness(data)
    title = fitness.axes[0].get_title()
    assert "density of all" in title and f"{len(data.trials):,} trials" in title
    assert len(fitness.axes[0].lines) < 50  # no line per trial: collections and a few markers
    tree = figure_lineage_tree(data, big_store)
    assert f"{len(ancestry):,} of {len(data.trials):,} trials" in tree.axes[0].get_title()
    assert len(tree.axes[0].texts) == 1  # 30 final members: only the best is labelled (rings mark the rest)


def test_a_big_report_is_written_quickly(big_store: InMemoryTrialStore, tmp_path: Path) -> None:
    start = time.perf_counter()
    paths = report.write_report(big_store, tmp_path)
    assert time.perf_counter() - start < 30  # one line per trial took ~10 s per 10k trials per figure
    for name in report.FIGURES:
        assert paths[name].stat().st_size > 10_000
