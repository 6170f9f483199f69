"""Sweeps of simulated runs: every combination of the list-valued settings, each run over a
range of seeds, and the per-configuration mean ± sd the summary table shows.

``pbt-actors sim`` (``cli/sim.py``) parses the options, calls ``run_sweep`` and prints; the
study scripts of ``benchmarks/`` call it the same way. ``options`` is that command's parsed
namespace (any object with the same attributes): the sweep reads what the command declares.
"""

from __future__ import annotations

import itertools
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pbt_actors.model.errors import PbtError

if TYPE_CHECKING:
    from pbt_actors.tools.sim.sim_result import SimResult

ALL_WINDOW = 1 << 20
"""Opponent window "all generations": larger than any run's generation count."""

SweepProgress = Callable[[int, int, str, bool], None]
"""``(runs done, runs in all, what the running one is doing, final)``."""


class StoreDirTaken(PbtError):
    """A run's LMDB store folder already holds a store (a sweep never writes into an old one)."""


def window_label(window: int) -> str:
    return "all" if window >= ALL_WINDOW else str(window)


@dataclass
class Row:
    """One configuration of a sweep and its runs (one per seed)."""

    settings: dict[str, Any]
    runs: list[SimResult] = field(default_factory=list)

    def stats(self, key: Callable[[SimResult], float | None]) -> tuple[float, float] | None:
        values = [v for v in (key(r) for r in self.runs) if v is not None]
        if not values:
            return None
        return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(self.settings)
        columns: dict[str, Callable[[SimResult], Any]] = {
            "best": lambda r: r.best, "median": lambda r: r.median, "hypervolume": lambda r: r.hypervolume,
            "compute_h": lambda r: r.compute_h, "steps_trained": lambda r: r.steps_trained,
            "trials": lambda r: r.trials, "best_step": lambda r: r.best_step,
            "preemptions": lambda r: r.preemptions,
            "trials_lost": lambda r: r.trials_lost, "lost_h": lambda r: r.lost_s / 3600,
            "wasted_h": lambda r: r.wasted_s / 3600, "leases_expired": lambda r: r.leases_expired,
            "virtual_h": lambda r: r.virtual_s / 3600, "wall_s": lambda r: r.wall_s,
        }
        for name, key in columns.items():
            stat = self.stats(key)
            out[f"{name}_mean"] = None if stat is None else stat[0]
            out[f"{name}_sd"] = None if stat is None else stat[1]
        out["best_step_min"] = min((r.best_step for r in self.runs), default=None)
        out["seeds"] = len(self.runs)
        out["finished"] = all(r.finished for r in self.runs)
        out["errors"] = sum(len(r.errors) for r in self.runs)
        return out


def rows_to_json(rows: list[Row]) -> dict[str, Any]:
    return {"rows": [{**r.summary(), "runs": [x.to_dict() for x in r.runs]} for r in rows]}


def sweep_settings(options: Any) -> list[dict[str, Any]]:
    """Every combination of the list-valued options, in a stable order."""
    combos = itertools.product(options.objective, options.population, options.max_trials, options.policy,
                               options.opponent_window, options.preempt_rate)
    return [{"objective": objective, "policy": policy, "population": population,
             "workers": options.workers or population, "budget_mode": bool(options.budget_mode),
             "opponent_window": window_label(window), "preempt_rate": rate,
             "max_trials": trial_cap(cap, objective, population, options)}
            for objective, population, cap, policy, window, rate in combos]


def trial_cap(cap: str | int, objective: str, population: int, options: Any = None) -> int:
    """``'equal'``: population × lineage length (the compute of training each lineage once to
    ``max_steps``); 0: none; else the number."""
    from pbt_actors.tools.sim.objectives import make_objective

    if cap != "equal":
        return int(cap)
    problem = make_objective(objective)
    if options is not None:
        problem = problem.with_schedule(options.max_steps, options.steps_per_trial)
    return population * -(-problem.max_steps // problem.steps_per_trial)


def store_path(settings: dict[str, Any], seed: int, options: Any) -> Path:
    """Where ``--store lmdb`` writes the store of one run: ``<store-dir>/<settings>-seed<seed>``."""
    root = Path(options.store_dir or "pbt-sim-runs")
    name = "-".join(str(settings[k]) for k in ("objective", "policy", "population", "workers",
                                                 "opponent_window", "preempt_rate"))
    return root / f"{name}{'-budget' if settings['budget_mode'] else ''}-seed{seed}"


def run_one(settings: dict[str, Any], seed: int, options: Any,
            on_progress: Callable[[int], None] | None = None) -> SimResult:
    """One simulated run of one configuration (``on_progress(trials)`` every 500 trials)."""
    from pbt_actors.tools.sim.cluster_model import SimConfig
    from pbt_actors.tools.sim.engine import simulate
    from pbt_actors.tools.sim.objectives import make_objective

    objective = make_objective(settings["objective"]).with_schedule(options.max_steps, options.steps_per_trial)
    overrides: dict[str, Any] = {}
    population = settings["population"]
    overrides["max_trials"] = settings["max_trials"] or None
    window = settings["opponent_window"]
    overrides["opponent_window"] = ALL_WINDOW if window == "all" else int(window)
    overrides["budget_mode"] = settings["budget_mode"]
    if options.crossover_prob is not None:
        overrides["crossover_prob"] = options.crossover_prob
    if options.resample_prob is not None:
        overrides["resample_prob"] = options.resample_prob
    config = SimConfig(workers=settings["workers"], speed_spread=options.speed_spread, trial_s=options.trial_s,
                       duration_cv=options.duration_cv, preempt_rate=settings["preempt_rate"],
                       lost_notice=options.lost_notice, graceful=options.graceful, restart_s=options.restart_s,
                       join_per_hour=options.join_per_hour, leave_per_worker_hour=options.leave_per_worker_hour,
                       max_workers=options.max_workers, seed=seed)
    store = None
    if options.store == "lmdb":
        from pbt_actors.storage.lmdb_store import LmdbTrialStore

        path = store_path(settings, seed, options)
        if path.exists() and any(path.iterdir()):
            raise StoreDirTaken(f"{path} already holds a store; give another --store-dir")
        store = LmdbTrialStore(path, sync=False)
    try:
        result, _ = simulate(objective, policy=settings["policy"], population=population, seed=seed,
                             config=config, store=store, on_progress=on_progress, progress_every=500,
                             **overrides)
    finally:
        if store is not None:
            store.close()
    return result


def run_sweep(options: Any, on_progress: SweepProgress | None = None) -> list[Row]:
    """Every configuration of ``options`` over seeds ``seed_base ..``, one row each."""
    rows = [Row(s) for s in sweep_settings(options)]
    total = len(rows) * options.seeds
    done = 0
    for row in rows:
        for seed in range(options.seed_base, options.seed_base + options.seeds):
            def tick(trials: int, _done: int = done) -> None:
                if on_progress is not None:
                    on_progress(_done, total, f"run at {trials} trials", False)
            row.runs.append(run_one(row.settings, seed, options, tick))
            done += 1
            if on_progress is not None:
                on_progress(done, total, "", done == total)
    return rows
