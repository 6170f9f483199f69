"""``pbt-actors sim``: sweeps of simulated runs and their summary table (layer 5).

Every list-valued option (``--objective``, ``--policy``, ``--population``,
``--opponent-window``, ``--preempt-rate``) takes comma-separated values; the table has one row
per combination, each the mean ± sd over ``--seeds`` runs. So a whole study is one command.

Equal compute: by default every run is capped at ``population × ceil(max_steps /
steps_per_trial)`` trials (``--max-trials equal``), the compute of training each of the
population's lineages once to ``max_steps``. That is exactly what ``random`` uses; PBT
policies may need more (a child of an older opponent continues from an earlier step) and are
cut at the same budget. ``--max-trials 0`` removes the cap.

``add_sim_parser(subparsers)`` registers the subcommand; ``python -m pbt_actors.cli.sim``
runs it standalone.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import statistics
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pbt_actors.cli.live import LiveProgress
from pbt_actors.model.errors import PbtError

if TYPE_CHECKING:
    from pbt_actors.tools.sim.engine import SimResult

ALL_WINDOW = 1 << 20  # "all generations": larger than any run's generation count
# Spelled out so that building the parser imports neither numpy nor the controller; a unit test
# keeps them equal to ``objectives.OBJECTIVES`` and ``experiment.POLICY_NAMES``.
OBJECTIVE_NAMES: tuple[str, ...] = ("toy", "toy-noisy", "curve", "curve-noisy", "pareto", "pareto-noisy")
POLICIES: tuple[str, ...] = ("initiator", "truncation", "random")


# --- parsing helpers ---------------------------------------------------------------------------
def _split(text: str) -> list[str]:
    items = [item.strip() for item in str(text).split(",") if item.strip()]
    if not items:
        raise argparse.ArgumentTypeError("empty list")
    return items


def _ints(text: str) -> list[int]:
    try:
        values = [int(v) for v in _split(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers, got {text!r}") from None
    if any(v < 1 for v in values):
        raise argparse.ArgumentTypeError("values must be >= 1")
    return values


def _windows(text: str) -> list[int]:
    out = []
    for item in _split(text):
        if item.lower() == "all":
            out.append(ALL_WINDOW)
            continue
        try:
            value = int(item)
        except ValueError:
            raise argparse.ArgumentTypeError(f"opponent window must be an integer or 'all', got {item!r}") from None
        if value < 1:
            raise argparse.ArgumentTypeError("opponent window must be >= 1")
        out.append(value)
    return out


def _rates(text: str) -> list[float]:
    """Preemption rates per worker-hour: ``0.05`` or ``5%``."""
    out = []
    for item in _split(text):
        try:
            value = float(item[:-1]) / 100 if item.endswith("%") else float(item)
        except ValueError:
            raise argparse.ArgumentTypeError(f"bad rate {item!r}") from None
        if value < 0 or not math.isfinite(value):
            raise argparse.ArgumentTypeError("rates must be finite and >= 0")
        out.append(value)
    return out


def _choices(allowed: Sequence[str]) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        values = _split(text)
        bad = [v for v in values if v not in allowed]
        if bad:
            raise argparse.ArgumentTypeError(f"unknown {', '.join(bad)}; choose from {', '.join(allowed)}")
        return values
    return parse


def _max_trials(text: str) -> list[str | int]:
    out: list[str | int] = []
    for item in _split(text):
        if item == "equal":
            out.append(item)
            continue
        try:
            value = int(item)
        except ValueError:
            raise argparse.ArgumentTypeError("--max-trials takes 'equal', 0 (no cap) or a number") from None
        if value < 0:
            raise argparse.ArgumentTypeError("--max-trials must be >= 0")
        out.append(value)
    return out


def window_label(window: int) -> str:
    return "all" if window >= ALL_WINDOW else str(window)


# --- the sweep ---------------------------------------------------------------------------------------
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


def sweep_settings(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every combination of the list-valued options, in a stable order."""
    combos = itertools.product(args.objective, args.population, args.max_trials, args.policy,
                               args.opponent_window, args.preempt_rate)
    out = []
    for objective, population, cap, policy, window, rate in combos:
        if args.budget_mode and policy != "initiator":
            raise SystemExit("pbt-actors sim: --budget-mode needs the initiator policy")
        out.append({"objective": objective, "policy": policy, "population": population,
                    "workers": args.workers or population, "budget_mode": bool(args.budget_mode),
                    "opponent_window": window_label(window), "preempt_rate": rate,
                    "max_trials": _cap(cap, objective, population, args)})
    return out


def _cap(cap: str | int, objective: str, population: int, args: argparse.Namespace | None = None) -> int:
    """``'equal'``: population × lineage length; 0: none."""
    from pbt_actors.tools.sim.objectives import make_objective

    if cap != "equal":
        return int(cap)
    problem = make_objective(objective)
    if args is not None:
        problem = problem.with_schedule(args.max_steps, args.steps_per_trial)
    return population * -(-problem.max_steps // problem.steps_per_trial)


def run_one(settings: dict[str, Any], seed: int, args: argparse.Namespace,
            on_progress: Callable[[int], None] | None = None) -> SimResult:
    from pbt_actors.tools.sim.engine import SimConfig, simulate
    from pbt_actors.tools.sim.objectives import make_objective

    objective = make_objective(settings["objective"]).with_schedule(args.max_steps, args.steps_per_trial)
    overrides: dict[str, Any] = {}
    population = settings["population"]
    overrides["max_trials"] = settings["max_trials"] or None
    window = settings["opponent_window"]
    overrides["opponent_window"] = ALL_WINDOW if window == "all" else int(window)
    overrides["budget_mode"] = settings["budget_mode"]
    if args.crossover_prob is not None:
        overrides["crossover_prob"] = args.crossover_prob
    if args.resample_prob is not None:
        overrides["resample_prob"] = args.resample_prob
    config = SimConfig(workers=settings["workers"], speed_spread=args.speed_spread, trial_s=args.trial_s,
                       duration_cv=args.duration_cv, preempt_rate=settings["preempt_rate"],
                       lost_notice=args.lost_notice, graceful=args.graceful, restart_s=args.restart_s,
                       join_per_hour=args.join_per_hour, leave_per_worker_hour=args.leave_per_worker_hour,
                       max_workers=args.max_workers, seed=seed)
    store = None
    if args.store == "lmdb":
        from pbt_actors.storage.lmdb_store import LmdbTrialStore

        root = Path(args.store_dir or "pbt-sim-runs")
        name = "-".join(str(settings[k]) for k in ("objective", "policy", "population", "workers",
                                                     "opponent_window", "preempt_rate"))
        path = root / f"{name}{'-budget' if settings['budget_mode'] else ''}-seed{seed}"
        if path.exists() and any(path.iterdir()):
            raise SystemExit(f"pbt-actors sim: {path} already holds a store; give another --store-dir")
        store = LmdbTrialStore(path, sync=False)
    try:
        result, _ = simulate(objective, policy=settings["policy"], population=population, seed=seed,
                             config=config, store=store, on_progress=on_progress, progress_every=500,
                             **overrides)
    finally:
        if store is not None:
            store.close()
    return result


def sim_progress(enabled: bool) -> LiveProgress:
    """The sweep's progress: runs done of all runs, and the running one's trial count."""
    return LiveProgress(enabled, "runs")


def run_sweep(args: argparse.Namespace, progress: LiveProgress | None = None) -> list[Row]:
    rows = [Row(s) for s in sweep_settings(args)]
    total = len(rows) * args.seeds
    done = 0
    for row in rows:
        for seed in range(args.seed_base, args.seed_base + args.seeds):
            def tick(trials: int, _done: int = done) -> None:
                if progress is not None:
                    progress.update(_done, total, f"run at {trials} trials")
            row.runs.append(run_one(row.settings, seed, args, tick))
            done += 1
            if progress is not None:
                progress.update(done, total, final=done == total)
    if progress is not None:
        progress.close()
    return rows


# --- output ------------------------------------------------------------------------------------------
def _fmt(value: float | None, digits: int = 3) -> str:
    if value is None:
        return "-"
    if value == 0:
        return "0"
    magnitude = abs(value)
    if 1e-3 <= magnitude < 1e5:
        decimals = max(0, digits - 1 - math.floor(math.log10(magnitude)))
        return f"{value:.{decimals}f}"
    return f"{value:.{digits - 1}e}"


def _pm(summary: dict[str, Any], name: str, digits: int = 3) -> str:
    mean, sd = summary.get(f"{name}_mean"), summary.get(f"{name}_sd")
    if mean is None:
        return "-"
    return f"{_fmt(mean, digits)} ± {_fmt(sd, 2)}"


SETTING_LABELS = {"objective": "objective", "policy": "policy", "population": "N", "workers": "workers",
                  "budget_mode": "budget", "opponent_window": "window", "preempt_rate": "preempt/h",
                  "max_trials": "max trials"}


def format_table(rows: list[Row], markdown: bool = False) -> str:
    """The summary table: varying settings, then mean ± sd columns; constant settings above it."""
    summaries = [r.summary() for r in rows]
    keys = list(SETTING_LABELS)
    varying = [k for k in keys if k in ("objective", "policy") or len({str(s[k]) for s in summaries}) > 1]
    constant = [k for k in keys if k not in varying]
    headers = [SETTING_LABELS[k] for k in varying] + ["best", "median"]
    show_hv = any(s["hypervolume_mean"] is not None for s in summaries)
    show_faults = any(s["preemptions_mean"] for s in summaries)
    if show_hv:
        headers.append("hypervolume")
    headers += ["compute (worker-h)", "steps", "best at step (min)", "makespan (h)"]
    if show_faults:
        headers += ["trials lost", "lost (worker-h)", "wasted (worker-h)", "leases expired"]
    lines: list[list[str]] = []
    for s in summaries:
        cells = [str(s[k]) for k in varying] + [_pm(s, "best", 4), _pm(s, "median", 4)]
        if show_hv:
            cells.append(_pm(s, "hypervolume"))
        cells += [_pm(s, "compute_h"), f"{s['steps_trained_mean']:.0f}", str(s["best_step_min"]),
                  _fmt(s["virtual_h_mean"])]
        if show_faults:
            cells += [_pm(s, "trials_lost"), _pm(s, "lost_h"), _pm(s, "wasted_h"), _fmt(s["leases_expired_mean"])]
        if not s["finished"] or s["errors"]:
            cells[-1] += " (!)"
        lines.append(cells)
    seeds = summaries[0]["seeds"] if summaries else 0
    note = ", ".join(f"{SETTING_LABELS[k]}={summaries[0][k]}" for k in constant) if summaries else ""
    header_note = f"{seeds} seeds; mean ± sd" + (f"; {note}" if note else "")
    if markdown:
        out = [header_note, "", "| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
        out += ["| " + " | ".join(cells) + " |" for cells in lines]
        return "\n".join(out)
    widths = [max(len(h), *(len(c[i]) for c in lines)) if lines else len(h) for i, h in enumerate(headers)]
    out = [header_note, "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))]
    out.append("  ".join("-" * w for w in widths))
    out += ["  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) for cells in lines]
    return "\n".join(out)


def rows_to_json(rows: list[Row]) -> dict[str, Any]:
    return {"rows": [{**r.summary(), "runs": [x.to_dict() for x in r.runs]} for r in rows]}


# --- the subcommand ------------------------------------------------------------------------------------
def add_sim_parser(subparsers: Any) -> None:
    """Register ``sim`` on an ``argparse`` subparsers object (``set_defaults(func=cmd_sim)``)."""
    sim = subparsers.add_parser(
        "sim", help="simulate runs of the real controller with virtual workers in virtual time",
        description="Simulate the unchanged controller and policies with virtual workers in virtual time; "
                    "list options take comma-separated values and the table has a row per combination.")
    configure_parser(sim)
    sim.set_defaults(func=cmd_sim)


def configure_parser(sim: argparse.ArgumentParser) -> None:
    sim.add_argument("--objective", type=_choices(OBJECTIVE_NAMES), default=["curve"],
                     help=f"synthetic problem(s): {', '.join(OBJECTIVE_NAMES)} (default curve)")
    sim.add_argument("--policy", type=_choices(POLICIES), default=["initiator"],
                     help="initiator | truncation | random, or a comma list")
    sim.add_argument("--population", type=_ints, default=[10], help="population size(s) (default 10)")
    sim.add_argument("--workers", type=int, default=None, help="virtual workers (default: the population)")
    sim.add_argument("--budget-mode", action="store_true", help="initiator budget mode (population > workers)")
    sim.add_argument("--opponent-window", type=_windows, default=[2], help="generations, or 'all' (default 2)")
    sim.add_argument("--preempt-rate", type=_rates, default=[0.0],
                     help="preemptions per busy worker-hour, e.g. 0.05 or 5%% (default 0)")
    sim.add_argument("--seeds", type=int, default=5, help="runs per row, seeds seed-base.. (default 5)")
    sim.add_argument("--seed-base", type=int, default=0)
    sim.add_argument("--max-trials", type=_max_trials, default=["equal"],
                     help="'equal' (population x lineage length: equal compute for all policies), "
                          "0 (no cap) or a number")
    sim.add_argument("--max-steps", type=int, default=None, help="override the objective's max_steps")
    sim.add_argument("--steps-per-trial", type=int, default=None, help="override the objective's steps_per_trial")
    sim.add_argument("--crossover-prob", type=float, default=None)
    sim.add_argument("--resample-prob", type=float, default=None)
    sim.add_argument("--trial-s", type=float, default=600.0, help="mean virtual seconds per trial (default 600)")
    sim.add_argument("--speed-spread", type=float, default=0.2, help="sd of log worker speed (default 0.2)")
    sim.add_argument("--duration-cv", type=float, default=0.1, help="sd of log trial duration (default 0.1)")
    sim.add_argument("--lost-notice", type=float, default=0.5,
                     help="fraction of preemptions a supervisor reports (WorkerLost); the rest wait for "
                          "lease expiry (default 0.5)")
    sim.add_argument("--graceful", type=float, default=0.0,
                     help="fraction of preemptions that save a resume checkpoint first (default 0)")
    sim.add_argument("--restart-s", type=float, default=60.0, help="virtual seconds until a preempted worker is back")
    sim.add_argument("--join-per-hour", type=float, default=0.0,
                     help="Poisson arrivals of new workers per virtual hour (default 0)")
    sim.add_argument("--leave-per-worker-hour", type=float, default=0.0,
                     help="Poisson departures per worker-hour; a leaving worker finishes its trial first (default 0)")
    sim.add_argument("--max-workers", type=int, default=None, help="arrivals stop at this many live workers")
    sim.add_argument("--store", choices=["memory", "lmdb"], default="memory")
    sim.add_argument("--store-dir", default=None, help="lmdb: folder for one store per run (default ./pbt-sim-runs)")
    sim.add_argument("--json", action="store_true", help="print one JSON object (rows with per-seed runs)")
    sim.add_argument("--quiet", action="store_true", help="no progress bar")


def cmd_sim(args: argparse.Namespace) -> int:
    if args.seeds < 1:
        raise SystemExit("pbt-actors sim: --seeds must be >= 1")
    progress = sim_progress(not args.quiet)
    try:
        rows = run_sweep(args, progress)
    except (ValueError, PbtError) as exc:  # a bad setting: say which, no traceback
        progress.close()
        print(f"pbt-actors sim: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(rows_to_json(rows)))
    else:
        print(format_table(rows))
    failed = [r for r in rows if any(not x.finished or x.errors for x in r.runs)]
    return 1 if failed else 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pbt-actors sim")
    configure_parser(parser)
    return cmd_sim(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
