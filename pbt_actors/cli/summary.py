"""What ``run``, ``controller``, ``status`` and ``status --watch`` say about a store.

One summary (``store_summary``: a JSON-ready dict) and one way to print it, shared by every
command that reports on a run, so ``status --json`` and ``run --json`` agree field for field.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Mapping
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from pbt_actors.control.budget import BudgetLedger
from pbt_actors.control.final_population import read_final_population
from pbt_actors.control.progress import best_completed, run_finished
from pbt_actors.control.run_notes import best_ties, read_attempt_failures, short_of_max_steps, tied_with
from pbt_actors.model.errors import ConfigError
from pbt_actors.model.experiment import Experiment
from pbt_actors.model.records import TrialStatus
from pbt_actors.storage.trial_store import META_EXPERIMENT, TrialStore

BEST_TIES_LIMIT = 100
"""Ties for best are counted up to this many (then "100+")."""
RETRIED_SHOWN = 5
RETRIED_LISTED = 20
"""``status --json``/``run --json`` list this many retried trials (the latest; ``status --failures`` all)."""
"""The summary names this many retried trials (the latest) with their last error line."""


def open_store_readonly(store_dir: str | Path) -> AbstractContextManager[Any]:
    """The LMDB store at ``store_dir``, read-only (safe while a controller writes).

    Raises:
        ConfigError: no store there (the CLI prints it and exits 2).
    """
    from pbt_actors.storage.lmdb_store import LmdbTrialStore

    path = Path(store_dir).resolve()
    if not (path / "data.mdb").exists():
        raise ConfigError(f"no pbt-actors store at {path}")
    return LmdbTrialStore(path, readonly=True)


def wait_for_store(store_dir: str | Path, interval_s: float, stop: threading.Event) -> bool:
    """Wait until a store exists at ``store_dir`` (a run may be starting: ``status --watch``,
    ``export --follow``), saying so once on stderr; False if ``stop`` was set first."""
    path = Path(store_dir).resolve()
    if (path / "data.mdb").exists():
        return True
    print(f"no pbt-actors store at {path} yet; waiting (Ctrl-C to stop)", file=sys.stderr, flush=True)
    while not (path / "data.mdb").exists():
        if stop.wait(interval_s):
            return False
    return True


def store_summary(store: TrialStore, experiment: Experiment) -> dict[str, Any]:
    """A JSON-ready summary of a store: counts, best trial, progress, and the notes that explain
    them (``control.run_notes``: ties for best, members short of max_steps); O(population)."""
    best = best_completed(store, experiment)
    counts = {s.value: store.count(s) for s in TrialStatus}
    population = read_final_population(store, experiment)
    ledger = BudgetLedger.read(store, experiment.budget_steps)
    return {
        "experiment": experiment.name,
        "policy": experiment.policy,
        "trials": store.count(),
        "by_status": counts,
        "finished": run_finished(store),
        "best": None if best is None else {
            "trial_id": best.id, "generation": best.generation, "final": dict(best.final or {}),
            "hparams": dict(best.hparams), "end_step": best.end_step,
        },
        "best_ties": best_ties(store, experiment, best, BEST_TIES_LIMIT),
        "final_population": {**population.to_dict(),
                             "best_ties": tied_with(experiment, population.best, population.trials),
                             "short": short_of_max_steps(store, experiment, population.trials)},
        "seed": experiment.seed,  # shown: the same seed does not repeat a run (trials are asynchronous)
        "max_generation": store.max_generation(),
        "budget": ledger.summary(),  # O(1): the store's counters
        "compute": ledger.compute(experiment.population, experiment.max_steps),
    }


def no_result_reason(store: TrialStore) -> str | None:
    """Why a finished run has no result, as one line; None when a trial completed or the run
    is not over. A run whose every trial failed used to say ``finished`` and exit 0."""
    if store.count(TrialStatus.COMPLETED) or not run_finished(store):
        return None
    counts = ", ".join(f"{store.count(s)} {s.value}" for s in (TrialStatus.FAILED, TrialStatus.STOPPED)
                       if store.count(s))
    text = f"the run ended with no completed trial ({counts or 'no trial ran'})"
    failed = store.ids_with_status(TrialStatus.FAILED)
    if failed:
        error = (store.get_trial(failed[-1]).error or "").strip().splitlines()
        if error:
            text += f"; trial {failed[-1]}'s last error: {error[-1][:300]}"
    return text


def read_no_result_reason(store_dir: Path) -> str | None:
    """``no_result_reason`` of the store at ``store_dir`` (None without a store)."""
    if not (store_dir / "data.mdb").exists():
        return None
    with open_store_readonly(store_dir) as store:
        return no_result_reason(store)


def budget_text(leased_steps: int, budget_steps: int | None) -> str:
    """``steps 1,200/4,000  `` (or ``steps 1,200  `` without a budget) for progress lines."""
    total = "" if budget_steps is None else f"/{budget_steps:,}"
    return f"steps {leased_steps:,}{total}  "


def compute_text(compute: Mapping[str, Any], population: int | None = None) -> str:
    """``230 steps trained (192 leased + 38 retried); population x max_steps = 192 (+20%)``:
    what the run cost beside what a user expects it to (``BudgetLedger.compute``)."""
    trained, nominal = int(compute["steps_trained"]), int(compute["nominal_steps"])
    retried = int(compute.get("retried_steps") or 0)
    parts = f" ({compute['leased_steps']:,} leased + {retried:,} retried)" if retried else ""
    extra = f" ({(trained - nominal) / nominal:+.0%})" if nominal and trained != nominal else ""
    who = f"population {population} x max_steps" if population is not None else "population x max_steps"
    text = f"{trained:,} steps trained{parts}; {who} = {nominal:,}{extra}"
    if trained > nominal and compute.get("budget_steps") is None:
        text += "; --budget-steps pins the total (README \"Compute\")"
    return text


def stored_experiment(store: TrialStore) -> Experiment | None:
    raw = store.get_meta(META_EXPERIMENT)
    return None if raw is None else Experiment.from_dict(raw)


def read_summary(store_dir: Path) -> dict[str, Any] | None:
    """The summary of the store at ``store_dir`` with its retried attempts
    (``read_attempt_failures``: a scan of the records, so not in ``status --watch``'s refresh);
    None when there is none (yet)."""
    if not (store_dir / "data.mdb").exists():
        return None
    with open_store_readonly(store_dir) as store:
        experiment = stored_experiment(store)
        if experiment is None:
            return None
        failures = read_attempt_failures(store)
        return {**store_summary(store, experiment), "attempt_failures": failures.to_dict(RETRIED_LISTED)}


def fmt_value(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def fmt_map(values: Mapping[str, Any] | None) -> str:
    """``k=v k=v`` with 4 significant digits for floats; ``-`` for nothing."""
    if not values:
        return "-"
    return " ".join(f"{k}={fmt_value(v)}" for k, v in values.items())


def print_summary(summary: dict[str, Any], store_dir: str, elapsed_s: float | None = None) -> None:
    best = summary["best"]
    counts = summary["by_status"]
    print()
    print(f"experiment   {summary['experiment']}  (policy {summary['policy']})")
    print(f"store        {store_dir}")
    print(f"trials       {summary['trials']}  " + "  ".join(f"{k} {v}" for k, v in counts.items() if v))
    failures = summary.get("attempt_failures")
    if failures and failures["retried_attempts"]:
        for line in retried_text(failures, store_dir):
            print(line)
    budget = summary.get("budget")
    if budget:
        retried = budget.get("retried_steps") or 0
        print(f"{budget_text(budget['leased_steps'], budget['budget_steps']).rstrip():<12} leased"
              + (f" (budget {budget['budget_steps']:,})" if budget["budget_steps"] is not None else "")
              + (f"; retries re-leased {retried:,} more (not charged to the budget)" if retried else ""))
    compute = summary.get("compute")
    if compute:
        print(f"compute      {compute_text(compute)}")
    if summary.get("seed") is not None:
        print(f"seed         {summary['seed']}  (the same seed picks the same decisions, yet trials finish "
              f"in a different order: runs differ)")
    if elapsed_s is not None:
        print(f"wall time    {elapsed_s:.1f}s")
    if best is None:
        print("best overall (no completed trial yet)")
        return
    metrics = "  ".join(f"{k}={v:.4g}" for k, v in best["final"].items())
    where = f"(generation {best['generation']}, step {best['end_step']})"
    print(f"best overall trial {best['trial_id']} {where}  {metrics}{ties_text(summary.get('best_ties', 0))}")
    width = max(len(k) for k in best["hparams"]) if best["hparams"] else 0
    for key, value in best["hparams"].items():
        print(f"  {key:<{width}}  {fmt_value(value)}")
    population = summary.get("final_population")
    if population and population["best"] is not None:
        print(final_population_text(population))


def final_population_text(population: Mapping[str, Any]) -> str:
    """``final pop.   8 trials (8 at max_steps 1000): best trial 170 acc=0.97  mean acc=0.95``:
    what users compare, next to the best trial at any step; members short of max_steps say why
    (``control.run_notes.short_of_max_steps``)."""
    best = population["best"]
    reached = f"{population['at_max_steps']} at max_steps {population['max_steps']:,}"
    short = population.get("short") or {}
    if short:
        reached += f"; {sum(short.values())} short: " + ", ".join(f"{n} {why}" for why, n in short.items())
    mean = "  ".join(f"{k}={fmt_value(v)}" for k, v in population["mean"].items())
    return (f"final pop.   {population['size']} trials ({reached}): best trial {best['trial_id']} "
            f"{fmt_map(best['final'])}{ties_text(population.get('best_ties', 0), 'members')}  mean {mean or '-'}")


def ties_text(ties: int, among: str = "trials") -> str:
    """`` (tied with 4 other trials; the oldest is named best)`` or nothing (``model.ranking``)."""
    if not ties:
        return ""
    count = f"{BEST_TIES_LIMIT}+" if ties >= BEST_TIES_LIMIT else str(ties)
    return f"  (tied with {count} other {among.removesuffix('s') if ties == 1 else among}; the oldest is named best)"


def retried_text(failures: Mapping[str, Any], store_dir: str, shown: int = RETRIED_SHOWN) -> list[str]:
    """The summary's lines on retried attempts (not failed trials; ``control.run_notes``)."""
    lines = [f"retried      {failures['retried_attempts']} failed attempt(s) in {failures['trials_retried']} trial(s) "
             f"({failures['crashed']} the trial's own failures, {failures['lost']} lost to the machine), "
             f"and retried, apart from the {failures['failed_trials']} failed trial(s)"]
    for row in failures["trials"][-shown:]:
        last = (row["error"] or "").strip().splitlines()
        lines.append(f"  trial {row['trial_id']} ({row['status']}, attempt {row['attempts']}, last on "
                     f"{row['worker'] or '?'}): {last[-1][:160] if last else '(no error text)'}")
    more = failures["trials_retried"] - min(shown, len(failures["trials"]))
    lines.append(f"  {'... and ' + str(more) + ' more; ' if more > 0 else ''}tracebacks: "
                 f"pbt-actors status --store {store_dir} --failures")
    return lines


def table(headers: list[str], rows: list[list[str]]) -> list[str]:
    """Left-aligned columns, two spaces apart (plain text: it goes to logs as well)."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return lines
