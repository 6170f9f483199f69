"""``pbt-actors sim``: sweeps of simulated runs and their summary table (layer 5).

Every list-valued option (``--objective``, ``--policy``, ``--population``,
``--opponent-window``, ``--preempt-rate``) takes comma-separated values; the table has one row
per combination, each the mean ± sd over ``--seeds`` runs. So a whole study is one command.

Equal compute: by default every run is capped at ``population × ceil(max_steps /
steps_per_trial)`` trials (``--max-trials equal``), the compute of training each of the
population's lineages once to ``max_steps``. That is exactly what ``random`` uses; PBT
policies may need more (a child of an older opponent continues from an earlier step) and are
cut at the same budget. ``--max-trials 0`` removes the cap.

This module parses, calls the sweep (``tools/sim/sweep.py``) and prints the table.
``add_sim_parser(subparsers)`` registers the subcommand; ``python -m pbt_actors.cli.sim``
runs it standalone.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from pbt_actors.cli.live import LiveProgress
from pbt_actors.model.errors import PbtError

if TYPE_CHECKING:
    from pbt_actors.tools.sim.sweep import Row

# Spelled out so that building the parser imports neither numpy nor the controller; a unit test
# keeps them equal to ``sweep.ALL_WINDOW``, ``objectives.OBJECTIVES`` and ``experiment.POLICY_NAMES``.
ALL_WINDOW = 1 << 20  # opponent window "all generations": larger than any run's generation count
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


# --- the sweep (tools/sim/sweep.py), with its progress drawn here ------------------------------------
def sim_progress(enabled: bool) -> LiveProgress:
    """The sweep's progress: runs done of all runs, and the running one's trial count."""
    return LiveProgress(enabled, "runs")


def run_sweep(args: argparse.Namespace, progress: LiveProgress | None = None) -> list[Row]:
    """``tools.sim.sweep.run_sweep`` on the parsed options; a setting the command refuses, or a
    store folder already taken, ends the command with its message."""
    from pbt_actors.tools.sim.sweep import StoreDirTaken
    from pbt_actors.tools.sim.sweep import run_sweep as sweep

    if args.budget_mode and any(policy != "initiator" for policy in args.policy):
        raise SystemExit("pbt-actors sim: --budget-mode needs the initiator policy")

    def on_progress(done: int, total: int, status: str, final: bool) -> None:
        if progress is not None:
            progress.update(done, total, status, final=final)

    try:
        rows = sweep(args, on_progress)
    except StoreDirTaken as exc:
        raise SystemExit(f"pbt-actors sim: {exc}") from None
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
        from pbt_actors.tools.sim.sweep import rows_to_json

        print(json.dumps(rows_to_json(rows)))
    else:
        print(format_table(rows))
    if args.store == "lmdb":  # say where: the stores are what `status`, `report` and `dashboard` read next
        from pbt_actors.tools.sim.sweep import store_path

        paths = [store_path(row.settings, seed, args).resolve() for row in rows
                 for seed in range(args.seed_base, args.seed_base + args.seeds)]
        stream = sys.stderr if args.json else sys.stdout
        print(f"{len(paths)} store(s) written:", file=stream)
        for path in paths:
            print(f"  {path}", file=stream)
        print(f"open one with: pbt-actors dashboard --store {paths[0]}", file=stream)
    failed = [r for r in rows if any(not x.finished or x.errors for x in r.runs)]
    return 1 if failed else 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pbt-actors sim")
    configure_parser(parser)
    return cmd_sim(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
