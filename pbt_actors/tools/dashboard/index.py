"""``StoreIndex``: what the dashboard knows about a store, refreshed incrementally.

A store of 100,000 trials takes seconds to decode, so the dashboard reads each terminal trial
once and keeps a small ``Row`` of it (ids, status, steps, fitness, worker, times, lineage). A
terminal trial never changes again in a way the page shows, so a refresh reads only the trials
created since the last one and those still PENDING or RUNNING: O(new + active), not O(all).

Fitness is the objective as a scalar (``Objective.scalar``: oriented so bigger is better for
every objective kind), for the plots. The best trial is the one ``status`` reports
(``progress.best_completed``: the store's best index), read again when trials ended.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pbt_actors.control.budget import BudgetLedger
from pbt_actors.control.progress import best_completed, run_finished
from pbt_actors.model.experiment import Experiment
from pbt_actors.model.fitness import Objective
from pbt_actors.model.records import Trial, TrialStatus
from pbt_actors.storage.trial_store import META_EXPERIMENT, TrialStore
from pbt_actors.tools.lineage_paths import LineageAssigner


@dataclass(slots=True)
class Row:
    """The part of a trial the dashboard's overviews need (measurements are read on demand)."""

    id: int
    parent: int | None
    generation: int
    status: str
    start: int
    end: int
    fitness: float | None  # the objective's scalar, bigger is better; None if missing/non-finite
    value: float | None  # the plotted value: the single metric as reported, else the scalar
    worker: str | None
    created_at: float
    started_at: float | None
    ended_at: float | None
    lineage: int
    failed: bool
    hparams: Mapping[str, Any]  # the decoded record's own mapping: the table, parallel coordinates, importance
    final: Mapping[str, float] | None
    failed_attempts: int  # attempts that ended without completing (crashes, losses), retried or not


@dataclass(slots=True)
class WorkerStats:
    """One worker's finished trials, summed as they end (utilisation without a rescan)."""

    trials: int = 0
    failed: int = 0
    busy_s: float = 0.0
    first_start: float = math.inf
    last_end: float = -math.inf

    def add(self, row: Row) -> None:
        assert row.started_at is not None and row.ended_at is not None
        self.trials += 1
        self.failed += row.failed
        self.busy_s += max(0.0, row.ended_at - row.started_at)
        self.first_start = min(self.first_start, row.started_at)
        self.last_end = max(self.last_end, row.ended_at)


CURVE_TRIALS = 3000
"""Up to this many trials the index keeps each trial's reports for the per-step chart."""
CURVE_POINTS = 40


def _points(trial: Trial, objective: Objective) -> tuple[list[int], list[float | None]]:
    """The trial's reports as (step, plotted value): the metric itself for one objective, else
    the oriented scalar; at most ``CURVE_POINTS``, evenly spaced, the last kept."""
    ms = trial.measurements
    if len(ms) > CURVE_POINTS:
        stride = len(ms) / CURVE_POINTS
        ms = (*(ms[int(i * stride)] for i in range(CURVE_POINTS - 1)), ms[-1])
    single = objective.names[0] if len(objective.names) == 1 else None
    xs: list[int] = []
    ys: list[float | None] = []
    for m in ms:
        raw = m.metrics.get(single) if single is not None else objective.scalar(m.metrics)
        if isinstance(raw, int | float) and math.isfinite(raw):
            xs.append(m.step)
            ys.append(float(raw))
    return xs, ys


def failed_attempts(trial: Trial) -> int:
    """Attempts of ``trial`` that ended without completing it: every attempt but the completing
    one (a retried crash, a lost worker, a preemption); all of them for a FAILED trial."""
    return max(0, trial.attempt - 1) + (1 if trial.status is TrialStatus.FAILED else 0)


class StoreIndex:
    """A read-only store's rows, the best trial and the completion order (the page's cursor)."""

    def __init__(self, store: TrialStore) -> None:
        self.store = store
        self.lock = threading.RLock()  # the store and the rows are used by one thread at a time
        self.experiment: Experiment | None = None
        self.rows: list[Row] = []  # rows[i] is trial i + 1 (ids are dense)
        self.active: set[int] = set()
        self.done_order: list[int] = []  # terminal trials in the order the index saw them end
        self.failures: list[int] = []
        self.points: dict[int, tuple[list[int], list[float | None]]] = {}
        """Each trial's reports of the objective (thinned), while the chart draws trials one by one."""
        self.retried: list[int] = []  # terminal trials with at least one failed attempt, in end order
        self.failed_attempts = 0  # summed over those trials
        self.children: dict[int, list[int]] = {}
        self.best_id: int | None = None
        self.finished = False
        self.refreshed_at = 0.0
        self.last_refresh_s = 0.0
        self.workers: dict[str, WorkerStats] = {}
        self.version = 0  # bumped by every refresh that changed something (keys ``memo``)
        self._memo: dict[str, tuple[int, Any]] = {}
        self._lineages = LineageAssigner()

    # --- refresh ----------------------------------------------------------------------------------
    def refresh(self) -> int:
        """Read what changed since the last refresh; returns the number of trials that ended."""
        with self.lock:
            t0 = time.perf_counter()
            if self.experiment is None:
                raw = self.store.get_meta(META_EXPERIMENT)
                if raw is None:
                    return 0
                self.experiment = Experiment.from_dict(raw)
            ended = 0
            rows_before = len(self.rows)
            for trial_id in sorted(self.active):
                trial = self.store.find_trial(trial_id)
                if trial is not None:
                    ended += self._put(trial)
            last = self.store.count()
            for trial in self.store.iter_trials(len(self.rows) + 1):
                if trial.id > last:
                    break
                if trial.id != len(self.rows) + 1:  # a gap: the writer's next commit will fill it
                    break
                ended += self._put(trial)
            if ended or self.best_id is None:
                self._read_best()
            finished = run_finished(self.store)
            if ended or self.active or finished != self.finished or len(self.rows) != rows_before:
                self.version += 1
            self.finished = finished
            self.refreshed_at = time.time()
            self.last_refresh_s = time.perf_counter() - t0
            return ended

    def _put(self, trial: Trial) -> int:
        """Record ``trial`` (new or changed); 1 if it just became terminal."""
        assert self.experiment is not None
        objective = self.experiment.objective_
        fitness: float | None = None
        value: float | None = None
        if trial.final is not None:
            scalar = objective.scalar(trial.final)
            fitness = scalar if math.isfinite(scalar) else None
            if len(objective.names) == 1:
                raw = trial.final.get(objective.names[0])
                value = float(raw) if isinstance(raw, int | float) and math.isfinite(raw) else None
            else:
                value = fitness
        row = Row(trial.id, trial.parent_id, trial.generation, trial.status.value, trial.start_step,
                  trial.end_step, fitness, value, trial.worker or (trial.lease.worker if trial.lease else None),
                  trial.created_at, trial.started_at, trial.ended_at,
                  self._lineages.add(trial.id, trial.parent_id), trial.status is TrialStatus.FAILED,
                  trial.hparams, trial.final, failed_attempts(trial))
        new = trial.id == len(self.rows) + 1
        if len(self.rows) <= CURVE_TRIALS and trial.measurements:
            self.points[trial.id] = _points(trial, objective)
        elif len(self.rows) > CURVE_TRIALS and self.points:
            self.points.clear()  # too many trials to draw one by one: the chart draws a band
        if new:
            self.rows.append(row)
            if trial.parent_id is not None:
                self.children.setdefault(trial.parent_id, []).append(trial.id)
        else:
            self.rows[trial.id - 1] = row
        if not trial.status.terminal:
            self.active.add(trial.id)
            return 0
        was_active = trial.id in self.active
        self.active.discard(trial.id)
        if not (new or was_active):
            return 0
        self.done_order.append(trial.id)
        if row.worker is not None and row.started_at is not None and row.ended_at is not None:
            self.workers.setdefault(row.worker, WorkerStats()).add(row)
        if trial.status is TrialStatus.FAILED:
            self.failures.append(trial.id)
        if row.failed_attempts:
            self.retried.append(trial.id)
            self.failed_attempts += row.failed_attempts
        return 1

    def _read_best(self) -> None:
        """The store's best trial, once this index holds its row (a trial past a gap waits)."""
        assert self.experiment is not None
        best = best_completed(self.store, self.experiment)
        if best is not None and self.row(best.id) is not None:
            self.best_id = best.id

    # --- reads ------------------------------------------------------------------------------------
    def memo(self, key: str, build: Callable[[], Any]) -> Any:
        """``build()``, computed once per ``version``: a finished 100k-trial store aggregates its
        curve once, not once per page load."""
        cached = self._memo.get(key)
        if cached is not None and cached[0] == self.version:
            return cached[1]
        value = build()
        self._memo[key] = (self.version, value)
        return value

    def row(self, trial_id: int) -> Row | None:
        return self.rows[trial_id - 1] if 1 <= trial_id <= len(self.rows) else None

    def ancestry(self, trial_id: int) -> list[int]:
        """Warm-start ancestors of ``trial_id`` from the seed down to itself."""
        chain: list[int] = []
        current = self.row(trial_id)
        while current is not None and len(chain) <= len(self.rows):
            chain.append(current.id)
            current = self.row(current.parent) if current.parent is not None else None
        return chain[::-1]

    def population(self) -> list[Row]:
        """The population now: active trials, else (a finished run) the last ``population``
        completed or stopped trials; at most a few hundred rows."""
        limit = max(1, self.experiment.population if self.experiment else 1)
        rows = [self.rows[i - 1] for i in sorted(self.active)]
        if len(rows) < limit:
            for trial_id in reversed(self.done_order):
                row = self.rows[trial_id - 1]
                if not row.failed and row.id not in self.active:
                    rows.append(row)
                if len(rows) >= limit:
                    break
        return sorted(rows[: max(limit, len(self.active))][:500], key=lambda r: r.id)

    def _counts(self) -> tuple[dict[str, int], int]:
        counts = {s.value: 0 for s in TrialStatus}
        for row in self.rows:
            counts[row.status] += 1
        return counts, max((r.generation for r in self.rows), default=-1)

    def summary(self) -> dict[str, Any]:
        counts, max_generation = self.memo("counts", self._counts)
        best = self.row(self.best_id) if self.best_id is not None else None
        exp = self.experiment
        return {
            "experiment": exp.name if exp else None, "policy": exp.policy if exp else None,
            "population": exp.population if exp else None, "max_steps": exp.max_steps if exp else None,
            "objective": list(exp.objective_.names) if exp else [],
            "goal": ([m.goal for m in exp.objective_.metrics] if exp else []),
            "comparison": exp.objective_.comparison if exp else None,
            "trials": len(self.rows), "by_status": counts, "finished": self.finished,
            "max_generation": max_generation, "failed_attempts": self.failed_attempts,
            "trials_with_failed_attempts": len(self.retried),
            "best": None if best is None else {"trial_id": best.id, "value": best.value, "end_step": best.end,
                                                "generation": best.generation,
                                                "final": dict(best.final) if best.final else None},
            "cursor": len(self.done_order), "refreshed_at": self.refreshed_at,
            "refresh_ms": round(self.last_refresh_s * 1000, 1),
            "started_at": self.rows[0].created_at if self.rows else None,
            # steps trained (leased + retried) beside population x max_steps: O(1), the store's counters
            "compute": (BudgetLedger.read(self.store, exp.budget_steps).compute(exp.population, exp.max_steps)
                        if exp else None),
        }
