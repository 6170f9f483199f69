"""Regenerate ``docs/studies.md``: every simulation study, its exact command and its table.

Each study is a list of ``pbt-actors sim`` command lines. This script runs them through the
same code path as the CLI (``pbt_actors.cli.sim``), formats each table as markdown under the
command that reproduces it, and derives the findings sentences from the numbers (so a
regenerated document never contradicts its tables). Runs are deterministic per seed, so the
document is reproduced byte for byte; no timings are written into it.

    python benchmarks/studies.py [--out docs/studies.md] [--seeds N] [--only a,b,c,d] [--quiet]

``--seeds`` overrides every study's seed count (for a quick look; the document's claims are
made with the seed counts below). Takes about three minutes on a 2-core machine.
"""

from __future__ import annotations

import argparse
import math
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pbt_actors.cli.sim import configure_parser, format_table, run_sweep, sim_progress
from pbt_actors.tools.sim.cluster_model import SimConfig
from pbt_actors.tools.sim.objectives import OBJECTIVES, LearningCurve, ParetoCurve, make_objective
from pbt_actors.tools.sim.sweep import Row

REPO = Path(__file__).resolve().parents[1]
SEEDS = 10


@dataclass
class Study:
    key: str
    title: str
    question: str
    commands: list[list[str]]
    findings: Callable[[list[list[Row]]], list[str]]
    results: list[list[Row]] = field(default_factory=list)


# --- statistics helpers ------------------------------------------------------------------------
def values(row: Row, what: str = "best") -> list[float]:
    return [float(getattr(r, what)) for r in row.runs if getattr(r, what) is not None]


def mean(row: Row, what: str = "best") -> float:
    return statistics.fmean(values(row, what))


def welch_t(a: list[float], b: list[float]) -> float:
    """Welch's t statistic of mean(a) − mean(b); |t| > ~2.1 is significant at 5% for 10+10 seeds."""
    va = statistics.variance(a) / len(a) if len(a) > 1 else 0.0
    vb = statistics.variance(b) / len(b) if len(b) > 1 else 0.0
    if va + vb == 0:
        return 0.0 if statistics.fmean(a) == statistics.fmean(b) else math.copysign(math.inf, statistics.fmean(a)
                                                                                      - statistics.fmean(b))
    return (statistics.fmean(a) - statistics.fmean(b)) / math.sqrt(va + vb)


def better(objective: str, a: float, b: float) -> bool:
    return make_objective(objective).better(a, b)


def fmt(value: float) -> str:
    if value == 0:
        return "0"
    if 1e-2 <= abs(value) < 1e4:
        return f"{value:.4g}"
    return f"{value:.3g}"


def compare(objective: str, a: Row, b: Row, label_a: str, label_b: str, what: str = "best") -> str:
    """One sentence: which of two rows is better on ``what``, by how much, and whether it is noise."""
    ma, mb = mean(a, what), mean(b, what)
    t = welch_t(values(a, what), values(b, what))
    problem = make_objective(objective)
    goal = problem.goal if what in ("best", "median") else "max"
    a_better = (ma > mb) if goal == "max" else (ma < mb)
    significant = abs(t) > 2.1
    if problem.goal == "min" and what in ("best", "median") and min(ma, mb) > 0:
        size = f"{max(ma, mb) / min(ma, mb):.2f}x"
    else:
        size = f"{abs(ma - mb):.3g}"
    verdict = "better" if a_better else "worse"
    noise = f"|t| = {abs(t):.1f}" + ("" if significant else ", within noise")
    return f"{label_a} is {verdict} than {label_b} on {what} ({fmt(ma)} vs {fmt(mb)}, {size}; {noise})"


def row_where(rows: list[Row], **settings: object) -> Row:
    for row in rows:
        if all(str(row.settings[k]) == str(v) for k, v in settings.items()):
            return row
    raise KeyError(settings)


# --- the studies --------------------------------------------------------------------------------------
WINDOW_OBJECTIVES = ["curve", "curve-noisy", "pareto"]


def findings_a(results: list[list[Row]]) -> list[str]:
    (rows,) = results
    out = []
    for objective in WINDOW_OBJECTIVES:
        mine = [r for r in rows if r.settings["objective"] == objective]
        best_row = min(mine, key=mean) if make_objective(objective).goal == "min" \
            else max(mine, key=mean)
        window = best_row.settings["opponent_window"]
        parts = [compare(objective, row_where(mine, opponent_window="2"), r, "window 2", f"window {w}")
                 for r in mine if (w := r.settings["opponent_window"]) != "2"]
        out.append(f"**{objective}**: the best mean final loss is with window {window}. " + "; ".join(parts) + ".")
    return out


def findings_b(results: list[list[Row]]) -> list[str]:
    small_rows, big_rows = results
    out = []
    for objective in ["curve", "curve-noisy"]:
        small = row_where(small_rows, objective=objective)
        cap = small.settings["max_trials"]
        equal = row_where(big_rows, objective=objective, max_trials=cap)
        full = next(r for r in big_rows if r.settings["objective"] == objective and r.settings["max_trials"] != cap)
        out.append(
            f"**{objective}, equal compute ({cap} trials)**: "
            + compare(objective, small, equal, "PBT-5x5", "PBT-5x20") + ". "
            + f"At that budget 5x20 only gets its lineages to step {equal.summary()['best_step_min']}"
              f"–{max(r.best_step for r in equal.runs)}.")
        out.append(
            f"**{objective}, equal iteration (every lineage to step {make_objective(objective).max_steps})**: "
            + compare(objective, full, small, "PBT-5x20", "PBT-5x5")
            + f", using {mean(full, 'steps_trained') / mean(small, 'steps_trained'):.1f}x the compute and "
              f"{mean(full, 'virtual_s') / mean(small, 'virtual_s'):.1f}x the time on 5 workers.")
    return out


POLICY_OBJECTIVES = list(OBJECTIVES)


def findings_c(results: list[list[Row]]) -> list[str]:
    rows, toy2 = results
    out = []
    for objective in POLICY_OBJECTIVES:
        mine = [r for r in rows if r.settings["objective"] == objective]
        init, trunc, rand = (row_where(mine, policy=p) for p in ("initiator", "truncation", "random"))
        ranked = sorted(mine, key=mean, reverse=make_objective(objective).goal == "max")
        order = " > ".join(r.settings["policy"] for r in ranked)
        line = (f"**{objective}** (best mean first: {order}): "
                + compare(objective, init, rand, "initiator", "random") + "; "
                + compare(objective, init, trunc, "initiator", "truncation"))
        if objective.startswith("pareto"):
            line += "; " + compare(objective, init, rand, "initiator", "random", "hypervolume")
            line += "; " + compare(objective, init, trunc, "initiator", "truncation", "hypervolume")
        out.append(line + ".")
    curve = LearningCurve()
    _, constant = curve.best_constant()
    init = row_where(rows, objective="curve", policy="initiator")
    rand = row_where(rows, objective="curve", policy="random")
    wins = sum(a < b for a, b in zip(values(init), values(rand), strict=True))
    out.append(
        f"**The schedule claim (curve)**: initiator's mean final loss {fmt(mean(init))} is "
        f"{mean(rand) / mean(init):.2f}x lower than the best constant setting random finds ({fmt(mean(rand))}) "
        f"and {constant / mean(init):.2f}x lower than the best constant there is ({fmt(constant)}); it wins "
        f"in {wins} of {len(values(init))} seeds. The optimal schedule reaches {fmt(curve.optimum())}. "
        f"`tests/unit/test_sim.py` asserts a margin of at least 2x over random's mean.")
    for objective in ("toy", "toy-noisy"):
        mine = [r for r in toy2 if r.settings["objective"] == objective]
        init, trunc, rand = (row_where(mine, policy=p) for p in ("initiator", "truncation", "random"))
        out.append(f"**{objective}, Jaderberg's setting (2 members from h = (1, 0) and (0, 1))**: "
                   + compare(objective, init, rand, "initiator", "random") + "; "
                   + compare(objective, init, trunc, "initiator", "truncation") + ".")
    return out


def findings_d(results: list[list[Row]]) -> list[str]:
    (rows,) = results
    out = []
    for objective in ("curve", "toy"):
        mine = [r for r in rows if r.settings["objective"] == objective]
        base = row_where(mine, preempt_rate=0.0)
        for row in mine:
            rate = row.settings["preempt_rate"]
            if rate == 0.0:
                continue
            lost = sum(r.lost_s for r in row.runs)
            wasted = sum(r.wasted_s for r in row.runs)
            preempted = sum(r.trials_lost for r in row.runs)
            failed = sum(r.by_status.get("failed", 0) for r in row.runs)
            per = lost / preempted / 60 if preempted else 0.0
            runs = len(row.runs)
            out.append(
                f"**{objective}, preemption rate {rate:g} per busy worker-hour**: "
                + compare(objective, row, base, f"{rate:g}/h", "no preemption")
                + f". Per run: {preempted / runs:.1f} trials lost, compute wasted (compute minus the work of "
                  f"completing attempts) {wasted / runs / 3600:.3f} worker-h against work in flight at the "
                  f"preemptions {lost / runs / 3600:.3f} worker-h (ratio {wasted / lost if lost else 1:.3f}: "
                  f"nothing else was redone); {per:.1f} min lost per preemption"
                + (f"; {failed} trial(s) across the {runs} runs FAILED after max_losses preemptions and "
                   f"were replaced" if failed else "")
                + ".")
    mean_trial_min = SimConfig().trial_s / 60 * math.exp(0.2 ** 2 / 2)
    out.append(f"For reference, a trial takes {mean_trial_min:.1f} virtual minutes on average (600 s at speed 1, "
               f"speed spread 0.2), so a preemption landing uniformly inside a trial destroys "
               f"{mean_trial_min / 2:.1f} minutes on average.")
    return out


STUDIES = [
    Study("a", "(a) Opponent window: 1, 2, 4 or all generations",
          "Li et al. report that drawing the opponent from the last 1-2 generations works best. Does it, "
          "with every other setting fixed (population 10, 10 workers, equal compute)?",
          [["--objective", ",".join(WINDOW_OBJECTIVES), "--policy", "initiator", "--population", "10",
            "--opponent-window", "1,2,4,all", "--seeds", str(SEEDS)]],
          findings_a),
    Study("b", "(b) PBT-5x5 against PBT-5x20 (budget mode)",
          "The paper's setting: 5 workers with a population of 5, and 5 workers emulating a population of 20 in "
          "budget mode. Li et al. (as summarised in the secondary sources) find 5x5 the most compute-efficient "
          "and 5x20 better at a given iteration. We compare at equal compute (both capped at 5x5's 200 trials) "
          "and at equal iteration (5x20 trains all 20 lineages to the end: 4x the compute).",
          [["--objective", "curve,curve-noisy", "--population", "5", "--workers", "5", "--seeds", str(SEEDS)],
           ["--objective", "curve,curve-noisy", "--population", "20", "--workers", "5", "--budget-mode",
            "--max-trials", "200,equal", "--seeds", str(SEEDS)]],
          findings_b),
    Study("c", "(c) initiator vs truncation vs random, equal compute, every objective",
          "The three policies behind the same controller, population 10 on 10 workers, every run capped at the "
          "same number of trials (population x lineage length, what `random` needs). Then Jaderberg's original "
          "toy setting: two members starting from h = (1, 0) and (0, 1).",
          [["--objective", ",".join(POLICY_OBJECTIVES), "--policy", "initiator,truncation,random",
            "--population", "10", "--seeds", str(SEEDS)],
           ["--objective", "toy,toy-noisy", "--policy", "initiator,truncation,random", "--population", "2",
            "--seeds", str(SEEDS)]],
          findings_c),
    Study("d", "(d) Preemption: 0, 5%, 20% (and 100%) per worker-hour",
          "Preempted trials are lost and re-queued by the core exactly as in production: half the preemptions "
          "are reported by a supervisor (`WorkerLost`, the worker restarts after 60 s), half are silent (the host "
          "vanished; the lease expires, a fresh worker joins). Final fitness should not change beyond noise, and "
          "the compute lost should be just the work in flight at each preemption.",
          [["--objective", "curve,toy", "--preempt-rate", "0,5%,20%,100%", "--seeds", str(SEEDS)]],
          findings_d),
]


# --- the document ---------------------------------------------------------------------------------------------
def objective_notes() -> list[str]:
    curve = LearningCurve()
    lr, loss = curve.best_constant()
    pareto = ParetoCurve()
    ref = pareto.reference_hypervolume() or 0.0
    lines = ["| objective | what | known answer |", "|---|---|---|"]
    for name in OBJECTIVES:
        problem = make_objective(name)
        if name.startswith("toy"):
            answer = f"max Q = {problem.optimum():g} (h = (1, 1) throughout)"
        elif name.startswith("curve"):
            answer = (f"min loss {fmt(problem.optimum())} by the 1/t schedule; best constant lr {lr:.3g} "
                      f"gives {fmt(loss)}")
        else:
            answer = f"reference front hypervolume {ref:.1f} (constant batch, optimal lr schedule)"
        noise = f"; evaluation noise {problem.noise:g}" if problem.noise else ""
        lines.append(f"| `{name}` | {problem.description}; {problem.max_steps} steps, "
                     f"{problem.steps_per_trial} per trial{noise} | {answer} |")
    return lines


HEADER = """# Simulation studies

Generated by `python benchmarks/studies.py` (do not edit by hand). Every run drives the
unchanged `ControllerCore` and policies with virtual workers in virtual time
(`pbt_actors/tools/sim`); runs are deterministic per seed, so each table is reproduced exactly by the
command above it (`pbt-actors sim ...`; also `python -m pbt_actors.cli.sim ...`).

## How to read the tables

- **best**: the *true* (noise-free) metric of the completed trial the controller ranks best by
  its *observed* metrics, i.e. what `pbt-actors status` would hand you. **median**: the median
  true metric over the final population (the last `population` trials to complete).
  `mean ± sd` over seeds. Q is maximised; losses are minimised.
- **equal compute**: unless a table says otherwise every run is capped at
  `population × max_steps / steps_per_trial` trials (`--max-trials equal`): what training each
  lineage once to the end costs, which is what `random` uses. PBT policies can need more (a child
  of an older opponent resumes from an earlier step) and are cut at the same budget; the
  **steps** column (steps trained, including lost ones) shows the budgets match. **best at step
  (min)** is the lowest step at which a seed's best trial ended.
- **compute**: busy worker-hours; **makespan**: virtual hours until the run ended. Virtual
  cluster: `population` workers (unless stated), speeds `exp(N(0, 0.2))`, trials of 600 s at
  speed 1 with 10% duration noise, leases of one trial length with heartbeats every third.
- **trials lost**: attempts destroyed by a preemption (each re-queued by the core);
  **lost**: the work in flight at those preemptions; **wasted**: compute minus the work of the
  attempts that completed their trials (equal to *lost* when nothing but the lost work was
  redone); **leases expired**: silent losses the controller found by lease expiry.

## Objectives
"""


CAVEATS = """## Caveats

- The objectives are synthetic. They have known answers, which is what makes them useful for
  checking the controller, but a real model's learning curve is not a noisy quadratic.
- The paper's own tables and figures were not available to us (see `shared/research`); its
  claims above come from secondary summaries (1-2 generations best; 5x5 most compute-efficient,
  5x20 better at a given iteration).
- "Equal compute" counts trials (each is `steps_per_trial` steps); with the default cap PBT
  policies that need more trials to bring a lineage to `max_steps` are cut short, which is the
  honest comparison but means their best trial may end before the last step.
- Preemptions are *losses* to the controller: each re-queues the trial with `attempt + 1`
  and counts against `max_losses` (default 10), not against `max_attempts` (failures of the
  trial's own code). A trial lost `max_losses` times would FAIL and be replaced; the findings
  say when that happened.
"""


def build(studies: list[Study]) -> str:
    parts = [HEADER, *objective_notes(), ""]
    for study in studies:
        parts += [f"## {study.title}", "", study.question, ""]
        for argv, rows in zip(study.commands, study.results, strict=True):
            parts += ["```", "pbt-actors sim " + shlex.join(argv), "```", "", format_table(rows, markdown=True), ""]
        parts += ["**Findings** (derived from the tables by the script):", ""]
        parts += [f"- {line}" for line in study.findings(study.results)]
        parts.append("")
    parts.append(CAVEATS)
    return "\n".join(parts).rstrip() + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(REPO / "docs" / "studies.md"))
    parser.add_argument("--seeds", type=int, default=None, help="override every study's seed count")
    parser.add_argument("--only", default=None, help="comma list of study keys (a,b,c,d); the rest are skipped")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args()
    chosen = [s for s in STUDIES if args.only is None or s.key in args.only.split(",")]
    sim_parser = argparse.ArgumentParser(prog="pbt-actors sim")
    configure_parser(sim_parser)
    started = time.monotonic()
    for study in chosen:
        for argv in study.commands:
            if args.seeds is not None:
                argv[argv.index("--seeds") + 1] = str(args.seeds)
            if not args.quiet:
                print(f"study {study.key}: pbt-actors sim {shlex.join(argv)}", file=sys.stderr, flush=True)
            sim_args = sim_parser.parse_args([*argv, "--quiet"])
            study.results.append(run_sweep(sim_args, sim_progress(not args.quiet)))
    document = build(chosen)
    Path(args.out).write_text(document)
    if not args.quiet:
        print(f"wrote {args.out} in {time.monotonic() - started:.0f}s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
